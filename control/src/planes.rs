//! Starting and stopping the data planes (L7, L4, DNS), the dynamic sources (Marathon) and route
//! announcement (BGP/OSPF), all fed by the same snapshots.
//!
//! Data still flows one way: planes read snapshots; control alone feeds the reconciler (Marathon) and decides
//! what is announced (from the snapshot, the L4 plane's attachment and the health registry).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use padis_balance::HealthRegistry;
use padis_bgp::{Announcement, Announcer, AnnouncerHandle};
use padis_dns::{DnsHandle, DnsPlane};
use padis_l4::{L4Handle, L4Plane};
use padis_lb::{L7Handle, L7Plane};
use padis_marathon::{MarathonError, MarathonSource, MarathonState};
use padis_model::marathon::MarathonConfig;
use padis_model::{Snapshot, SnapshotReader};
use padis_tickets::TicketKeys;
use prometheus::Registry;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{DrainFn, ExtraRegistries};
use crate::reconcile::{Contribution, Reconciler};

/// The running data planes and sources.
pub struct Planes {
    /// Health of every backend, shared by L7 and L4 (and read by route announcement).
    pub health: HealthRegistry,
    l7: PlaneSlot<L7Handle>,
    l4: PlaneSlot<L4Handle>,
    dns: PlaneSlot<DnsHandle>,
    routing: Option<PlaneSlot<AnnouncerHandle>>,
    background: Vec<JoinHandle<()>>,
    sources: CancellationToken,
    routing_ctx: RoutingCtx,
}

/// What starting route announcement needs.
struct RoutingCtx {
    reader: SnapshotReader,
    registry: Registry,
    reports: Reports,
    drain: Arc<Mutex<Option<DrainFn>>>,
}

/// A data plane (or the route announcer) as control sees it: its report, and its stop.
pub trait Plane: Send + 'static {
    /// What the report says while the plane stops.
    const STOPPING: &'static str = "stopping";
    /// What the report says once the plane has stopped.
    const STOPPED: &'static str = "stopped";

    /// The plane's view for `/v1/state`.
    fn report(&self) -> Value;

    /// Waits until the plane has finished its in-flight work once its shutdown token was cancelled (the route
    /// announcer is stopped here: routes drained, then withdrawn).
    fn wait(self) -> impl Future<Output = ()> + Send;
}

impl Plane for L7Handle {
    fn report(&self) -> Value {
        json!({ "bind_failures": self.bind_failures() })
    }

    fn wait(self) -> impl Future<Output = ()> + Send {
        L7Handle::wait(self)
    }
}

impl Plane for L4Handle {
    fn report(&self) -> Value {
        serde_json::to_value(L4Handle::report(self)).unwrap_or_default()
    }

    fn wait(self) -> impl Future<Output = ()> + Send {
        L4Handle::wait(self)
    }
}

impl Plane for DnsHandle {
    fn report(&self) -> Value {
        serde_json::to_value(DnsHandle::report(self)).unwrap_or_default()
    }

    fn wait(self) -> impl Future<Output = ()> + Send {
        DnsHandle::wait(self)
    }
}

impl Plane for AnnouncerHandle {
    const STOPPING: &'static str = "draining";
    const STOPPED: &'static str = "withdrawn (drained)";

    fn report(&self) -> Value {
        serde_json::to_value(AnnouncerHandle::report(self)).unwrap_or_default()
    }

    fn wait(self) -> impl Future<Output = ()> + Send {
        self.drain_and_stop()
    }
}

/// Something shown in `/v1/state` under `planes`: a plane's slot, the health registry, a source.
pub trait Report: Send + Sync {
    /// Its view now.
    fn report(&self) -> Value;
}

impl Report for HealthRegistry {
    fn report(&self) -> Value {
        serde_json::to_value(HealthRegistry::report(self)).unwrap_or_default()
    }
}

/// The session ticket keys as `/v1/state` shows them: counts and the epoch, never a key or a key name.
struct TicketReport(Arc<TicketKeys>, bool);

impl Report for TicketReport {
    fn report(&self) -> Value {
        let s = self.0.status();
        json!({
            "shared": self.1, "rotation_secs": s.rotation_secs, "epoch": s.epoch, "keys": s.keys,
            "keys_from_peers": s.from_peers,
        })
    }
}

/// The reports of the planes and sources, by name, read by the admin API.
#[derive(Clone, Default)]
pub struct Reports(Arc<Mutex<BTreeMap<&'static str, Arc<dyn Report>>>>);

impl Reports {
    /// Shows `report` under `name` (replacing what was there).
    pub fn add(&self, name: &'static str, report: Arc<dyn Report>) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(name, report);
    }

    /// Every report, by name.
    pub fn all(&self) -> BTreeMap<String, Value> {
        let reports: Vec<_> = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone().into_iter().collect();
        reports.into_iter().map(|(name, r)| (name.to_string(), r.report())).collect()
    }
}

/// A plane's handle shared by readers (reports, route announcement, `/v1/drain`) and taken whole by the stop,
/// which then waits for the plane however many readers still hold the slot (a reader finds it stopping or
/// stopped afterwards). A second stop waits until the first has finished.
pub struct PlaneSlot<H>(Arc<SlotInner<H>>);

struct SlotInner<H> {
    state: Mutex<SlotState<H>>,
    /// `true` once the plane has stopped.
    stopped: watch::Sender<bool>,
}

enum SlotState<H> {
    Running(H),
    Stopping,
    Stopped,
}

impl<H> Clone for PlaneSlot<H> {
    fn clone(&self) -> Self {
        PlaneSlot(self.0.clone())
    }
}

impl<H: Plane> PlaneSlot<H> {
    /// A slot holding `handle`.
    pub fn new(handle: H) -> PlaneSlot<H> {
        let state = Mutex::new(SlotState::Running(handle));
        PlaneSlot(Arc::new(SlotInner { state, stopped: watch::Sender::new(false) }))
    }

    fn state(&self) -> MutexGuard<'_, SlotState<H>> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the handle, unless the plane is stopping or stopped.
    pub fn with<R>(&self, f: impl FnOnce(&H) -> R) -> Option<R> {
        match &*self.state() {
            SlotState::Running(h) => Some(f(h)),
            SlotState::Stopping | SlotState::Stopped => None,
        }
    }

    /// Takes the handle out, if it is still running (the slot says stopping until [`MarkStopped`] is dropped).
    fn take(&self) -> Option<H> {
        let mut state = self.state();
        match std::mem::replace(&mut *state, SlotState::Stopping) {
            SlotState::Running(h) => Some(h),
            other => {
                *state = other;
                None
            }
        }
    }

    /// Takes the handle out (a reader running `with` finishes first) and waits for the plane. Returns `false` if
    /// another stop had taken it already (this one then waits until that stop has finished).
    pub async fn stop_and_wait(&self) -> bool {
        let Some(handle) = self.take() else {
            let mut stopped = self.0.stopped.subscribe();
            let _ = stopped.wait_for(|s| *s).await;
            return false;
        };
        // Marked stopped even if this future is dropped midway (a waiting stop does not hang).
        let _done = MarkStopped(self);
        handle.wait().await;
        true
    }
}

/// Marks its slot stopped when dropped.
struct MarkStopped<'a, H>(&'a PlaneSlot<H>);

impl<H> Drop for MarkStopped<'_, H> {
    fn drop(&mut self) {
        *self.0 .0.state.lock().unwrap_or_else(|p| p.into_inner()) = SlotState::Stopped;
        self.0 .0.stopped.send_replace(true);
    }
}

impl<H: Plane> Report for PlaneSlot<H> {
    fn report(&self) -> Value {
        match &*self.state() {
            SlotState::Running(h) => h.report(),
            SlotState::Stopping => json!({ "state": H::STOPPING }),
            SlotState::Stopped => json!({ "state": H::STOPPED }),
        }
    }
}

/// The Marathon source's view: what it contributes now (from the reconciler).
struct MarathonReport(Arc<Mutex<Reconciler>>);

impl Report for MarathonReport {
    fn report(&self) -> Value {
        let r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        r.sources()
            .get("marathon")
            .map(|c| {
                json!({
                    "status": c.status, "groups": c.groups.len(), "routes": c.routes.len(),
                    "services": c.services.len(), "vips": c.vips.len(), "problems": c.problems,
                    "rejected": r.rejected("marathon"),
                })
            })
            .unwrap_or_default()
    }
}

impl Planes {
    /// Starts every plane the snapshot configures (planes with nothing configured stay idle), and route
    /// announcement unless `defer_routing` (see [`Planes::start_routing`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        reader: SnapshotReader,
        registry: &Registry,
        reconciler: Arc<Mutex<Reconciler>>,
        reports: &Reports,
        drain: &Arc<Mutex<Option<DrainFn>>>,
        extra_registries: &ExtraRegistries,
        token: CancellationToken,
        defer_routing: bool,
    ) -> anyhow::Result<Planes> {
        let health = HealthRegistry::new(registry)?;
        reports.add("health", Arc::new(health.clone()));
        // `[tls]` is read at start: the session ticket keys of this process (in memory only), shared with the
        // `[l4.sync]` peers when `share_ticket_keys`.
        let tls = reader.load().state.tls.clone();
        let tickets = TicketKeys::new(tls.ticket_key_rotation);
        reports.add("tls_tickets", Arc::new(TicketReport(tickets.clone(), tls.share_ticket_keys)));
        let shared = tls.share_ticket_keys.then(|| tickets.clone());
        let l7 = PlaneSlot::new(
            L7Plane::start(reader.clone(), health.clone(), registry, tickets, token.clone())
                .await
                .context("L7 plane")?,
        );
        reports.add("l7", Arc::new(l7.clone()));
        let l4 = PlaneSlot::new(
            L4Plane::start(reader.clone(), health.clone(), registry, shared, token.clone())
                .await
                .context("L4 plane")?,
        );
        reports.add("l4", Arc::new(l4.clone()));
        let dns = PlaneSlot::new(DnsPlane::start(reader.clone(), registry, token.clone()).await.context("DNS plane")?);
        reports.add("dns", Arc::new(dns.clone()));

        let sources = CancellationToken::new();
        let mut background = Vec::new();

        // Marathon: its contributions go through the reconciler like the config file's. A changed `[marathon]`
        // restarts the source with the new settings (a start failure at daemon start is fatal).
        let snap = reader.load();
        let first = match snap.state.marathon.clone() {
            Some(cfg) => {
                let running =
                    start_marathon(cfg, reconciler.clone(), reports.clone(), extra_registries, &sources, false);
                Some(running.context("Marathon source")?)
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

        let mut planes = Planes {
            health,
            l7,
            l4,
            dns,
            routing: None,
            background,
            sources,
            routing_ctx: RoutingCtx {
                reader,
                registry: registry.clone(),
                reports: reports.clone(),
                drain: drain.clone(),
            },
        };
        if !defer_routing {
            planes.start_routing(false)?;
        }
        Ok(planes)
    }

    /// Starts route announcement (BGP/OSPF, when configured): what is announced follows the snapshot, L4
    /// attachment and health. `restarted`: this process took over from one that handed its sessions over (see
    /// `Announcer::spawn_restarted`). A process started by an upgrade calls it once the old one has ended its
    /// sessions.
    pub fn start_routing(&mut self, restarted: bool) -> anyhow::Result<()> {
        let RoutingCtx { reader, registry, reports, drain } = &self.routing_ctx;
        let snap = reader.load();
        if self.routing.is_some() || (snap.state.bgp.is_none() && snap.state.ospf.is_none()) {
            return Ok(());
        }
        let (tx, rx) = watch::channel(BTreeSet::new());
        let (bgp, ospf) = (snap.state.bgp.clone(), snap.state.ospf.clone());
        let handle = match restarted {
            true => Announcer::spawn_restarted(bgp, ospf, rx, registry),
            false => Announcer::spawn(bgp, ospf, rx, registry),
        }
        .context("route announcement")?;
        let slot = PlaneSlot::new(handle);
        reports.add("routing", Arc::new(slot.clone()));
        self.background.push(tokio::spawn(follow_announcements(
            reader.clone(),
            self.health.clone(),
            self.l4.clone(),
            tx,
            self.sources.clone(),
        )));
        let r = slot.clone();
        *drain.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(move || {
            let r = r.clone();
            tokio::spawn(async move {
                tracing::info!("drain requested: withdrawing announced routes");
                r.stop_and_wait().await;
            });
        }) as DrainFn);
        self.routing = Some(slot);
        Ok(())
    }

    /// Graceful stop: routes withdrawn first (so routers move traffic away; a drain under way is waited for),
    /// then the planes stop accepting and finish in-flight work within `grace`.
    pub async fn stop(self, grace: Duration, token: CancellationToken) {
        if let Some(routing) = &self.routing {
            routing.stop_and_wait().await;
        }
        self.finish(grace, token).await;
    }

    /// Stop after an upgrade (a new process serves on the same sockets): the route sessions end without a
    /// withdrawal (see `AnnouncerHandle::hand_over`), `released` runs, then the planes stop accepting and finish
    /// in-flight work within `grace`; the XDP program stays attached (the new process took its pinned link).
    pub async fn hand_over(self, grace: Duration, token: CancellationToken, released: impl FnOnce()) {
        if let Some(routing) = &self.routing {
            if let Some(h) = routing.take() {
                let _done = MarkStopped(routing);
                h.hand_over().await;
            }
        }
        released();
        self.l4.with(|h| h.keep_attached());
        self.finish(grace, token).await;
    }

    /// The planes stop accepting and finish in-flight work within `grace`.
    async fn finish(self, grace: Duration, token: CancellationToken) {
        self.sources.cancel();
        token.cancel();
        // Every plane is waited for, whoever still holds its slot (reports, route announcement).
        let wait = async {
            tokio::join!(self.l7.stop_and_wait(), self.dns.stop_and_wait(), self.l4.stop_and_wait());
        };
        if tokio::time::timeout(grace + Duration::from_secs(1), wait).await.is_err() {
            tracing::warn!(?grace, "in-flight work did not finish within the grace period");
        }
        for t in self.background {
            t.abort();
        }
    }
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
) -> Result<RunningMarathon, MarathonError> {
    let registry = Registry::new();
    let (tx, rx) = watch::channel::<Option<MarathonState>>(None);
    let stop = sources.child_token();
    let source = MarathonSource::spawn(cfg.clone(), tx, &registry, stop.clone())?;
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
            reports.add("marathon", Arc::new(MarathonReport(reconciler.clone())));
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
        let attached =
            r.enabled && !r.interfaces.is_empty() && r.last_error.is_none() && r.sync.as_ref().is_none_or(|s| s.ready);
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

    impl Plane for SlowPlane {
        fn report(&self) -> Value {
            json!("running")
        }

        async fn wait(self) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// The stop waits for the plane although readers still hold the slot (a report, a follower, one of them in
    /// the middle of a read); the report then says the plane stopped; a second stop has nothing to wait for.
    #[tokio::test]
    async fn stop_waits_for_the_plane_whoever_holds_it() {
        let finished = Arc::new(AtomicBool::new(false));
        let slot = PlaneSlot::new(SlowPlane(finished.clone()));
        let reports = Reports::default();
        reports.add("slow", Arc::new(slot.clone()));
        assert_eq!(reports.all()["slow"], json!("running"));
        let busy_reader = slot.clone();
        let reader = std::thread::spawn(move || busy_reader.with(|_| std::thread::sleep(Duration::from_millis(100))));
        tokio::time::sleep(Duration::from_millis(20)).await;

        assert!(slot.stop_and_wait().await, "the plane was there to stop");
        assert!(finished.load(Ordering::SeqCst), "stop returned before the plane finished its work");
        assert_eq!(reader.join().unwrap(), Some(()), "the reader that had the plane finished its read");
        assert_eq!(reports.all()["slow"], json!({"state": "stopped"}));
        assert_eq!(slot.with(|_| ()), None, "a reader finds the plane gone");
        assert!(!slot.stop_and_wait().await);
    }

    /// A stop that comes while another is under way (the daemon's stop during a `/v1/drain`) waits until the
    /// plane has stopped; meanwhile the report says it is stopping (not a guess from a busy lock).
    #[tokio::test]
    async fn a_second_stop_waits_for_the_first() {
        let finished = Arc::new(AtomicBool::new(false));
        let slot = PlaneSlot::new(SlowPlane(finished.clone()));
        let first = {
            let slot = slot.clone();
            tokio::spawn(async move { slot.stop_and_wait().await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(slot.report(), json!({"state": "stopping"}));
        assert!(!slot.stop_and_wait().await, "the first stop had taken the plane");
        assert!(finished.load(Ordering::SeqCst), "the second stop returned before the plane had stopped");
        assert!(first.await.unwrap());
        assert_eq!(slot.report(), json!({"state": "stopped"}));
    }

    /// A stop abandoned midway (its task aborted) still marks the plane stopped: a later stop does not hang.
    #[tokio::test]
    async fn an_abandoned_stop_does_not_block_the_next() {
        let slot = PlaneSlot::new(SlowPlane(Arc::new(AtomicBool::new(false))));
        let first = {
            let slot = slot.clone();
            tokio::spawn(async move { slot.stop_and_wait().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        first.abort();
        let second = tokio::time::timeout(Duration::from_secs(2), slot.stop_and_wait()).await;
        assert_eq!(second.ok(), Some(false), "the next stop returns: the plane was taken and is marked stopped");
        assert_eq!(slot.report(), json!({"state": "stopped"}));
    }
}
