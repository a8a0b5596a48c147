//! Prometheus metrics of the L7 plane. Labels are config names (listeners, routes, groups, backends,
//! certificates) and status codes, so cardinality is bounded by the config.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use http::StatusCode;
use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{
    exponential_buckets, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

use crate::routes::CompiledRoute;

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
    /// Connections refused right after accept, by listener and reason (see `admission::Refusal`).
    pub rejected: IntCounterVec,
    /// Client connections the proxy cut for what the client did (or did not do), by listener and reason
    /// (`send_timeout`, `close_grace`, `h2_control_flood`).
    pub cut: IntCounterVec,
    /// TCP listeners: relayed connections by listener and backend.
    pub tcp_connections: IntCounterVec,
    /// TCP listeners: open relayed connections.
    pub tcp_active: IntGaugeVec,
    /// TCP listeners: bytes relayed, by listener and direction (`in`: client to backend, `out`: back).
    pub tcp_bytes: IntCounterVec,
    /// Requests answered 429 by their route's rate limit, by route.
    pub rate_limited: IntCounterVec,
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
                HistogramOpts::new("padis_http_request_duration_seconds", "Time from request head to response head")
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
            rejected: IntCounterVec::new(
                Opts::new("padis_http_connections_rejected_total", "Client connections refused right after accept"),
                &["listener", "reason"],
            )?,
            cut: IntCounterVec::new(
                Opts::new(
                    "padis_http_connections_cut_total",
                    "Client connections closed by the proxy for the client's behaviour",
                ),
                &["listener", "reason"],
            )?,
            tcp_connections: IntCounterVec::new(
                Opts::new("padis_tcp_connections_total", "Connections relayed by TCP listeners, per backend"),
                &["listener", "backend"],
            )?,
            tcp_active: IntGaugeVec::new(
                Opts::new("padis_tcp_active_connections", "Open connections of TCP listeners"),
                &["listener"],
            )?,
            tcp_bytes: IntCounterVec::new(
                Opts::new("padis_tcp_bytes_total", "Bytes relayed by TCP listeners (in: client to backend)"),
                &["listener", "direction"],
            )?,
            rate_limited: IntCounterVec::new(
                Opts::new("padis_http_rate_limited_total", "Requests refused (429) by their route's rate limit"),
                &["route"],
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.connect_errors.clone()))?;
        registry.register(Box::new(m.active_connections.clone()))?;
        registry.register(Box::new(m.handshakes.clone()))?;
        registry.register(Box::new(m.handshake_errors.clone()))?;
        registry.register(Box::new(m.cert_expiry.clone()))?;
        registry.register(Box::new(m.rejected.clone()))?;
        registry.register(Box::new(m.cut.clone()))?;
        registry.register(Box::new(m.tcp_connections.clone()))?;
        registry.register(Box::new(m.tcp_active.clone()))?;
        registry.register(Box::new(m.tcp_bytes.clone()))?;
        registry.register(Box::new(m.rate_limited.clone()))?;
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
        drop_stale(&self.rate_limited, "route", routes);
        drop_stale(&self.connect_errors, "group", groups);
        drop_stale(&self.connect_errors, "backend", backends);
        drop_stale(&self.tcp_connections, "backend", backends);
    }
}

/// Series of `padis_http_requests_total` one client connection counted into lately.
const COUNTER_CACHE: usize = 8;

struct CachedCounter {
    route: Option<Arc<CompiledRoute>>,
    backend: Option<Arc<str>>,
    code: StatusCode,
    counter: IntCounter,
}

/// The request counters one client connection used lately, by route, backend and status: a request counts
/// into its series with a few pointer comparisons instead of `with_label_values` (four label strings hashed
/// under the family's lock). Keyed by the route and backend-label `Arc`s of the snapshot in force, so a new
/// snapshot (whose series may have been retired by [`Metrics::retain`]) looks its series up again.
#[derive(Default)]
pub(crate) struct RequestCounters {
    cached: Mutex<Vec<CachedCounter>>,
}

fn same<T: ?Sized>(a: Option<&Arc<T>>, b: Option<&Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

impl RequestCounters {
    /// Counts one answered request of `listener`.
    pub fn inc(
        &self,
        metrics: &Metrics,
        listener: &str,
        route: Option<&Arc<CompiledRoute>>,
        backend: Option<&Arc<str>>,
        code: StatusCode,
    ) {
        // Plain data behind the lock: a panic elsewhere does not make it unusable.
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        let hit = cached
            .iter()
            .find(|c| c.code == code && same(c.route.as_ref(), route) && same(c.backend.as_ref(), backend));
        if let Some(c) = hit {
            c.counter.inc();
            return;
        }
        let counter = metrics.requests.with_label_values(&[
            listener,
            route.map(|r| &*r.name).unwrap_or(""),
            backend.map(|b| &**b).unwrap_or(""),
            code.as_str(),
        ]);
        counter.inc();
        if cached.len() >= COUNTER_CACHE {
            cached.remove(0);
        }
        cached.push(CachedCounter { route: route.cloned(), backend: backend.cloned(), code, counter });
    }
}

/// The status recorded for a request whose client went away before its answer (as nginx logs it).
pub(crate) const CLIENT_CLOSED: u16 = 499;

/// One finished request, as both request paths record it.
pub(crate) struct Finished<'a> {
    pub listener: &'a str,
    /// The client's address (the PROXY protocol's client when the listener takes it).
    pub client: std::net::SocketAddr,
    pub route: Option<&'a Arc<CompiledRoute>>,
    pub backend: Option<&'a Arc<str>>,
    pub status: StatusCode,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub elapsed: std::time::Duration,
    pub bytes: u64,
    /// The request id (empty without `[request_id]`).
    pub request_id: &'a str,
    /// The request's valid W3C `traceparent` (empty without one).
    pub traceparent: &'a str,
}

impl Finished<'_> {
    /// Counts it (`padis_http_requests_total` through the connection's `counters`), observes its route's duration
    /// and writes its access log line (target `padis::access`).
    pub fn record(&self, metrics: &Metrics, counters: &RequestCounters) {
        counters.inc(metrics, self.listener, self.route, self.backend, self.status);
        if let Some(r) = self.route {
            r.duration.observe(self.elapsed.as_secs_f64());
        }
        tracing::info!(
            target: "padis::access",
            listener = self.listener,
            client = %self.client,
            method = self.method,
            host = self.host,
            path = self.path,
            status = self.status.as_u16(),
            route = self.route.map(|r| &*r.name).unwrap_or(""),
            backend = self.backend.map(|b| &**b).unwrap_or(""),
            duration_ms = self.elapsed.as_secs_f64() * 1000.0,
            bytes = self.bytes,
            request_id = self.request_id,
            traceparent = self.traceparent,
        );
    }
}
