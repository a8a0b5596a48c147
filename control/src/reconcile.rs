//! The reconciler: merges the config file's state with what dynamic sources contribute, validates the
//! result as a whole, and publishes it as a new snapshot. An invalid result is never published.
//!
//! The cost of an update follows the change: items are shared (`Arc`) with the snapshot in force, items equal to
//! the ones in force keep their allocation, validation checks only new items on their own (cross-item checks run
//! on borrowed keys), and the "did anything change" test compares pointers first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use padis_model::{
    binds_overlap, l4::Vip, validate_update, BackendGroup, ConfigErrors, DesiredState, Listener, Route, Service,
    Snapshot, SnapshotStore, SourceStatus, Valid,
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
    /// L7 listeners (Marathon service ports). One whose port the config file (a listener, the admin API, DNS)
    /// already takes is left out, with the routes that name it.
    pub listeners: Vec<Listener>,
    /// Freshness of the source.
    pub status: SourceStatus,
    /// Items the source skipped, and why (shown by `/v1/state`).
    pub problems: serde_json::Value,
}

/// Kinds of items a source contributes.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    /// A backend group.
    Group,
    /// An L7 route.
    Route,
    /// A DNS service.
    Service,
    /// An L4 VIP.
    Vip,
    /// An L7 listener.
    Listener,
}

impl ItemKind {
    /// The config section name, as in field paths (`route[3]`).
    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Group => "group",
            ItemKind::Route => "route",
            ItemKind::Service => "service",
            ItemKind::Vip => "vip",
            ItemKind::Listener => "listener",
        }
    }

    fn from_path(field: &str) -> Option<(ItemKind, usize)> {
        let (kind, rest) = field.split_once('[')?;
        let idx = rest.split_once(']')?.0.parse().ok()?;
        let kind = match kind {
            "group" => ItemKind::Group,
            "route" => ItemKind::Route,
            "service" => ItemKind::Service,
            "vip" => ItemKind::Vip,
            "listener" => ItemKind::Listener,
            _ => return None,
        };
        Some((kind, idx))
    }
}

/// Why a source's item was left out (the `reason` label of `padis_source_items_rejected`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Its host is served by a route of the config file (config-file items win).
    HostOwnedByConfig,
    /// Its DNS name is a service of the config file.
    DnsNameOwnedByConfig,
    /// Its port (a listener's) is taken by the config file: a listener, the admin API or DNS.
    PortOwnedByConfig,
    /// It clashes with an item of the config file or another item (same name, same host and path, same VIP).
    Conflict,
    /// It refers to something that does not exist (or was rejected).
    MissingReference,
    /// It is invalid on its own.
    Invalid,
}

impl RejectReason {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::HostOwnedByConfig => "host_owned_by_config",
            RejectReason::DnsNameOwnedByConfig => "dns_name_owned_by_config",
            RejectReason::PortOwnedByConfig => "port_owned_by_config",
            RejectReason::Conflict => "conflict",
            RejectReason::MissingReference => "missing_reference",
            RejectReason::Invalid => "invalid",
        }
    }

    /// The reason of a validation error's message.
    fn of_message(message: &str) -> RejectReason {
        if message.starts_with("no ") && message.contains(" named `") {
            RejectReason::MissingReference
        } else if message.starts_with("duplicate")
            || message.starts_with("same ")
            || message.contains("clash")
            || message.contains("bound by another")
        {
            RejectReason::Conflict
        } else {
            RejectReason::Invalid
        }
    }
}

/// An item of a source that is not published, and why; the rest of the source is.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct RejectedItem {
    /// What it is.
    pub kind: ItemKind,
    /// Its name.
    pub name: String,
    /// Where it comes from in the source (e.g. `marathon:/app`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Why, in one word.
    pub reason: RejectReason,
    /// Why, in full.
    pub message: String,
}

impl std::fmt::Display for RejectedItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} `{}`", self.kind.as_str(), self.name)?;
        if let Some(o) = &self.origin {
            write!(f, " of {o}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Most validation rounds of one publication: each round leaves out the source items the last one found
/// wrong (a left-out group can make its routes wrong in the next round).
const MAX_ROUNDS: usize = 8;

/// Outcome of the last config file load, for `/v1/state` and `padis status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadStatus {
    /// Whether the last load succeeded.
    pub ok: bool,
    /// Unix time of the last attempt.
    pub at_unix: f64,
    /// Errors of the last failed load (`file:line:col: field: message`).
    pub errors: Vec<String>,
    /// Settings of the config in force that differ from the ones the daemon started with and only take effect
    /// at the next restart (`section.field`).
    pub restart_required: Vec<String>,
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
    /// Items of each source left out of the snapshot in force.
    rejected: BTreeMap<String, Vec<RejectedItem>>,
    /// The config the daemon started with (what the settings read only at start come from).
    started: Option<DesiredState>,
    metrics: ControlMetrics,
    reload: ReloadStatus,
}

impl Reconciler {
    /// A reconciler publishing into `store`.
    pub fn new(store: SnapshotStore, metrics: ControlMetrics) -> Reconciler {
        Reconciler {
            store,
            base: None,
            dynamic: BTreeMap::new(),
            rejected: BTreeMap::new(),
            started: None,
            metrics,
            reload: ReloadStatus::default(),
        }
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

    /// Items of source `name` left out of the snapshot in force (empty when all of it is published).
    pub fn rejected(&self, name: &str) -> &[RejectedItem] {
        self.rejected.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Records a failed config load: counted and logged by the caller; nothing else changes.
    pub fn config_rejected(&mut self, errors: &ConfigErrors) {
        self.metrics.reloads.with_label_values(&["failure"]).inc();
        self.reload = ReloadStatus {
            ok: false,
            at_unix: now_unix(),
            errors: errors.0.iter().map(|e| e.to_string()).collect(),
            restart_required: std::mem::take(&mut self.reload.restart_required),
        };
    }

    /// Applies a newly validated config file. Publishes when the merged state changed.
    pub fn apply_config(&mut self, valid: Valid, base_dir: PathBuf) -> Result<Arc<Snapshot>, ConfigErrors> {
        let previous = self.base.replace(Base { valid, base_dir });
        match self.publish() {
            Ok(s) => {
                self.metrics.reloads.with_label_values(&["success"]).inc();
                self.metrics.last_reload_success.set(now_unix());
                let started = self.started.get_or_insert_with(|| s.state.clone());
                let restart_required = crate::restart::required(started, &s.state);
                for field in &restart_required {
                    tracing::warn!(
                        field = %field,
                        "restart required: {field} changed; the running value stays until then"
                    );
                }
                self.reload = ReloadStatus { ok: true, at_unix: now_unix(), errors: Vec::new(), restart_required };
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

    /// Updates only the status of source `name` (its items stay as they are): a restarted source that has not
    /// synced yet, or one that cannot start.
    pub fn set_source_status(&mut self, name: &str, status: SourceStatus) {
        self.metrics.source_up.with_label_values(&[name]).set(status.ok as i64);
        self.dynamic.entry(name.to_string()).or_default().status = status;
        if let Err(e) = self.publish() {
            tracing::error!(source = name, error = %e, "publishing a source's status failed");
        }
    }

    /// Marks source `name` as failing with `error`, keeping its items.
    pub fn source_failed(&mut self, name: &str, error: &str) {
        let mut status = self.dynamic.get(name).map(|c| c.status.clone()).unwrap_or_default();
        status.name = name.to_string();
        status.ok = false;
        status.last_error = Some(error.to_string());
        self.set_source_status(name, status);
    }

    /// Withdraws everything source `name` contributed (its section was removed from the config).
    pub fn remove_source(&mut self, name: &str) -> Result<Arc<Snapshot>, ConfigErrors> {
        let previous = self.dynamic.remove(name);
        self.metrics.source_up.with_label_values(&[name]).set(0);
        match self.publish() {
            Ok(s) => Ok(s),
            Err(e) => {
                if let Some(p) = previous {
                    self.dynamic.insert(name.to_string(), p);
                }
                Err(e)
            }
        }
    }

    /// Merges, validates and publishes (unless nothing changed).
    ///
    /// Sources never make the config file's state fail, and one wrong item of a source never holds back the
    /// rest: items claiming a host or DNS name of the config file are left out first; then each validation
    /// error located at a source item leaves that item out, and the merge is validated again. Only errors of
    /// the config file's own items (or not tied to an item) fail the publication.
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
        let mut rejected: BTreeMap<String, Vec<RejectedItem>> = BTreeMap::new();
        let valid = if self.dynamic.is_empty() {
            let mut state = base.valid.state.clone();
            keep_allocations(&mut state, &current.state);
            Valid { origin: base.valid.origin.clone(), state, certificates: base.valid.certificates.clone() }
        } else {
            let mut left_out = claims_of_config(&base.valid.state, &self.dynamic);
            let mut round = 0;
            let valid = loop {
                round += 1;
                let (mut state, from) = merge(&base.valid.state, &base.base_dir, &self.dynamic, &left_out);
                keep_allocations(&mut state, &current.state);
                // The snapshot in force passed this validation with the same base directory (generation 0 is
                // the empty state: nothing in it to skip).
                let errors = match validate_update(
                    state,
                    &origin,
                    &base.base_dir,
                    Some(base.valid.certificates.clone()),
                    &current.state,
                ) {
                    Ok(mut v) => {
                        v.origin = base.valid.origin.clone();
                        break v;
                    }
                    Err(e) => e,
                };
                let mut found = false;
                for err in &errors.0 {
                    let Some((kind, idx)) = ItemKind::from_path(&err.field) else { continue };
                    let Some(&Some((src, i))) = from.get(&kind).and_then(|f| f.get(idx)) else { continue };
                    if let std::collections::btree_map::Entry::Vacant(e) = left_out.entry((src, kind, i)) {
                        let reason = RejectReason::of_message(&err.message);
                        let (name, item_origin) = item_names(&self.dynamic, src, kind, i);
                        let message = format!("{}: {}", err.field.split_once('.').map_or("", |x| x.1), err.message);
                        let message = message.trim_start_matches(": ").to_string();
                        e.insert(RejectedItem { kind, name, origin: item_origin, reason, message });
                        found = true;
                    }
                }
                if !found || round >= MAX_ROUNDS {
                    return Err(errors);
                }
            };
            let names: Vec<&String> = self.dynamic.keys().collect();
            for ((src, _, _), item) in left_out {
                rejected.entry(names[src].clone()).or_default().push(item);
            }
            sort_items(&mut rejected);
            valid
        };
        self.set_rejected(rejected);
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

    /// Records the items left out of the state in force: each newly rejected item is logged once (and one that
    /// is back, once), and `padis_source_items_rejected` is set.
    fn set_rejected(&mut self, rejected: BTreeMap<String, Vec<RejectedItem>>) {
        if rejected == self.rejected {
            return;
        }
        for (source, items) in &rejected {
            let before = self.rejected.get(source).map(Vec::as_slice).unwrap_or(&[]);
            for item in items.iter().filter(|i| !before.contains(i)) {
                tracing::warn!(
                    source = %source,
                    kind = item.kind.as_str(),
                    name = %item.name,
                    origin = item.origin.as_deref().unwrap_or(""),
                    reason = item.reason.as_str(),
                    "source item rejected, the rest of the source is applied: {}",
                    item.message
                );
            }
        }
        for (source, items) in &self.rejected {
            let now = rejected.get(source).map(Vec::as_slice).unwrap_or(&[]);
            for item in items.iter().filter(|i| !now.iter().any(|n| n.kind == i.kind && n.name == i.name)) {
                let kind = item.kind.as_str();
                tracing::info!(source = %source, kind, name = %item.name, "source item no longer rejected");
            }
        }
        let mut counts: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for (source, items) in &self.rejected {
            for item in items {
                counts.insert((source.as_str(), item.reason.as_str()), 0);
            }
        }
        for (source, items) in &rejected {
            for item in items {
                *counts.entry((source.as_str(), item.reason.as_str())).or_default() += 1;
            }
        }
        for ((source, reason), n) in counts {
            self.metrics.source_items_rejected.with_label_values(&[source, reason]).set(n);
        }
        self.rejected = rejected;
    }
}

/// Sorts each source's rejected items (a stable order for comparisons and output).
fn sort_items(rejected: &mut BTreeMap<String, Vec<RejectedItem>>) {
    for items in rejected.values_mut() {
        items.sort();
    }
}

/// A source item: (source position in the map, kind, position in the contribution's list).
type ItemKey = (usize, ItemKind, usize);

/// Name and origin of a source item.
fn item_names(
    dynamic: &BTreeMap<String, Contribution>,
    src: usize,
    kind: ItemKind,
    i: usize,
) -> (String, Option<String>) {
    let Some(c) = dynamic.values().nth(src) else { return (String::new(), None) };
    match kind {
        ItemKind::Group => c.groups.get(i).map(|x| (x.name.clone(), x.origin.clone())),
        ItemKind::Route => c.routes.get(i).map(|x| (x.name.clone(), x.origin.clone())),
        ItemKind::Service => c.services.get(i).map(|x| (x.name.clone(), x.origin.clone())),
        ItemKind::Vip => c.vips.get(i).map(|x| (x.name.clone(), x.origin.clone())),
        ItemKind::Listener => c.listeners.get(i).map(|x| (x.name.clone(), x.origin.clone())),
    }
    .unwrap_or_default()
}

/// Source items claiming what the config file already serves: a route with a host of a config route, a
/// service with the name (in the same zone) of a config service. Config-file items win.
fn claims_of_config(base: &DesiredState, dynamic: &BTreeMap<String, Contribution>) -> BTreeMap<ItemKey, RejectedItem> {
    let hosts: HashSet<&str> = base.routes.iter().filter_map(|r| r.host.as_deref()).collect();
    let dns_key = |s: &Service| {
        let zone = s.zone.as_deref().unwrap_or("").trim_end_matches('.').to_ascii_lowercase();
        (s.name.trim_end_matches('.').to_ascii_lowercase(), zone)
    };
    let services: HashSet<(String, String)> = base.services.iter().map(|s| dns_key(s)).collect();
    // TCP addresses of the config file: its listeners, the admin API, DNS.
    let taken: Vec<(SocketAddr, &str)> = base
        .listeners
        .iter()
        .map(|l| (l.bind, "a listener of the config file"))
        .chain(std::iter::once((base.admin.listen, "the admin API")))
        .chain(base.dns.listen.iter().map(|a| (*a, "DNS")))
        .collect();
    let mut out = BTreeMap::new();
    for (src, c) in dynamic.values().enumerate() {
        let mut closed: HashSet<&str> = HashSet::new();
        for (i, l) in c.listeners.iter().enumerate() {
            if let Some((a, what)) = taken.iter().find(|(a, _)| binds_overlap(*a, l.bind)) {
                closed.insert(&l.name);
                out.insert(
                    (src, ItemKind::Listener, i),
                    RejectedItem {
                        kind: ItemKind::Listener,
                        name: l.name.clone(),
                        origin: l.origin.clone(),
                        reason: RejectReason::PortOwnedByConfig,
                        message: format!("port {} is taken by {what} ({a})", l.bind.port()),
                    },
                );
            }
        }
        for (i, r) in c.routes.iter().enumerate() {
            if let Some(l) = r.listeners.iter().find(|l| closed.contains(l.as_str())) {
                out.insert(
                    (src, ItemKind::Route, i),
                    RejectedItem {
                        kind: ItemKind::Route,
                        name: r.name.clone(),
                        origin: r.origin.clone(),
                        reason: RejectReason::PortOwnedByConfig,
                        message: format!("its listener `{l}` is not opened: the config file takes its port"),
                    },
                );
            }
        }
        for (i, r) in c.routes.iter().enumerate() {
            if let Some(h) = r.host.as_deref().filter(|h| hosts.contains(h)) {
                out.insert(
                    (src, ItemKind::Route, i),
                    RejectedItem {
                        kind: ItemKind::Route,
                        name: r.name.clone(),
                        origin: r.origin.clone(),
                        reason: RejectReason::HostOwnedByConfig,
                        message: format!("host `{h}` is served by the config file"),
                    },
                );
            }
        }
        if services.is_empty() {
            continue;
        }
        for (i, s) in c.services.iter().enumerate() {
            if services.contains(&dns_key(s)) {
                out.insert(
                    (src, ItemKind::Service, i),
                    RejectedItem {
                        kind: ItemKind::Service,
                        name: s.name.clone(),
                        origin: s.origin.clone(),
                        reason: RejectReason::DnsNameOwnedByConfig,
                        message: format!("DNS name `{}` is a service of the config file", s.name),
                    },
                );
            }
        }
    }
    out
}

/// A source listener's TLS certificates given by file path (marathon-lb's `SSL_CERT` is a path) are named after
/// the config file's certificate with that `cert` file; other values are left for validation to check by name.
fn certificates_by_path(l: &mut Listener, base: &DesiredState, base_dir: &Path) {
    let Some(tls) = l.tls.as_mut() else { return };
    for c in tls.certificates.iter_mut().chain(tls.default_certificate.as_mut()) {
        if base.certificates.iter().any(|x| x.name == *c) {
            continue;
        }
        let wanted = Path::new(c.as_str());
        if let Some(x) = base.certificates.iter().find(|x| x.cert == wanted || base_dir.join(&x.cert) == wanted) {
            *c = x.name.clone();
        }
    }
}

/// Where each merged item came from: `None` for the config file, else (source position, item position).
type Provenance = HashMap<ItemKind, Vec<Option<(usize, usize)>>>;

/// The config file's state plus every source's items but the left-out ones.
fn merge(
    base: &DesiredState,
    base_dir: &Path,
    dynamic: &BTreeMap<String, Contribution>,
    left_out: &BTreeMap<ItemKey, RejectedItem>,
) -> (DesiredState, Provenance) {
    fn add<T>(
        into: &mut Vec<Arc<T>>,
        from: &mut Vec<Option<(usize, usize)>>,
        items: &[Arc<T>],
        src: usize,
        kind: ItemKind,
        left_out: &BTreeMap<ItemKey, RejectedItem>,
    ) {
        for (i, x) in items.iter().enumerate() {
            if left_out.is_empty() || !left_out.contains_key(&(src, kind, i)) {
                into.push(x.clone());
                from.push(Some((src, i)));
            }
        }
    }
    let mut state = base.clone();
    let mut from: Provenance = HashMap::new();
    from.insert(ItemKind::Group, vec![None; state.groups.len()]);
    from.insert(ItemKind::Route, vec![None; state.routes.len()]);
    from.insert(ItemKind::Service, vec![None; state.services.len()]);
    from.insert(ItemKind::Vip, vec![None; state.vips.len()]);
    from.insert(ItemKind::Listener, vec![None; state.listeners.len()]);
    for (src, c) in dynamic.values().enumerate() {
        let f = from.get_mut(&ItemKind::Group).expect("inserted");
        add(&mut state.groups, f, &c.groups, src, ItemKind::Group, left_out);
        let f = from.get_mut(&ItemKind::Route).expect("inserted");
        add(&mut state.routes, f, &c.routes, src, ItemKind::Route, left_out);
        let f = from.get_mut(&ItemKind::Service).expect("inserted");
        add(&mut state.services, f, &c.services, src, ItemKind::Service, left_out);
        let f = from.get_mut(&ItemKind::Vip).expect("inserted");
        add(&mut state.vips, f, &c.vips, src, ItemKind::Vip, left_out);
        let f = from.get_mut(&ItemKind::Listener).expect("inserted");
        for (i, l) in c.listeners.iter().enumerate() {
            if !left_out.contains_key(&(src, ItemKind::Listener, i)) {
                let mut l = l.clone();
                certificates_by_path(&mut l, base, base_dir);
                state.listeners.push(l);
                f.push(Some((src, i)));
            }
        }
    }
    (state, from)
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

    fn group(name: &str, port: u16) -> Arc<BackendGroup> {
        let mut g: BackendGroup = serde_json::from_value(serde_json::json!({ "name": name })).unwrap();
        g.backends.push(padis_model::Backend {
            addr: ([127, 0, 0, 1], port).into(),
            weight: 1,
            draining: false,
            check_port: None,
        });
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

    fn rejected(r: &Reconciler) -> Vec<(ItemKind, String, RejectReason)> {
        r.rejected("marathon").iter().map(|i| (i.kind, i.name.clone(), i.reason)).collect()
    }

    fn gauge(r: &Reconciler, reason: &str) -> i64 {
        r.metrics.source_items_rejected.with_label_values(&["marathon", reason]).get()
    }

    /// Wrong items of a source are left out one by one, each with its reason (a group left out takes the routes
    /// that use it along); everything else of the source is published, and the config file's items stay.
    #[test]
    fn each_wrong_source_item_is_rejected_alone() {
        let mut r = reconciler();
        r.apply_config(parse_config(BASE, "a.toml", Path::new(".")).unwrap(), ".".into()).unwrap();
        let mut bad = contribution(10);
        Arc::make_mut(&mut bad.routes[3]).host = Some("Not A Host".into());
        bad.routes.push(route("r0", "m0")); // same name and host as r0
        Arc::make_mut(&mut bad.groups[5]).connect_timeout = std::time::Duration::ZERO;
        let s = r.apply_source("marathon", bad).unwrap();
        let names = |v: Vec<&str>| v.into_iter().map(String::from).collect::<Vec<_>>();
        let routes: Vec<String> = s.state.routes.iter().map(|x| x.name.clone()).collect();
        assert_eq!(routes, names(vec!["r", "r0", "r1", "r2", "r4", "r6", "r7", "r8", "r9"]));
        assert_eq!(s.state.groups.len(), 1 + 9, "config group + all but m5");
        assert!(s.group("m5").is_none());
        assert_eq!(
            rejected(&r),
            vec![
                (ItemKind::Group, "m5".into(), RejectReason::Invalid),
                (ItemKind::Route, "r0".into(), RejectReason::Conflict),
                (ItemKind::Route, "r3".into(), RejectReason::Invalid),
                (ItemKind::Route, "r5".into(), RejectReason::MissingReference),
            ]
        );
        let msgs: Vec<String> = r.rejected("marathon").iter().map(|i| i.to_string()).collect();
        assert!(msgs.iter().any(|m| m.starts_with("group `m5`: connect_timeout: must be")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.contains("route `r5`") && m.contains("no group named `m5`")), "{msgs:?}");
        assert_eq!((gauge(&r, "invalid"), gauge(&r, "conflict"), gauge(&r, "missing_reference")), (2, 1, 1));

        // Fixed: everything is published, nothing is reported, the gauges go back to 0.
        let s = r.apply_source("marathon", contribution(10)).unwrap();
        assert_eq!(s.state.routes.len(), 11);
        assert!(r.rejected("marathon").is_empty());
        assert_eq!((gauge(&r, "invalid"), gauge(&r, "conflict"), gauge(&r, "missing_reference")), (0, 0, 0));
    }

    /// A source VIP taking the address, port and protocol (or the name) of a config-file VIP is left out; the
    /// source's other VIPs are published.
    #[test]
    fn a_clashing_source_vip_is_rejected_alone() {
        let mut r = reconciler();
        let base = format!("{BASE}[[vip]]\nname = \"dns\"\naddr = \"10.0.0.1\"\nport = 53\nprotocol = \"udp\"\n");
        r.apply_config(parse_config(&base, "a.toml", Path::new(".")).unwrap(), ".".into()).unwrap();
        let vip = |name: &str, port: u16| {
            let v = serde_json::json!({"name": name, "addr": "10.0.0.1", "port": port, "protocol": "udp",
                                       "origin": format!("marathon:/{name}")});
            Arc::new(serde_json::from_value::<Vip>(v).unwrap())
        };
        let mut c = contribution(2);
        c.vips = vec![vip("taker", 53), vip("other", 5353), vip("dns", 5354)];
        let s = r.apply_source("marathon", c).unwrap();
        let vips: Vec<(&str, u16)> = s.state.vips.iter().map(|v| (v.name.as_str(), v.port)).collect();
        assert_eq!(vips, [("dns", 53), ("other", 5353)]);
        assert_eq!(s.state.routes.len(), 3, "the source's routes are applied");
        assert_eq!(
            rejected(&r),
            vec![
                (ItemKind::Vip, "dns".into(), RejectReason::Conflict),
                (ItemKind::Vip, "taker".into(), RejectReason::Conflict)
            ]
        );
        assert_eq!(r.rejected("marathon")[1].origin.as_deref(), Some("marathon:/taker"));
    }

    /// A source route claiming a host of the config file, or a service named as one of the config file, is left
    /// out (config-file items win), also when the config file takes the host later; other items are applied.
    #[test]
    fn config_file_items_win_over_source_claims() {
        let mut r = reconciler();
        let base = format!("{BASE}host = \"r2.example\"\n[[service]]\nname = \"web\"\n");
        r.apply_config(parse_config(&base, "a.toml", Path::new(".")).unwrap(), ".".into()).unwrap();
        let mut c = contribution(4);
        let svc = |name: &str| {
            let mut s: Service = serde_json::from_value(serde_json::json!({ "name": name })).unwrap();
            s.origin = Some("marathon:/web".into());
            Arc::new(s)
        };
        c.services = vec![svc("web"), svc("api")];
        let s = r.apply_source("marathon", c.clone()).unwrap();
        assert_eq!(s.state.routes.iter().filter(|x| x.host.as_deref() == Some("r2.example")).count(), 1);
        assert_eq!(s.state.routes.len(), 1 + 3);
        assert_eq!(s.state.services.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(), ["web", "api"]);
        assert_eq!(
            rejected(&r),
            vec![
                (ItemKind::Route, "r2".into(), RejectReason::HostOwnedByConfig),
                (ItemKind::Service, "web".into(), RejectReason::DnsNameOwnedByConfig),
            ]
        );

        // The config file takes r1's host: the reload applies, r1 is left out instead of the config failing.
        let base = base.replace("r2.example", "r1.example");
        let s = r.apply_config(parse_config(&base, "a.toml", Path::new(".")).unwrap(), ".".into()).unwrap();
        assert_eq!(s.state.routes[0].host.as_deref(), Some("r1.example"));
        assert!(s.state.routes.iter().any(|x| x.name == "r2"), "r2's host is free again");
        assert!(!s.state.routes.iter().any(|x| x.name == "r1"));
        assert_eq!(rejected(&r)[0], (ItemKind::Route, "r1".into(), RejectReason::HostOwnedByConfig));
        assert!(r.reload_status().ok);
    }

    fn listener(name: &str, bind: &str, cert: Option<&str>) -> Listener {
        let mut l: Listener = serde_json::from_value(serde_json::json!({ "name": name, "bind": bind })).unwrap();
        l.origin = Some(format!("marathon:/{name}"));
        l.named_routes_only = true;
        if let Some(c) = cert {
            let tls = serde_json::json!({ "certificates": [c], "default_certificate": c });
            l.tls = Some(serde_json::from_value(tls).unwrap());
        }
        l
    }

    /// Source listeners (Marathon service ports): one on a port of the config file (a listener on the same or the
    /// unspecified address, the admin API) is left out with the route naming it, the others open; a certificate
    /// given by the path of a config-file certificate is that certificate, an unknown one leaves the listener out.
    #[test]
    fn source_listeners_on_taken_ports_or_unknown_certificates_are_rejected_alone() {
        let dir = std::env::temp_dir().join(format!("padis-reconcile-listeners-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
        let ok = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=a.test", "-addext", "subjectAltName=DNS:a.test", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl runs")
            .status
            .success();
        assert!(ok, "openssl made a certificate");
        let mut r = reconciler();
        let base = format!(
            "[admin]\nlisten = \"127.0.0.1:9901\"\n{}[[certificate]]\nname = \"known\"\ncert = \"{}\"\nkey = \"{}\"\n",
            BASE.replace("127.0.0.1:1", "127.0.0.1:10001"),
            cert.display(),
            key.display()
        );
        r.apply_config(parse_config(&base, "a.toml", &dir).unwrap(), dir.clone()).unwrap();
        let mut c = contribution(4);
        c.listeners = vec![
            listener("a", "0.0.0.0:10000", None),
            listener("b", "0.0.0.0:10001", None),
            listener("c", "127.0.0.1:9901", None),
            listener("d", "127.0.0.2:10003", Some(&cert.display().to_string())),
            listener("e", "127.0.0.2:10004", Some("unknown")),
            listener("f", "[::]:10001", None),
        ];
        for (i, l) in ["a", "b", "c", "d"].iter().enumerate() {
            Arc::make_mut(&mut c.routes[i]).listeners = vec![l.to_string()];
        }
        let s = r.apply_source("marathon", c).unwrap();
        let names: Vec<(&str, bool)> = s.state.listeners.iter().map(|l| (l.name.as_str(), l.tls.is_some())).collect();
        assert_eq!(names, [("web", false), ("a", false), ("d", true), ("f", false)]);
        assert_eq!(s.state.listeners[2].tls.as_ref().unwrap().certificates, ["known"]);
        assert_eq!(
            rejected(&r),
            vec![
                (ItemKind::Route, "r1".into(), RejectReason::PortOwnedByConfig),
                (ItemKind::Route, "r2".into(), RejectReason::PortOwnedByConfig),
                (ItemKind::Listener, "b".into(), RejectReason::PortOwnedByConfig),
                (ItemKind::Listener, "c".into(), RejectReason::PortOwnedByConfig),
                (ItemKind::Listener, "e".into(), RejectReason::MissingReference),
            ]
        );
        let msgs: Vec<String> = r.rejected("marathon").iter().map(|i| i.to_string()).collect();
        assert!(
            msgs.contains(
                &"listener `b` of marathon:/b: port 10001 is taken by a listener of the config file \
            (127.0.0.1:10001)"
                    .to_string()
            ),
            "{msgs:?}"
        );
        let unknown = msgs.iter().any(|m| m.contains("listener `e`") && m.contains("no certificate named `unknown`"));
        assert!(unknown, "{msgs:?}");
        assert_eq!(gauge(&r, "port_owned_by_config"), 4);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
