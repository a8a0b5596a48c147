//! The immutable, validated state the data planes read.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::tls::CertMaterial;
use crate::validate::Valid;
use crate::DesiredState;

/// Freshness of one source of desired state, shown by `/v1/state` and `padis status`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SourceStatus {
    /// Source name (`config`, `marathon`).
    pub name: String,
    /// Whether the last attempt to read the source succeeded.
    pub ok: bool,
    /// Last successful read, ms since the epoch.
    pub last_ok_unix_ms: Option<u64>,
    /// Last error, if the last attempt failed.
    pub last_error: Option<String>,
}

/// One published generation of desired state. Immutable: a change is a new snapshot.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// Increases by one with every publication.
    pub generation: u64,
    /// When it was published, ms since the epoch.
    pub created_unix_ms: u64,
    /// The config file it came from, if any.
    pub config_path: Option<String>,
    /// Source freshness.
    pub sources: Vec<SourceStatus>,
    /// The validated desired state.
    pub state: DesiredState,
    /// Loaded certificates, in `state.certificates` order.
    pub certificates: Vec<Arc<CertMaterial>>,
}

impl Snapshot {
    /// Wraps a validated state as generation `generation`.
    pub fn new(valid: Valid, generation: u64, sources: Vec<SourceStatus>) -> Snapshot {
        Snapshot {
            generation,
            created_unix_ms: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
            config_path: valid.origin.clone(),
            sources,
            state: valid.state,
            certificates: valid.certificates,
        }
    }

    /// The empty generation 0 (nothing served), used before the first valid config.
    pub fn empty() -> Snapshot {
        Snapshot {
            generation: 0,
            created_unix_ms: 0,
            config_path: None,
            sources: Vec::new(),
            state: DesiredState::default(),
            certificates: Vec::new(),
        }
    }

    /// The backend group with this name.
    pub fn group(&self, name: &str) -> Option<&crate::BackendGroup> {
        self.state.groups.iter().find(|g| g.name == name).map(|g| &**g)
    }

    /// The loaded certificate with this name.
    pub fn certificate(&self, name: &str) -> Option<&Arc<CertMaterial>> {
        self.certificates.iter().find(|c| c.name == name)
    }
}
