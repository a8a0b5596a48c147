//! Health metrics: `padis_backend_up` (computed at scrape time from the live state, so passive ejections that
//! expire are reflected), `padis_health_checks_total` and `padis_backend_ejections_total`.

use std::sync::{Mutex, Weak};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

use super::{State, TargetKey};

/// Result labels of `padis_health_checks_total`.
pub(crate) const RESULTS: [&str; 3] = ["success", "failure", "timeout"];

/// Registered metric families.
pub(crate) struct Metrics {
    checks: IntCounterVec,
    ejections: IntCounterVec,
}

/// Counters of one target's checks, by result.
#[derive(Clone)]
pub(crate) struct CheckCounters {
    pub success: IntCounter,
    pub failure: IntCounter,
    pub timeout: IntCounter,
}

impl Metrics {
    pub(crate) fn register(registry: &Registry, state: Weak<Mutex<State>>) -> Result<Metrics, prometheus::Error> {
        let checks = IntCounterVec::new(
            Opts::new("padis_health_checks_total", "Active health checks by result"),
            &["group", "backend", "result"],
        )?;
        let ejections = IntCounterVec::new(
            Opts::new("padis_backend_ejections_total", "Passive ejections of a backend after consecutive failures"),
            &["group", "backend"],
        )?;
        let up = IntGaugeVec::new(
            Opts::new("padis_backend_up", "1 when the backend takes new requests (active check up, not ejected)"),
            &["group", "backend"],
        )?;
        registry.register(Box::new(checks.clone()))?;
        registry.register(Box::new(ejections.clone()))?;
        registry.register(Box::new(UpCollector { gauge: up, state }))?;
        Ok(Metrics { checks, ejections })
    }

    pub(crate) fn check_counters(&self, key: &TargetKey) -> CheckCounters {
        let (g, b) = (key.group.as_str(), key.addr.to_string());
        let c = |r: &str| self.checks.with_label_values(&[g, b.as_str(), r]);
        CheckCounters { success: c(RESULTS[0]), failure: c(RESULTS[1]), timeout: c(RESULTS[2]) }
    }

    pub(crate) fn ejection_counter(&self, key: &TargetKey) -> IntCounter {
        self.ejections.with_label_values(&[key.group.as_str(), key.addr.to_string().as_str()])
    }

    /// Drops the series of a target that went away (Marathon churn must not grow the scrape forever).
    pub(crate) fn forget(&self, key: &TargetKey) {
        let b = key.addr.to_string();
        for r in RESULTS {
            let _ = self.checks.remove_label_values(&[key.group.as_str(), b.as_str(), r]);
        }
        let _ = self.ejections.remove_label_values(&[key.group.as_str(), b.as_str()]);
    }
}

/// Computes `padis_backend_up` from the registry's live state on every scrape.
struct UpCollector {
    gauge: IntGaugeVec,
    state: Weak<Mutex<State>>,
}

impl Collector for UpCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.gauge.reset();
        if let Some(state) = self.state.upgrade() {
            let state = state.lock().unwrap_or_else(|e| e.into_inner());
            for (key, entry) in &state.targets {
                let b = key.addr.to_string();
                self.gauge
                    .with_label_values(&[key.group.as_str(), b.as_str()])
                    .set(i64::from(entry.health.is_usable()));
            }
        }
        self.gauge.collect()
    }
}
