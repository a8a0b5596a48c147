//! Errors of the ECMP harness.

use std::time::Duration;

/// What went wrong while building or driving the ECMP scenario (not a counted connection break).
#[derive(Debug, thiserror::Error)]
pub enum EcmpError {
    /// A namespace, link, sysctl or process could not be set up.
    #[error("setup: {0}")]
    Setup(String),
    /// A condition was not reached in time.
    #[error("timed out after {limit:?} waiting for {what}")]
    Timeout {
        /// The awaited condition.
        what: String,
        /// How long we waited.
        limit: Duration,
    },
    /// An I/O operation of the harness failed.
    #[error("{what}: {source}")]
    Io {
        /// The operation.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A Padis node misbehaved (exited early, admin API unreachable, ...).
    #[error("padis node {node}: {msg}")]
    Node {
        /// Node index (0-based).
        node: usize,
        /// What happened, with the tail of its log.
        msg: String,
    },
}

impl From<String> for EcmpError {
    fn from(s: String) -> Self {
        EcmpError::Setup(s)
    }
}

impl EcmpError {
    /// An [`EcmpError::Io`] for `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        EcmpError::Io { what: what.into(), source }
    }
}
