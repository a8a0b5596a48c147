//! OSPF sites: each announced VIP becomes a kernel host route in `[ospf] table` (or an address on the
//! configured interface) that a local BIRD or FRR redistributes. Routes are written with `ip` (iproute2),
//! tagged with our own route protocol number so leftovers of a crash are flushed at start.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use padis_model::bgp::{OspfConfig, OspfMode};
use tokio::process::Command;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::session::Phase;
use crate::status::{Metrics, OspfReport};
use crate::Announcement;

/// Route protocol number of our kernel routes (`ip route ... proto 237`, unassigned in /etc/iproute2/rt_protos; 186 would be "bgp" and FRR would claim it).
pub const ROUTE_PROTO: u8 = 237;
/// Delay before retrying after `ip` failed.
const RETRY: Duration = Duration::from_secs(5);

/// The kernel-route writer task.
pub(crate) struct KernelRoutes {
    pub cfg: OspfConfig,
    pub routes: watch::Receiver<BTreeSet<Announcement>>,
    pub phase: watch::Receiver<Phase>,
    pub report: Arc<Mutex<OspfReport>>,
    pub metrics: Metrics,
}

/// `ip` failed.
#[derive(Debug, thiserror::Error)]
#[error("`ip {args}`: {message}")]
pub struct IpError {
    args: String,
    message: String,
}

impl KernelRoutes {
    /// Runs until stop; then removes everything it installed.
    pub(crate) async fn run(mut self) {
        if self.cfg.mode == OspfMode::Route {
            for fam in ["-4", "-6"] {
                let t = self.cfg.table.to_string();
                let p = ROUTE_PROTO.to_string();
                if let Err(e) = ip(&[fam, "route", "flush", "table", &t, "proto", &p]).await {
                    warn!(error = %e, "OSPF: flushing old routes failed");
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
            let ok = self.sync(&mut installed, &want).await;
            tokio::select! {
                r = self.routes.changed() => if r.is_err() { break },
                r = self.phase.changed() => {
                    if r.is_err() || *self.phase.borrow_and_update() == Phase::Stop { break }
                }
                _ = tokio::time::sleep(RETRY), if !ok => {}
            }
        }
        self.sync(&mut installed, &BTreeSet::new()).await;
        info!("OSPF: kernel routes removed");
    }

    /// Adds and removes so that `installed` becomes `want`; false if something failed (retried later).
    async fn sync(&self, installed: &mut BTreeSet<IpNet>, want: &BTreeSet<IpNet>) -> bool {
        let mut ok = true;
        let del: Vec<IpNet> = installed.difference(want).copied().collect();
        let add: Vec<IpNet> = want.difference(installed).copied().collect();
        for p in del {
            match ip(&self.args("del", &p)).await {
                Ok(()) => {
                    installed.remove(&p);
                }
                // Already gone (removed by someone else): nothing left to do.
                Err(e)
                    if e.message.contains("No such process")
                        || e.message.contains("Cannot assign") =>
                {
                    installed.remove(&p);
                }
                Err(e) => ok = self.failed(e),
            }
        }
        for p in add {
            match ip(&self.args("replace", &p)).await {
                Ok(()) => {
                    installed.insert(p);
                }
                Err(e) => ok = self.failed(e),
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

    fn failed(&self, e: IpError) -> bool {
        warn!(error = %e, "OSPF: kernel route update failed");
        self.report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_error = Some(e.to_string());
        false
    }

    fn args(&self, verb: &str, p: &IpNet) -> Vec<String> {
        let fam = if p.addr().is_ipv4() { "-4" } else { "-6" };
        let mut a: Vec<String> = vec![fam.into()];
        match self.cfg.mode {
            OspfMode::Route => {
                a.extend([
                    "route".into(),
                    verb.into(),
                    p.to_string(),
                    "dev".into(),
                    self.cfg.interface.clone(),
                ]);
                a.extend([
                    "table".into(),
                    self.cfg.table.to_string(),
                    "proto".into(),
                    ROUTE_PROTO.to_string(),
                ]);
            }
            OspfMode::Address => {
                a.extend([
                    "addr".into(),
                    verb.into(),
                    p.to_string(),
                    "dev".into(),
                    self.cfg.interface.clone(),
                ]);
                if p.addr().is_ipv6() && verb != "del" {
                    a.push("nodad".into());
                }
            }
        }
        a
    }
}

async fn ip<S: AsRef<str>>(args: &[S]) -> Result<(), IpError> {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let out = Command::new("ip")
        .args(&args)
        .kill_on_drop(true)
        .output()
        .await;
    let fail = |message: String| IpError {
        args: args.join(" "),
        message,
    };
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(fail(String::from_utf8_lossy(&o.stderr).trim().to_string())),
        Err(e) => Err(fail(e.to_string())),
    }
}
