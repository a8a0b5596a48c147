//! Padis DNS: an authoritative server for static zone files and records generated from control snapshots.
//!
//! [`DnsPlane::start`] binds UDP (SO_REUSEPORT workers) and TCP listeners, builds the zones of the current
//! snapshot and follows every new one. Each zone version is immutable and published with arc-swap; plain queries
//! are answered from pre-rendered wire bytes, everything else by a general path on hickory-proto messages.
//! Secondaries follow by AXFR/IXFR + NOTIFY (TSIG); RFC 2136 updates are journaled so restarts lose nothing.

mod dnssec;
mod fast;
mod fasttable;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod generate;
mod handler;
mod journal;
mod manager;
mod metrics;
mod mmsg;
mod names;
mod net;
mod notify;
mod render;
mod report;
mod resolve;
mod rrl;
mod serial;
mod serial_file;
mod sharded;
mod source;
mod tsig;
mod update;
mod wire;
mod xfr;
mod zone;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use padis_model::SnapshotReader;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use report::{DnsReport, ZoneReport};
pub use source::ZoneError;
pub use tsig::KeyError;

/// Why the DNS plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A listen address could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// A UDP worker thread could not be started.
    #[error("cannot start a UDP worker thread for {addr}: {source}")]
    Thread {
        /// Address the worker serves.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// A zone could not be loaded.
    #[error(transparent)]
    Zone(#[from] ZoneError),
    /// A TSIG key is unusable.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The state directory cannot be created.
    #[error("state directory {path}: {source}")]
    StateDir {
        /// Directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// The DNS data plane.
pub struct DnsPlane;

/// A running DNS plane.
pub struct DnsHandle {
    addrs: Vec<SocketAddr>,
    report: Arc<ArcSwap<DnsReport>>,
    tasks: Vec<JoinHandle<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// The sockets' places in the upgrade registry, left once the plane has stopped.
    _handover: Vec<padis_model::handover::Registration>,
}

impl DnsPlane {
    /// Serves the `[dns]` zones of the snapshots read from `reader`; follows every new snapshot
    /// (zones rebuilt, serials bumped only when content changes, NOTIFY sent).
    pub async fn start(
        reader: SnapshotReader,
        metrics: &prometheus::Registry,
        shutdown: CancellationToken,
    ) -> Result<DnsHandle, DnsError> {
        let snap = reader.load();
        let cfg = snap.state.dns.clone();
        let report = Arc::new(ArcSwap::from_pointee(DnsReport::default()));
        if cfg.listen.is_empty() {
            tracing::info!("DNS disabled (no dns.listen)");
            let t = tokio::spawn(async move { shutdown.cancelled().await });
            return Ok(DnsHandle {
                addrs: Vec::new(),
                report,
                tasks: vec![t],
                threads: Vec::new(),
                _handover: Vec::new(),
            });
        }
        let m = metrics::Metrics::new(metrics)?;
        let (tx, rx) = mpsc::channel(256);
        let handler = Arc::new(handler::Handler {
            zones: ArcSwap::from_pointee(zone::ZoneSet::default()),
            metrics: m,
            rrl: rrl::Rrl::new(cfg.rrl.clone()),
            updates: tx,
            replay: tsig::ReplayCache::new(1 << 16),
        });
        let mut bound = Vec::new();
        for addr in &cfg.listen {
            bound.push(net::bind(*addr, cfg.reuseport.max(1))?);
        }
        let addrs: Vec<SocketAddr> = bound.iter().map(|b| b.addr).collect();
        let (file_tx, file_rx) = mpsc::channel(16);
        let manager =
            blocking(|| manager::Manager::new(&snap, handler.clone(), report.clone(), addrs.clone(), file_tx))?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        let mut threads = Vec::new();
        let mut handover = Vec::new();
        for mut b in bound {
            handover.append(&mut b.handover);
            for (i, sock) in b.udp.into_iter().enumerate() {
                let (h, s, wait) = (handler.clone(), stop.clone(), cfg.udp_batch_wait);
                let t = std::thread::Builder::new()
                    .name(format!("dns-udp-{i}"))
                    .spawn(move || net::udp_worker(sock, h, s, wait))
                    .map_err(|source| DnsError::Thread { addr: b.addr, source })?;
                threads.push(t);
            }
            tasks.push(tokio::spawn(net::tcp_server(
                b.tcp,
                handler.clone(),
                cfg.tcp_idle_timeout,
                cfg.tcp_max_connections,
                shutdown.clone(),
            )));
        }
        tasks.push(tokio::spawn(manager.run(reader, rx, file_rx, shutdown.clone())));
        let sd = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            sd.cancelled().await;
            stop.store(true, Ordering::Relaxed);
        }));
        tracing::info!(?addrs, "DNS serving");
        Ok(DnsHandle { addrs, report, tasks, threads, _handover: handover })
    }
}

static RELOADS: std::sync::LazyLock<tokio::sync::watch::Sender<u64>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::Sender::new(0));

/// Asks every DNS plane of the process to read its zone files again, changed or not (SIGHUP, `POST /v1/reload`):
/// new content is served, a higher file serial is taken, a file that does not load is reported and its zone's
/// previous version stays served. Zone files are also reloaded by themselves when they change on disk.
pub fn request_zone_reload() {
    RELOADS.send_modify(|n| *n = n.wrapping_add(1));
}

fn reload_requests() -> tokio::sync::watch::Receiver<u64> {
    RELOADS.subscribe()
}

/// Loads the master files of the zones of a `[dns]` config as the DNS plane would, for `padis check`: one error
/// per zone whose file cannot be read or parsed, naming `file:line`. `base`: where relative paths start.
pub fn check_zone_files(cfg: &padis_model::dns::DnsConfig, base: &std::path::Path) -> Vec<ZoneError> {
    source::check_zone_files(cfg, base)
}

/// Runs CPU-heavy work (zone builds) without stalling other tasks of a multi-threaded runtime.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

impl DnsHandle {
    /// Waits until the plane has stopped (after the shutdown token is cancelled).
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }

    /// Bound UDP/TCP addresses (one per `dns.listen` entry, with the real port).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.addrs.clone()
    }

    /// Zones, serials and record counts.
    pub fn report(&self) -> DnsReport {
        (**self.report.load()).clone()
    }
}
