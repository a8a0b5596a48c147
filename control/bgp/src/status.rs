//! Per-peer status for `padis status` ([`BgpReport`]) and the Prometheus metrics.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use serde::Serialize;

use crate::bfd::BfdReport;
use crate::BgpError;

/// RFC 4271 session states (numbered 0..5 in the `padis_bgp_session_state` metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// Not connected; waiting to retry.
    Idle,
    /// Connecting.
    Connect,
    /// Waiting for a passive peer to connect.
    Active,
    /// Our OPEN sent, waiting for the peer's.
    OpenSent,
    /// OPENs exchanged, waiting for the KEEPALIVE.
    OpenConfirm,
    /// Routes flow.
    Established,
}

/// One peer in a [`BgpReport`].
#[derive(Debug, Clone, Serialize)]
pub struct PeerReport {
    /// Router address.
    pub address: IpAddr,
    /// Router AS.
    pub asn: u32,
    /// Session state.
    pub state: SessionState,
    /// Seconds since the session was established (when established).
    pub uptime_secs: Option<u64>,
    /// Times an established session went down.
    pub flaps: u64,
    /// Prefixes announced on the session now.
    pub routes_announced: usize,
    /// Negotiated hold time (when established).
    pub hold_time_secs: Option<u16>,
    /// Whether GRACEFUL_SHUTDOWN is being announced.
    pub draining: bool,
    /// Why the session last went down or failed.
    pub last_error: Option<String>,
    /// The BFD session, for peers with `bfd = true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bfd: Option<BfdReport>,
}

/// The kernel-route writer in a [`BgpReport`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct OspfReport {
    /// Host routes (or addresses) installed now.
    pub routes_installed: usize,
    /// Last failure of `ip`, if any.
    pub last_error: Option<String>,
}

/// What the announcer is doing, for `padis status` and `/v1/state`.
#[derive(Debug, Clone, Serialize)]
pub struct BgpReport {
    /// BGP sessions.
    pub peers: Vec<PeerReport>,
    /// OSPF kernel routes, if `[ospf]` is set.
    pub ospf: Option<OspfReport>,
}

#[derive(Debug)]
struct Inner {
    report: PeerReport,
    since: Option<Instant>,
}

/// Shared status of one peer: written by its session task, read by [`crate::AnnouncerHandle::report`].
#[derive(Debug, Clone)]
pub(crate) struct PeerStatus {
    inner: Arc<Mutex<Inner>>,
    m: Metrics,
    label: String,
    bfd: Option<tokio::sync::watch::Receiver<BfdReport>>,
}

impl PeerStatus {
    pub(crate) fn new(
        address: IpAddr,
        asn: u32,
        m: Metrics,
        bfd: Option<tokio::sync::watch::Receiver<BfdReport>>,
    ) -> Self {
        let report = PeerReport {
            address,
            asn,
            state: SessionState::Idle,
            uptime_secs: None,
            flaps: 0,
            routes_announced: 0,
            hold_time_secs: None,
            draining: false,
            last_error: None,
            bfd: None,
        };
        let label = address.to_string();
        m.state.with_label_values(&[&label]).set(0);
        m.routes.with_label_values(&[&label]).set(0);
        m.flaps.with_label_values(&[&label]).reset();
        Self { inner: Arc::new(Mutex::new(Inner { report, since: None })), m, label, bfd }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_state(&self, s: SessionState) {
        let mut i = self.lock();
        i.report.state = s;
        if s == SessionState::Established {
            i.since = Some(Instant::now());
        } else {
            i.since = None;
            if s != SessionState::OpenConfirm {
                i.report.hold_time_secs = None;
            }
        }
        self.m.state.with_label_values(&[&self.label]).set(s as i64);
    }

    pub(crate) fn set_hold(&self, secs: u16) {
        self.lock().report.hold_time_secs = Some(secs);
    }

    pub(crate) fn set_routes(&self, n: usize, draining: bool) {
        let mut i = self.lock();
        i.report.routes_announced = n;
        i.report.draining = draining;
        self.m.routes.with_label_values(&[&self.label]).set(n as i64);
    }

    pub(crate) fn down(&self, error: Option<String>, was_established: bool) {
        let mut i = self.lock();
        if was_established {
            i.report.flaps += 1;
            self.m.flaps.with_label_values(&[&self.label]).inc();
        }
        if error.is_some() {
            i.report.last_error = error;
        }
        drop(i);
        self.set_routes(0, false);
        self.set_state(SessionState::Idle);
    }

    pub(crate) fn sent_updates(&self, n: usize) {
        self.m.updates.with_label_values(&[&self.label]).inc_by(n as u64);
    }

    pub(crate) fn report(&self) -> PeerReport {
        let i = self.lock();
        let mut r = i.report.clone();
        r.uptime_secs = i.since.map(|t| t.elapsed().as_secs());
        r.bfd = self.bfd.as_ref().map(|b| b.borrow().clone());
        r
    }
}

/// The announcer's Prometheus metrics.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    state: IntGaugeVec,
    routes: IntGaugeVec,
    flaps: IntCounterVec,
    updates: IntCounterVec,
    pub(crate) ospf_routes: IntGauge,
    /// 1 while a peer's BFD session is Up.
    pub(crate) bfd_up: IntGaugeVec,
    /// BFD state changes per peer and new state.
    pub(crate) bfd_transitions: IntCounterVec,
    /// Received BFD datagrams dropped, by reason.
    pub(crate) bfd_dropped: IntCounterVec,
}

impl Metrics {
    pub(crate) fn register(r: &Registry) -> Result<Self, BgpError> {
        let state = IntGaugeVec::new(
            Opts::new(
                "padis_bgp_session_state",
                "BGP session state per peer: 0 idle, 1 connect, 2 active, 3 opensent, 4 openconfirm, 5 established",
            ),
            &["peer"],
        )?;
        let routes =
            IntGaugeVec::new(Opts::new("padis_bgp_routes_announced", "Prefixes announced per peer"), &["peer"])?;
        let flaps = IntCounterVec::new(
            Opts::new("padis_bgp_session_flaps_total", "Established BGP sessions that went down"),
            &["peer"],
        )?;
        let updates =
            IntCounterVec::new(Opts::new("padis_bgp_updates_sent_total", "UPDATE messages sent per peer"), &["peer"])?;
        let ospf_routes = IntGauge::new("padis_ospf_routes_installed", "VIP host routes or addresses in the kernel")?;
        let bfd_up =
            IntGaugeVec::new(Opts::new("padis_bfd_session_up", "1 while the peer's BFD session is Up"), &["peer"])?;
        let bfd_transitions = IntCounterVec::new(
            Opts::new(
                "padis_bfd_transitions_total",
                "BFD session state changes per peer, by new state (admindown, down, init, up)",
            ),
            &["peer", "to"],
        )?;
        let bfd_dropped = IntCounterVec::new(
            Opts::new(
                "padis_bfd_packets_dropped_total",
                "Received BFD packets dropped: ttl (not 255), malformed, discriminator (unknown Your Discriminator), unknown_peer",
            ),
            &["reason"],
        )?;
        register(r, &bfd_up)?;
        register(r, &bfd_transitions)?;
        register(r, &bfd_dropped)?;
        register(r, &state)?;
        register(r, &routes)?;
        register(r, &flaps)?;
        register(r, &updates)?;
        register(r, &ospf_routes)?;
        Ok(Self { state, routes, flaps, updates, ospf_routes, bfd_up, bfd_transitions, bfd_dropped })
    }
}

/// Registers `c`, replacing a collector of the same name from an earlier announcer (config reload re-spawns).
fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: &C) -> Result<(), BgpError> {
    match r.register(Box::new(c.clone())) {
        Err(prometheus::Error::AlreadyReg) => {
            r.unregister(Box::new(c.clone()))?;
            r.register(Box::new(c.clone()))?;
            Ok(())
        }
        other => Ok(other?),
    }
}

impl std::fmt::Display for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SessionState::Idle => "idle",
            SessionState::Connect => "connect",
            SessionState::Active => "active",
            SessionState::OpenSent => "opensent",
            SessionState::OpenConfirm => "openconfirm",
            SessionState::Established => "established",
        })
    }
}

/// One line per peer (and one for OSPF), for `padis status`.
impl std::fmt::Display for BgpReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.peers {
            write!(f, "bgp peer {} AS{} {}", p.address, p.asn, p.state)?;
            if let Some(up) = p.uptime_secs {
                write!(f, " up {}h{:02}m{:02}s", up / 3600, up / 60 % 60, up % 60)?;
            }
            write!(f, " routes {} flaps {}", p.routes_announced, p.flaps)?;
            if p.draining {
                f.write_str(" draining")?;
            }
            if let Some(b) = &p.bfd {
                write!(f, " bfd {}", b.state)?;
                if b.state != crate::bfd::State::Up {
                    write!(f, " ({:?})", b.diag)?;
                }
                write!(f, " failures {}", b.failures)?;
            }
            if let Some(e) = &p.last_error {
                write!(f, " (last error: {e})")?;
            }
            writeln!(f)?;
        }
        if let Some(o) = &self.ospf {
            write!(f, "ospf kernel routes {}", o.routes_installed)?;
            if let Some(e) = &o.last_error {
                write!(f, " (last error: {e})")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_can_be_registered_again_after_a_reload() {
        let r = Registry::new();
        let a = Metrics::register(&r).unwrap();
        a.ospf_routes.set(3);
        let b = Metrics::register(&r).unwrap();
        b.ospf_routes.set(5);
        let v: Vec<f64> = r
            .gather()
            .iter()
            .filter(|f| f.name() == "padis_ospf_routes_installed")
            .map(|f| f.get_metric()[0].get_gauge().value())
            .collect();
        assert_eq!(v, vec![5.0]);
    }

    #[test]
    fn report_prints_one_line_per_peer() {
        let m = Metrics::register(&Registry::new()).unwrap();
        let p = PeerStatus::new("192.0.2.1".parse().unwrap(), 65000, m, None);
        p.set_state(SessionState::Established);
        p.set_routes(3, true);
        let r = BgpReport { peers: vec![p.report()], ospf: Some(OspfReport { routes_installed: 2, last_error: None }) };
        assert_eq!(
            r.to_string(),
            "bgp peer 192.0.2.1 AS65000 established up 0h00m00s routes 3 flaps 0 draining\nospf kernel routes 2\n"
        );
    }

    #[test]
    fn bfd_state_is_reported_per_peer() {
        use crate::bfd::{Diag, State};
        let m = Metrics::register(&Registry::new()).unwrap();
        let (tx, rx) = tokio::sync::watch::channel(BfdReport {
            state: State::Up,
            remote_state: State::Up,
            diag: Diag::None,
            remote_diag: Diag::None,
            local_discriminator: 7,
            remote_discriminator: 9,
            tx_interval_ms: 300,
            detection_time_ms: 900,
            failures: 1,
        });
        let p = PeerStatus::new("192.0.2.1".parse().unwrap(), 65000, m, Some(rx));
        p.set_state(SessionState::Established);
        let report = |p: &PeerStatus| BgpReport { peers: vec![p.report()], ospf: None };
        assert_eq!(
            report(&p).to_string(),
            "bgp peer 192.0.2.1 AS65000 established up 0h00m00s routes 0 flaps 0 bfd up failures 1\n"
        );
        let v = serde_json::to_value(report(&p)).unwrap();
        let b = &v["peers"][0]["bfd"];
        assert_eq!((b["state"].as_str(), b["diag"].as_str()), (Some("up"), Some("none")));
        assert_eq!(b["detection_time_ms"], 900);
        tx.send_modify(|b| {
            b.state = State::Down;
            b.diag = Diag::DetectionTimeExpired;
        });
        assert!(report(&p).to_string().contains(" bfd down (DetectionTimeExpired) failures 1"));
        let v = serde_json::to_value(report(&p)).unwrap();
        assert_eq!(v["peers"][0]["bfd"]["diag"], "detection_time_expired");
    }
}
