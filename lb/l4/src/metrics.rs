//! `padis_l4_*` Prometheus metrics, read from the BPF maps at scrape time.

use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};

use crate::plane::Inner;

/// Collector over the live plane.
pub struct L4Collector {
    inner: Arc<Mutex<Inner>>,
    descs: Vec<Desc>,
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition")
}

struct Families {
    events: IntCounterVec,
    event_bytes: IntCounterVec,
    vip_packets: IntCounterVec,
    vip_bytes: IntCounterVec,
    vip_rate_limited: IntCounterVec,
    backend_packets: IntCounterVec,
    backend_bytes: IntCounterVec,
    backends_in_table: IntGaugeVec,
    applies: IntCounterVec,
}

fn families() -> Families {
    Families {
        events: counter(
            "padis_l4_packets_total",
            "XDP packets by outcome (forwarded, passed, drop_*, ct_*, icmp_*)",
            &["event"],
        ),
        event_bytes: counter("padis_l4_bytes_total", "XDP bytes by outcome", &["event"]),
        vip_packets: counter("padis_l4_vip_packets_total", "Packets forwarded per VIP", &["vip"]),
        vip_bytes: counter("padis_l4_vip_bytes_total", "Bytes forwarded per VIP", &["vip"]),
        vip_rate_limited: counter(
            "padis_l4_vip_rate_limited_packets_total",
            "New flows per VIP dropped by the per-source-prefix limit ([l4.source_limit])",
            &["vip"],
        ),
        backend_packets: counter("padis_l4_backend_packets_total", "Packets forwarded per backend", &["backend"]),
        backend_bytes: counter("padis_l4_backend_bytes_total", "Bytes forwarded per backend", &["backend"]),
        backends_in_table: gauge("padis_l4_vip_backends_in_table", "Backends in each VIP's Maglev table", &["vip"]),
        applies: counter("padis_l4_programming_total", "Map programming rounds by result", &["result"]),
    }
}

impl Families {
    fn all(&self) -> [&dyn Collector; 9] {
        [
            &self.events,
            &self.event_bytes,
            &self.vip_packets,
            &self.vip_bytes,
            &self.vip_rate_limited,
            &self.backend_packets,
            &self.backend_bytes,
            &self.backends_in_table,
            &self.applies,
        ]
    }
}

impl L4Collector {
    /// A collector for `inner`.
    pub fn new(inner: Arc<Mutex<Inner>>) -> L4Collector {
        let f = families();
        let descs = f.all().iter().flat_map(|c| c.desc().into_iter().cloned()).collect();
        L4Collector { inner, descs }
    }
}

impl Collector for L4Collector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let f = families();
        let report = {
            let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.report()
        };
        for (name, c) in &report.stats {
            f.events.with_label_values(&[name]).inc_by(c.packets);
            f.event_bytes.with_label_values(&[name]).inc_by(c.bytes);
        }
        for v in &report.vips {
            f.vip_packets.with_label_values(&[&v.name]).inc_by(v.packets);
            f.vip_bytes.with_label_values(&[&v.name]).inc_by(v.bytes);
            f.vip_rate_limited.with_label_values(&[&v.name]).inc_by(v.rate_limited);
            f.backends_in_table
                .with_label_values(&[&v.name])
                .set(v.backends.iter().filter(|b| b.in_table).count() as i64);
        }
        for b in &report.backend_counters {
            f.backend_packets.with_label_values(&[&b.0.to_string()]).inc_by(b.1.packets);
            f.backend_bytes.with_label_values(&[&b.0.to_string()]).inc_by(b.1.bytes);
        }
        f.applies.with_label_values(&["ok"]).inc_by(report.applies_ok);
        f.applies.with_label_values(&["error"]).inc_by(report.applies_failed);
        f.all().iter().flat_map(|c| c.collect()).collect()
    }
}
