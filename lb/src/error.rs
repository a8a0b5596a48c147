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
    /// rustls refused a configuration (protocol versions, session tickets).
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// A certificate's private key cannot be used for signing.
    #[error("tls: certificate `{name}`: {source}")]
    CertificateKey {
        /// Certificate name.
        name: String,
        /// Why rustls refused the key.
        #[source]
        source: rustls::Error,
    },
    /// The client TLS configuration towards a group's backends cannot be built (CA file, protocol versions).
    #[error("tls: {0}")]
    UpstreamTls(#[from] padis_balance::health::TransportError),
    /// A listener's client authentication cannot be set up (CA bundle, CRL, subject header).
    #[error("tls: client_auth: {message}")]
    ClientAuth {
        /// What is wrong, with the file.
        message: String,
    },
    /// A group's TLS `server_name` is not a DNS name or an IP address.
    #[error("tls: group `{group}`: server_name `{name}`: {source}")]
    ServerName {
        /// Group name.
        group: String,
        /// The configured server name.
        name: String,
        /// Why it is not a server name.
        #[source]
        source: rustls_pki_types::InvalidDnsNameError,
    },
}
