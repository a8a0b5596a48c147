//! Padis L7: the HTTP reverse proxy data plane.
//!
//! [`L7Plane::start`] serves every `[[listener]]` of the snapshots it reads (HTTP/1.1, h2c, TLS with SNI and
//! ALPN via rustls), routes requests by host and path prefix to backend groups, picks a backend with
//! `padis-balance`, forwards over pooled HTTP/1.1 or HTTP/2 connections (retries, timeouts, WebSocket upgrades),
//! enforces client limits, reports passive health and exports Prometheus metrics. Plain HTTP/1.1 (plaintext or
//! over TLS) runs on an event-loop fast path (`fast`), which hands anything else to the hyper path. New snapshots
//! change listeners, routes, groups and certificates with no reload and no dropped connection. It only reads
//! snapshots.

mod access;
mod admission;
mod body;
mod conn;
mod error;
mod fast;
mod forward;
#[cfg(all(feature = "fuzzing", not(test)))]
#[doc(hidden)]
pub mod fuzzing;
mod h2watch;
mod headers;
mod io;
mod listener;
mod metrics;
mod plane;
mod policy;
mod proxy_protocol;
mod ratelimit;
mod relay;
mod routes;
mod runtime;
mod streams;
mod tcp;
mod tls;
mod upstream;

pub use error::L7Error;
pub use plane::{L7Handle, L7Plane};
