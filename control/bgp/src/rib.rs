//! Per-session output: the writer (with the send hold timer), next hops per family, and the Adj-RIB-Out
//! that turns the wanted prefix set into UPDATE diffs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use padis_model::bgp::BgpPeer;
use rustbgpd_wire::Message;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;
use tracing::warn;

use crate::error::SessionError;
use crate::status::PeerStatus;
use crate::wire::{self, PathParams, PeerOpen};

/// The write half, counting UPDATEs.
pub(crate) struct Writer {
    pub(crate) wr: Box<dyn AsyncWrite + Unpin + Send>,
    pub(crate) status: PeerStatus,
    pub(crate) timeout: Duration,
}

impl Writer {
    pub(crate) async fn send(&mut self, m: &Message) -> Result<(), SessionError> {
        let b = wire::encode(m)?;
        match timeout(self.timeout, self.wr.write_all(&b)).await {
            Ok(r) => r?,
            Err(_) => return Err(SessionError::SendHoldTimerExpired),
        }
        if matches!(m, Message::Update(_)) {
            self.status.sent_updates(1);
        }
        Ok(())
    }
}

/// Next hops per family for this session.
#[derive(Debug, Clone)]
pub(crate) struct Nexthops {
    v4: Option<std::net::Ipv4Addr>,
    v6: Option<std::net::Ipv6Addr>,
}

impl Nexthops {
    pub(crate) fn new(p: &BgpPeer, local: IpAddr) -> Self {
        let v4 = match (p.next_hop, local) {
            (Some(IpAddr::V4(a)), _) => Some(a),
            (_, IpAddr::V4(a)) => Some(a),
            _ => None,
        };
        let v6 = match (p.next_hop6, p.next_hop, local) {
            (Some(a), _, _) => Some(a),
            (_, Some(IpAddr::V6(a)), _) => Some(a),
            (_, _, IpAddr::V6(a)) => a.to_ipv4_mapped().is_none().then_some(a),
            _ => None,
        };
        Self { v4, v6 }
    }
}

/// What we have announced on this session (prefix -> announced while draining).
#[derive(Debug, Default)]
pub(crate) struct Rib {
    pub(crate) out: BTreeMap<IpNet, bool>,
    warned: bool,
}

impl Rib {
    /// Sends the UPDATEs that turn `out` into `want` (restricted to what the session can carry); prefixes
    /// announced with the other drain state are re-announced with the current attributes.
    pub(crate) async fn sync(
        &mut self,
        w: &mut Writer,
        want: BTreeSet<IpNet>,
        po: &PeerOpen,
        nh: &Nexthops,
        path: PathParams,
        draining: bool,
    ) -> Result<(), SessionError> {
        let can = |p: &IpNet| match p {
            IpNet::V4(_) => po.ipv4 && nh.v4.is_some(),
            IpNet::V6(_) => po.ipv6 && nh.v6.is_some(),
        };
        let skipped = want.iter().filter(|p| !can(p)).count();
        if skipped > 0 && !self.warned {
            warn!(skipped, "BGP: some VIPs cannot be announced on this session (family not negotiated or no next hop)");
            self.warned = true;
        }
        let want: BTreeSet<IpNet> = want.into_iter().filter(can).collect();
        // New prefixes, and those announced with the other (draining or not) attributes.
        let add: Vec<IpNet> = want.iter().filter(|p| self.out.get(p) != Some(&draining)).copied().collect();
        let del: Vec<IpNet> = self.out.keys().filter(|p| !want.contains(p)).copied().collect();
        let (a4, a6) = split(&add);
        let (d4, d6) = split(&del);
        let mut msgs = Vec::new();
        if let Some(n) = nh.v4 {
            msgs.extend(wire::updates_v4(&a4, &d4, n, &path)?);
        }
        if let Some(n) = nh.v6 {
            msgs.extend(wire::updates_v6(&a6, &d6, n, &path)?);
        }
        for m in &msgs {
            w.send(m).await?;
        }
        for p in del {
            self.out.remove(&p);
        }
        for p in add {
            self.out.insert(p, draining);
        }
        w.status.set_routes(self.out.len(), draining);
        Ok(())
    }
}

fn split(v: &[IpNet]) -> (Vec<ipnet::Ipv4Net>, Vec<ipnet::Ipv6Net>) {
    let mut a = Vec::new();
    let mut b = Vec::new();
    for p in v {
        match p {
            IpNet::V4(n) => a.push(*n),
            IpNet::V6(n) => b.push(*n),
        }
    }
    (a, b)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::status::Metrics;

    fn peer_open(ipv6: bool) -> PeerOpen {
        PeerOpen { asn: 65000, hold_secs: 9, router_id: Ipv4Addr::new(10, 0, 0, 2), four_octet: true, ipv4: true, ipv6 }
    }

    fn path(draining: bool) -> PathParams {
        PathParams {
            local_asn: 4_200_000_001,
            ebgp: true,
            four_octet: true,
            med: None,
            local_pref: None,
            communities: if draining { vec![wire::GRACEFUL_SHUTDOWN] } else { vec![] },
        }
    }

    fn nets(list: &[&str]) -> BTreeSet<IpNet> {
        list.iter().map(|p| p.parse().unwrap()).collect()
    }

    /// Runs `sync` and returns the UPDATEs it wrote (announced / withdrawn prefix counts per message).
    async fn sync(
        rib: &mut Rib,
        w: &mut Writer,
        rd: &mut tokio::io::DuplexStream,
        want: &[&str],
        draining: bool,
        v6: bool,
    ) -> Vec<(usize, usize)> {
        let nh = Nexthops { v4: Some(Ipv4Addr::new(10, 0, 0, 1)), v6: Some("2001:db8::1".parse().unwrap()) };
        rib.sync(w, nets(want), &peer_open(v6), &nh, path(draining), draining).await.unwrap();
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let n = tokio::time::timeout(Duration::from_millis(50), rd.read(&mut buf)).await;
            let Ok(Ok(n)) = n else { break };
            out.extend_from_slice(&buf[..n]);
        }
        let mut r = &out[..];
        let mut msgs = Vec::new();
        while !r.is_empty() {
            let Message::Update(u) = wire::read_message(&mut r).await.unwrap() else { panic!("not an UPDATE") };
            let p = u.parse(true, false, &[]).unwrap();
            let mp_a: usize = p
                .attributes
                .iter()
                .map(|a| match a {
                    rustbgpd_wire::attribute::PathAttribute::MpReachNlri(m) => m.announced.len(),
                    _ => 0,
                })
                .sum();
            let mp_w: usize = p
                .attributes
                .iter()
                .map(|a| match a {
                    rustbgpd_wire::attribute::PathAttribute::MpUnreachNlri(m) => m.withdrawn.len(),
                    _ => 0,
                })
                .sum();
            msgs.push((p.announced.len() + mp_a, p.withdrawn.len() + mp_w));
        }
        msgs
    }

    #[tokio::test]
    async fn only_differences_are_sent() {
        let (a, mut rd) = tokio::io::duplex(1 << 20);
        let status = PeerStatus::new(
            "10.0.0.2".parse().unwrap(),
            65000,
            Metrics::register(&prometheus::Registry::new()).unwrap(),
            None,
        );
        let mut w = Writer { wr: Box::new(a), status, timeout: Duration::from_secs(5) };
        let mut rib = Rib::default();
        assert_eq!(
            sync(&mut rib, &mut w, &mut rd, &["198.51.100.1/32", "198.51.100.2/32"], false, true).await,
            vec![(2, 0)]
        );
        // Same set: nothing on the wire.
        assert_eq!(sync(&mut rib, &mut w, &mut rd, &["198.51.100.1/32", "198.51.100.2/32"], false, true).await, vec![]);
        // One out, one in: one withdraw, one announce.
        assert_eq!(
            sync(&mut rib, &mut w, &mut rd, &["198.51.100.2/32", "198.51.100.3/32"], false, true).await,
            vec![(0, 1), (1, 0)]
        );
        // IPv6 goes by MP_REACH.
        assert_eq!(
            sync(&mut rib, &mut w, &mut rd, &["198.51.100.2/32", "198.51.100.3/32", "2001:db8::7/128"], false, true)
                .await,
            vec![(1, 0)]
        );
        // Drain: everything re-announced once with the other attributes, then nothing more.
        assert_eq!(
            sync(&mut rib, &mut w, &mut rd, &["198.51.100.2/32", "198.51.100.3/32", "2001:db8::7/128"], true, true)
                .await,
            vec![(2, 0), (1, 0)]
        );
        assert_eq!(
            sync(&mut rib, &mut w, &mut rd, &["198.51.100.2/32", "198.51.100.3/32", "2001:db8::7/128"], true, true)
                .await,
            vec![]
        );
        // Everything away (stop).
        assert_eq!(sync(&mut rib, &mut w, &mut rd, &[], true, true).await, vec![(0, 2), (0, 1)]);
        assert!(rib.out.is_empty());
    }

    #[tokio::test]
    async fn families_the_peer_did_not_negotiate_are_not_sent() {
        let (a, mut rd) = tokio::io::duplex(1 << 20);
        let status = PeerStatus::new(
            "10.0.0.2".parse().unwrap(),
            65000,
            Metrics::register(&prometheus::Registry::new()).unwrap(),
            None,
        );
        let mut w = Writer { wr: Box::new(a), status, timeout: Duration::from_secs(5) };
        let mut rib = Rib::default();
        assert_eq!(
            sync(&mut rib, &mut w, &mut rd, &["198.51.100.1/32", "2001:db8::7/128"], false, false).await,
            vec![(1, 0)]
        );
        assert_eq!(rib.out.len(), 1);
    }
}
