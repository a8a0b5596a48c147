//! OSPF sites: each announced VIP becomes a kernel host route in `[ospf] table` (or an address on the
//! configured interface) that a local BIRD or FRR redistributes. Routes are written over rtnetlink, tagged
//! with our own route protocol number ([`ROUTE_PROTO`]) so leftovers of a crash are flushed at start.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use padis_model::bgp::{OspfConfig, OspfMode};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::kernel::Kernel;
pub use crate::kernel::{KernelError, ROUTE_PROTO};
use crate::session::Phase;
use crate::status::{Metrics, OspfReport};
use crate::Announcement;

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
                Ok(n) => info!(
                    routes = n,
                    table = self.cfg.table,
                    "OSPF: flushed routes of a previous run"
                ),
                Err(e) => {
                    self.failed(&e);
                }
            }
        }
        let mut installed: BTreeSet<IpNet> = BTreeSet::new();
        loop {
            let want: BTreeSet<IpNet> = self
                .routes
                .borrow_and_update()
                .iter()
                .map(|a| a.prefix)
                .collect();
            let ok = self.sync(&kernel, &mut installed, &want).await;
            tokio::select! {
                r = self.routes.changed() => if r.is_err() { break },
                r = self.phase.changed() => {
                    if r.is_err() || *self.phase.borrow_and_update() == Phase::Stop { break }
                }
                _ = tokio::time::sleep(RETRY), if !ok => {}
            }
        }
        self.sync(&kernel, &mut installed, &BTreeSet::new()).await;
        info!("OSPF: kernel routes removed");
    }

    /// Adds and removes so that `installed` becomes `want`; false if something failed (retried later).
    async fn sync(
        &self,
        k: &Kernel,
        installed: &mut BTreeSet<IpNet>,
        want: &BTreeSet<IpNet>,
    ) -> bool {
        let ifindex = match k.ifindex(&self.cfg.interface).await {
            Ok(i) => i,
            Err(e) => {
                self.failed(&e);
                return false;
            }
        };
        let mut ok = true;
        let del: Vec<IpNet> = installed.difference(want).copied().collect();
        let add: Vec<IpNet> = want.difference(installed).copied().collect();
        for p in del {
            let r = match self.cfg.mode {
                OspfMode::Route => k.del_route(&p, ifindex, self.cfg.table).await,
                OspfMode::Address => k.del_addr(&p, ifindex).await,
            };
            match r {
                Ok(()) => {
                    installed.remove(&p);
                }
                Err(e) => ok = self.failed(&e),
            }
        }
        for p in add {
            let r = match self.cfg.mode {
                OspfMode::Route => k.add_route(&p, ifindex, self.cfg.table).await,
                OspfMode::Address => k.add_addr(&p, ifindex).await,
            };
            match r {
                Ok(()) => {
                    installed.insert(p);
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
        self.report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_error = Some(e.to_string());
        false
    }
}
