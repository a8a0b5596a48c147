//! Connection-table synchronisation among Padis nodes (as LVS's sync daemon): the XDP program announces every
//! new connection-table entry in a ring buffer; this daemon translates it to identities (VIP key, backend
//! address), batches it and sends it by UDP to the peers, authenticated with HMAC-SHA256. Peers' records are
//! translated back to local indexes and inserted only where the flow is unknown (local knowledge wins). A node
//! that (re)starts says hello and gets a rate-bounded bulk dump of each peer's table, so a node that joins the
//! ECMP set already knows the existing flows; every `refresh_interval` the whole table is re-announced to every
//! peer at `refresh_rate` (anti-entropy: records lost on UDP or on a full ring are eventually known). Datagrams
//! carry a signed incarnation and sequence number; a window per sender refuses replays.

mod codec;
mod daemon;
mod dump;
pub mod index;
mod metrics;
pub mod replay;
mod status;

use std::hash::{Hash, Hasher};
use std::os::fd::AsFd;
use std::sync::Arc;

use aya::maps::{MapData, PerCpuArray, RingBuf};
use padis_ebpf_common::Counters;

use crate::conntrack::ConnTable;
use padis_model::l4::SyncConfig;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use codec::{decode, encode, encode_flows, Body, CodecError, Message, Origin, SyncKey, WireFlow, MAX_RECORDS};
pub use index::SyncIndex;
pub use metrics::SyncMetrics;
pub use status::{PeerReport, SyncReport};

/// Why the sync daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The key file is unreadable or too short.
    #[error("sync key: {0}")]
    Key(String),
    /// The UDP socket could not be opened.
    #[error("sync socket {addr}: {source}")]
    Socket {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// A BPF map handle could not be duplicated.
    #[error("sync map handle: {0}")]
    Map(#[from] aya::maps::MapError),
    /// The ring buffer could not be registered with the reactor.
    #[error("sync ring buffer: {0}")]
    Ring(std::io::Error),
    /// The XDP object has no sync ring (or it was taken already).
    #[error("the XDP program has no sync ring buffer")]
    NoRing,
    /// Metrics registration failed.
    #[error("sync metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// A second handle on a map (own fd), for a task that works next to the programmer.
pub(crate) fn dup(m: &MapData) -> Result<MapData, SyncError> {
    let fd = m.fd().as_fd().try_clone_to_owned().map_err(aya::maps::MapError::IoError)?;
    Ok(MapData::from_fd(fd)?)
}

/// A second handle on the connection table.
pub(crate) fn conntrack_handle(ct: &ConnTable) -> Result<ConnTable, SyncError> {
    Ok(ct.dup()?)
}

/// The maps the daemon uses: the ring it drains, and its own handles on the connection table and the counters.
pub struct SyncMaps {
    /// `SYNC_RING`.
    pub ring: RingBuf<MapData>,
    /// `CONNTRACK4` + `CONNTRACK`.
    pub conntrack: ConnTable,
    /// `STATS` (for the ring-full counter).
    pub stats: PerCpuArray<MapData, Counters>,
    /// `max_entries` of the connection table (bounds a dump).
    pub max_flows: u32,
}

/// This node's name: `[l4] node_id`, else the host name.
pub fn node_name(l4: &padis_model::l4::L4Config) -> String {
    l4.node_id.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
    })
}

/// The node id carried in messages: from the node name and the listen address (two instances on one host
/// differ).
pub fn node_id(name: &str, cfg: &SyncConfig) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    (name, cfg.listen).hash(&mut h);
    h.finish()
}

/// A running sync daemon.
pub struct SyncHandle {
    task: tokio::task::JoinHandle<()>,
    status: Arc<status::SyncStatus>,
}

impl SyncHandle {
    /// Starts the daemon (inside a tokio runtime): binds `cfg.listen`, says hello to the peers (asking for their
    /// tables) and runs until `shutdown`. Without `maps` (no XDP on this node) it shares `tickets` only.
    pub fn spawn(
        cfg: &SyncConfig,
        node_name: &str,
        maps: Option<SyncMaps>,
        index: watch::Receiver<Arc<SyncIndex>>,
        registry: &prometheus::Registry,
        tickets: Option<Arc<padis_tickets::TicketKeys>>,
        shutdown: CancellationToken,
    ) -> Result<SyncHandle, SyncError> {
        let secret = zeroize::Zeroizing::new(padis_model::l4::read_sync_key(&cfg.key_file).map_err(SyncError::Key)?);
        let metrics = SyncMetrics::new(registry)?;
        let (xdp, shared) = (maps.is_some(), tickets.is_some());
        let node = node_id(node_name, cfg);
        let d = daemon::Daemon::new(cfg, node, SyncKey::new(&secret), maps, index, metrics, tickets)?;
        tracing::info!(listen = %cfg.listen, peers = cfg.peers.len(), node = node_name, xdp, ticket_keys = shared, "L4 sync started");
        let status = d.status();
        Ok(SyncHandle { task: tokio::spawn(d.run(shutdown)), status })
    }

    /// Peers (with the age of their last hello) and counters, for the L4 report.
    pub fn report(&self) -> SyncReport {
        self.status.report(std::time::Instant::now())
    }

    /// Waits until the daemon has stopped.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}
