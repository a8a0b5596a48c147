//! Prometheus metrics of the DNS plane, with per-worker caches of labelled counters for the query path.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::zone::{FastMap, ZoneSet};

/// The DNS plane's metrics.
#[derive(Clone)]
pub struct Metrics {
    queries: IntCounterVec,
    /// Query handling time.
    pub latency: Histogram,
    /// Answers truncated (TC set).
    pub truncated: IntCounter,
    /// Zone transfers by zone and kind.
    pub transfers: IntCounterVec,
    /// Dynamic updates by zone and result.
    pub updates: IntCounterVec,
    /// RRL actions (`drop`, `slip`).
    pub rrl: IntCounterVec,
    /// NOTIFY sent, by zone and result.
    pub notifies: IntCounterVec,
    /// Current serial by zone.
    pub serial: IntGaugeVec,
    /// Records by zone.
    pub records: IntGaugeVec,
}

/// Label for a query type (bounded set).
pub fn qtype_label(t: u16) -> &'static str {
    match t {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        43 => "DS",
        48 => "DNSKEY",
        65 => "HTTPS",
        251 => "IXFR",
        252 => "AXFR",
        255 => "ANY",
        _ => "other",
    }
}

/// Label for a response code.
pub fn rcode_label(r: u16) -> &'static str {
    match r {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        16 => "BADVERS",
        _ => "other",
    }
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new(reg: &Registry) -> Result<Metrics, prometheus::Error> {
        let m = Metrics {
            queries: IntCounterVec::new(
                Opts::new("padis_dns_queries_total", "DNS queries answered, by zone, query type and response code"),
                &["zone", "qtype", "rcode"],
            )?,
            latency: Histogram::with_opts(
                HistogramOpts::new("padis_dns_query_duration_seconds", "Time to answer a DNS query").buckets(vec![
                    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2, 0.1,
                ]),
            )?,
            truncated: IntCounter::new("padis_dns_truncated_total", "Answers truncated (TC bit) for UDP")?,
            transfers: IntCounterVec::new(
                Opts::new("padis_dns_transfers_total", "Zone transfers served, by zone and kind"),
                &["zone", "kind"],
            )?,
            updates: IntCounterVec::new(
                Opts::new("padis_dns_updates_total", "Dynamic updates, by zone and result"),
                &["zone", "result"],
            )?,
            rrl: IntCounterVec::new(Opts::new("padis_dns_rrl_total", "Responses rate-limited, by action"), &["action"])?,
            notifies: IntCounterVec::new(
                Opts::new("padis_dns_notify_total", "NOTIFY messages sent, by zone and result"),
                &["zone", "result"],
            )?,
            serial: IntGaugeVec::new(Opts::new("padis_dns_zone_serial", "Current SOA serial"), &["zone"])?,
            records: IntGaugeVec::new(Opts::new("padis_dns_zone_records", "Records in the zone"), &["zone"])?,
        };
        reg.register(Box::new(m.queries.clone()))?;
        reg.register(Box::new(m.latency.clone()))?;
        reg.register(Box::new(m.truncated.clone()))?;
        reg.register(Box::new(m.transfers.clone()))?;
        reg.register(Box::new(m.updates.clone()))?;
        reg.register(Box::new(m.rrl.clone()))?;
        reg.register(Box::new(m.notifies.clone()))?;
        reg.register(Box::new(m.serial.clone()))?;
        reg.register(Box::new(m.records.clone()))?;
        Ok(m)
    }
}

/// A worker's cache of labelled query counters (a labelled lookup takes a lock; a cached counter is one atomic).
pub struct QueryCounters {
    metrics: Metrics,
    generation: u64,
    cache: FastMap<(usize, u16, u16), IntCounter>,
}

impl QueryCounters {
    /// An empty cache.
    pub fn new(metrics: Metrics) -> QueryCounters {
        QueryCounters { metrics, generation: u64::MAX, cache: FastMap::default() }
    }

    /// Counts one answered query for the zone at `zone` in `set` (`None`: outside our zones).
    pub fn count(&mut self, set: &ZoneSet, zone: Option<usize>, qtype: u16, rcode: u16) {
        if set.generation != self.generation {
            self.cache.clear();
            self.generation = set.generation;
        }
        let qtype_key = if qtype_label(qtype) == "other" { 0 } else { qtype };
        let key = (zone.unwrap_or(usize::MAX), qtype_key, rcode);
        match self.cache.get(&key) {
            Some(c) => c.inc(),
            None => {
                let name = zone.and_then(|i| set.zones.get(i)).map(|z| z.origin.to_ascii()).unwrap_or_default();
                let c = self.metrics.queries.with_label_values(&[&name, qtype_label(qtype), rcode_label(rcode)]);
                c.inc();
                self.cache.insert(key, c);
            }
        }
    }
}
