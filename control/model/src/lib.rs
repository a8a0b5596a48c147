//! The Padis desired-state model.
//!
//! One TOML file (plus dynamic sources such as Marathon, merged by `padis-control`) describes everything Padis
//! serves. This crate parses it ([`parse_config`], [`load_config`]), validates it with `file:line:col` errors
//! ([`ConfigErrors`]), and wraps a valid state into an immutable [`Snapshot`] that [`SnapshotStore`] publishes
//! through `arc-swap` to the data planes, which only ever read it. [`handover`] keeps the process's listening
//! sockets for an upgrade.

pub mod bgp;
pub mod config;
pub mod dns;
mod error;
pub mod handover;
pub mod headers;
pub mod l4;
mod locate;
pub mod marathon;
pub mod secret;
pub mod service;
mod snapshot;
mod store;
pub mod tls;
mod validate;

pub use config::*;
pub use error::{ConfigError, ConfigErrors};
pub use headers::{HeaderRules, Hsts, RequestIdConfig};
pub use secret::Secret;
pub use service::{Instance, Service, ServicePort};
pub use snapshot::{Snapshot, SourceStatus};
pub use store::{SnapshotReader, SnapshotStore};
pub use validate::{load_config, parse_config, validate_state, validate_update, Valid, Validator};
