//! A Marathon test double: one or several "Marathon instances" on 127.0.0.1:0 serving the documented REST and
//! SSE API (`/v2/apps[?embed=apps.tasks]`, `/v2/events` with `event_type` filters, `/v2/leader`, `/v2/info`,
//! `/ping`) from a simulated cluster, plus a Rust scripting API: deploy, scale, kill, fail, change health,
//! relabel, cut streams, change leader (non-leaders answer 503, redirect, or proxy), go down, and serve
//! garbage frames, malformed JSON or huge bodies. Payloads come from `tests/fixtures/marathon`.

mod server;
mod world;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{broadcast, watch};

pub use world::{iso_now, AppSpec, Emitted, PortSpec, TaskSim, World};

/// How an instance that is not the leader answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonLeader {
    /// Serves the request itself (Marathon proxies to the leader).
    Proxy,
    /// `503 Service Unavailable`.
    Unavailable,
    /// `307 Temporary Redirect` to the leader.
    Redirect,
}

/// What `/v2/apps` serves instead of the real state.
#[derive(Debug, Clone)]
pub enum AppsOverride {
    /// These bytes with 200 and `application/json` (malformed JSON, huge bodies…).
    Body(Bytes),
    /// This status with an error message.
    Status(u16),
    /// The state as of the request, answered after this delay.
    Delay(Duration),
}

/// One frame on the event bus.
#[derive(Clone, Debug)]
pub(crate) struct BusFrame {
    kind: Option<String>,
    bytes: Bytes,
}

pub(crate) struct Inner {
    world: Mutex<World>,
    bus: broadcast::Sender<BusFrame>,
    cut: watch::Sender<u64>,
    leader: AtomicUsize,
    non_leader: Mutex<NonLeader>,
    apps_override: Mutex<Option<AppsOverride>>,
    auth: Mutex<Option<String>>,
    members: Mutex<Vec<server::Member>>,
    stream_connections: AtomicU64,
    apps_requests: AtomicU64,
    auth_seen: Mutex<Vec<Option<String>>>,
    tls: Mutex<Option<Arc<rustls::ServerConfig>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn emit(&self, events: Vec<Emitted>) {
        for (kind, payload) in events {
            let bytes = Bytes::from(format!("event: {kind}\ndata: {payload}\n\n"));
            let _ = self.bus.send(BusFrame { kind: Some(kind), bytes });
        }
    }
}

/// A running Marathon double (one or several instances sharing one cluster state). Stops on drop.
pub struct MarathonDouble {
    inner: Arc<Inner>,
}

impl MarathonDouble {
    /// One instance, the leader.
    pub async fn start() -> MarathonDouble {
        Self::cluster(1).await
    }

    /// `n` instances; instance 0 leads.
    pub async fn cluster(n: usize) -> MarathonDouble {
        Self::cluster_with(n, None).await
    }

    /// One instance serving HTTPS with `tls` (URLs are then `https://`).
    pub async fn start_tls(tls: Arc<rustls::ServerConfig>) -> MarathonDouble {
        Self::cluster_with(1, Some(tls)).await
    }

    async fn cluster_with(n: usize, tls: Option<Arc<rustls::ServerConfig>>) -> MarathonDouble {
        let (bus, _) = broadcast::channel(1 << 16);
        let inner = Arc::new(Inner {
            world: Mutex::new(World::default()),
            bus,
            cut: watch::channel(0).0,
            leader: AtomicUsize::new(0),
            non_leader: Mutex::new(NonLeader::Unavailable),
            apps_override: Mutex::new(None),
            auth: Mutex::new(None),
            members: Mutex::new(Vec::new()),
            stream_connections: AtomicU64::new(0),
            apps_requests: AtomicU64::new(0),
            auth_seen: Mutex::new(Vec::new()),
            tls: Mutex::new(tls),
        });
        for i in 0..n {
            let m = server::Member::start(inner.clone(), i, "127.0.0.1:0".parse().expect("addr")).await;
            lock(&inner.members).push(m);
        }
        MarathonDouble { inner }
    }

    /// Address of instance `i`.
    pub fn addr(&self, i: usize) -> SocketAddr {
        lock(&self.inner.members)[i].addr
    }

    fn scheme(&self) -> &'static str {
        if lock(&self.inner.tls).is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Base URL of instance `i` (`http://127.0.0.1:port`, or `https://` with TLS).
    pub fn url(&self, i: usize) -> String {
        format!("{}://{}", self.scheme(), self.addr(i))
    }

    /// Base URLs of all instances.
    pub fn urls(&self) -> Vec<String> {
        let addrs: Vec<SocketAddr> = lock(&self.inner.members).iter().map(|m| m.addr).collect();
        let scheme = self.scheme();
        addrs.into_iter().map(|a| format!("{scheme}://{a}")).collect()
    }

    /// Runs `f` on the cluster state and broadcasts the events it returns.
    pub fn script(&self, f: impl FnOnce(&mut World) -> Vec<Emitted>) {
        let events = f(&mut lock(&self.inner.world));
        self.inner.emit(events);
    }

    /// Changes the state without any event (only a full sync can see it).
    pub fn quietly<R>(&self, f: impl FnOnce(&mut World) -> R) -> R {
        f(&mut lock(&self.inner.world))
    }

    /// Deploys an app with `instances` tasks.
    pub fn add_app(&self, spec: AppSpec, instances: u32) {
        self.script(|w| w.add_app(spec, instances));
    }

    /// Scales an app (surplus tasks are killed at once).
    pub fn scale(&self, id: &str, instances: u32) {
        self.script(|w| w.scale(id, instances));
    }

    /// Task ids of an app, oldest first.
    pub fn task_ids(&self, id: &str) -> Vec<String> {
        lock(&self.inner.world).task_ids(id)
    }

    /// A task enters `TASK_KILLING` (it keeps running until [`kill_finish`](Self::kill_finish)).
    pub fn kill_begin(&self, id: &str, task: &str) {
        self.script(|w| w.kill_begin(id, task));
    }

    /// A killing task is gone (`TASK_KILLED`).
    pub fn kill_finish(&self, id: &str, task: &str) {
        self.script(|w| w.kill_finish(id, task));
    }

    /// A task fails (`TASK_FAILED`).
    pub fn fail_task(&self, id: &str, task: &str) {
        self.script(|w| w.task_gone(id, task, "TASK_FAILED"));
    }

    /// A task's health check result changes.
    pub fn set_health(&self, id: &str, task: &str, alive: bool) {
        self.script(|w| w.set_health(id, task, alive));
    }

    /// Deletes an app.
    pub fn remove_app(&self, id: &str) {
        self.script(|w| w.remove_app(id));
    }

    /// Replaces an app's labels.
    pub fn set_labels(&self, id: &str, labels: &[(&str, &str)]) {
        self.script(|w| w.set_labels(id, labels));
    }

    /// Broadcasts an event of type `kind` (any payload, even malformed).
    pub fn emit_event(&self, kind: &str, data: &str) {
        let bytes = Bytes::from(format!("event: {kind}\ndata: {data}\n\n"));
        let _ = self.inner.bus.send(BusFrame { kind: Some(kind.to_string()), bytes });
    }

    /// Broadcasts an event built from its fixture with `fields` overlaid.
    pub fn emit_fixture(&self, kind: &str, fields: Value) {
        self.inner.emit(vec![(kind.to_string(), world::patch(world::fixtures::event(kind), fields))]);
    }

    /// Writes raw bytes into every event stream (garbage, partial frames…), whatever their filter.
    pub fn emit_raw(&self, bytes: impl Into<Bytes>) {
        let _ = self.inner.bus.send(BusFrame { kind: None, bytes: bytes.into() });
    }

    /// Aborts every open event stream (the TCP connection is reset mid-stream).
    pub fn cut_streams(&self) {
        self.inner.cut.send_modify(|g| *g += 1);
    }

    /// Makes instance `i` the leader; event streams are closed, as when Marathon loses leadership.
    pub fn set_leader(&self, i: usize) {
        self.inner.leader.store(i, Ordering::SeqCst);
        self.cut_streams();
    }

    /// How non-leaders answer.
    pub fn set_non_leader(&self, mode: NonLeader) {
        *lock(&self.inner.non_leader) = mode;
    }

    /// Serves something else on `/v2/apps` (None: the real state again).
    pub fn set_apps_override(&self, o: Option<AppsOverride>) {
        *lock(&self.inner.apps_override) = o;
    }

    /// Requires this exact `Authorization` header value (None: no auth).
    pub fn require_auth(&self, value: Option<&str>) {
        *lock(&self.inner.auth) = value.map(str::to_string);
    }

    /// `Authorization` headers seen so far.
    pub fn auth_seen(&self) -> Vec<Option<String>> {
        lock(&self.inner.auth_seen).clone()
    }

    /// Instance `i` stops: its listener closes and its connections are reset.
    pub fn down(&self, i: usize) {
        lock(&self.inner.members)[i].stop();
    }

    /// Instance `i` listens again on the same address.
    pub async fn up(&self, i: usize) {
        let addr = self.addr(i);
        let m = server::Member::start(self.inner.clone(), i, addr).await;
        lock(&self.inner.members)[i] = m;
    }

    /// Every instance down.
    pub fn down_all(&self) {
        for m in lock(&self.inner.members).iter_mut() {
            m.stop();
        }
    }

    /// Every instance up again.
    pub async fn up_all(&self) {
        let n = lock(&self.inner.members).len();
        for i in 0..n {
            self.up(i).await;
        }
    }

    /// Event stream connections accepted so far.
    pub fn stream_connections(&self) -> u64 {
        self.inner.stream_connections.load(Ordering::SeqCst)
    }

    /// `/v2/apps` requests served so far.
    pub fn apps_requests(&self) -> u64 {
        self.inner.apps_requests.load(Ordering::SeqCst)
    }
}

impl Drop for MarathonDouble {
    fn drop(&mut self) {
        self.down_all();
    }
}
