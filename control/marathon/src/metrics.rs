//! Prometheus metrics of the Marathon source (`padis_marathon_*`).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// The source's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Full syncs by result (`ok`, `error`).
    pub syncs: IntCounterVec,
    /// Duration of successful full syncs (request + parse).
    pub sync_seconds: Histogram,
    /// Events received, by type.
    pub events: IntCounterVec,
    /// Events or frames that could not be used (malformed JSON, oversized, not UTF-8).
    pub bad_events: IntCounter,
    /// Event stream (re)connections.
    pub stream_connects: IntCounter,
    /// Event streams lost (cut, error, idle timeout).
    pub stream_failures: IntCounterVec,
    /// 1 while the event stream is attached.
    pub stream_up: IntGauge,
    /// Unix time of the last successful full sync.
    pub last_sync_timestamp: IntGauge,
    /// Seconds since the last successful full sync (how stale the served state may be).
    pub stale_seconds: IntGauge,
    /// Apps skipped for invalid labels or JSON.
    pub problems: IntGauge,
    /// Apps carrying a label Padis does not honour, by the label's generic name (`HAPROXY_{n}_BACKEND_HEAD`).
    pub labels_unsupported: IntGaugeVec,
    /// Apps, tasks and backends in the last state.
    pub apps: IntGauge,
    /// Tasks Marathon reported in the last state.
    pub tasks: IntGauge,
    /// Backends over all groups in the last published state.
    pub backends: IntGauge,
    /// States published.
    pub publishes: IntCounter,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new(registry: &Registry) -> prometheus::Result<Metrics> {
        let m = Metrics {
            syncs: IntCounterVec::new(
                Opts::new("padis_marathon_syncs_total", "Full syncs from Marathon by result"),
                &["result"],
            )?,
            sync_seconds: Histogram::with_opts(
                HistogramOpts::new("padis_marathon_sync_seconds", "Duration of successful full syncs")
                    .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0]),
            )?,
            events: IntCounterVec::new(
                Opts::new("padis_marathon_events_total", "Marathon events received by type"),
                &["type"],
            )?,
            bad_events: IntCounter::new(
                "padis_marathon_bad_events_total",
                "Malformed, oversized or non-UTF-8 events skipped",
            )?,
            stream_connects: IntCounter::new("padis_marathon_stream_connects_total", "Event stream connections")?,
            stream_failures: IntCounterVec::new(
                Opts::new("padis_marathon_stream_failures_total", "Event streams lost by reason"),
                &["reason"],
            )?,
            stream_up: IntGauge::new("padis_marathon_stream_up", "1 while the event stream is attached")?,
            last_sync_timestamp: IntGauge::new(
                "padis_marathon_last_sync_timestamp_seconds",
                "Unix time of the last good full sync",
            )?,
            stale_seconds: IntGauge::new("padis_marathon_stale_seconds", "Seconds since the last good full sync")?,
            problems: IntGauge::new("padis_marathon_app_problems", "Apps skipped for invalid labels or JSON")?,
            labels_unsupported: IntGaugeVec::new(
                Opts::new("padis_marathon_labels_unsupported", "Apps carrying a label Padis does not honour, by label"),
                &["label"],
            )?,
            apps: IntGauge::new("padis_marathon_apps", "Apps in the last Marathon state")?,
            tasks: IntGauge::new("padis_marathon_tasks", "Tasks in the last Marathon state")?,
            backends: IntGauge::new("padis_marathon_backends", "L7 backends in the last published state")?,
            publishes: IntCounter::new("padis_marathon_publishes_total", "Marathon states published")?,
        };
        registry.register(Box::new(m.syncs.clone()))?;
        registry.register(Box::new(m.sync_seconds.clone()))?;
        registry.register(Box::new(m.events.clone()))?;
        registry.register(Box::new(m.bad_events.clone()))?;
        registry.register(Box::new(m.stream_connects.clone()))?;
        registry.register(Box::new(m.stream_failures.clone()))?;
        registry.register(Box::new(m.stream_up.clone()))?;
        registry.register(Box::new(m.last_sync_timestamp.clone()))?;
        registry.register(Box::new(m.stale_seconds.clone()))?;
        registry.register(Box::new(m.problems.clone()))?;
        registry.register(Box::new(m.labels_unsupported.clone()))?;
        registry.register(Box::new(m.apps.clone()))?;
        registry.register(Box::new(m.tasks.clone()))?;
        registry.register(Box::new(m.backends.clone()))?;
        registry.register(Box::new(m.publishes.clone()))?;
        Ok(m)
    }
}
