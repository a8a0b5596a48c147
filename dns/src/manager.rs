//! The zone manager: the single writer of the zone set. It follows snapshots (zones rebuilt, serials bumped only
//! on change, NOTIFY sent), applies dynamic updates, and publishes each new zone set with arc-swap.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::op::ResponseCode;
use padis_model::dns::DnsConfig;
use padis_model::{Snapshot, SnapshotReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::generate::GenCache;
use crate::handler::{Handler, UpdateJob};
use crate::notify::notify_all;
use crate::report::{DnsReport, ZoneReport};
use crate::source::{HistoryBounds, ZoneSource};
use crate::tsig::TsigKey;
use crate::wire::wire_of;
use crate::zone::{ZonePolicy, ZoneSet};
use crate::DnsError;

/// Owns the zones' inputs; see the module docs.
pub struct Manager {
    cfg: DnsConfig,
    base: PathBuf,
    sources: Vec<ZoneSource>,
    /// Zones that could not be loaded at all (not served), with why; retried on every reload.
    failed: Vec<(padis_model::dns::DnsZone, String)>,
    /// Watches the directories of the zone files (an edit, a touch or a file moved into place reloads it).
    watcher: Option<notify::RecommendedWatcher>,
    watched: std::collections::HashSet<PathBuf>,
    file_events: mpsc::Sender<()>,
    keys: HashMap<String, Arc<TsigKey>>,
    watched_files: Arc<std::sync::Mutex<Vec<PathBuf>>>,
    gen_cache: GenCache,
    handler: Arc<Handler>,
    generation: u64,
    report: Arc<ArcSwap<DnsReport>>,
    listen: Vec<std::net::SocketAddr>,
    config_errors: Vec<String>,
    /// Generation of the snapshot the zones were last built from.
    snapshot_generation: u64,
    /// The zone set replaced by the last publication, kept until the next one so that it is freed here and not
    /// by a query worker that still held it when it was replaced (freeing a version is the manager's work).
    retired: Option<Arc<ZoneSet>>,
}

fn base_of(snap: &Snapshot) -> PathBuf {
    snap.config_path
        .as_deref()
        .and_then(|p| Path::new(p).parent())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn bounds(cfg: &DnsConfig) -> HistoryBounds {
    HistoryBounds { changes: cfg.ixfr_journal, bytes: cfg.ixfr_journal_bytes }
}

fn load_keys(cfg: &DnsConfig) -> Result<HashMap<String, Arc<TsigKey>>, DnsError> {
    let mut keys = HashMap::new();
    for k in &cfg.tsig_keys {
        let key = TsigKey::from_config(k)?;
        keys.insert(key.name.to_ascii().trim_end_matches('.').to_string(), Arc::new(key));
    }
    Ok(keys)
}

fn key_ref(keys: &HashMap<String, Arc<TsigKey>>, name: &Option<String>) -> Option<Arc<TsigKey>> {
    name.as_ref().and_then(|n| keys.get(n.to_ascii_lowercase().trim_end_matches('.')).cloned())
}

impl Manager {
    /// Loads every zone of the initial snapshot. A zone that cannot be loaded is reported (and retried on each
    /// reload); the others are served. `file_events`: where the zone-file watcher signals changes.
    pub fn new(
        snap: &Snapshot,
        handler: Arc<Handler>,
        report: Arc<ArcSwap<DnsReport>>,
        listen: Vec<std::net::SocketAddr>,
        file_events: mpsc::Sender<()>,
    ) -> Result<Manager, DnsError> {
        let cfg = snap.state.dns.clone();
        std::fs::create_dir_all(&cfg.state_dir)
            .map_err(|e| DnsError::StateDir { path: cfg.state_dir.clone(), source: e })?;
        let base = base_of(snap);
        let keys = load_keys(&cfg)?;
        let mut sources = Vec::new();
        let mut failed = Vec::new();
        for z in &cfg.zones {
            match ZoneSource::load(z, &base, &cfg.state_dir, bounds(&cfg)) {
                Ok(s) => sources.push(s),
                Err(e) => {
                    tracing::error!(error = %e, "zone not loaded; not served until it loads");
                    handler.metrics.zone_load_errors.with_label_values(&[&z.name]).inc();
                    failed.push((z.clone(), e.to_string()));
                }
            }
        }
        let mut m = Manager {
            cfg,
            base,
            sources,
            failed,
            watcher: None,
            watched: Default::default(),
            file_events,
            keys,
            watched_files: Arc::default(),
            gen_cache: GenCache::default(),
            handler,
            generation: 0,
            report,
            listen,
            config_errors: Vec::new(),
            snapshot_generation: snap.generation,
            retired: None,
        };
        m.rebuild(snap, true);
        Ok(m)
    }

    fn policy(&self, z: &padis_model::dns::DnsZone) -> ZonePolicy {
        ZonePolicy {
            allow_transfer: z.allow_transfer.clone(),
            transfer_key: key_ref(&self.keys, &z.transfer_key),
            notify: z.notify.clone(),
            allow_update: z.allow_update.clone(),
            update_key: key_ref(&self.keys, &z.update_key),
        }
    }

    /// Applies a new `[dns]` config: zones whose config is unchanged keep their state; a zone that fails to load
    /// keeps its previous version (if any) and reports the error.
    fn reconfigure(&mut self, snap: &Snapshot) {
        let cfg = &snap.state.dns;
        if *cfg == self.cfg {
            return;
        }
        self.config_errors.clear();
        if cfg.listen != self.cfg.listen || cfg.reuseport != self.cfg.reuseport {
            self.config_errors.push("dns.listen/reuseport changes take effect after a restart".into());
        }
        match load_keys(cfg) {
            Ok(k) => self.keys = k,
            Err(e) => self.config_errors.push(e.to_string()),
        }
        let base = base_of(snap);
        let mut old: Vec<ZoneSource> = std::mem::take(&mut self.sources);
        self.failed.clear();
        for z in &cfg.zones {
            let pos = old.iter().position(|s| s.cfg.name.eq_ignore_ascii_case(&z.name));
            let prev = pos.map(|p| old.swap_remove(p));
            match prev {
                Some(mut p) if p.cfg == *z => {
                    p.set_bounds(bounds(cfg));
                    self.sources.push(p)
                }
                prev => match ZoneSource::load(z, &base, &cfg.state_dir, bounds(cfg)) {
                    Ok(s) => self.sources.push(s), // the serial continues from the state dir
                    Err(e) => {
                        self.handler.metrics.zone_load_errors.with_label_values(&[&z.name]).inc();
                        match prev {
                            Some(mut p) => {
                                tracing::error!(error = %e, "zone not reloaded; keeping its previous version");
                                p.error = Some(e.to_string());
                                self.sources.push(p);
                            }
                            None => {
                                tracing::error!(error = %e, "zone not loaded; not served until it loads");
                                self.failed.push((z.clone(), e.to_string()));
                            }
                        }
                    }
                },
            }
        }
        self.cfg = cfg.clone();
        self.base = base;
    }

    /// Rebuilds every zone from `snap` and publishes the zone set if anything changed.
    fn rebuild(&mut self, snap: &Snapshot, force: bool) {
        self.snapshot_generation = snap.generation;
        self.reconfigure(snap);
        self.reload_files(false);
        self.regenerate(snap);
        self.build_all(force);
    }

    /// Re-reads the zone files that changed on disk (all of them with `force`) and retries the zones that failed
    /// to load. A file that does not load leaves its zone's previous version served, and is reported.
    fn reload_files(&mut self, force: bool) {
        let m = self.handler.metrics.clone();
        for s in &mut self.sources {
            match s.reload_file(force) {
                Ok(true) => s.error = None,
                Ok(false) => {}
                Err(e) => {
                    let msg = e.to_string();
                    if force || s.error.as_deref() != Some(msg.as_str()) {
                        tracing::error!(error = %msg, "zone file not reloaded; serving the previous version");
                        m.zone_load_errors.with_label_values(&[&s.cfg.name]).inc();
                    }
                    s.error = Some(msg);
                }
            }
        }
        let mut still = Vec::new();
        let mut loaded = false;
        for (z, old) in std::mem::take(&mut self.failed) {
            match ZoneSource::load(&z, &self.base, &self.cfg.state_dir, bounds(&self.cfg)) {
                Ok(s) => {
                    tracing::info!(zone = %z.name, "zone loaded");
                    self.sources.push(s);
                    loaded = true;
                }
                Err(e) => {
                    let msg = e.to_string();
                    if force || msg != old {
                        tracing::error!(error = %msg, "zone not loaded; not served until it loads");
                        m.zone_load_errors.with_label_values(&[&z.name]).inc();
                    }
                    still.push((z, msg));
                }
            }
        }
        self.failed = still;
        if loaded {
            // Keep the config's order (generated records are grouped by zone index).
            let order = |name: &str| {
                self.cfg.zones.iter().position(|z| z.name.eq_ignore_ascii_case(name)).unwrap_or(usize::MAX)
            };
            self.sources.sort_by_key(|s| order(&s.cfg.name));
            // Zone indexes moved: generate every zone's records afresh (each source diffs its groups by identity).
            self.gen_cache = GenCache::default();
        }
        self.watch_files();
    }

    /// Watches the directories of the zone files (new ones after a reconfiguration).
    fn watch_files(&mut self) {
        use notify::Watcher;
        if self.watcher.is_none() {
            let files: Arc<std::sync::Mutex<Vec<PathBuf>>> = Arc::default();
            let tx = self.file_events.clone();
            let names = files.clone();
            let w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
                use notify::event::{AccessKind, AccessMode, ModifyKind};
                use notify::EventKind;
                let Ok(ev) = ev else { return };
                let kind_ok = matches!(
                    ev.kind,
                    EventKind::Access(AccessKind::Close(AccessMode::Write))
                        | EventKind::Create(_)
                        | EventKind::Modify(ModifyKind::Name(_) | ModifyKind::Metadata(_))
                );
                let watched = names.lock().unwrap_or_else(|p| p.into_inner());
                if kind_ok && ev.paths.iter().any(|p| watched.iter().any(|f| f == p)) {
                    let _ = tx.try_send(());
                }
            });
            match w {
                Ok(w) => {
                    self.watcher = Some(w);
                    self.watched_files = files;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch zone files; SIGHUP and /v1/reload still reload them");
                    return;
                }
            }
        }
        let files: Vec<PathBuf> = self
            .cfg
            .zones
            .iter()
            .filter_map(|z| z.file.as_ref())
            .map(|f| std::path::absolute(self.base.join(f)).unwrap_or_else(|_| self.base.join(f)))
            .collect();
        *self.watched_files.lock().unwrap_or_else(|p| p.into_inner()) = files.clone();
        let Some(w) = self.watcher.as_mut() else { return };
        for f in files {
            let Some(dir) = f.parent().map(Path::to_path_buf) else { continue };
            if self.watched.contains(&dir) {
                continue;
            }
            match w.watch(&dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(dir);
                }
                Err(e) => tracing::warn!(error = %e, dir = %dir.display(), "cannot watch a zone file directory"),
            }
        }
    }

    /// Reloads the zone files (on a reload request or a change seen on disk) and publishes what changed.
    fn reload_zones(&mut self, force: bool, snap: &Snapshot) {
        self.reload_files(force);
        self.regenerate(snap);
        self.build_all(false);
        // A failed zone or an error changes the report even when no zone was rebuilt.
        self.publish_report();
    }

    fn regenerate(&mut self, snap: &Snapshot) {
        let zones: Vec<_> =
            self.sources.iter().enumerate().map(|(i, s)| (i, s.origin.clone(), s.cfg.generated)).collect();
        self.gen_cache.generate(&snap.state.services, &snap.state.vips, &zones);
    }

    fn build_all(&mut self, force: bool) {
        let mut changed = Vec::new();
        let mut any = false;
        for i in 0..self.sources.len() {
            let policy = self.policy(&self.sources[i].cfg);
            let gen = self.gen_cache.output().by_zone.get(&i).map_or(&[][..], Vec::as_slice);
            let s = &mut self.sources[i];
            let before = s.current.as_ref().map(|z| z.serial);
            if let Some(z) = s.build(gen, policy) {
                any = true;
                if before != Some(z.serial) {
                    changed.push(z.clone());
                }
            }
        }
        if !any && !force && self.zone_set_matches() {
            return;
        }
        self.publish();
        for z in changed {
            tracing::info!(zone = %z.origin, serial = z.serial, records = z.record_count, "zone published");
            notify_all(z, self.handler.metrics.clone());
        }
    }

    fn zone_set_matches(&self) -> bool {
        let set = self.handler.zones.load();
        set.zones.len() == self.sources.len()
            && set.zones.iter().zip(&self.sources).all(|(a, b)| b.current.as_ref().is_some_and(|c| Arc::ptr_eq(a, c)))
    }

    fn publish(&mut self) {
        self.generation += 1;
        let mut set = ZoneSet {
            generation: self.generation,
            keys: self.keys.values().cloned().collect(),
            edns_payload: self.cfg.edns_payload,
            version: self.cfg.version.as_deref().filter(|v| !v.is_empty()).map(Arc::from),
            identity: self.cfg.identity.as_deref().filter(|v| !v.is_empty()).map(Arc::from),
            ..ZoneSet::default()
        };
        for s in &self.sources {
            if let Some(z) = &s.current {
                set.by_origin.insert(wire_of(&z.origin), set.zones.len());
                set.zones.push(z.clone());
            }
        }
        self.publish_report();
        let replaced = self.handler.zones.swap(Arc::new(set));
        // The version retired one publication ago is freed now: no worker still holds it.
        self.retired = Some(replaced);
    }

    /// Publishes the report of the zones (and their metrics): served, stale and failed zones with their errors.
    fn publish_report(&self) {
        let m = &self.handler.metrics;
        let mut zones = Vec::new();
        let mut errors = self.config_errors.clone();
        let (mut ok, mut stale) = (0i64, 0i64);
        for s in &self.sources {
            let Some(z) = &s.current else { continue };
            let name = z.origin.to_ascii();
            m.serial.with_label_values(&[&name]).set(i64::from(z.serial));
            m.records.with_label_values(&[&name]).set(z.record_count as i64);
            if let Some(e) = &s.error {
                errors.push(e.clone());
                stale += 1;
            } else {
                ok += 1;
            }
            zones.push(ZoneReport {
                name,
                state: if s.error.is_some() { "stale" } else { "ok" },
                serial: z.serial,
                records: z.record_count,
                names: z.nodes.len(),
                generated: s.cfg.generated,
                file: s.cfg.file.as_ref().map(|f| f.display().to_string()),
                error: s.error.clone(),
                serial_note: s.serial_note.clone(),
            });
        }
        for (z, e) in &self.failed {
            errors.push(e.clone());
            zones.push(ZoneReport {
                name: format!("{}.", z.name.trim_end_matches('.').to_ascii_lowercase()),
                state: "failed",
                serial: 0,
                records: 0,
                names: 0,
                generated: z.generated,
                file: z.file.as_ref().map(|f| f.display().to_string()),
                error: Some(e.clone()),
                serial_note: None,
            });
        }
        m.zones.with_label_values(&["ok"]).set(ok);
        m.zones.with_label_values(&["stale"]).set(stale);
        m.zones.with_label_values(&["failed"]).set(self.failed.len() as i64);
        errors.extend(self.gen_cache.output().errors.iter().cloned());
        self.report.store(Arc::new(DnsReport {
            listen: self.listen.clone(),
            zones,
            collisions: {
                let mut c: Vec<String> = self.sources.iter().flat_map(|s| s.collisions().cloned()).collect();
                c.sort();
                c
            },
            errors,
        }));
    }

    fn apply_update(&mut self, job: UpdateJob) {
        let Some(i) = self.sources.iter().position(|s| s.origin == job.zone.origin) else {
            let _ = job.reply.send(ResponseCode::NotAuth);
            return;
        };
        let Some(current) = self.sources[i].current.clone() else {
            let _ = job.reply.send(ResponseCode::ServFail);
            return;
        };
        if let Err(rcode) = crate::update::check_prerequisites(&current, &job.prereqs) {
            let _ = job.reply.send(rcode);
            return;
        }
        let s = &mut self.sources[i];
        let origin_wire = wire_of(&s.origin);
        let mut statics = s.statics.clone();
        if crate::update::apply(&mut statics, &origin_wire, &job.updates) {
            if let Err(e) = s.append_journal(&job.updates) {
                tracing::error!(error = %e, "update not persisted; refused");
                let _ = job.reply.send(ResponseCode::ServFail);
                return;
            }
            s.set_statics(statics);
            tracing::info!(zone = %s.origin, records = job.updates.len(), "dynamic update applied");
            self.build_all(false);
        }
        let _ = job.reply.send(ResponseCode::NoError);
    }

    /// Follows snapshots and applies updates until `shutdown`.
    pub async fn run(
        mut self,
        mut reader: SnapshotReader,
        mut updates: mpsc::Receiver<UpdateJob>,
        mut file_events: mpsc::Receiver<()>,
        shutdown: CancellationToken,
    ) {
        let mut requests = crate::reload_requests();
        requests.mark_unchanged();
        reader.mark_seen();
        // A snapshot published between our first build and `mark_seen` would otherwise never be built.
        let snap = reader.load();
        if snap.generation != self.snapshot_generation {
            crate::blocking(|| self.rebuild(&snap, false));
        }
        drop(snap);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                ok = reader.changed() => {
                    if !ok {
                        shutdown.cancelled().await;
                        return;
                    }
                    let snap = reader.load();
                    let started = std::time::Instant::now();
                    crate::blocking(|| self.rebuild(&snap, false));
                    let ms = started.elapsed().as_millis() as u64;
                    tracing::debug!(generation = snap.generation, ms, "zones rebuilt");
                }
                Ok(()) = requests.changed() => {
                    let snap = reader.load();
                    tracing::info!("zone files reloaded on request");
                    crate::blocking(|| self.reload_zones(true, &snap));
                }
                Some(()) = file_events.recv() => {
                    // Debounce: editors write files in several steps.
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    while file_events.try_recv().is_ok() {}
                    let snap = reader.load();
                    crate::blocking(|| self.reload_zones(false, &snap));
                }
                job = updates.recv() => match job {
                    Some(job) => crate::blocking(|| self.apply_update(job)),
                    None => return,
                },
            }
        }
    }
}
