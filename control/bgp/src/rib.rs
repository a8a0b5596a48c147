//! Per-session output: the writer (with the send hold timer), next hops per family, and the Adj-RIB-Out
//! that turns the wanted prefix set into UPDATE diffs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use padis_model::bgp::BgpPeer;
use rustbgpd_wire::Message;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::time::timeout;
use tracing::warn;

use crate::error::SessionError;
use crate::status::PeerStatus;
use crate::wire::{self, PathParams, PeerOpen};

/// The write half, counting UPDATEs.
pub(crate) struct Writer {
    pub(crate) wr: OwnedWriteHalf,
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
        let add: Vec<IpNet> = want
            .iter()
            .filter(|p| self.out.get(p) != Some(&draining))
            .copied()
            .collect();
        let del: Vec<IpNet> = self
            .out
            .keys()
            .filter(|p| !want.contains(p))
            .copied()
            .collect();
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
