//! Prometheus metrics of the L7 plane. Labels are config names (listeners, routes, groups, backends,
//! certificates) and status codes, so cardinality is bounded by the config.

use std::collections::{HashMap, HashSet};

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{
    exponential_buckets, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// The L7 metric families.
#[derive(Clone)]
pub(crate) struct Metrics {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub connect_errors: IntCounterVec,
    pub active_connections: IntGaugeVec,
    pub handshakes: IntCounterVec,
    pub handshake_errors: IntCounterVec,
    pub cert_expiry: IntGaugeVec,
}

impl Metrics {
    /// Creates and registers the families into `registry`.
    pub fn register(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let m = Metrics {
            requests: IntCounterVec::new(
                Opts::new("padis_http_requests_total", "HTTP requests answered by the L7 proxy"),
                &["listener", "route", "backend", "code"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "padis_http_request_duration_seconds",
                    "Time from request head to response head",
                )
                .buckets(exponential_buckets(0.0005, 2.5, 12)?),
                &["route"],
            )?,
            connect_errors: IntCounterVec::new(
                Opts::new("padis_upstream_connect_errors_total", "Failed connections to backends"),
                &["group", "backend"],
            )?,
            active_connections: IntGaugeVec::new(
                Opts::new("padis_active_connections", "Open client connections"),
                &["listener"],
            )?,
            handshakes: IntCounterVec::new(
                Opts::new("padis_tls_handshakes_total", "Completed TLS handshakes"),
                &["listener", "version"],
            )?,
            handshake_errors: IntCounterVec::new(
                Opts::new("padis_tls_handshake_errors_total", "Failed TLS handshakes"),
                &["listener"],
            )?,
            cert_expiry: IntGaugeVec::new(
                Opts::new("padis_certificate_expiry_timestamp_seconds", "Leaf certificate notAfter"),
                &["certificate"],
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.connect_errors.clone()))?;
        registry.register(Box::new(m.active_connections.clone()))?;
        registry.register(Box::new(m.handshakes.clone()))?;
        registry.register(Box::new(m.handshake_errors.clone()))?;
        registry.register(Box::new(m.cert_expiry.clone()))?;
        Ok(m)
    }
}

/// Removes the series of `vec` whose `label` value is not empty and not in `keep`.
fn drop_stale<T: MetricVecBuilder>(vec: &MetricVec<T>, label: &str, keep: &HashSet<String>) {
    for family in vec.collect() {
        for m in family.get_metric() {
            let labels: HashMap<&str, &str> = m.get_label().iter().map(|l| (l.name(), l.value())).collect();
            if labels.get(label).is_some_and(|v| !v.is_empty() && !keep.contains(*v)) {
                let _ = vec.remove(&labels);
            }
        }
    }
}

impl Metrics {
    /// Forgets series of routes, groups and backends no longer configured, so label sets stay bounded by the
    /// config in force even as backends come and go (Marathon tasks).
    pub fn retain(&self, routes: &HashSet<String>, groups: &HashSet<String>, backends: &HashSet<String>) {
        drop_stale(&self.requests, "route", routes);
        drop_stale(&self.requests, "backend", backends);
        drop_stale(&self.duration, "route", routes);
        drop_stale(&self.connect_errors, "group", groups);
        drop_stale(&self.connect_errors, "backend", backends);
    }
}
