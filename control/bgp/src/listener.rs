//! Accepts connections from passive peers (`passive = true`) and hands each to its peer's session.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use padis_model::bgp::{BgpConfig, BgpPeer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::session::Phase;
use crate::BgpError;

/// The listening socket and where accepted connections go.
pub(crate) struct Listener {
    sock: TcpListener,
    peers: HashMap<IpAddr, mpsc::Sender<TcpStream>>,
}

/// Binds `local_address:listen_port` (or, with no `local_address`, the wildcard of the passive peers' family),
/// with each passive peer's TCP MD5 key installed for its address; GTSM's minimum TTL applies to the whole
/// socket, so it is set there only when every passive peer uses GTSM (else on each accepted connection).
pub(crate) fn bind(cfg: &BgpConfig, passive: Vec<(BgpPeer, mpsc::Sender<TcpStream>)>) -> Result<Listener, BgpError> {
    let v6 = passive.iter().any(|(p, _)| p.address.is_ipv6());
    let ip = cfg.local_address.unwrap_or(if v6 { Ipv6Addr::UNSPECIFIED.into() } else { Ipv4Addr::UNSPECIFIED.into() });
    let addr = SocketAddr::new(ip, cfg.listen_port);
    let std = std::net::TcpListener::bind(addr).and_then(|l| {
        l.set_nonblocking(true)?;
        Ok(l)
    });
    let std = std.map_err(|source| BgpError::Listen { addr, source })?;
    for (p, _) in &passive {
        if let Some(key) = &p.password {
            crate::sockopt::set_md5(&std, p.address, key.expose().as_bytes())
                .map_err(|source| BgpError::ListenOption { peer: p.address, what: "TCP MD5 key", source })?;
        }
    }
    if let Some((p, _)) = passive.first().filter(|_| passive.iter().all(|(p, _)| p.gtsm)) {
        crate::sockopt::set_gtsm(&std, p.address).map_err(|source| BgpError::ListenOption {
            peer: p.address,
            what: "GTSM",
            source,
        })?;
    }
    let sock = TcpListener::from_std(std).map_err(|source| BgpError::Listen { addr, source })?;
    Ok(Listener { sock, peers: passive.into_iter().map(|(p, tx)| (p.address, tx)).collect() })
}

impl Listener {
    pub(crate) async fn run(self, mut phase: watch::Receiver<Phase>) {
        loop {
            tokio::select! {
                r = self.sock.accept() => match r {
                    Ok((s, from)) => {
                        let ip = canonical(from.ip());
                        match self.peers.get(&ip) {
                            // A session already in progress keeps its connection: the new one is dropped.
                            Some(tx) => if tx.try_send(s).is_err() { debug!(%from, "BGP: peer busy, connection dropped") },
                            None => debug!(%from, "BGP: connection from unknown address refused"),
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "BGP: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                },
                r = phase.changed() => if r.is_err() || *phase.borrow() == Phase::Stop { return },
            }
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}
