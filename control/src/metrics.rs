//! Control-plane metrics (`padis_config_*`, `padis_source_*`) and the shared Prometheus registry.

use prometheus::{Gauge, GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Metrics owned by control.
#[derive(Clone)]
pub struct ControlMetrics {
    /// Config reloads by result (`success`, `failure`).
    pub reloads: IntCounterVec,
    /// Generation of the snapshot in force.
    pub generation: IntGauge,
    /// Unix time of the last successful config load.
    pub last_reload_success: Gauge,
    /// Whether each dynamic source's last read succeeded.
    pub source_up: IntGaugeVec,
    /// Unix time of each source's last successful read.
    pub source_last_success: GaugeVec,
    /// Snapshots published.
    pub publications: IntGauge,
    /// Items of each source left out of the snapshot in force, by reason.
    pub source_items_rejected: IntGaugeVec,
}

impl ControlMetrics {
    /// Registers control's metrics in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<ControlMetrics> {
        let m = ControlMetrics {
            reloads: IntCounterVec::new(
                Opts::new("padis_config_reloads_total", "Config file loads by result"),
                &["result"],
            )?,
            generation: IntGauge::new("padis_config_generation", "Generation of the snapshot in force")?,
            last_reload_success: Gauge::new(
                "padis_config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful config load",
            )?,
            source_up: IntGaugeVec::new(
                Opts::new("padis_source_up", "Whether the source's last read succeeded"),
                &["source"],
            )?,
            source_last_success: GaugeVec::new(
                Opts::new("padis_source_last_success_timestamp_seconds", "Unix time of the source's last good read"),
                &["source"],
            )?,
            publications: IntGauge::new("padis_snapshots_published_total", "Snapshots published since start")?,
            source_items_rejected: IntGaugeVec::new(
                Opts::new(
                    "padis_source_items_rejected",
                    "Items of a source (routes, groups, services, VIPs) left out of the state in force, by reason",
                ),
                &["source", "reason"],
            )?,
        };
        registry.register(Box::new(m.reloads.clone()))?;
        registry.register(Box::new(m.generation.clone()))?;
        registry.register(Box::new(m.last_reload_success.clone()))?;
        registry.register(Box::new(m.source_up.clone()))?;
        registry.register(Box::new(m.source_last_success.clone()))?;
        registry.register(Box::new(m.publications.clone()))?;
        registry.register(Box::new(m.source_items_rejected.clone()))?;
        let info = IntGaugeVec::new(Opts::new("padis_build_info", "Padis version"), &["version"])?;
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry.register(Box::new(info))?;
        // Pre-create both label values so dashboards see zeros, not absent series.
        m.reloads.with_label_values(&["success"]);
        m.reloads.with_label_values(&["failure"]);
        Ok(m)
    }
}

/// Seconds since the epoch, as Prometheus timestamps are given.
pub fn now_unix() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}
