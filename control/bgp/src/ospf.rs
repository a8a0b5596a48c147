//! OSPF sites: each announced VIP becomes a kernel host route in `[ospf] table` (or an address on the
//! configured interface) that a local BIRD or FRR redistributes. Routes are written over rtnetlink, tagged
//! with our own route protocol number ([`ROUTE_PROTO`]) so leftovers of a crash are flushed at start.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use padis_model::bgp::{OspfConfig, OspfMode};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::kernel::{Kernel, RouteSpec};
pub use crate::kernel::{KernelError, ROUTE_PROTO};
use crate::session::Phase;
use crate::status::{Metrics, OspfReport};
use crate::Announcement;

/// Metric of VIP routes in normal operation.
pub const METRIC: u32 = 100;
/// Metric while draining (route mode): the local OSPF daemon can carry it into the external metric, so routers
/// prefer other nodes before this one withdraws.
pub const DRAIN_METRIC: u32 = 65_000;
/// Delay before retrying after the kernel refused something (e.g. the interface does not exist yet).
const RETRY: Duration = Duration::from_secs(2);

/// The kernel-route writer task.
pub(crate) struct KernelRoutes {
    pub cfg: OspfConfig,
    pub routes: watch::Receiver<BTreeSet<Announcement>>,
    pub phase: watch::Receiver<Phase>,
    pub report: Arc<Mutex<OspfReport>>,
    pub metrics: Metrics,
}

impl KernelRoutes {
    /// Runs until stop; then removes everything it installed.
    pub(crate) async fn run(mut self) {
        let kernel = match Kernel::open() {
            Ok(k) => k,
            Err(e) => {
                self.failed(&e);
                return;
            }
        };
        if self.cfg.mode == OspfMode::Route {
            match kernel.flush(self.cfg.table).await {
                Ok(0) => {}
                Ok(n) => info!(routes = n, table = self.cfg.table, "OSPF: flushed routes of a previous run"),
                Err(e) => {
                    self.failed(&e);
                }
            }
        }
        // Installed prefix -> its metric.
        let mut installed: BTreeMap<IpNet, u32> = BTreeMap::new();
        loop {
            let want: BTreeSet<IpNet> = self.routes.borrow_and_update().iter().map(|a| a.prefix).collect();
            let metric = if *self.phase.borrow_and_update() == Phase::Drain { DRAIN_METRIC } else { METRIC };
            let ok = self.sync(&kernel, &mut installed, &want, metric).await;
            tokio::select! {
                r = self.routes.changed() => if r.is_err() { break },
                r = self.phase.changed() => {
                    if r.is_err() || *self.phase.borrow() == Phase::Stop { break }
                }
                _ = tokio::time::sleep(RETRY), if !ok => {}
            }
        }
        self.sync(&kernel, &mut installed, &BTreeSet::new(), METRIC).await;
        info!("OSPF: kernel routes removed");
    }

    /// Adds and removes so that `installed` becomes `want` (with `metric` in route mode); false if something
    /// failed (retried later).
    async fn sync(
        &self,
        k: &Kernel,
        installed: &mut BTreeMap<IpNet, u32>,
        want: &BTreeSet<IpNet>,
        metric: u32,
    ) -> bool {
        let ifindex = match k.ifindex(&self.cfg.interface).await {
            Ok(i) => i,
            Err(e) => {
                self.failed(&e);
                return false;
            }
        };
        let spec = |metric| RouteSpec { ifindex, table: self.cfg.table, metric };
        let route = self.cfg.mode == OspfMode::Route;
        let metric = if route { metric } else { 0 };
        let mut ok = true;
        let del: Vec<(IpNet, u32)> =
            installed.iter().filter(|(p, _)| !want.contains(p)).map(|(p, m)| (*p, *m)).collect();
        let add: Vec<IpNet> = want.iter().filter(|p| installed.get(p) != Some(&metric)).copied().collect();
        for (p, m) in del {
            let r = if route { k.del_route(&p, spec(m)).await } else { k.del_addr(&p, ifindex).await };
            match r {
                Ok(()) => {
                    installed.remove(&p);
                }
                Err(e) => ok = self.failed(&e),
            }
        }
        for p in add {
            let r = if route { k.add_route(&p, spec(metric)).await } else { k.add_addr(&p, ifindex).await };
            match r {
                Ok(()) => {
                    // Make before break: the route with the old metric goes once the new one is in.
                    if let Some(old) = installed.insert(p, metric).filter(|m| *m != metric && route) {
                        if let Err(e) = k.del_route(&p, spec(old)).await {
                            ok = self.failed(&e);
                        }
                    }
                }
                Err(e) => ok = self.failed(&e),
            }
        }
        let mut r = self.report.lock().unwrap_or_else(|p| p.into_inner());
        r.routes_installed = installed.len();
        if ok {
            r.last_error = None;
        }
        self.metrics.ospf_routes.set(installed.len() as i64);
        ok
    }

    fn failed(&self, e: &KernelError) -> bool {
        warn!(error = %e, "OSPF: kernel route update failed");
        self.report.lock().unwrap_or_else(|p| p.into_inner()).last_error = Some(e.to_string());
        false
    }
}
