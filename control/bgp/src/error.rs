//! Error types of the announcer.

use std::net::IpAddr;

/// Why the announcer could not start.
#[derive(Debug, thiserror::Error)]
pub enum BgpError {
    /// A metric could not be registered (e.g. a different metric of the same name exists).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The listening socket for passive peers could not be opened.
    #[error("cannot listen on {addr} for passive peers: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A passive peer's TCP MD5 key or GTSM could not be set on the listening socket.
    #[error("listening socket for passive peer {peer}: {what}: {source}")]
    ListenOption {
        /// The peer.
        peer: IpAddr,
        /// Which option (`TCP MD5 key`, `GTSM`).
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// BFD sockets could not be opened.
    #[error("bfd: {0}")]
    Bfd(#[from] crate::bfd::BfdError),
    /// Must be called inside a tokio runtime.
    #[error("Announcer::spawn must run inside a tokio runtime")]
    NoRuntime,
}

/// Why a session ended (logged, counted as a flap when it was established).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Socket error or connection closed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A transport option (TCP MD5 key, GTSM) could not be set on the session's socket.
    #[error("{what}: {source}")]
    SocketOption {
        /// Which option.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// Could not connect in time.
    #[error("connect to {0} timed out")]
    ConnectTimeout(IpAddr),
    /// The peer sent something malformed; we sent it a NOTIFICATION.
    #[error("malformed message from peer: {0}")]
    Decode(#[from] rustbgpd_wire::DecodeError),
    /// The peer's OPEN was unacceptable; we sent it a NOTIFICATION.
    #[error("OPEN rejected: {0}")]
    BadOpen(String),
    /// The peer sent a message not allowed in the current state; we sent FSM error.
    #[error("unexpected {0} in state {1}")]
    Fsm(&'static str, &'static str),
    /// The peer closed the session with a NOTIFICATION.
    #[error("peer sent NOTIFICATION {code}/{subcode} ({text})")]
    PeerNotification {
        /// Error code.
        code: u8,
        /// Subcode.
        subcode: u8,
        /// Description.
        text: &'static str,
    },
    /// No message from the peer within the hold time; we sent Hold Timer Expired.
    #[error("hold timer expired")]
    HoldTimerExpired,
    /// The peer did not read what we sent for too long (RFC 9687).
    #[error("send hold timer expired: the peer stopped reading")]
    SendHoldTimerExpired,
    /// A message could not be encoded (a bug or an impossible route set).
    #[error("encode: {0}")]
    Encode(#[from] rustbgpd_wire::EncodeError),
    /// The BFD session with the peer failed; we sent Cease / BFD Down (RFC 9384) and closed.
    #[error("BFD session down")]
    BfdDown,
    /// The session was stopped by us (drain/stop).
    #[error("stopped")]
    Stopped,
}
