//! Entry points for the fuzz targets (`tests/fuzz`): the real request path without sockets. Not a stable API.
//!
//! [`Server`] is what [`crate::DnsPlane::start`] builds for a snapshot (handler, zone manager following the
//! snapshot and applying updates), minus the listeners; [`Server::exchange`] does what a UDP worker or a TCP
//! connection does with one request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use padis_model::{Snapshot, SnapshotStore};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::fast::{self, Warm};
use crate::handler::{Handler, Outcome, Worker};
use crate::report::DnsReport;
use crate::tsig::{Signer, TsigKey};
use crate::DnsError;

/// Why a [`Server`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// What would keep the plane from starting.
    #[error(transparent)]
    Dns(#[from] DnsError),
    /// The zone manager's thread could not be started.
    #[error("cannot start the zone manager thread: {0}")]
    Thread(std::io::Error),
}

/// The DNS plane of one snapshot without its sockets.
pub struct Server {
    handler: Arc<Handler>,
    worker: Worker,
    shutdown: CancellationToken,
    manager: Option<std::thread::JoinHandle<()>>,
    keys: Vec<TsigKey>,
    updates: u64,
    report: Arc<ArcSwap<DnsReport>>,
    _store: SnapshotStore,
}

impl Server {
    /// Builds the handler and the zone manager of `snapshot` (its `[dns]` zones and keys), as the plane does; the
    /// manager runs on a thread of its own, as it runs on a task of the plane.
    pub fn new(snapshot: Snapshot) -> Result<Server, ServerError> {
        let cfg = snapshot.state.dns.clone();
        let registry = prometheus::Registry::new();
        let metrics = crate::metrics::Metrics::new(&registry).map_err(DnsError::from)?;
        let (tx, rx) = mpsc::channel(16);
        let handler = Arc::new(Handler {
            zones: ArcSwap::from_pointee(crate::zone::ZoneSet::default()),
            metrics: metrics.clone(),
            rrl: crate::rrl::Rrl::new(cfg.rrl.clone()),
            updates: tx,
            replay: crate::tsig::ReplayCache::new(1 << 16),
        });
        let keys =
            cfg.tsig_keys.iter().map(TsigKey::from_config).collect::<Result<Vec<_>, _>>().map_err(DnsError::from)?;
        let store = SnapshotStore::new(snapshot);
        let snap = store.reader().load();
        let report = Arc::new(ArcSwap::from_pointee(DnsReport::default()));
        let (file_tx, file_rx) = mpsc::channel(16);
        let manager = crate::manager::Manager::new(&snap, handler.clone(), report.clone(), Vec::new(), file_tx)?;
        let shutdown = CancellationToken::new();
        let (reader, sd) = (store.reader(), shutdown.clone());
        let thread = std::thread::Builder::new()
            .name("dns-fuzz-manager".into())
            .spawn(move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(manager.run(reader, rx, file_rx, sd)),
                Err(e) => tracing::error!(error = %e, "no runtime for the zone manager"),
            })
            .map_err(ServerError::Thread)?;
        Ok(Server {
            worker: Worker::new(&metrics),
            handler,
            shutdown,
            manager: Some(thread),
            keys,
            updates: 0,
            report,
            _store: store,
        })
    }

    /// Handles `req` from `src` as a UDP worker (`tcp` false: prefetch, handle, updates through the manager) or
    /// a TCP connection does, and returns the messages sent back (none: dropped). With `sign`, `req` is first
    /// signed with the first configured TSIG key, so that input reaches what lies behind TSIG verification
    /// (updates, keyed transfers) and not only its rejection.
    pub fn exchange(&mut self, req: &[u8], src: SocketAddr, tcp: bool, sign: bool) -> Vec<Vec<u8>> {
        let mut req = req.to_vec();
        if sign && req.len() >= 12 {
            if let Some(k) = self.keys.first() {
                Signer::new(k.clone(), Vec::new()).sign(&mut req, None);
            }
        }
        let h = &self.handler;
        let set = h.zones.load_full();
        if !tcp {
            for warm in [Warm::Slot, Warm::Record] {
                fast::prefetch(&set, &req, warm);
            }
        }
        let mut out = Vec::new();
        match h.handle(&set, &req, src, tcp, &mut out, &mut self.worker, Instant::now()) {
            Outcome::Reply => vec![out],
            Outcome::Stream(msgs) if tcp => msgs,
            Outcome::Stream(_) | Outcome::Drop => Vec::new(),
            Outcome::Update(update) => {
                let (job, pending, rx) = *update;
                self.updates += 1;
                let rcode = if h.updates.blocking_send(job).is_ok() { rx.blocking_recv().ok() } else { None };
                match h.finish_update(pending, rcode, tcp, &mut out, &mut self.worker) {
                    Outcome::Reply => vec![out],
                    _ => Vec::new(),
                }
            }
        }
    }

    /// Zones, serials, record counts and load errors, as the plane reports them.
    pub fn report(&self) -> DnsReport {
        (**self.report.load()).clone()
    }

    /// Updates handed to the zone manager so far (each may have changed the zones and their journals).
    pub fn updates(&self) -> u64 {
        self.updates
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.manager.take() {
            let _ = t.join();
        }
    }
}
