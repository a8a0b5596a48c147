//! Padis route announcement: an announce-only BGP speaker for healthy VIPs, and kernel host routes for OSPF sites.
//!
//! The daemon computes the set of VIP host prefixes this node can serve and publishes it on a `watch` channel;
//! [`Announcer::spawn`] runs one BGP session per `[[bgp.peer]]` (RFC 4271 FSM, 4-octet AS, MP-BGP for IPv6)
//! that follows the set with UPDATE diffs, and, with `[ospf]`, a writer that mirrors it into a kernel table.
//! [`AnnouncerHandle::drain_and_stop`] does the RFC 8326 graceful shutdown before withdrawing. Peers with
//! `bfd = true` get a single-hop BFD session ([`bfd`]) whose failure tears their BGP session down at once.

#![warn(missing_docs)]

pub mod bfd;
mod error;
mod kernel;
mod listener;
pub mod ospf;
mod rib;
mod session;
mod sockopt;
mod status;
pub mod wire;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use padis_model::bgp::{BgpConfig, OspfConfig};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::info;

pub use error::{BgpError, SessionError};
pub use status::{BgpReport, OspfReport, PeerReport, SessionState};

use session::{Phase, Session};
use status::{Metrics, PeerStatus};

/// One route to announce: a VIP host prefix (/32 or /128), with its next hop chosen by the speaker (our local
/// address on the session, or a configured next_hop).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Announcement {
    /// The prefix.
    pub prefix: ipnet::IpNet,
    /// The VIP's name (for logs and reports).
    pub name: String,
}

/// Starts the announcer; see [`Announcer::spawn`].
pub struct Announcer;

/// Controls a running announcer: report, graceful drain and stop.
pub struct AnnouncerHandle {
    phase: watch::Sender<Phase>,
    peers: Vec<PeerStatus>,
    ospf: Option<Arc<Mutex<OspfReport>>>,
    tasks: Vec<JoinHandle<()>>,
    drain_wait: Duration,
}

impl Announcer {
    /// Starts one BGP session task per configured peer (and the OSPF kernel-route writer if `[ospf]` is set);
    /// each follows `routes` (the set to announce) with UPDATEs (diffs only). Must run inside a tokio runtime.
    pub fn spawn(
        bgp: Option<BgpConfig>,
        ospf: Option<OspfConfig>,
        routes: watch::Receiver<BTreeSet<Announcement>>,
        metrics: &prometheus::Registry,
    ) -> Result<AnnouncerHandle, BgpError> {
        Self::spawn_as(bgp, ospf, routes, metrics, false)
    }

    /// [`Announcer::spawn`] in a process that took over from one that handed its sessions over (an upgrade):
    /// with `[bgp] graceful_restart`, each peer's first OPEN says so (Restart State bit, RFC 4724), and its
    /// End-of-RIB waits until a route is announced (half the restart time at most, 30 s at most) so that the
    /// router does not drop the routes it kept before this process has announced them again.
    pub fn spawn_restarted(
        bgp: Option<BgpConfig>,
        ospf: Option<OspfConfig>,
        routes: watch::Receiver<BTreeSet<Announcement>>,
        metrics: &prometheus::Registry,
    ) -> Result<AnnouncerHandle, BgpError> {
        Self::spawn_as(bgp, ospf, routes, metrics, true)
    }

    fn spawn_as(
        bgp: Option<BgpConfig>,
        ospf: Option<OspfConfig>,
        routes: watch::Receiver<BTreeSet<Announcement>>,
        metrics: &prometheus::Registry,
        restarting: bool,
    ) -> Result<AnnouncerHandle, BgpError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| BgpError::NoRuntime)?;
        let m = Metrics::register(metrics)?;
        let (phase, phase_rx) = watch::channel(Phase::Run);
        let mut tasks = Vec::new();
        let mut peers = Vec::new();
        let mut drain_wait = Duration::ZERO;
        if let Some(cfg) = bgp {
            drain_wait = cfg.drain_wait;
            let cfg = Arc::new(cfg);
            let mut passive = Vec::new();
            let bfd_peers: Vec<std::net::IpAddr> = cfg.peers.iter().filter(|p| p.bfd).map(|p| p.address).collect();
            let mut links = if bfd_peers.is_empty() {
                Vec::new()
            } else {
                let timers = bfd::Timers { interval: cfg.bfd.interval, multiplier: cfg.bfd.multiplier };
                let (ended, links) = bfd::start(timers, &bfd_peers, cfg.local_address, m.clone())?;
                tasks.push(rt.spawn(ended));
                links
            }
            .into_iter();
            for p in cfg.peers.iter() {
                let bfd = if p.bfd { links.next() } else { None };
                let status = PeerStatus::new(p.address, p.asn, m.clone(), bfd.as_ref().map(bfd::BfdLink::watch));
                let incoming = if p.passive {
                    let (tx, rx) = mpsc::channel(1);
                    passive.push((p.clone(), tx));
                    Some(rx)
                } else {
                    None
                };
                let s = Session {
                    cfg: cfg.clone(),
                    peer: p.clone(),
                    routes: routes.clone(),
                    phase: phase_rx.clone(),
                    status: status.clone(),
                    incoming,
                    bfd,
                    restarting,
                };
                peers.push(status);
                tasks.push(rt.spawn(s.run()));
            }
            if !passive.is_empty() {
                let l = listener::bind(&cfg, passive)?;
                tasks.push(rt.spawn(l.run(phase_rx.clone())));
            }
        }
        let ospf = ospf.map(|cfg| {
            let report = Arc::new(Mutex::new(OspfReport::default()));
            let k = ospf::KernelRoutes {
                cfg,
                routes: routes.clone(),
                phase: phase_rx.clone(),
                report: report.clone(),
                metrics: m.clone(),
            };
            tasks.push(rt.spawn(k.run()));
            report
        });
        Ok(AnnouncerHandle { phase, peers, ospf, tasks, drain_wait })
    }
}

impl AnnouncerHandle {
    /// Graceful: GRACEFUL_SHUTDOWN community (65535:0) + lowered LOCAL_PREF/MED re-announce (OSPF route mode:
    /// route metric raised), wait `drain_wait` (config), withdraw everything, NOTIFICATION Cease/Administrative
    /// Shutdown, close.
    pub async fn drain_and_stop(mut self) {
        let _ = self.phase.send(Phase::Drain);
        let any_up = self.peers.iter().any(|p| p.report().state == SessionState::Established)
            || self.report().ospf.is_some_and(|o| o.routes_installed > 0);
        if any_up && !self.drain_wait.is_zero() {
            info!(wait = ?self.drain_wait, "BGP drain: GRACEFUL_SHUTDOWN announced, waiting before withdraw");
            tokio::time::sleep(self.drain_wait).await;
        }
        self.stop_now().await;
    }

    /// Starts (`true`) or ends (`false`) draining without stopping: routes are re-announced with or without
    /// GRACEFUL_SHUTDOWN and lowered preference (`padis drain` / `padis undrain`).
    pub fn set_draining(&self, on: bool) {
        self.phase.send_if_modified(|p| {
            let next = if on { Phase::Drain } else { Phase::Run };
            let change = *p != Phase::Stop && *p != next;
            if change {
                *p = next;
            }
            change
        });
    }

    /// Upgrade: ends every session without a withdrawal or a NOTIFICATION (the TCP connection closes as in a
    /// restart) and the OSPF writer without removing its kernel routes; the new process announces the same
    /// routes.
    pub async fn hand_over(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
    }

    /// Withdraws everything at once (no GRACEFUL_SHUTDOWN wait), sends Cease and ends all tasks.
    pub async fn stop(mut self) {
        self.stop_now().await;
    }

    async fn stop_now(&mut self) {
        let _ = self.phase.send(Phase::Stop);
        for t in self.tasks.drain(..) {
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), t).await.is_err() {
                abort.abort();
            }
        }
    }

    /// Per peer state, uptime, flaps, routes announced; and the OSPF writer's state.
    pub fn report(&self) -> BgpReport {
        BgpReport {
            peers: self.peers.iter().map(PeerStatus::report).collect(),
            ospf: self.ospf.as_ref().map(|r| r.lock().unwrap_or_else(|p| p.into_inner()).clone()),
        }
    }
}

impl Drop for AnnouncerHandle {
    fn drop(&mut self) {
        // Dropped without drain/stop: tasks see the phase and close their sessions with Cease.
        let _ = self.phase.send(Phase::Stop);
    }
}

/// Builds the set to announce from the VIPs and whether each can be served now (data plane attached and a
/// healthy backend): an address is announced as a host prefix when at least one of its VIPs (ports,
/// protocols) can be served; the names of those VIPs are joined with `,`.
pub fn announcements<'a>(vips: impl IntoIterator<Item = (&'a padis_model::l4::Vip, bool)>) -> BTreeSet<Announcement> {
    let mut by_addr: std::collections::BTreeMap<std::net::IpAddr, Vec<&str>> = std::collections::BTreeMap::new();
    for (v, up) in vips {
        if up {
            by_addr.entry(v.addr).or_default().push(v.name.as_str());
        }
    }
    by_addr
        .into_iter()
        .map(|(addr, mut names)| {
            names.sort_unstable();
            names.dedup();
            Announcement { prefix: ipnet::IpNet::from(addr), name: names.join(",") }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parsed from config text, so that new fields of `Vip` do not break this test.
    fn vip(name: &str, addr: &str, port: u16) -> padis_model::l4::Vip {
        let text = format!("[[vip]]\nname = \"{name}\"\naddr = \"{addr}\"\nport = {port}\n");
        let v = padis_model::parse_config(&text, "t.toml", std::path::Path::new(".")).map_err(|e| e.to_string());
        let v = v.unwrap().state.vips.remove(0);
        // `Borrow` whether the model holds `Vip` or a shared `Arc<Vip>`.
        std::borrow::Borrow::<padis_model::l4::Vip>::borrow(&v).clone()
    }

    #[test]
    fn an_address_is_announced_while_one_of_its_vips_can_be_served() {
        let a = vip("web", "198.51.100.7", 80);
        let b = vip("web-tls", "198.51.100.7", 443);
        let c = vip("dns6", "2001:db8::53", 53);
        let d = vip("down", "198.51.100.8", 80);
        let set = announcements([(&a, false), (&b, true), (&c, true), (&d, false)]);
        let got: Vec<(String, String)> = set.iter().map(|x| (x.prefix.to_string(), x.name.clone())).collect();
        assert_eq!(
            got,
            vec![
                ("198.51.100.7/32".to_string(), "web-tls".to_string()),
                ("2001:db8::53/128".to_string(), "dns6".to_string())
            ]
        );
        let both = announcements([(&a, true), (&b, true)]);
        assert_eq!(both.iter().next().map(|x| x.name.as_str()), Some("web,web-tls"));
        assert!(announcements([(&d, false)]).is_empty());
    }
}
