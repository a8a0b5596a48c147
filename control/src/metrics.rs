//! Control-plane metrics (`padis_config_*`, `padis_source_*`), the last reload's outcome read at scrape time,
//! and [`without_label`], the `/metrics` switch that sums per-backend series (`[admin] metrics_backend_label`).

use std::collections::HashMap;
use std::sync::{Mutex, Weak};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Metric, MetricFamily};
use prometheus::{Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::reconcile::Reconciler;

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
    /// Snapshots published (a counter: it only grows).
    pub publications: IntCounter,
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
            publications: IntCounter::new("padis_snapshots_published_total", "Snapshots published since start")?,
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

/// `padis_config_last_reload_successful`: 1 when the last config load succeeded, 0 while the running config is
/// kept because the file in place does not load (the alert `PadisReloadFailed`). Read from the reconciler at each
/// scrape, so it is never stale.
pub struct ReloadCollector {
    reconciler: Weak<Mutex<Reconciler>>,
    gauge: IntGauge,
}

impl ReloadCollector {
    /// A collector reading `reconciler`'s last reload (held weakly: no cycle through the registry).
    pub fn new(reconciler: Weak<Mutex<Reconciler>>) -> prometheus::Result<ReloadCollector> {
        let gauge = IntGauge::new(
            "padis_config_last_reload_successful",
            "Whether the last config load succeeded (0: the file in place is refused, the running config is kept)",
        )?;
        Ok(ReloadCollector { reconciler, gauge })
    }
}

impl Collector for ReloadCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(r) = self.reconciler.upgrade() else {
            return Vec::new();
        };
        let ok = r.lock().unwrap_or_else(|p| p.into_inner()).reload_status().ok;
        self.gauge.set(ok as i64);
        self.gauge.collect()
    }
}

/// Removes `label` from every series of `families` and sums the series that then share their labels: counters,
/// gauges and untyped values add up, histograms add their counts, sums and buckets, summaries their counts and
/// sums (their quantiles cannot be summed and are dropped). With `label = "backend"`, per-backend families keep
/// one series per group, route, listener and code instead of one per backend; `padis_backend_up` becomes the
/// number of usable backends of each group.
pub fn without_label(families: Vec<MetricFamily>, label: &str) -> Vec<MetricFamily> {
    families
        .into_iter()
        .map(|mut family| {
            if !family.get_metric().iter().any(|m| m.get_label().iter().any(|l| l.name() == label)) {
                return family;
            }
            let mut merged: Vec<Metric> = Vec::new();
            let mut index: HashMap<Vec<(String, String)>, usize> = HashMap::new();
            for mut m in std::mem::take(family.mut_metric()) {
                m.label.retain(|l| l.name() != label);
                let key = m.label.iter().map(|l| (l.name().to_string(), l.value().to_string())).collect();
                match index.get(&key) {
                    Some(&i) => add(&mut merged[i], &m),
                    None => {
                        index.insert(key, merged.len());
                        if let Some(s) = m.summary.as_mut() {
                            s.quantile.clear();
                        }
                        merged.push(m);
                    }
                }
            }
            family.set_metric(merged);
            family
        })
        .collect()
}

/// Adds the values of `m` into `into` (same family, same labels).
fn add(into: &mut Metric, m: &Metric) {
    if let (Some(a), Some(b)) = (into.counter.as_mut(), m.counter.as_ref()) {
        a.value = Some(a.value() + b.value());
    }
    if let (Some(a), Some(b)) = (into.gauge.as_mut(), m.gauge.as_ref()) {
        a.value = Some(a.value() + b.value());
    }
    if let (Some(a), Some(b)) = (into.untyped.as_mut(), m.untyped.as_ref()) {
        a.value = Some(a.value() + b.value());
    }
    if let (Some(a), Some(b)) = (into.summary.as_mut(), m.summary.as_ref()) {
        a.sample_count = Some(a.sample_count() + b.sample_count());
        a.sample_sum = Some(a.sample_sum() + b.sample_sum());
    }
    if let (Some(a), Some(b)) = (into.histogram.as_mut(), m.histogram.as_ref()) {
        a.sample_count = Some(a.sample_count() + b.sample_count());
        a.sample_sum = Some(a.sample_sum() + b.sample_sum());
        // The series of one family share their bucket bounds.
        for (x, y) in a.bucket.iter_mut().zip(&b.bucket) {
            x.cumulative_count = Some(x.cumulative_count() + y.cumulative_count());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, HistogramOpts, HistogramVec, TextEncoder};

    fn text(families: &[MetricFamily]) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(families, &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn backend_label_dropped_sums_the_series() {
        let r = Registry::new();
        let requests = IntCounterVec::new(Opts::new("req_total", "r"), &["route", "backend", "code"]).unwrap();
        let up = IntGaugeVec::new(Opts::new("up", "u"), &["group", "backend"]).unwrap();
        let lat = HistogramVec::new(HistogramOpts::new("lat", "l").buckets(vec![0.1, 1.0]), &["backend"]).unwrap();
        let plain = IntCounterVec::new(Opts::new("plain_total", "p"), &["route"]).unwrap();
        for c in [Box::new(requests.clone()) as Box<dyn Collector>, Box::new(up.clone()), Box::new(lat.clone())] {
            r.register(c).unwrap();
        }
        r.register(Box::new(plain.clone())).unwrap();
        requests.with_label_values(&["a", "10.0.0.1:80", "200"]).inc_by(3);
        requests.with_label_values(&["a", "10.0.0.2:80", "200"]).inc_by(4);
        requests.with_label_values(&["a", "10.0.0.2:80", "502"]).inc_by(1);
        requests.with_label_values(&["b", "10.0.0.3:80", "200"]).inc_by(5);
        up.with_label_values(&["g", "10.0.0.1:80"]).set(1);
        up.with_label_values(&["g", "10.0.0.2:80"]).set(1);
        up.with_label_values(&["h", "10.0.0.3:80"]).set(0);
        lat.with_label_values(&["10.0.0.1:80"]).observe(0.05);
        lat.with_label_values(&["10.0.0.2:80"]).observe(0.5);
        plain.with_label_values(&["a"]).inc();

        let out = text(&without_label(r.gather(), "backend"));
        assert!(!out.contains("backend="), "{out}");
        for line in [
            "req_total{code=\"200\",route=\"a\"} 7",
            "req_total{code=\"502\",route=\"a\"} 1",
            "req_total{code=\"200\",route=\"b\"} 5",
            "up{group=\"g\"} 2",
            "up{group=\"h\"} 0",
            "lat_bucket{le=\"0.1\"} 1",
            "lat_bucket{le=\"1\"} 2",
            "lat_count 2",
            "lat_sum 0.55",
            "plain_total{route=\"a\"} 1",
            "# TYPE req_total counter",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
        // With the label kept (the default), nothing changes.
        assert_eq!(text(&without_label(r.gather(), "nothing")), text(&r.gather()));
    }
}
