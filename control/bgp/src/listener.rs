//! Accepts connections from passive peers (`passive = true`) and hands each to its peer's session.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use padis_model::bgp::BgpConfig;
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

/// Binds `local_address:listen_port` (or the wildcard of the first passive peer's family).
pub(crate) fn bind(
    cfg: &BgpConfig,
    passive: Vec<(IpAddr, mpsc::Sender<TcpStream>)>,
) -> Result<Listener, BgpError> {
    let v6 = passive.iter().any(|(a, _)| a.is_ipv6());
    let ip = cfg.local_address.unwrap_or(if v6 {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    });
    let addr = SocketAddr::new(ip, cfg.listen_port);
    let std = std::net::TcpListener::bind(addr).and_then(|l| {
        l.set_nonblocking(true)?;
        Ok(l)
    });
    let sock = std
        .and_then(TcpListener::from_std)
        .map_err(|source| BgpError::Listen { addr, source })?;
    Ok(Listener {
        sock,
        peers: passive.into_iter().collect(),
    })
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
