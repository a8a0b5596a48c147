//! The reconciler: merges the config file's state with what dynamic sources contribute, validates the
//! result as a whole, and publishes it as a new snapshot. An invalid result is never published.
//!
//! The cost of an update follows the change: items are shared (`Arc`) with the snapshot in force, items equal to
//! the ones in force keep their allocation, validation checks only new items on their own (cross-item checks run
//! on borrowed keys), and the "did anything change" test compares pointers first.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use padis_model::{
    l4::Vip, validate_update, BackendGroup, ConfigErrors, DesiredState, Route, Service, Snapshot, SnapshotStore,
    SourceStatus, Valid,
};
use serde::Serialize;

use crate::metrics::{now_unix, ControlMetrics};

/// What one dynamic source (e.g. Marathon) adds to the config file's state. Items are shared with the
/// source and with the snapshots.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Contribution {
    /// Backend groups.
    pub groups: Vec<Arc<BackendGroup>>,
    /// Routes.
    pub routes: Vec<Arc<Route>>,
    /// DNS services.
    pub services: Vec<Arc<Service>>,
    /// L4 VIPs.
    pub vips: Vec<Arc<Vip>>,
    /// Freshness of the source.
    pub status: SourceStatus,
    /// Items the source skipped, and why (shown by `/v1/state`).
    pub problems: serde_json::Value,
}

/// Outcome of the last config file load, for `/v1/state` and `padis status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadStatus {
    /// Whether the last load succeeded.
    pub ok: bool,
    /// Unix time of the last attempt.
    pub at_unix: f64,
    /// Errors of the last failed load (`file:line:col: field: message`).
    pub errors: Vec<String>,
}

/// The config file's last valid state.
struct Base {
    valid: Valid,
    base_dir: PathBuf,
}

/// Merges sources and publishes snapshots. One per daemon, behind a mutex.
pub struct Reconciler {
    store: SnapshotStore,
    base: Option<Base>,
    dynamic: BTreeMap<String, Contribution>,
    metrics: ControlMetrics,
    reload: ReloadStatus,
}

impl Reconciler {
    /// A reconciler publishing into `store`.
    pub fn new(store: SnapshotStore, metrics: ControlMetrics) -> Reconciler {
        Reconciler { store, base: None, dynamic: BTreeMap::new(), metrics, reload: ReloadStatus::default() }
    }

    /// The store snapshots are published into.
    pub fn store(&self) -> &SnapshotStore {
        &self.store
    }

    /// Last config load outcome.
    pub fn reload_status(&self) -> &ReloadStatus {
        &self.reload
    }

    /// Contributions of dynamic sources.
    pub fn sources(&self) -> &BTreeMap<String, Contribution> {
        &self.dynamic
    }

    /// Records a failed config load: counted and logged by the caller; nothing else changes.
    pub fn config_rejected(&mut self, errors: &ConfigErrors) {
        self.metrics.reloads.with_label_values(&["failure"]).inc();
        self.reload = ReloadStatus {
            ok: false,
            at_unix: now_unix(),
            errors: errors.0.iter().map(|e| e.to_string()).collect(),
        };
    }

    /// Applies a newly validated config file. Publishes when the merged state changed.
    pub fn apply_config(&mut self, valid: Valid, base_dir: PathBuf) -> Result<Arc<Snapshot>, ConfigErrors> {
        let previous = self.base.replace(Base { valid, base_dir });
        match self.publish() {
            Ok(s) => {
                self.metrics.reloads.with_label_values(&["success"]).inc();
                self.metrics.last_reload_success.set(now_unix());
                self.reload = ReloadStatus { ok: true, at_unix: now_unix(), errors: Vec::new() };
                Ok(s)
            }
            Err(e) => {
                // The file is valid alone but clashes with a dynamic source: keep the old base.
                self.base = previous;
                self.config_rejected(&e);
                Err(e)
            }
        }
    }

    /// Applies a dynamic source's new contribution. Publishes when the merged state changed.
    pub fn apply_source(&mut self, name: &str, c: Contribution) -> Result<Arc<Snapshot>, ConfigErrors> {
        self.metrics.source_up.with_label_values(&[name]).set(c.status.ok as i64);
        if let Some(ms) = c.status.last_ok_unix_ms {
            self.metrics.source_last_success.with_label_values(&[name]).set(ms as f64 / 1000.0);
        }
        let previous = self.dynamic.insert(name.to_string(), c);
        match self.publish() {
            Ok(s) => Ok(s),
            Err(e) => {
                match previous {
                    Some(p) => self.dynamic.insert(name.to_string(), p),
                    None => self.dynamic.remove(name),
                };
                Err(e)
            }
        }
    }

    /// Merges, validates and publishes (unless nothing changed).
    fn publish(&mut self) -> Result<Arc<Snapshot>, ConfigErrors> {
        let Some(base) = &self.base else {
            return Ok(self.store.load());
        };
        let sources: Vec<SourceStatus> = std::iter::once(SourceStatus {
            name: "config".into(),
            ok: true,
            last_ok_unix_ms: Some((now_unix() * 1000.0) as u64),
            last_error: None,
        })
        .chain(self.dynamic.values().map(|c| c.status.clone()))
        .collect();
        let origin = base.valid.origin.clone().unwrap_or_else(|| "config".into());
        let current = self.store.load();
        let valid = if self.dynamic.is_empty() {
            let mut state = base.valid.state.clone();
            keep_allocations(&mut state, &current.state);
            Valid { origin: base.valid.origin.clone(), state, certificates: base.valid.certificates.clone() }
        } else {
            let mut state = base.valid.state.clone();
            for c in self.dynamic.values() {
                state.groups.extend(c.groups.iter().cloned());
                state.routes.extend(c.routes.iter().cloned());
                state.services.extend(c.services.iter().cloned());
                state.vips.extend(c.vips.iter().cloned());
            }
            keep_allocations(&mut state, &current.state);
            // The snapshot in force passed this validation with the same base directory (generation 0 is the
            // empty state: nothing in it to skip).
            let mut v = validate_update(
                state,
                &origin,
                &base.base_dir,
                Some(base.valid.certificates.clone()),
                &current.state,
            )?;
            v.origin = base.valid.origin.clone();
            v
        };
        let same = current.generation > 0
            && current.state.same_as(&valid.state)
            && current.certificates == valid.certificates
            && current.sources.iter().map(|s| (&s.name, s.ok)).eq(sources.iter().map(|s| (&s.name, s.ok)));
        if same {
            return Ok(current);
        }
        let snap = Snapshot::new(valid, current.generation + 1, sources);
        let snap = self.store.publish(snap);
        self.metrics.generation.set(snap.generation as i64);
        self.metrics.publications.inc();
        tracing::info!(generation = snap.generation, "published snapshot");
        Ok(snap)
    }
}

/// Items equal to the one at the same position in the snapshot in force take its allocation, so that data
/// planes (and the next validation) recognise them by pointer. Positions only: a comparison each, no lookup.
fn keep_allocations(state: &mut DesiredState, current: &DesiredState) {
    fn keep<T: PartialEq>(new: &mut [Arc<T>], old: &[Arc<T>]) {
        for (n, o) in new.iter_mut().zip(old) {
            if !Arc::ptr_eq(n, o) && **n == **o {
                *n = Arc::clone(o);
            }
        }
    }
    keep(&mut state.groups, &current.groups);
    keep(&mut state.routes, &current.routes);
    keep(&mut state.services, &current.services);
    keep(&mut state.vips, &current.vips);
}

#[cfg(test)]
mod tests {
    use super::*;
    use padis_model::parse_config;
    use std::path::Path;

    fn reconciler() -> Reconciler {
        let reg = prometheus::Registry::new();
        Reconciler::new(SnapshotStore::new(Snapshot::empty()), ControlMetrics::new(&reg).unwrap())
    }

    const BASE: &str = "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:1\"\n[[group]]\nname = \"g\"\n[[route]]\nname = \"r\"\ngroup = \"g\"\n";

    #[test]
    fn publishes_on_change_only() {
        let mut r = reconciler();
        let v = parse_config(BASE, "a.toml", Path::new(".")).unwrap();
        assert_eq!(r.apply_config(v, ".".into()).unwrap().generation, 1);
        let v = parse_config(BASE, "a.toml", Path::new(".")).unwrap();
        assert_eq!(r.apply_config(v, ".".into()).unwrap().generation, 1, "same state: no new generation");
        let v = parse_config(&BASE.replace("127.0.0.1:1", "127.0.0.1:2"), "a.toml", Path::new(".")).unwrap();
        assert_eq!(r.apply_config(v, ".".into()).unwrap().generation, 2);
    }

    #[test]
    fn invalid_source_contribution_changes_nothing() {
        let mut r = reconciler();
        r.apply_config(parse_config(BASE, "a.toml", Path::new(".")).unwrap(), ".".into()).unwrap();
        let ok = Contribution {
            routes: vec![Arc::new(Route {
                name: "m".into(),
                listeners: vec![],
                host: Some("m.example".into()),
                path: "/".into(),
                group: Some("g".into()),
                split: vec![],
                redirect_https: false,
                https_port: None,
                origin: Some("marathon:/m".into()),
                ..Default::default()
            })],
            status: SourceStatus { name: "marathon".into(), ok: true, last_ok_unix_ms: Some(1), last_error: None },
            ..Default::default()
        };
        assert_eq!(r.apply_source("marathon", ok.clone()).unwrap().state.routes.len(), 2);
        let mut bad = ok.clone();
        Arc::make_mut(&mut bad.routes[0]).group = Some("missing".into());
        let e = r.apply_source("marathon", bad).unwrap_err();
        assert!(e.to_string().contains("no group named `missing`"), "{e}");
        let cur = r.store().load();
        assert_eq!(cur.state.routes.len(), 2);
        assert_eq!(r.sources()["marathon"], ok, "the last good contribution is kept");
    }

    fn group(name: &str, port: u16) -> Arc<BackendGroup> {
        let mut g: BackendGroup = serde_json::from_value(serde_json::json!({ "name": name })).unwrap();
        g.backends.push(padis_model::Backend { addr: ([127, 0, 0, 1], port).into(), weight: 1, draining: false });
        Arc::new(g)
    }

    fn route(name: &str, group: &str) -> Arc<Route> {
        Arc::new(Route {
            name: name.into(),
            listeners: vec![],
            host: Some(format!("{name}.example")),
            path: "/".into(),
            group: Some(group.into()),
            split: vec![],
            redirect_https: false,
            https_port: None,
            origin: Some("marathon:/x".into()),
            ..Default::default()
        })
    }

    fn contribution(n: usize) -> Contribution {
        Contribution {
            groups: (0..n).map(|i| group(&format!("m{i}"), 1000 + i as u16)).collect(),
            routes: (0..n).map(|i| route(&format!("r{i}"), &format!("m{i}"))).collect(),
            status: SourceStatus { name: "marathon".into(), ok: true, last_ok_unix_ms: Some(1), last_error: None },
            ..Default::default()
        }
    }

    /// A change to one item of a source: every other item of the next snapshot is the same allocation as in
    /// the previous one (config file items included), and a rebuilt but equal contribution publishes nothing.
    #[test]
    fn one_change_leaves_every_other_item_shared() {
        let mut r = reconciler();
        r.apply_config(parse_config(BASE, "a.toml", Path::new(".")).unwrap(), ".".into()).unwrap();
        let c = contribution(50);
        let s1 = r.apply_source("marathon", c.clone()).unwrap();
        let mut c2 = c.clone();
        c2.groups[7] = group("m7", 4242);
        let s2 = r.apply_source("marathon", c2).unwrap();
        assert_eq!(s2.generation, s1.generation + 1);
        assert_eq!(s2.group("m7").unwrap().backends[0].addr.port(), 4242);
        for (i, (a, b)) in s1.state.groups.iter().zip(&s2.state.groups).enumerate() {
            assert_eq!(Arc::ptr_eq(a, b), a.name != "m7", "group {i} ({})", a.name);
        }
        assert!(s1.state.routes.iter().zip(&s2.state.routes).all(|(a, b)| Arc::ptr_eq(a, b)));

        // Equal items in new allocations (e.g. a source that rebuilt everything): no new generation, and the
        // items in force stay the ones published.
        let mut rebuilt = contribution(50);
        rebuilt.groups[7] = group("m7", 4242);
        let s3 = r.apply_source("marathon", rebuilt).unwrap();
        assert_eq!(s3.generation, s2.generation);
        assert!(Arc::ptr_eq(&s3, &s2));
    }

    /// Errors of a changed item are the ones a validation of the whole merged state reports, and the state in
    /// force stays.
    #[test]
    fn errors_of_a_changed_item_are_the_full_validation_errors() {
        let mut r = reconciler();
        r.apply_config(parse_config(BASE, "a.toml", Path::new(".")).unwrap(), ".".into()).unwrap();
        let c = contribution(10);
        let s1 = r.apply_source("marathon", c.clone()).unwrap();
        let mut bad = c.clone();
        let mut r3 = (*bad.routes[3]).clone();
        r3.host = Some("Not A Host".into());
        r3.group = Some("missing".into());
        bad.routes[3] = Arc::new(r3);
        bad.routes.push(route("r0", "m0"));
        let mut g5 = (*bad.groups[5]).clone();
        g5.connect_timeout = std::time::Duration::ZERO;
        bad.groups[5] = Arc::new(g5);
        let incremental = r.apply_source("marathon", bad.clone()).unwrap_err().to_string();

        let base = parse_config(BASE, "a.toml", Path::new(".")).unwrap();
        let mut whole = base.state.clone();
        whole.groups.extend(bad.groups.iter().map(|g| Arc::new((**g).clone())));
        whole.routes.extend(bad.routes.iter().map(|x| Arc::new((**x).clone())));
        let full = padis_model::validate_state(whole, "a.toml", Path::new("."), None).unwrap_err().to_string();
        assert_eq!(incremental, full);
        for needle in ["group[6].connect_timeout", "route[4].host", "no group named `missing`", "route[11].name: duplicate"] {
            assert!(incremental.contains(needle), "missing {needle} in\n{incremental}");
        }
        assert!(Arc::ptr_eq(&r.store().load(), &s1), "the state in force stays");
    }
}
