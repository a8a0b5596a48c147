//! The sync daemon's state for the L4 report (`/v1/state`, `padis status`): peers with the age of their last
//! hello, and the counters.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

use super::metrics::SyncMetrics;

/// A peer is "up" when its last hello is younger than this.
pub const PEER_UP: std::time::Duration = std::time::Duration::from_secs(3);
/// After a start, how long to listen for peers' hellos before deciding that no peer is up.
pub const READY_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
/// Longest wait for the peers' dumps after a start: a node is ready to be announced then, complete or not.
pub const READY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Reasons of `padis_l4_sync_records_skipped_total`.
const SKIP_REASONS: [&str; 5] = ["exists", "unknown_vip", "unknown_backend", "map_error", "stale_backend"];
/// Reasons of `padis_l4_sync_replays_total`.
const REPLAY_REASONS: [&str; 3] = ["duplicate", "too_old", "old_incarnation"];

/// What the last authenticated hello from an address said.
#[derive(Debug, Clone, Copy)]
pub(super) struct Hello {
    pub node: u64,
    pub incarnation: u64,
    pub at: Instant,
}

/// Shared between the daemon (writes) and the plane's report (reads).
pub(super) struct SyncStatus {
    pub node: u64,
    pub incarnation: u64,
    pub listen: SocketAddr,
    pub peers: Vec<SocketAddr>,
    pub metrics: SyncMetrics,
    pub hellos: Mutex<HashMap<SocketAddr, Hello>>,
    /// When the daemon started.
    pub started: Instant,
    /// Nodes whose bulk dump to us is complete, with the incarnation that sent it (by node id: a dump comes
    /// from an ephemeral port, not the peer's sync address).
    pub dumps_done: Mutex<HashMap<u64, u64>>,
    /// Latched once ready: a peer restarting later does not make this node unready.
    pub ready: AtomicBool,
}

/// One configured peer in the report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PeerReport {
    /// Its sync address.
    pub addr: SocketAddr,
    /// Heard from (authenticated hello) within the last 3 s.
    pub up: bool,
    /// Milliseconds since its last authenticated hello (none: never heard).
    pub last_hello_ms: Option<u64>,
    /// Its node id (hex), once heard.
    pub node: Option<String>,
    /// Its incarnation (start time, Unix ns), once heard.
    pub incarnation: Option<u64>,
}

/// The sync part of the L4 report.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// The peers' connection tables are known (see `SyncStatus::ready`): until then the node's VIPs are not
    /// announced, so ECMP sends it no flow it could break.
    pub ready: bool,
    /// This node's id (hex).
    pub node: String,
    /// This node's incarnation (start time, Unix ns).
    pub incarnation: u64,
    /// Address the daemon listens on.
    pub listen: Option<SocketAddr>,
    /// Configured peers (this node excluded).
    pub peers: Vec<PeerReport>,
    /// Records sent (live, dumps, re-announcements).
    pub records_sent: u64,
    /// Authenticated records received.
    pub records_received: u64,
    /// Received records inserted into the connection table.
    pub records_inserted: u64,
    /// Records skipped, by reason.
    pub records_skipped: BTreeMap<String, u64>,
    /// Datagrams refused: wrong HMAC.
    pub auth_failures: u64,
    /// Datagrams refused: malformed.
    pub malformed: u64,
    /// Authenticated datagrams refused as replays, by reason.
    pub replays: BTreeMap<String, u64>,
    /// New flows the XDP program could not announce (ring full).
    pub ring_drops: u64,
    /// Bulk dumps sent to (re)starting peers.
    pub dumps_sent: u64,
    /// Completed re-announcement passes.
    pub refresh_passes: u64,
    /// Datagrams that could not be sent.
    pub send_errors: u64,
}

impl SyncStatus {
    /// Records that node `node` (incarnation `incarnation`) finished its bulk dump to us.
    pub fn dump_done(&self, node: u64, incarnation: u64) {
        self.dumps_done.lock().unwrap_or_else(|e| e.into_inner()).insert(node, incarnation);
    }

    /// Whether this node knows the peers' connections well enough to take flows that ECMP moves to it: every
    /// peer heard within [`PEER_UP`] has completed its dump to us (after [`READY_GRACE`] to hear them), or
    /// [`READY_MAX`] has passed since the start. Latched.
    pub fn ready(&self, now: Instant) -> bool {
        if self.ready.load(Ordering::Relaxed) {
            return true;
        }
        let since = now.saturating_duration_since(self.started);
        let ready = since >= READY_MAX
            || (since >= READY_GRACE && {
                let hellos = self.hellos.lock().unwrap_or_else(|e| e.into_inner());
                let done = self.dumps_done.lock().unwrap_or_else(|e| e.into_inner());
                hellos
                    .iter()
                    .filter(|(_, h)| now.saturating_duration_since(h.at) < PEER_UP)
                    .all(|(_, h)| done.get(&h.node) == Some(&h.incarnation))
            });
        if ready {
            self.ready.store(true, Ordering::Relaxed);
            tracing::info!(
                after_ms = since.as_millis() as u64,
                "sync: peers' connection tables received, ready to be announced"
            );
        }
        ready
    }

    /// Records an authenticated, fresh hello.
    pub fn hello(&self, from: SocketAddr, hello: Hello) {
        self.hellos.lock().unwrap_or_else(|e| e.into_inner()).insert(from, hello);
    }

    /// The report at `now`.
    pub fn report(&self, now: Instant) -> SyncReport {
        let hellos = self.hellos.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let m = &self.metrics;
        let by = |v: &prometheus::IntCounterVec, reasons: &[&str]| {
            reasons
                .iter()
                .map(|r| (r.to_string(), v.with_label_values(&[*r]).get()))
                .filter(|(_, n)| *n > 0)
                .collect::<BTreeMap<_, _>>()
        };
        SyncReport {
            ready: self.ready(now),
            node: format!("{:016x}", self.node),
            incarnation: self.incarnation,
            listen: Some(self.listen),
            peers: self
                .peers
                .iter()
                .map(|p| {
                    let h = hellos.get(p);
                    let age = h.map(|h| now.saturating_duration_since(h.at));
                    PeerReport {
                        addr: *p,
                        up: age.is_some_and(|a| a < PEER_UP),
                        last_hello_ms: age.map(|a| a.as_millis() as u64),
                        node: h.map(|h| format!("{:016x}", h.node)),
                        incarnation: h.map(|h| h.incarnation),
                    }
                })
                .collect(),
            records_sent: m.sent.get(),
            records_received: m.received.get(),
            records_inserted: m.inserted.get(),
            records_skipped: by(&m.skipped, &SKIP_REASONS),
            auth_failures: m.auth_failures.get(),
            malformed: m.malformed.get(),
            replays: by(&m.replays, &REPLAY_REASONS),
            ring_drops: m.ring_drops.get(),
            dumps_sent: m.dumps.get(),
            refresh_passes: m.refresh_passes.get(),
            send_errors: m.send_errors.get(),
        }
    }
}
