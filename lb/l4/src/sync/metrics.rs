//! `padis_l4_sync_*` Prometheus metrics.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// The sync daemon's counters (cheap to clone: shared).
#[derive(Clone)]
pub struct SyncMetrics {
    /// Records sent to peers (live, dumps and re-announcements; once per record, whatever the number of peers).
    pub sent: IntCounter,
    /// Authenticated records received from peers.
    pub received: IntCounter,
    /// Received records inserted into the connection table.
    pub inserted: IntCounter,
    /// Received records not inserted, by reason (`exists`, `unknown_vip`, `unknown_backend`, `map_error`), and
    /// local records not sent (`stale_backend`).
    pub skipped: IntCounterVec,
    /// Datagrams refused: wrong HMAC.
    pub auth_failures: IntCounter,
    /// Datagrams refused: malformed (length, magic, kind).
    pub malformed: IntCounter,
    /// Authenticated datagrams refused as replays, by reason (`duplicate`, `too_old`, `old_incarnation`).
    pub replays: IntCounterVec,
    /// Anti-entropy passes (whole table re-announced to every peer) completed.
    pub refresh_passes: IntCounter,
    /// New flows the XDP program could not announce (ring buffer full).
    pub ring_drops: IntCounter,
    /// Peers heard from (authenticated hello) in the last 3 s.
    pub peers_seen: IntGauge,
    /// Bulk dumps sent to (re)starting peers.
    pub dumps: IntCounter,
    /// Datagrams that could not be sent.
    pub send_errors: IntCounter,
    /// TLS session ticket keys received from peers and new here.
    pub ticket_keys: IntCounter,
}

impl SyncMetrics {
    /// Creates and registers the metrics.
    pub fn new(registry: &Registry) -> Result<SyncMetrics, prometheus::Error> {
        let c = |name: &str, help: &str| IntCounter::new(name, help);
        let m = SyncMetrics {
            sent: c("padis_l4_sync_records_sent_total", "Connection-table records sent to peers")?,
            received: c("padis_l4_sync_records_received_total", "Authenticated records received from peers")?,
            inserted: c("padis_l4_sync_records_inserted_total", "Received records inserted (flow unknown here)")?,
            skipped: IntCounterVec::new(
                Opts::new("padis_l4_sync_records_skipped_total", "Records not inserted or not sent, by reason"),
                &["reason"],
            )?,
            auth_failures: c("padis_l4_sync_auth_failures_total", "Sync datagrams with a wrong HMAC")?,
            malformed: c("padis_l4_sync_malformed_total", "Malformed sync datagrams")?,
            replays: IntCounterVec::new(
                Opts::new("padis_l4_sync_replays_total", "Authenticated sync datagrams refused as replays, by reason"),
                &["reason"],
            )?,
            refresh_passes: c("padis_l4_sync_refresh_passes_total", "Whole-table re-announcements to every peer")?,
            ring_drops: c("padis_l4_sync_ring_drops_total", "New flows not announced: XDP sync ring full")?,
            peers_seen: IntGauge::new("padis_l4_sync_peers_seen", "Peers heard from in the last 3 s")?,
            dumps: c("padis_l4_sync_dumps_sent_total", "Bulk connection-table dumps sent to peers")?,
            send_errors: c("padis_l4_sync_send_errors_total", "Sync datagrams that could not be sent")?,
            ticket_keys: c("padis_l4_sync_ticket_keys_received_total", "TLS session ticket keys learnt from peers")?,
        };
        registry.register(Box::new(m.sent.clone()))?;
        registry.register(Box::new(m.received.clone()))?;
        registry.register(Box::new(m.inserted.clone()))?;
        registry.register(Box::new(m.skipped.clone()))?;
        registry.register(Box::new(m.auth_failures.clone()))?;
        registry.register(Box::new(m.malformed.clone()))?;
        registry.register(Box::new(m.replays.clone()))?;
        registry.register(Box::new(m.refresh_passes.clone()))?;
        registry.register(Box::new(m.ring_drops.clone()))?;
        registry.register(Box::new(m.peers_seen.clone()))?;
        registry.register(Box::new(m.dumps.clone()))?;
        registry.register(Box::new(m.send_errors.clone()))?;
        registry.register(Box::new(m.ticket_keys.clone()))?;
        Ok(m)
    }
}
