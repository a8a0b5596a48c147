//! Single-hop BFD (RFC 5880 asynchronous mode over RFC 5881 UDP) for the BGP peers with `bfd = true`.
//!
//! [`packet`] is the Control packet codec, `session` the per-peer state machine, `socket` the UDP sockets (port
//! 3784, source ports 49152-65535, TTL 255 sent and required), `speaker` the task that runs every session, on a
//! thread of its own (a busy or stalled daemon runtime must not delay a packet past the router's detection time).
//! A BGP session holds a [`BfdLink`]: when its BFD session fails (an Up session goes Down for any reason other
//! than the router's AdminDown, RFC 5882), the BGP session is torn down at once; when Padis stops, the BFD
//! session is put AdminDown once the router has taken BGP's Cease, so the router does not count a failure.

pub mod packet;
mod session;
mod socket;
mod speaker;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

pub use packet::{ControlPacket, Diag, PacketError, State};
pub use socket::{CONTROL_PORT, GTSM_TTL};

pub(crate) use session::Timers;
pub(crate) use speaker::start;

/// Why BFD could not start.
#[derive(Debug, thiserror::Error)]
pub enum BfdError {
    /// The receiving socket (UDP 3784) could not be opened.
    #[error("cannot listen for BFD on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A session's sending socket could not be opened.
    #[error("cannot open the BFD socket towards {peer}: {source}")]
    Sender {
        /// The router.
        peer: IpAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The BFD thread or its runtime could not be started.
    #[error("cannot start the BFD thread: {0}")]
    Thread(std::io::Error),
}

/// The BFD session of one BGP peer, as shown by `padis status` and `/v1/state`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BfdReport {
    /// Our state.
    pub state: State,
    /// The router's state as it last told us.
    pub remote_state: State,
    /// Our diagnostic (why we last went down).
    pub diag: Diag,
    /// The router's diagnostic.
    pub remote_diag: Diag,
    /// Our discriminator.
    pub local_discriminator: u32,
    /// The router's discriminator (0 until heard, or after the detection time expired).
    pub remote_discriminator: u32,
    /// Current periodic transmission interval (ms).
    pub tx_interval_ms: u64,
    /// Current detection time (ms; 0 before the router was heard).
    pub detection_time_ms: u64,
    /// Times the Up session failed (detection time expired or the router said Down).
    pub failures: u64,
}

/// What a BGP session asks of the BFD task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Put the peer's session AdminDown and send it at once; answer when sent.
    AdminDown { peer: usize, done: oneshot::Sender<()> },
}

/// A BGP session's handle on its BFD session.
#[derive(Debug, Clone)]
pub(crate) struct BfdLink {
    index: usize,
    status: watch::Receiver<BfdReport>,
    cmds: mpsc::Sender<Command>,
}

impl BfdLink {
    /// A watcher of the session's report (for [`failed_after`] and the peer's status).
    pub(crate) fn watch(&self) -> watch::Receiver<BfdReport> {
        self.status.clone()
    }

    /// Puts the session AdminDown (diag 7) and waits until that was sent (at most 1 s).
    pub(crate) async fn admin_down(&self) {
        let (done, wait) = oneshot::channel();
        let cmd = Command::AdminDown { peer: self.index, done };
        if self.cmds.send(cmd).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), wait).await;
        }
    }
}

/// Resolves once the session's failure count exceeds `seen`; never when `rx` is `None` or the task ended.
pub(crate) async fn failed_after(rx: Option<&mut watch::Receiver<BfdReport>>, seen: u64) {
    let Some(rx) = rx else {
        return std::future::pending().await;
    };
    loop {
        if rx.borrow_and_update().failures > seen {
            return;
        }
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}
