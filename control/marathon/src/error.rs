//! Errors of the Marathon source.

use thiserror::Error;

/// What can go wrong talking to Marathon.
#[derive(Debug, Error)]
pub enum MarathonError {
    /// The `[marathon]` section cannot be used (bad URL, CA file, missing secret).
    #[error("marathon config: {0}")]
    Config(String),
    /// No Marathon URL answered (connection refused, timeout, TLS failure).
    #[error("{url}: {message}")]
    Unreachable {
        /// URL tried last.
        url: String,
        /// Why.
        message: String,
    },
    /// Marathon answered with an unexpected status (401/403: credentials rejected).
    #[error("{url}: HTTP {status}")]
    Status {
        /// URL.
        url: String,
        /// HTTP status.
        status: u16,
    },
    /// Every URL was a non-leader that could not serve the request (503), or redirects looped.
    #[error("no Marathon leader: {0}")]
    NoLeader(String),
    /// The body was larger than `max_body_bytes`.
    #[error("{url}: body larger than {limit} bytes")]
    TooLarge {
        /// URL.
        url: String,
        /// Limit.
        limit: usize,
    },
    /// The body was not Marathon's JSON.
    #[error("{url}: malformed JSON: {source}")]
    Json {
        /// URL.
        url: String,
        /// Parser error.
        source: serde_json::Error,
    },
    /// The event stream ended or went silent.
    #[error("event stream: {0}")]
    Stream(String),
}
