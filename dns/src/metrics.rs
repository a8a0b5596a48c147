//! Prometheus metrics of the DNS plane, with per-worker caches of labelled counters for the query path.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::zone::ZoneSet;

/// The DNS plane's metrics.
#[derive(Clone)]
pub struct Metrics {
    queries: IntCounterVec,
    /// Time from a query's receipt (UDP: its receive batch) to its answer.
    pub latency: Histogram,
    /// Datagrams taken by each UDP receive call (the batching that coalescing under load aims at).
    pub udp_batch: Histogram,
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
    /// Signed requests by TSIG outcome (`ok`, `badkey`, `badsig`, `badtime`, `badtrunc`, `malformed`,
    /// `replayed`, `replay_cache_full`).
    pub tsig: IntCounterVec,
    /// Configured zones by state: `ok` (serving its files' current content), `stale` (serving an older
    /// version: its file does not load now), `failed` (never loaded: not served).
    pub zones: IntGaugeVec,
    /// Failed loads of a zone's master file, by zone.
    pub zone_load_errors: IntCounterVec,
}

/// Query type labels (a bounded set; the last is `other`) and the types they stand for.
const QTYPES: [(u16, &str); 16] = [
    (1, "A"),
    (2, "NS"),
    (5, "CNAME"),
    (6, "SOA"),
    (12, "PTR"),
    (15, "MX"),
    (16, "TXT"),
    (28, "AAAA"),
    (33, "SRV"),
    (43, "DS"),
    (48, "DNSKEY"),
    (65, "HTTPS"),
    (251, "IXFR"),
    (252, "AXFR"),
    (255, "ANY"),
    (0, "other"),
];

/// Response code labels (the last is `other`) and the codes they stand for.
const RCODES: [(u16, &str); 13] = [
    (0, "NOERROR"),
    (1, "FORMERR"),
    (2, "SERVFAIL"),
    (3, "NXDOMAIN"),
    (4, "NOTIMP"),
    (5, "REFUSED"),
    (6, "YXDOMAIN"),
    (7, "YXRRSET"),
    (8, "NXRRSET"),
    (9, "NOTAUTH"),
    (10, "NOTZONE"),
    (16, "BADVERS"),
    (u16::MAX, "other"),
];

fn qtype_index(t: u16) -> usize {
    QTYPES[..QTYPES.len() - 1].iter().position(|(v, _)| *v == t).unwrap_or(QTYPES.len() - 1)
}

fn rcode_index(r: u16) -> usize {
    RCODES[..RCODES.len() - 1].iter().position(|(v, _)| *v == r).unwrap_or(RCODES.len() - 1)
}

/// Label for a response code.
pub fn rcode_label(r: u16) -> &'static str {
    RCODES[rcode_index(r)].1
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
                HistogramOpts::new(
                    "padis_dns_query_duration_seconds",
                    "Time from receiving a DNS query (over UDP: the batch it came in) to its answer being ready",
                )
                .buckets(vec![1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2, 0.1]),
            )?,
            udp_batch: Histogram::with_opts(
                HistogramOpts::new(
                    "padis_dns_udp_batch_size",
                    "Datagrams taken by one UDP receive call (up to 64); see dns.udp_batch_wait",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
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
            rrl: IntCounterVec::new(
                Opts::new("padis_dns_rrl_total", "Responses rate-limited, by action"),
                &["action"],
            )?,
            notifies: IntCounterVec::new(
                Opts::new("padis_dns_notify_total", "NOTIFY messages sent, by zone and result"),
                &["zone", "result"],
            )?,
            serial: IntGaugeVec::new(Opts::new("padis_dns_zone_serial", "Current SOA serial"), &["zone"])?,
            records: IntGaugeVec::new(Opts::new("padis_dns_zone_records", "Records in the zone"), &["zone"])?,
            tsig: IntCounterVec::new(
                Opts::new("padis_dns_tsig_total", "Signed requests, by TSIG outcome"),
                &["result"],
            )?,
            zones: IntGaugeVec::new(
                Opts::new(
                    "padis_dns_zones",
                    "Configured zones by state (ok, stale: an older version served, failed: not served)",
                ),
                &["state"],
            )?,
            zone_load_errors: IntCounterVec::new(
                Opts::new("padis_dns_zone_load_errors_total", "Failed loads of a zone's master file, by zone"),
                &["zone"],
            )?,
        };
        reg.register(Box::new(m.queries.clone()))?;
        reg.register(Box::new(m.latency.clone()))?;
        reg.register(Box::new(m.udp_batch.clone()))?;
        reg.register(Box::new(m.truncated.clone()))?;
        reg.register(Box::new(m.transfers.clone()))?;
        reg.register(Box::new(m.updates.clone()))?;
        reg.register(Box::new(m.rrl.clone()))?;
        reg.register(Box::new(m.notifies.clone()))?;
        reg.register(Box::new(m.serial.clone()))?;
        reg.register(Box::new(m.records.clone()))?;
        reg.register(Box::new(m.tsig.clone()))?;
        reg.register(Box::new(m.zones.clone()))?;
        reg.register(Box::new(m.zone_load_errors.clone()))?;
        Ok(m)
    }
}

/// Counter slots per zone: one per (query type label, response code label).
const PER_ZONE: usize = QTYPES.len() * RCODES.len();

/// A worker's query counts, batched: counting a query adds one to a plain per-thread slot (indexed by zone,
/// type label and rcode label: no hashing, no atomic); [`QueryCounters::flush`] adds the slots to the labelled
/// Prometheus counters, once per received batch. Slots belong to one zone-set generation: a new one flushes
/// the old counts under the old zone names first.
pub struct QueryCounters {
    metrics: Metrics,
    generation: u64,
    /// Zone origins of the current generation (slot 0 is "outside our zones").
    zone_names: Vec<String>,
    pending: Vec<u64>,
    dirty: Vec<usize>,
    counters: Vec<Option<IntCounter>>,
}

impl QueryCounters {
    /// Empty counts.
    pub fn new(metrics: Metrics) -> QueryCounters {
        QueryCounters {
            metrics,
            generation: u64::MAX,
            zone_names: Vec::new(),
            pending: Vec::new(),
            dirty: Vec::new(),
            counters: Vec::new(),
        }
    }

    /// Counts one answered query for the zone at `zone` in `set` (`None`: outside our zones).
    #[inline]
    pub fn count(&mut self, set: &ZoneSet, zone: Option<usize>, qtype: u16, rcode: u16) {
        if set.generation != self.generation {
            self.reset(set);
        }
        let z = zone.filter(|i| *i < set.zones.len()).map_or(0, |i| i + 1);
        let slot = z * PER_ZONE + qtype_index(qtype) * RCODES.len() + rcode_index(rcode);
        let Some(p) = self.pending.get_mut(slot) else { return };
        if *p == 0 {
            self.dirty.push(slot);
        }
        *p += 1;
    }

    fn reset(&mut self, set: &ZoneSet) {
        self.flush();
        self.generation = set.generation;
        self.zone_names.clear();
        self.zone_names.push(String::new());
        self.zone_names.extend(set.zones.iter().map(|z| z.origin.to_ascii()));
        let slots = self.zone_names.len() * PER_ZONE;
        self.pending = vec![0; slots];
        self.counters = vec![None; slots];
    }

    /// Adds the counts so far to the Prometheus counters.
    pub fn flush(&mut self) {
        for slot in self.dirty.drain(..) {
            let (Some(n), Some(c)) = (self.pending.get_mut(slot), self.counters.get_mut(slot)) else { continue };
            let counter = c.get_or_insert_with(|| {
                let zone = self.zone_names.get(slot / PER_ZONE).map_or("", String::as_str);
                let (q, r) = ((slot % PER_ZONE) / RCODES.len(), slot % RCODES.len());
                self.metrics.queries.with_label_values(&[zone, QTYPES[q].1, RCODES[r].1])
            });
            counter.inc_by(*n);
            *n = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(QTYPES[qtype_index(33)].1, "SRV");
        assert_eq!(QTYPES[qtype_index(0)].1, "other");
        assert_eq!(QTYPES[qtype_index(99)].1, "other");
        assert_eq!(rcode_label(3), "NXDOMAIN");
        assert_eq!(rcode_label(16), "BADVERS");
        assert_eq!(rcode_label(23), "other");
        assert_eq!(rcode_label(u16::MAX), "other");
    }
}
