//! Starting and stopping the data planes (L7, L4, DNS), the dynamic sources (Marathon) and route
//! announcement (BGP/OSPF), all fed by the same snapshots.
//!
//! Data still flows one way: planes read snapshots; control alone feeds the reconciler (Marathon) and decides
//! what is announced (from the snapshot, the L4 plane's attachment and the health registry).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use padis_balance::HealthRegistry;
use padis_bgp::{Announcement, Announcer, AnnouncerHandle};
use padis_dns::{DnsHandle, DnsPlane};
use padis_l4::{L4Handle, L4Plane};
use padis_lb::{L7Handle, L7Plane};
use padis_marathon::{MarathonSource, MarathonState};
use padis_model::marathon::MarathonConfig;
use padis_model::{Snapshot, SnapshotReader};
use prometheus::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{DrainFn, ExtraRegistries, ReportFn};
use crate::reconcile::{Contribution, Reconciler};

/// The running data planes and sources.
pub struct Planes {
    /// Health of every backend, shared by L7 and L4 (and read by route announcement).
    pub health: HealthRegistry,
    l7: L7Handle,
    l4: PlaneSlot<L4Handle>,
    dns: PlaneSlot<DnsHandle>,
    announcer: Arc<tokio::sync::Mutex<Option<AnnouncerHandle>>>,
    background: Vec<JoinHandle<()>>,
    sources: CancellationToken,
}

type Reports = Arc<Mutex<BTreeMap<String, ReportFn>>>;

/// A plane that can be waited for once it was told to stop.
pub trait Stoppable: Send + 'static {
    /// Waits until the plane has finished its in-flight work.
    fn wait(self) -> impl std::future::Future<Output = ()> + Send;
}

impl Stoppable for DnsHandle {
    fn wait(self) -> impl std::future::Future<Output = ()> + Send {
        DnsHandle::wait(self)
    }
}

impl Stoppable for L4Handle {
    fn wait(self) -> impl std::future::Future<Output = ()> + Send {
        L4Handle::wait(self)
    }
}

/// A plane's handle shared by readers (reports, route announcement) and taken whole by the graceful stop, which
/// then waits for the plane however many readers still hold the slot (a reader finds it empty afterwards).
pub struct PlaneSlot<H>(Arc<Mutex<Option<H>>>);

impl<H> Clone for PlaneSlot<H> {
    fn clone(&self) -> Self {
        PlaneSlot(self.0.clone())
    }
}

impl<H: Stoppable> PlaneSlot<H> {
    /// A slot holding `handle`.
    pub fn new(handle: H) -> PlaneSlot<H> {
        PlaneSlot(Arc::new(Mutex::new(Some(handle))))
    }

    /// Runs `f` on the handle, unless the plane was stopped.
    pub fn with<R>(&self, f: impl FnOnce(&H) -> R) -> Option<R> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(f)
    }

    /// Takes the handle out (a reader running `with` finishes first) and waits for the plane. Returns `false` if
    /// it had been taken already.
    pub async fn stop_and_wait(&self) -> bool {
        let handle = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        match handle {
            Some(h) => {
                h.wait().await;
                true
            }
            None => false,
        }
    }
}

impl Planes {
    /// Starts every plane the snapshot configures (planes with nothing configured stay idle).
    pub async fn start(
        reader: SnapshotReader,
        registry: &Registry,
        reconciler: Arc<Mutex<Reconciler>>,
        reports: &Reports,
        drain: &Arc<Mutex<Option<DrainFn>>>,
        extra_registries: &ExtraRegistries,
        token: CancellationToken,
    ) -> anyhow::Result<Planes> {
        let health = HealthRegistry::new(registry)?;
        let h = health.clone();
        add_report(reports, "health", move || serde_json::to_value(h.report()).unwrap_or_default());

        let l7 = L7Plane::start(reader.clone(), health.clone(), registry, token.clone())
            .await
            .map_err(|e| anyhow::anyhow!("L7: {e}"))?;
        let failures = l7.bind_failures_reader();
        add_report(reports, "l7", move || serde_json::json!({ "bind_failures": failures() }));
        let l4 = PlaneSlot::new(
            L4Plane::start(reader.clone(), health.clone(), registry, token.clone())
                .await
                .map_err(|e| anyhow::anyhow!("L4: {e}"))?,
        );
        let r = l4.clone();
        add_report(reports, "l4", move || {
            r.with(|h| serde_json::to_value(h.report()).unwrap_or_default())
                .unwrap_or_else(|| serde_json::json!({"state": "stopped"}))
        });
        let dns = PlaneSlot::new(
            DnsPlane::start(reader.clone(), registry, token.clone()).await.map_err(|e| anyhow::anyhow!("DNS: {e}"))?,
        );
        let r = dns.clone();
        add_report(reports, "dns", move || {
            r.with(|h| serde_json::to_value(h.report()).unwrap_or_default())
                .unwrap_or_else(|| serde_json::json!({"state": "stopped"}))
        });

        let sources = CancellationToken::new();
        let mut background = Vec::new();

        // Marathon: its contributions go through the reconciler like the config file's. A changed `[marathon]`
        // restarts the source with the new settings (a start failure at daemon start is fatal).
        let snap = reader.load();
        let first = match snap.state.marathon.clone() {
            Some(cfg) => {
                Some(start_marathon(cfg, reconciler.clone(), reports.clone(), extra_registries, &sources, false)?)
            }
            None => None,
        };
        background.push(tokio::spawn(supervise_marathon(
            reader.clone(),
            first,
            reconciler.clone(),
            reports.clone(),
            extra_registries.clone(),
            sources.clone(),
        )));

        // Route announcement: what is announced follows the snapshot, L4 attachment and health.
        let announcer = Arc::new(tokio::sync::Mutex::new(None));
        if snap.state.bgp.is_some() || snap.state.ospf.is_some() {
            let (tx, rx) = watch::channel(BTreeSet::new());
            let handle = Announcer::spawn(snap.state.bgp.clone(), snap.state.ospf.clone(), rx, registry)
                .map_err(|e| anyhow::anyhow!("bgp: {e}"))?;
            *announcer.lock().await = Some(handle);
            let a = announcer.clone();
            add_report(reports, "routing", move || match a.try_lock() {
                Ok(g) => g.as_ref().map(|h| serde_json::to_value(h.report()).unwrap_or_default())
                    .unwrap_or_else(|| serde_json::json!({"state": "withdrawn (drained)"})),
                Err(_) => serde_json::json!({"state": "draining"}),
            });
            background.push(tokio::spawn(follow_announcements(
                reader.clone(),
                health.clone(),
                l4.clone(),
                tx,
                sources.clone(),
            )));
            let a = announcer.clone();
            *drain.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(move || {
                let a = a.clone();
                tokio::spawn(async move {
                    if let Some(h) = a.lock().await.take() {
                        tracing::info!("drain requested: withdrawing announced routes");
                        h.drain_and_stop().await;
                    }
                });
            }) as DrainFn);
        }
        Ok(Planes { health, l7, l4, dns, announcer, background, sources })
    }

    /// Graceful stop: routes withdrawn first (so routers move traffic away), then the planes stop accepting
    /// and finish in-flight work within `grace`.
    pub async fn stop(self, grace: Duration, token: CancellationToken) {
        if let Some(h) = self.announcer.lock().await.take() {
            h.drain_and_stop().await;
        }
        self.sources.cancel();
        token.cancel();
        // Every plane is waited for, whoever still holds its slot (reports, route announcement).
        let (dns, l4) = (self.dns.clone(), self.l4.clone());
        let wait = async move {
            tokio::join!(self.l7.wait(), dns.stop_and_wait(), l4.stop_and_wait());
        };
        if tokio::time::timeout(grace + Duration::from_secs(1), wait).await.is_err() {
            tracing::warn!(?grace, "in-flight work did not finish within the grace period");
        }
        for t in self.background {
            t.abort();
        }
    }
}

fn add_report(reports: &Reports, name: &str, f: impl Fn() -> serde_json::Value + Send + Sync + 'static) {
    reports.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), Arc::new(f));
}

/// A running Marathon source: its stop token, its task and the task feeding its states to the reconciler.
struct RunningMarathon {
    cfg: MarathonConfig,
    stop: CancellationToken,
    source: JoinHandle<()>,
    follower: JoinHandle<()>,
}

impl RunningMarathon {
    async fn stop(self) {
        self.stop.cancel();
        self.follower.abort();
        let abort = self.source.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), self.source).await.is_err() {
            tracing::warn!("the previous Marathon source did not stop within 5s: aborted");
            abort.abort();
        }
    }
}

/// Starts a Marathon source (with metrics in a registry of its own, gathered by `/metrics`). `restarted`: the
/// states it publishes before its first good sync only update the source's status, so that the last good state
/// of the previous source stays served until the new one has synced.
fn start_marathon(
    cfg: MarathonConfig,
    reconciler: Arc<Mutex<Reconciler>>,
    reports: Reports,
    extra_registries: &ExtraRegistries,
    sources: &CancellationToken,
    restarted: bool,
) -> anyhow::Result<RunningMarathon> {
    let registry = Registry::new();
    let (tx, rx) = watch::channel::<Option<MarathonState>>(None);
    let stop = sources.child_token();
    let source =
        MarathonSource::spawn(cfg.clone(), tx, &registry, stop.clone()).map_err(|e| anyhow::anyhow!("marathon: {e}"))?;
    extra_registries.lock().unwrap_or_else(|p| p.into_inner()).insert("marathon".into(), registry);
    // The first sync waits up to a second for the event stream, then takes one request.
    let sync_deadline = cfg.request_timeout + Duration::from_secs(2);
    let follower = tokio::spawn(follow_marathon(rx, reconciler, reports, restarted, sync_deadline));
    Ok(RunningMarathon { cfg, stop, source, follower })
}

/// Restarts the Marathon source when a new snapshot changes `[marathon]` (and stops it when the section is
/// gone). The new source is started before the old one is stopped; if it cannot start, the old one runs on and
/// the failure is logged and shown as the source's error.
async fn supervise_marathon(
    mut reader: SnapshotReader,
    mut running: Option<RunningMarathon>,
    reconciler: Arc<Mutex<Reconciler>>,
    reports: Reports,
    extra_registries: ExtraRegistries,
    sources: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = sources.cancelled() => break,
            ok = reader.changed() => if !ok { break },
        }
        let want = reader.load().state.marathon.clone();
        if want.as_ref() == running.as_ref().map(|r| &r.cfg) {
            continue;
        }
        match want {
            Some(cfg) => {
                tracing::info!("[marathon] changed: restarting the Marathon source with the new settings");
                match start_marathon(cfg, reconciler.clone(), reports.clone(), &extra_registries, &sources, true) {
                    Ok(new) => {
                        if let Some(old) = running.replace(new) {
                            old.stop().await;
                        }
                    }
                    Err(e) => {
                        tracing::error!(
                            error = %e,
                            "the Marathon source cannot start with the new settings; the running one stays"
                        );
                        reconciler.lock().unwrap_or_else(|p| p.into_inner()).source_failed("marathon", &e.to_string());
                    }
                }
            }
            None => {
                tracing::info!("[marathon] removed: stopping the Marathon source and withdrawing what it contributed");
                if let Some(old) = running.take() {
                    old.stop().await;
                }
                extra_registries.lock().unwrap_or_else(|p| p.into_inner()).remove("marathon");
                let r = reconciler.clone();
                let res = tokio::task::spawn_blocking(move || {
                    r.lock().unwrap_or_else(|p| p.into_inner()).remove_source("marathon")
                })
                .await;
                if let Ok(Err(e)) = res {
                    tracing::error!(error = %e, "withdrawing Marathon's state failed");
                }
            }
        }
    }
    if let Some(r) = running {
        r.stop().await;
    }
}

/// Feeds each new Marathon state to the reconciler. A contribution that does not validate with the rest is
/// refused there (the last good one stays) and logged. `restarted`: until the first good sync, only the source's
/// status is updated (the previous source's last good state stays served).
async fn follow_marathon(
    mut rx: watch::Receiver<Option<MarathonState>>,
    reconciler: Arc<Mutex<Reconciler>>,
    reports: Reports,
    restarted: bool,
    sync_deadline: Duration,
) {
    let mut synced = !restarted;
    let mut heard = false;
    let mut reported = false;
    // A source publishes nothing before its first good sync: past this deadline it is shown failing (the reason
    // is in its own log line); after a restart, the previous state stays served meanwhile.
    let deadline = tokio::time::sleep(sync_deadline);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { break },
            _ = &mut deadline, if !heard => {
                let r = reconciler.clone();
                let msg = if restarted {
                    format!(
                        "the restarted source has not synced within {sync_deadline:?} with the new [marathon] \
                         settings (see the log); the previous state stays served"
                    )
                } else {
                    format!("no good sync within {sync_deadline:?} of the start (see the log)")
                };
                let _ = tokio::task::spawn_blocking(move || {
                    r.lock().unwrap_or_else(|p| p.into_inner()).source_failed("marathon", &msg)
                })
                .await;
                // Once: the next state the source publishes is its first good one.
                deadline.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600));
                continue;
            }
        }
        let Some(m) = rx.borrow_and_update().clone() else { continue };
        heard = true;
        if !synced && !m.status.ok {
            let r = reconciler.clone();
            let status = m.status.clone();
            let _ = tokio::task::spawn_blocking(move || {
                r.lock().unwrap_or_else(|p| p.into_inner()).set_source_status("marathon", status)
            })
            .await;
            continue;
        }
        if !synced {
            tracing::info!("the restarted Marathon source has synced: its state replaces the previous one");
        }
        synced = true;
        let c = Contribution {
            groups: m.groups,
            routes: m.routes,
            services: m.services,
            vips: m.vips,
            listeners: m.listeners,
            status: m.status,
            problems: serde_json::to_value(&m.problems).unwrap_or_default(),
        };
        let r = reconciler.clone();
        let res = tokio::task::spawn_blocking(move || {
            r.lock().unwrap_or_else(|p| p.into_inner()).apply_source("marathon", c)
        })
        .await;
        match res {
            Ok(Ok(s)) => tracing::debug!(generation = s.generation, "marathon state applied"),
            Ok(Err(e)) => tracing::error!(error = %e, "marathon state rejected; the last good one stays"),
            Err(e) => tracing::error!(error = %e, "marathon apply task failed"),
        }
        if !reported {
            reported = true;
            let r = reconciler.clone();
            add_report(&reports, "marathon", move || {
                let r = r.lock().unwrap_or_else(|p| p.into_inner());
                r.sources().get("marathon").map(|c| serde_json::json!({
                    "status": c.status, "groups": c.groups.len(), "routes": c.routes.len(),
                    "services": c.services.len(), "vips": c.vips.len(), "problems": c.problems,
                    "rejected": r.rejected("marathon"),
                })).unwrap_or_default()
            });
        }
    }
}

/// What to announce: VIP addresses with at least one VIP this node can serve — the XDP program is attached and
/// a backend takes new flows (by its active check when it has one).
pub fn servable(snap: &Snapshot, health: &HealthRegistry, l4_attached: bool) -> BTreeSet<Announcement> {
    let report = health.report();
    padis_bgp::announcements(snap.state.vips.iter().map(|v| {
        let checked: Vec<_> =
            report.iter().filter(|h| h.group == v.name && h.owners.iter().any(|o| o == "l4")).collect();
        let up = l4_attached
            && v.backends.iter().any(|b| {
                b.weight > 0 && (checked.is_empty() || checked.iter().any(|h| h.backend.ip() == b.addr && h.usable))
            });
        (&**v, up)
    }))
}

async fn follow_announcements(
    mut reader: SnapshotReader,
    health: HealthRegistry,
    l4: PlaneSlot<L4Handle>,
    tx: watch::Sender<BTreeSet<Announcement>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let snap = reader.load();
        // A stopped L4 plane (graceful stop under way) announces nothing.
        let Some(r) = l4.with(|h| h.report()) else { return };
        // With connection-table sync, a (re)started node waits for its peers' tables before it is announced:
        // flows ECMP moves to it then keep their backends.
        let attached = r.enabled
            && !r.interfaces.is_empty()
            && r.last_error.is_none()
            && r.sync.as_ref().is_none_or(|s| s.ready);
        let want = servable(&snap, &health, attached);
        tx.send_if_modified(|cur| {
            if *cur != want {
                tracing::info!(routes = want.len(), "announced routes changed");
                *cur = want;
                true
            } else {
                false
            }
        });
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            ok = reader.changed() => if !ok { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A plane whose in-flight work takes 200 ms to finish after the stop.
    struct SlowPlane(Arc<AtomicBool>);

    impl Stoppable for SlowPlane {
        async fn wait(self) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// The stop waits for the plane although readers still hold the slot (a report closure, a follower, one of
    /// them in the middle of a read); a reader then finds the plane gone; a second stop has nothing to wait for.
    #[tokio::test]
    async fn stop_waits_for_the_plane_whoever_holds_it() {
        let finished = Arc::new(AtomicBool::new(false));
        let slot = PlaneSlot::new(SlowPlane(finished.clone()));
        let report = slot.clone();
        let reports: Reports = Arc::new(Mutex::new(BTreeMap::new()));
        add_report(&reports, "slow", move || serde_json::json!(report.with(|_| "running").unwrap_or("stopped")));
        let busy_reader = slot.clone();
        let reader = std::thread::spawn(move || busy_reader.with(|_| std::thread::sleep(Duration::from_millis(100))));
        tokio::time::sleep(Duration::from_millis(20)).await;

        assert!(slot.stop_and_wait().await, "the plane was there to stop");
        assert!(finished.load(Ordering::SeqCst), "stop returned before the plane finished its work");
        assert_eq!(reader.join().unwrap(), Some(()), "the reader that had the plane finished its read");
        let f = reports.lock().unwrap()["slow"].clone();
        assert_eq!(f(), serde_json::json!("stopped"));
        assert!(!slot.stop_and_wait().await);
    }
}
