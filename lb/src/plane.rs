//! The L7 plane: binds the snapshot's listeners, compiles each new snapshot into a [`Runtime`] swapped in with
//! arc-swap, adds and removes listeners as snapshots change, and shuts down gracefully.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use padis_balance::HealthRegistry;
use padis_model::{Snapshot, SnapshotReader};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::ClientTable;
use crate::error::L7Error;
use crate::fast::FastLoops;
use crate::listener;
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::tls::Resumption;

/// State shared by every listener, connection and request of the plane.
pub(crate) struct PlaneShared {
    /// The compiled snapshot in force.
    pub runtime: ArcSwap<Runtime>,
    /// Metric families.
    pub metrics: Arc<Metrics>,
    /// Every task serving clients (listeners, connections, upgraded tunnels): shutdown waits for them.
    pub tasks: TaskTracker,
    /// Cancelled when the shutdown grace is over: remaining connections and tunnels are closed.
    pub hard: CancellationToken,
    /// Open and new connections per client address, over all listeners.
    pub clients: Arc<ClientTable>,
}

/// The L7 reverse proxy data plane.
pub struct L7Plane;

/// A running L7 plane.
pub struct L7Handle {
    addrs: Arc<Mutex<HashMap<String, SocketAddr>>>,
    failures: BindFailures,
    task: JoinHandle<()>,
}

/// Listeners of the snapshot in force that could not be bound, with the error.
type BindFailures = Arc<Mutex<BTreeMap<String, String>>>;

struct Running {
    configured: SocketAddr,
    stop: CancellationToken,
    /// The socket's place in the upgrade registry (left when the listener is removed).
    _handover: padis_model::handover::Registration,
}

struct Follower {
    shared: Arc<PlaneShared>,
    /// The HTTP/1.1 fast path's loops (none if they could not start: the hyper path serves everything).
    fast: Option<FastLoops>,
    health: HealthRegistry,
    resumption: Resumption,
    listeners: HashMap<String, Running>,
    addrs: Arc<Mutex<HashMap<String, SocketAddr>>>,
    failures: BindFailures,
    /// `padis_listener_bind_failed{listener}`: 1 while a listener of the snapshot in force is not bound.
    bind_failed: prometheus::IntGaugeVec,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    hard: CancellationToken,
}

impl L7Plane {
    /// Serves every [[listener]] of the snapshots read from `reader`, following changes with no reload:
    /// new listeners are bound, removed ones stop accepting (their connections finish), kept ones keep their
    /// socket; routes, groups and certificates swap atomically for the next request/handshake. Session tickets
    /// are sealed with `tickets` (the node's keys, shared with its peers by the L4 sync channel if configured).
    pub async fn start(
        mut reader: SnapshotReader,
        health: HealthRegistry,
        metrics: &prometheus::Registry,
        tickets: Arc<padis_tickets::TicketKeys>,
        shutdown: CancellationToken,
    ) -> Result<L7Handle, L7Error> {
        let bind_failed = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "padis_listener_bind_failed",
                "1 while a listener of the state in force is not bound",
            ),
            &["listener"],
        )?;
        metrics.register(Box::new(bind_failed.clone()))?;
        let metrics = Arc::new(Metrics::register(metrics)?);
        let resumption = Resumption::new(tickets);
        reader.mark_seen();
        let snap = reader.load();
        let rt = Runtime::build(&snap, None, &health, &metrics, &resumption);
        let tracker = TaskTracker::new();
        let hard = CancellationToken::new();
        let shared = Arc::new(PlaneShared {
            runtime: ArcSwap::from_pointee(rt),
            metrics,
            tasks: tracker.clone(),
            hard: hard.clone(),
            clients: ClientTable::new(),
        });
        let fast = FastLoops::start(&shared, &shutdown)
            .inspect_err(|e| tracing::error!(error = %e, "HTTP/1.1 fast path not started; the hyper path serves all"))
            .ok();
        let mut f = Follower {
            shared,
            fast,
            health,
            resumption,
            listeners: HashMap::new(),
            addrs: Arc::new(Mutex::new(HashMap::new())),
            failures: Arc::new(Mutex::new(BTreeMap::new())),
            bind_failed,
            tracker,
            shutdown: shutdown.clone(),
            hard,
        };
        for l in &snap.state.listeners {
            let (tcp, reg) = match listener::bind(&l.name, l.bind) {
                Ok(t) => t,
                Err(e) => {
                    f.stop_all();
                    return Err(e);
                }
            };
            f.run_listener(&l.name, l.bind, tcp, reg);
        }
        let addrs = f.addrs.clone();
        let failures = f.failures.clone();
        let task = tokio::spawn(f.follow(reader));
        Ok(L7Handle { addrs, failures, task })
    }
}

impl L7Handle {
    /// Resolves when shutdown was requested and every listener stopped and in-flight requests finished
    /// (or `limits.shutdown_grace` passed).
    pub async fn wait(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "L7 plane task failed");
        }
    }

    /// Bound local addresses per listener name (for tests binding port 0), as of the call.
    pub fn local_addrs(&self) -> HashMap<String, SocketAddr> {
        self.addrs.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// Listeners of the state in force that could not be bound (e.g. a Marathon service port another process
    /// holds), with the error; each new snapshot tries them again.
    pub fn bind_failures(&self) -> BTreeMap<String, String> {
        self.failures.lock().map(|f| f.clone()).unwrap_or_default()
    }

    /// [`L7Handle::bind_failures`] as a function that outlives the handle's borrow (for a status report).
    pub fn bind_failures_reader(&self) -> impl Fn() -> BTreeMap<String, String> + Send + Sync + 'static {
        let failures = self.failures.clone();
        move || failures.lock().map(|f| f.clone()).unwrap_or_default()
    }
}

impl Follower {
    fn run_listener(
        &mut self,
        name: &str,
        configured: SocketAddr,
        tcp: tokio::net::TcpListener,
        reg: padis_model::handover::Registration,
    ) {
        let stop = self.shutdown.child_token();
        if let Ok(addr) = tcp.local_addr() {
            if let Ok(mut a) = self.addrs.lock() {
                a.insert(name.to_string(), addr);
            }
            tracing::info!(listener = name, %addr, "listening");
        }
        self.tracker.spawn(listener::accept_loop(
            self.shared.clone(),
            name.into(),
            tcp,
            stop.clone(),
            self.hard.clone(),
            self.tracker.clone(),
            self.fast.clone(),
        ));
        self.listeners.insert(name.to_string(), Running { configured, stop, _handover: reg });
    }

    fn stop_all(&mut self) {
        for (_, r) in self.listeners.drain() {
            r.stop.cancel();
        }
    }

    async fn follow(mut self, mut reader: SnapshotReader) {
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                alive = reader.changed() => {
                    if !alive {
                        self.shutdown.cancelled().await;
                        break;
                    }
                    let snap = reader.load();
                    self.apply(&snap).await;
                }
            }
        }
        self.stop_all();
        self.tracker.close();
        let grace = self.shared.runtime.load().limits.shutdown_grace;
        if tokio::time::timeout(grace, self.tracker.wait()).await.is_err() {
            tracing::warn!(?grace, "shutdown grace over; closing remaining connections");
            self.hard.cancel();
            self.tracker.wait().await;
        }
    }

    async fn apply(&mut self, snap: &Snapshot) {
        let prev = self.shared.runtime.load_full();
        let rt = Runtime::build(snap, Some(&prev), &self.health, &self.shared.metrics, &self.resumption);
        drop(prev);
        self.shared.runtime.store(Arc::new(rt));
        let wanted: HashMap<&str, SocketAddr> =
            snap.state.listeners.iter().map(|l| (l.name.as_str(), l.bind)).collect();
        let gone: Vec<String> = self
            .listeners
            .iter()
            .filter(|(n, r)| wanted.get(n.as_str()) != Some(&r.configured))
            .map(|(n, _)| n.clone())
            .collect();
        let stopped = !gone.is_empty();
        for n in gone {
            if let Some(r) = self.listeners.remove(&n) {
                r.stop.cancel();
                if let Ok(mut a) = self.addrs.lock() {
                    a.remove(&n);
                }
                tracing::info!(listener = %n, "listener removed");
            }
        }
        let mut failed = BTreeMap::new();
        for l in &snap.state.listeners {
            if self.listeners.contains_key(&l.name) {
                continue;
            }
            // A listener removed just now may still hold the address for a moment: retry briefly then.
            let mut tries = 0;
            let tcp = loop {
                match listener::bind(&l.name, l.bind) {
                    Ok(t) => break Some(t),
                    Err(e) if tries >= 20 || !stopped => {
                        let known = self.failures.lock().is_ok_and(|f| f.contains_key(&l.name));
                        if !known {
                            tracing::error!(error = %e, origin = l.origin.as_deref().unwrap_or("config"),
                                "listener not started");
                        }
                        failed.insert(l.name.clone(), e.to_string());
                        break None;
                    }
                    Err(_) => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                }
            };
            if let Some((tcp, reg)) = tcp {
                self.run_listener(&l.name, l.bind, tcp, reg);
            }
        }
        if let Ok(mut f) = self.failures.lock() {
            for name in f.keys().filter(|n| !failed.contains_key(*n)) {
                let _ = self.bind_failed.remove_label_values(&[name.as_str()]);
            }
            for name in failed.keys() {
                self.bind_failed.with_label_values(&[name.as_str()]).set(1);
            }
            *f = failed;
        }
        tracing::debug!(generation = snap.generation, "L7 snapshot applied");
    }
}
