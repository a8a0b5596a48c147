//! Errors of the L7 plane.

use std::net::SocketAddr;

/// Why the L7 plane could not start (or apply part of a snapshot).
#[derive(Debug, thiserror::Error)]
pub enum L7Error {
    /// A listener's address could not be bound.
    #[error("listener `{name}`: cannot bind {addr}: {source}")]
    Bind {
        /// Listener name.
        name: String,
        /// Address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Metrics could not be registered (e.g. registered twice in the same registry).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A TLS configuration could not be built.
    #[error("tls: {0}")]
    Tls(String),
}
