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
use padis_model::{Snapshot, SnapshotReader};
use prometheus::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{DrainFn, ReportFn};
use crate::reconcile::{Contribution, Reconciler};

/// The running data planes and sources.
pub struct Planes {
    /// Health of every backend, shared by L7 and L4 (and read by route announcement).
    pub health: HealthRegistry,
    l7: L7Handle,
    l4: Arc<L4Handle>,
    dns: Arc<DnsHandle>,
    announcer: Arc<tokio::sync::Mutex<Option<AnnouncerHandle>>>,
    background: Vec<JoinHandle<()>>,
    sources: CancellationToken,
}

type Reports = Arc<Mutex<BTreeMap<String, ReportFn>>>;

impl Planes {
    /// Starts every plane the snapshot configures (planes with nothing configured stay idle).
    pub async fn start(
        reader: SnapshotReader,
        registry: &Registry,
        reconciler: Arc<Mutex<Reconciler>>,
        reports: &Reports,
        drain: &Arc<Mutex<Option<DrainFn>>>,
        token: CancellationToken,
    ) -> anyhow::Result<Planes> {
        let health = HealthRegistry::new(registry)?;
        let h = health.clone();
        add_report(reports, "health", move || serde_json::to_value(h.report()).unwrap_or_default());

        let l7 = L7Plane::start(reader.clone(), health.clone(), registry, token.clone())
            .await
            .map_err(|e| anyhow::anyhow!("L7: {e}"))?;
        let l4 = Arc::new(
            L4Plane::start(reader.clone(), health.clone(), registry, token.clone())
                .await
                .map_err(|e| anyhow::anyhow!("L4: {e}"))?,
        );
        let r = l4.clone();
        add_report(reports, "l4", move || serde_json::to_value(r.report()).unwrap_or_default());
        let dns = Arc::new(
            DnsPlane::start(reader.clone(), registry, token.clone()).await.map_err(|e| anyhow::anyhow!("DNS: {e}"))?,
        );
        let r = dns.clone();
        add_report(reports, "dns", move || serde_json::to_value(r.report()).unwrap_or_default());

        let sources = CancellationToken::new();
        let mut background = Vec::new();

        // Marathon: its contributions go through the reconciler like the config file's.
        let snap = reader.load();
        if let Some(cfg) = snap.state.marathon.clone() {
            let (tx, rx) = watch::channel::<Option<MarathonState>>(None);
            MarathonSource::spawn(cfg, tx, registry, sources.clone()).map_err(|e| anyhow::anyhow!("marathon: {e}"))?;
            background.push(tokio::spawn(follow_marathon(rx, reconciler.clone(), reports.clone())));
        }

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
        let wait = async {
            self.l7.wait().await;
            if let Ok(dns) = Arc::try_unwrap(self.dns) {
                dns.wait().await;
            }
            if let Ok(l4) = Arc::try_unwrap(self.l4) {
                l4.wait().await;
            }
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

/// Feeds each new Marathon state to the reconciler. A contribution that does not validate with the rest is
/// refused there (the last good one stays) and logged.
async fn follow_marathon(mut rx: watch::Receiver<Option<MarathonState>>, reconciler: Arc<Mutex<Reconciler>>, reports: Reports) {
    let mut reported = false;
    while rx.changed().await.is_ok() {
        let Some(m) = rx.borrow_and_update().clone() else { continue };
        let c = Contribution {
            groups: m.groups,
            routes: m.routes,
            services: m.services,
            vips: m.vips,
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
    l4: Arc<L4Handle>,
    tx: watch::Sender<BTreeSet<Announcement>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let snap = reader.load();
        let r = l4.report();
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
