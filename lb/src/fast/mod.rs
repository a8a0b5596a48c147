//! The HTTP/1.1 fast path (plaintext, and over TLS for clients the listener does not give h2: see [`tls`]): an
//! event loop in the style of haproxy and nginx, run as one task per runtime worker.
//!
//! Each loop owns an epoll instance (mio) registered with the runtime's own reactor, its client connections, and
//! a LIFO cache of idle backend connections. When the epoll is ready the loop takes every ready event, reads and
//! parses what arrived, writes requests and responses into per-connection output buffers, and only then sends all
//! buffered output, one `write` per connection. So every system call and every wake-up of a peer carries as much
//! as one turn of the loop produced, and a request costs four system calls (read the client, write the backend,
//! read the backend, write the client) and no task switch, no channel and no allocation in the steady state.
//!
//! It serves the common case only: HTTP/1.1 requests with no body or a `Content-Length` one, routed to a group of
//! plain HTTP/1.1 backends. Everything else — malformed or unusual heads (the request smuggling cases among
//! them), upgrades, `Expect`, chunked request bodies, HTTP/1.0 and h2c clients, redirects, TLS or HTTP/2
//! backends, routes that do not exist — hands the connection with the bytes read so far over to the hyper path
//! (`conn::serve_handoff`; a TLS connection over the same TLS session, `conn::serve_tls_handoff`), which answers
//! as it answers every other connection. Routing, balancing, health
//! reports, retries on connect failure, timeouts, limits, metrics and the access log are the same as there.

mod backend;
mod batch;
mod buf;
mod chunked;
mod client;
mod request;
mod response;
mod tls;

use std::collections::HashMap;
use std::io::{self, ErrorKind};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::HeaderMap;
use http::StatusCode;
use mio::{Events, Interest, Poll, Token};
use padis_balance::{GroupBalancer, InFlight, Pick};
use rustls::ServerConfig;
use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::conn::{self, ActiveGuard};
use crate::headers::ClientId;
use crate::io::REQUEST_TIMEOUT_REPLY;
use crate::metrics::RequestCounters;
use crate::plane::PlaneShared;
use crate::policy::{Blame, Failure};
use crate::routes::CompiledRoute;
use buf::{Buf, Out};
use response::Framing;
pub(crate) use tls::{fast_config, TlsStream};

/// How often deadlines (head, idle, connect, response, idle backend connections) and stop requests are checked.
const SWEEP: Duration = Duration::from_millis(50);
/// Events taken per epoll wait.
const EVENTS: usize = 256;
/// First size of a client's read buffer (it grows up to the head limit while a head is incomplete).
const CLIENT_BUF: usize = 4096;
/// Read buffer of a backend connection.
const BACKEND_BUF: usize = 16 * 1024;
/// Output buffered towards one peer before the loop stops reading from the other side.
const HIGH_WATER: usize = 256 * 1024;
/// Output buffer capacity kept on a connection once its output went out.
const OUT_KEEP: usize = 64 * 1024;
/// Largest response head.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Idle time before TCP keep-alive probes on backend connections (as the hyper path's connector).
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// An accepted plaintext connection for a loop.
pub(crate) struct Handoff {
    pub stream: std::net::TcpStream,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub listener: Arc<str>,
    pub guard: ActiveGuard,
    pub stop: CancellationToken,
}

/// The loops of a plane, fed round robin by the accept loops.
#[derive(Clone)]
pub(crate) struct FastLoops {
    senders: Arc<[mpsc::UnboundedSender<Handoff>]>,
    next: Arc<AtomicUsize>,
}

impl FastLoops {
    /// Starts one loop per runtime worker. With one worker (a current-thread runtime) the loop is a task on it;
    /// with several, each loop runs on a thread of its own (its own current-thread runtime), as nginx runs one
    /// event loop per worker process: a loop never migrates between workers, its readiness is never handed from
    /// one worker's I/O driver to another, and its connections, buffers and idle backend connections stay on one
    /// core's caches. The runtime's workers keep the accept loops and the hyper path. Loops end once `shutdown`
    /// is cancelled and their connections are done, at once on the plane's hard stop, and at once when the
    /// runtime that started them is dropped. The plane's task tracker waits for them.
    pub fn start(plane: &Arc<PlaneShared>, shutdown: &CancellationToken) -> io::Result<FastLoops> {
        let main = tokio::runtime::Handle::current();
        let n = main.metrics().num_workers().max(1);
        let mut senders = Vec::with_capacity(n);
        if main.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
            let (tx, rx) = mpsc::unbounded_channel();
            let l = Loop::new(plane.clone(), rx, shutdown.clone(), main.clone(), CancellationToken::new())?;
            plane.tasks.spawn(l.run());
            senders.push(tx);
            return Ok(FastLoops { senders: senders.into(), next: Arc::new(AtomicUsize::new(0)) });
        }
        // Cancelled when the starting runtime drops its tasks (it was shut down): the loop threads end with it.
        let gone = CancellationToken::new();
        let guard = gone.clone().drop_guard();
        main.spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await
        });
        for i in 0..n {
            let (tx, rx) = mpsc::unbounded_channel();
            let (started_tx, started_rx) = std::sync::mpsc::sync_channel::<io::Result<()>>(1);
            let (plane, shutdown, main, gone) = (plane.clone(), shutdown.clone(), main.clone(), gone.clone());
            let token = plane.tasks.token();
            std::thread::Builder::new().name(format!("padis-fast-{i}")).spawn(move || {
                let _token = token;
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    match Loop::new(plane, rx, shutdown, main, gone) {
                        Ok(l) => {
                            let _ = started_tx.send(Ok(()));
                            l.run().await;
                        }
                        Err(e) => {
                            let _ = started_tx.send(Err(e));
                        }
                    }
                });
            })?;
            started_rx.recv().map_err(|_| io::Error::other("fast path loop thread ended at its start"))??;
            senders.push(tx);
        }
        Ok(FastLoops { senders: senders.into(), next: Arc::new(AtomicUsize::new(0)) })
    }

    /// Hands a connection to the next loop; gives it back if the loops are gone.
    pub fn submit(&self, h: Handoff) -> Result<(), Handoff> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
        self.senders[i].send(h).map_err(|e| e.0)
    }
}

/// The request a client connection has in progress.
struct Exchange {
    started: Instant,
    route: Arc<CompiledRoute>,
    balancer: Arc<GroupBalancer>,
    group: Arc<str>,
    /// The request's headers, for hashing and sticky selectors only.
    select_headers: Option<HeaderMap>,
    pick: Option<Pick>,
    label: Option<Arc<str>>,
    in_flight: Option<InFlight>,
    /// Backends that failed to connect for this request.
    exclude: Vec<SocketAddr>,
    retries: u32,
    connect_timeout: Duration,
    request_timeout: Duration,
    /// Time the client may leave its request body without a byte (`limits.body_read_timeout`).
    body_timeout: Duration,
    idle_timeout: Duration,
    idempotent: bool,
    head_request: bool,
    /// Request body bytes not yet moved to the backend.
    body_left: u64,
    has_body: bool,
    /// Sent again once already (a reused connection failed before any response byte).
    replayed: bool,
    backend: Option<usize>,
    /// When the response head must have arrived.
    deadline: Option<Instant>,
    /// The response body's framing, once its head was forwarded.
    framing: Option<Framing>,
    reusable: bool,
    keep_alive: Option<Duration>,
    status: u16,
    bytes: u64,
}

impl Exchange {
    /// Sets the deadline of what the exchange waits for, as of `now`: the client's next body bytes while its
    /// body is still coming (a stall is the client's fault), else the response head (the backend's).
    fn arm(&mut self, now: Instant) {
        if self.framing.is_none() {
            self.deadline = Some(now + if self.body_left > 0 { self.body_timeout } else { self.request_timeout });
        }
    }
}

enum ClientState {
    /// A TLS connection before its handshake is complete.
    Handshake,
    /// Reading a request head (or idle between requests).
    Head,
    /// A request is in progress.
    Busy(Box<Exchange>),
    /// Sending the last bytes, then closing.
    Closing,
}

struct Client {
    sock: mio::net::TcpStream,
    gen: u32,
    peer: SocketAddr,
    local: SocketAddr,
    listener: Arc<str>,
    id: ClientId,
    stop: CancellationToken,
    guard: Option<ActiveGuard>,
    inb: Buf,
    out: Out,
    dirty: bool,
    state: ClientState,
    /// When the head being read must be complete (none between requests, as the hyper path's `TimedIo`).
    head_deadline: Option<Instant>,
    last_activity: Instant,
    /// Since when its output waits for the client to take any of it (`limits.send_timeout`).
    send_stall: Option<Instant>,
    eof: bool,
    /// Reading stopped because the backend side is behind.
    read_paused: bool,
    /// The client's close was reported: reads go on to the end.
    peer_closed: bool,
    /// Close once the current response is out.
    close_after: bool,
    /// Hand over to the hyper path once the output is flushed.
    handoff: bool,
    counters: RequestCounters,
    /// The rewritten head of the request in progress (kept to send it again).
    req_head: Vec<u8>,
    /// Access log fields of the request in progress.
    method: String,
    host: String,
    path: String,
    /// The request id (`policy::identify`; empty without `[request_id]`) and valid `traceparent` of the request
    /// in progress.
    request_id: String,
    traceparent: String,
    /// TLS, once the handshake started here.
    tls: Option<Box<tls::Tls>>,
    /// A TLS connection waiting for its ClientHello: the listener's config and the fast path's (without h2).
    hello: Option<Box<(Arc<ServerConfig>, Arc<ServerConfig>)>>,
}

impl Client {
    /// Output not sent yet (plaintext still to encrypt included).
    fn pending(&self) -> usize {
        self.out.pending() + self.tls.as_ref().map_or(0, |t| t.pending())
    }

    /// Whether the read buffer has room for more (TLS: the loop's bound `max` on decrypted bytes).
    fn has_room(&self, max: usize) -> bool {
        match self.tls {
            Some(_) => self.inb.len() < max,
            None => self.inb.len() < self.inb.data.len(),
        }
    }
}

enum BackendState {
    Connecting { deadline: Instant },
    Busy,
    Idle { until: Instant },
}

struct Backend {
    sock: mio::net::TcpStream,
    gen: u32,
    addr: SocketAddr,
    state: BackendState,
    /// The client whose request it carries (Busy, Connecting).
    client: Option<usize>,
    inb: Buf,
    out: Out,
    dirty: bool,
    /// Carried a request before this one.
    reused: bool,
    /// Bytes were read for the current request.
    read_any: bool,
    read_paused: bool,
    /// The backend closed its side.
    eof: bool,
    /// The backend's close was reported: reads go on to the end.
    peer_closed: bool,
}

/// What the variables of header rules expand to for client `peer`'s request (fields of a `Client`, borrowed apart
/// from its output buffer).
fn vars<'a>(peer: SocketAddr, tls: &'a Option<Box<tls::Tls>>, request_id: &'a str) -> crate::policy::rules::Vars<'a> {
    crate::policy::rules::Vars {
        client: peer,
        https: tls.is_some(),
        request_id,
        tls_subject: tls.as_ref().and_then(|t| t.subject.as_deref()),
        sni: tls.as_ref().and_then(|t| t.sni.as_deref()),
    }
}

/// Token layout: bit 0 = backend, bits 1..32 = slab key, bits 32.. = generation.
fn token(key: usize, gen: u32, backend: bool) -> Token {
    Token(((gen as usize) << 32) | (key << 1) | usize::from(backend))
}

fn untoken(t: Token) -> (usize, u32, bool) {
    ((t.0 & 0xffff_ffff) >> 1, (t.0 >> 32) as u32, t.0 & 1 == 1)
}

/// A local answer (the same status, text and `Retry-After` the hyper path gives).
fn local_reply(status: StatusCode, body: &str, close: bool, retry_after: Option<u64>, out: &mut Vec<u8>) {
    let reason = status.canonical_reason().unwrap_or("");
    let close = if close { "connection: close\r\n" } else { "" };
    let retry = retry_after.map(|s| format!("retry-after: {s}\r\n")).unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{close}{retry}\r\n",
        status.as_u16(),
        body.len()
    );
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body.as_bytes());
}

/// What an epoll event reported.
#[derive(Clone, Copy)]
struct Ready {
    readable: bool,
    writable: bool,
    error: bool,
    /// The peer closed its side (the read that sees the end is still to be made).
    closed: bool,
}

/// How starting an exchange went.
enum Start {
    /// The head is not complete yet.
    Partial,
    /// The connection goes to the hyper path.
    Fallback,
    /// The exchange was answered locally (and is over).
    Answered,
    /// The request is on its way to a backend.
    Forwarding,
}

/// One step of forwarding a backend's bytes to its client.
enum Step {
    /// Nothing more to do with what was read.
    Idle,
    /// Progress: try again.
    More,
    /// Bytes from a connection that carries no request.
    Stray,
    /// The response of client `.0` is complete; the connection may be reused (`.1`).
    Done(usize, bool),
    /// The response of client `.0` cannot be forwarded and nothing of it was.
    Bad(usize, &'static str),
    /// The response body of client `.0` is malformed after its head went out.
    Abort(usize),
}

/// What the sweep does to a client connection.
enum Due {
    Nothing,
    RequestTimeout,
    Close,
    GatewayTimeout,
    /// The client took none of its output for `limits.send_timeout`.
    SendTimeout,
}

struct Loop {
    plane: Arc<PlaneShared>,
    poll: AsyncFd<Poll>,
    events: Events,
    clients: Slab<Client>,
    backends: Slab<Backend>,
    /// Idle backend connections per address, most recently used last.
    idle: HashMap<SocketAddr, Vec<usize>>,
    dirty: Vec<Token>,
    gen: u32,
    rx: mpsc::UnboundedReceiver<Handoff>,
    shutdown: CancellationToken,
    hard: CancellationToken,
    /// The runtime that started the loops: connections handed to the hyper path are served there.
    main: tokio::runtime::Handle,
    /// Cancelled when that runtime is gone (loops on threads of their own end with it).
    gone: CancellationToken,
    /// The runtime the idle cache was last checked against (see `sweep`).
    runtime_seen: usize,
    no_headers: HeaderMap,
    /// The turn's sends (see [`batch`]), and buffers reused for them.
    sender: batch::Sender,
    sends: Vec<Token>,
    send_items: Vec<batch::Item>,
    send_results: Vec<i32>,
    /// Room to peek at ClientHellos.
    scratch: Vec<u8>,
}

impl Loop {
    fn new(
        plane: Arc<PlaneShared>,
        rx: mpsc::UnboundedReceiver<Handoff>,
        shutdown: CancellationToken,
        main: tokio::runtime::Handle,
        gone: CancellationToken,
    ) -> io::Result<Loop> {
        let hard = plane.hard.clone();
        // SAFETY: a mio `Poll` owns its epoll descriptor for its whole life, and the `AsyncFd` owns the `Poll`.
        let poll = unsafe { AsyncFd::register_with_interest(Poll::new()?, tokio::io::Interest::READABLE)? };
        Ok(Loop {
            plane,
            poll,
            events: Events::with_capacity(EVENTS),
            clients: Slab::new(),
            backends: Slab::new(),
            idle: HashMap::new(),
            dirty: Vec::new(),
            gen: 0,
            rx,
            shutdown,
            hard,
            main,
            gone,
            runtime_seen: 0,
            no_headers: HeaderMap::new(),
            sender: batch::Sender::new(),
            sends: Vec::new(),
            send_items: Vec::new(),
            send_results: Vec::new(),
            scratch: Vec::new(),
        })
    }

    pub(super) fn next_gen(&mut self) -> u32 {
        self.gen = self.gen.wrapping_add(1);
        self.gen
    }

    async fn run(mut self) {
        let mut tick = tokio::time::interval(SWEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut accepting = true;
        loop {
            tokio::select! {
                biased;
                _ = self.hard.cancelled() => break,
                _ = self.gone.cancelled() => break,
                r = self.poll.readable() => match r {
                    Ok(mut g) => g.clear_ready(),
                    Err(e) => {
                        tracing::error!(error = %e, "fast path: epoll failed");
                        break;
                    }
                },
                h = self.rx.recv(), if accepting => match h {
                    Some(h) => {
                        self.adopt(h);
                        while let Ok(h) = self.rx.try_recv() {
                            self.adopt(h);
                        }
                    }
                    None => accepting = false,
                },
                _ = tick.tick() => self.sweep(),
            }
            self.drain();
            if self.shutdown.is_cancelled() && self.clients.is_empty() {
                break;
            }
        }
        // Done, or the hard stop: close what is left.
        let clients: Vec<usize> = self.clients.iter().map(|(k, _)| k).collect();
        for k in clients {
            self.close_client(k);
        }
        let backends: Vec<usize> = self.backends.iter().map(|(k, _)| k).collect();
        for k in backends {
            self.close_backend(k);
        }
    }

    fn adopt(&mut self, h: Handoff) {
        // A TLS listener's connection waits for its ClientHello (see `tls`); one whose TLS config could not be
        // built is refused, as on the hyper path.
        let hello = {
            let rt = self.plane.runtime.load();
            match rt.listeners.get(&*h.listener) {
                Some(l) if l.tls_required => match (&l.tls, &l.tls_fast) {
                    (Some((full, _)), Some(fast)) => Some(Box::new((full.clone(), fast.clone()))),
                    _ => return,
                },
                _ => None,
            }
        };
        let https = hello.is_some();
        let mut sock = mio::net::TcpStream::from_std(h.stream);
        let gen = self.next_gen();
        let entry = self.clients.vacant_entry();
        let key = entry.key();
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self.poll.get_ref().registry().register(&mut sock, token(key, gen, false), interest) {
            tracing::debug!(error = %e, "fast path: cannot register a client connection");
            return;
        }
        let now = Instant::now();
        let header_timeout = self.plane.runtime.load().limits.header_read_timeout;
        entry.insert(Client {
            sock,
            gen,
            peer: h.peer,
            local: h.local,
            id: ClientId::new(h.peer, h.local.port(), https),
            listener: h.listener,
            stop: h.stop,
            guard: Some(h.guard),
            inb: Buf::new(CLIENT_BUF),
            out: Out::default(),
            dirty: false,
            state: if https { ClientState::Handshake } else { ClientState::Head },
            head_deadline: Some(now + header_timeout),
            last_activity: now,
            send_stall: None,
            eof: false,
            read_paused: false,
            peer_closed: false,
            close_after: false,
            handoff: false,
            counters: RequestCounters::default(),
            req_head: Vec::new(),
            method: String::new(),
            host: String::new(),
            path: String::new(),
            request_id: String::new(),
            traceparent: String::new(),
            tls: None,
            hello,
        });
    }

    /// Takes every ready event, then sends the output they produced; again until nothing is ready.
    fn drain(&mut self) {
        let mut ready: Vec<(Token, Ready)> = Vec::new();
        loop {
            if let Err(e) = self.poll.get_mut().poll(&mut self.events, Some(Duration::ZERO)) {
                if e.kind() != ErrorKind::Interrupted {
                    tracing::error!(error = %e, "fast path: epoll wait failed");
                }
                self.flush();
                return;
            }
            if self.events.is_empty() {
                self.flush();
                return;
            }
            ready.clear();
            ready.extend(self.events.iter().map(|e| {
                let ev = Ready {
                    readable: e.is_readable() || e.is_read_closed(),
                    writable: e.is_writable(),
                    error: e.is_error(),
                    closed: e.is_read_closed(),
                };
                (e.token(), ev)
            }));
            for &(t, ev) in &ready {
                let (key, gen, backend) = untoken(t);
                if backend {
                    if self.backends.get(key).is_some_and(|b| b.gen == gen) {
                        self.backend_event(key, ev);
                    }
                } else if self.clients.get(key).is_some_and(|c| c.gen == gen) {
                    self.client_event(key, ev);
                }
            }
            self.flush();
        }
    }

    pub(super) fn mark_client(&mut self, k: usize) {
        if let Some(c) = self.clients.get_mut(k) {
            if !c.dirty && c.pending() > 0 {
                c.dirty = true;
                self.dirty.push(token(k, c.gen, false));
            }
        }
    }

    pub(super) fn mark_backend(&mut self, k: usize) {
        if let Some(b) = self.backends.get_mut(k) {
            if !b.dirty && b.out.pending() > 0 && !matches!(b.state, BackendState::Connecting { .. }) {
                b.dirty = true;
                self.dirty.push(token(k, b.gen, true));
            }
        }
    }

    /// Sends the buffered output of every connection that has some — one system call for all of them (see
    /// [`batch`]) —, and acts on what that unblocked.
    pub(super) fn flush(&mut self) {
        while !self.dirty.is_empty() {
            let dirty = std::mem::take(&mut self.dirty);
            let mut sends = std::mem::take(&mut self.sends);
            sends.clear();
            let mut items = std::mem::take(&mut self.send_items);
            items.clear();
            let mut failed = Vec::new();
            for t in dirty {
                let (key, gen, backend) = untoken(t);
                let out = if backend {
                    let Some(b) = self.backends.get_mut(key).filter(|b| b.gen == gen) else { continue };
                    b.dirty = false;
                    (b.sock.as_raw_fd(), &b.out)
                } else {
                    let Some(c) = self.clients.get_mut(key).filter(|c| c.gen == gen) else { continue };
                    c.dirty = false;
                    if let Some(tls) = &mut c.tls {
                        // The turn's plaintext, encrypted into the output.
                        if c.out.pending() > 0 {
                            if let Err(e) = tls.seal(c.out.unsent(), &mut c.inb) {
                                tracing::debug!(peer = %c.peer, error = %e, "fast path: TLS encryption failed");
                                failed.push(key);
                                continue;
                            }
                            c.out.clear();
                        }
                        let rest = tls.unsent();
                        items.push(batch::Item { fd: c.sock.as_raw_fd(), ptr: rest.as_ptr(), len: rest.len() });
                        sends.push(t);
                        continue;
                    }
                    (c.sock.as_raw_fd(), &c.out)
                };
                let (fd, out) = out;
                let rest = out.unsent();
                items.push(batch::Item { fd, ptr: rest.as_ptr(), len: rest.len() });
                sends.push(t);
            }
            let mut results = std::mem::take(&mut self.send_results);
            // SAFETY: the buffers are the output `Vec`s of live connections, untouched until `send` returns.
            unsafe { self.sender.send(&items, &mut results) };
            for (&t, &r) in sends.iter().zip(&results) {
                let (key, _, backend) = untoken(t);
                if backend {
                    let b = &mut self.backends[key];
                    match b.out.sent(r, &mut b.sock) {
                        Ok(_) => {
                            if let Some(ck) = b.client {
                                // Room again for the request body.
                                self.pump_request_body(ck);
                                self.resume_client(ck);
                            }
                        }
                        Err(e) => self.backend_failed(key, &e),
                    }
                } else {
                    let Some(c) = self.clients.get_mut(key) else { continue };
                    let before = c.pending();
                    let sent = match &mut c.tls {
                        Some(tls) => tls.sent(r, &mut c.sock),
                        None => c.out.sent(r, &mut c.sock),
                    };
                    match sent {
                        Ok(all) => {
                            c.last_activity = Instant::now();
                            // A send that leaves bytes starts a stall; one that took some starts it again.
                            c.send_stall = match (all, c.pending() < before) {
                                (true, _) => None,
                                (false, true) => Some(c.last_activity),
                                (false, false) => c.send_stall.or(Some(c.last_activity)),
                            };
                            if all {
                                self.client_drained(key);
                            } else {
                                self.resume_backend_of(key);
                            }
                        }
                        Err(e) => {
                            tracing::debug!(peer = %c.peer, error = %e, "fast path: client write failed");
                            self.close_client(key);
                        }
                    }
                }
            }
            self.sends = sends;
            items.clear();
            self.send_items = items;
            self.send_results = results;
            for k in failed {
                self.close_client(k);
            }
        }
    }

    pub(super) fn close_client(&mut self, k: usize) {
        let Some(mut c) = self.clients.try_remove(k) else { return };
        let _ = self.poll.get_ref().registry().deregister(&mut c.sock);
        if let ClientState::Busy(ex) = &c.state {
            self.record(&c, ex);
            if let Some(bk) = ex.backend {
                // Mid-exchange: the backend connection cannot be reused.
                self.close_backend(bk);
            }
        }
        if let Some(tls) = &mut c.tls {
            // close_notify, as far as the socket takes it now (what is left of the output is lost anyway).
            tls.close_notify();
            let _ = tls.write_to(&mut c.sock);
        } else if matches!(c.state, ClientState::Handshake) {
            self.plane.metrics.handshake_errors.with_label_values(&[&*c.listener]).inc();
        }
        let _ = c.sock.shutdown(Shutdown::Write);
    }

    pub(super) fn close_backend(&mut self, bk: usize) {
        let Some(mut b) = self.backends.try_remove(bk) else { return };
        let _ = self.poll.get_ref().registry().deregister(&mut b.sock);
        if let BackendState::Idle { .. } = b.state {
            if let Some(list) = self.idle.get_mut(&b.addr) {
                list.retain(|&x| x != bk);
                if list.is_empty() {
                    self.idle.remove(&b.addr);
                }
            }
        }
        if let Some(ck) = b.client {
            if let Some(ClientState::Busy(ex)) = self.clients.get_mut(ck).map(|c| &mut c.state) {
                if ex.backend == Some(bk) {
                    ex.backend = None;
                }
            }
        }
    }

    /// Gives client `k` to the hyper path with the bytes it sent that were not served here.
    pub(super) fn handoff(&mut self, k: usize) {
        let Some(mut c) = self.clients.try_remove(k) else { return };
        let _ = self.poll.get_ref().registry().deregister(&mut c.sock);
        let Some(guard) = c.guard.take() else { return };
        // SAFETY: the descriptor comes out of the mio stream, which gives up its ownership: an open, connected,
        // non-blocking TCP socket now owned by the std stream alone.
        let std = unsafe { std::net::TcpStream::from_raw_fd(c.sock.into_raw_fd()) };
        let plane = self.plane.clone();
        let (peer, local, listener, stop) = (c.peer, c.local, c.listener, c.stop);
        // Served by the runtime that started the loops (this loop may run on a thread of its own); the socket is
        // registered with that runtime's reactor, inside the task.
        if c.hello.is_some() {
            // A TLS connection before its handshake (its ClientHello is still in the socket).
            self.plane.tasks.spawn_on(
                async move {
                    match tokio::net::TcpStream::from_std(std) {
                        Ok(stream) => conn::serve_tls(plane, stream, peer, local, listener, guard, stop).await,
                        Err(e) => tracing::debug!(error = %e, "fast path: hand-over failed"),
                    }
                },
                &self.main,
            );
            return;
        }
        if let Some(tls) = c.tls {
            // Over the same TLS connection, with the plaintext read and not served.
            let prefix = c.inb.filled().to_vec();
            self.plane.tasks.spawn_on(
                async move {
                    match tokio::net::TcpStream::from_std(std) {
                        Ok(stream) => {
                            let io = TlsStream::new(stream, *tls, &prefix);
                            conn::serve_tls_handoff(plane, io, peer, local, listener, guard, stop).await
                        }
                        Err(e) => tracing::debug!(error = %e, "fast path: hand-over failed"),
                    }
                },
                &self.main,
            );
            return;
        }
        let prefix = c.inb.filled().to_vec();
        self.plane.tasks.spawn_on(
            async move {
                match tokio::net::TcpStream::from_std(std) {
                    Ok(stream) => conn::serve_handoff(plane, stream, peer, local, listener, guard, prefix, stop).await,
                    Err(e) => tracing::debug!(error = %e, "fast path: hand-over failed"),
                }
            },
            &self.main,
        );
    }

    /// What the sweep does to client `k` at `now`.
    fn due(&self, k: usize, now: Instant, idle_timeout: Duration, send_timeout: Duration, stopping: bool) -> Due {
        let c = &self.clients[k];
        let stopped = stopping || c.stop.is_cancelled();
        if c.send_stall.is_some_and(|t| now.duration_since(t) >= send_timeout) {
            return Due::SendTimeout;
        }
        match &c.state {
            // The handshake is bounded by the head timeout, and given up on a stop (as on the hyper path).
            ClientState::Handshake if stopped || c.head_deadline.is_some_and(|d| now >= d) => Due::Close,
            ClientState::Handshake => Due::Nothing,
            ClientState::Head if c.handoff => Due::Nothing,
            ClientState::Head if c.head_deadline.is_some_and(|d| now >= d) => Due::RequestTimeout,
            ClientState::Head => {
                let idle = now.duration_since(c.last_activity) >= idle_timeout;
                if c.inb.is_empty() && c.pending() == 0 && (stopped || idle) {
                    Due::Close
                } else {
                    Due::Nothing
                }
            }
            ClientState::Busy(ex) if ex.deadline.is_some_and(|d| now >= d) => Due::GatewayTimeout,
            ClientState::Busy(_) => Due::Nothing,
            // A client that does not take its last bytes.
            ClientState::Closing if now.duration_since(c.last_activity) >= idle_timeout => Due::Close,
            ClientState::Closing => Due::Nothing,
        }
    }

    /// Deadlines, stop requests and idle backend connections gone stale.
    fn sweep(&mut self) {
        let now = Instant::now();
        let idle_timeout = self.plane.runtime.load().limits.client_idle_timeout.max(Duration::from_millis(100));
        let send_timeout = self.plane.runtime.load().limits.send_timeout;
        let stopping = self.shutdown.is_cancelled();
        let keys: Vec<usize> = self.clients.iter().map(|(k, _)| k).collect();
        for k in keys {
            if !self.clients.contains(k) {
                continue;
            }
            let c = &mut self.clients[k];
            if (stopping || c.stop.is_cancelled()) && matches!(c.state, ClientState::Busy(_)) {
                c.close_after = true;
            }
            match self.due(k, now, idle_timeout, send_timeout, stopping) {
                Due::Nothing => {}
                Due::Close => self.close_client(k),
                Due::SendTimeout => {
                    // A client that takes none of its answer (as `TimedIo`'s send timeout).
                    let c = &self.clients[k];
                    tracing::debug!(peer = %c.peer, "fast path: send timeout, closing");
                    self.plane.metrics.cut.with_label_values(&[&*c.listener, crate::io::CUT_SEND_TIMEOUT]).inc();
                    self.close_client(k);
                }
                Due::RequestTimeout => {
                    // Slowloris guard: 408, as `TimedIo` answers.
                    let c = &mut self.clients[k];
                    c.out.data.extend_from_slice(REQUEST_TIMEOUT_REPLY);
                    c.state = ClientState::Closing;
                    self.mark_client(k);
                }
                Due::GatewayTimeout => {
                    let ClientState::Busy(ex) = &self.clients[k].state else { continue };
                    let failure = Failure::of_timeout(ex.body_left == 0);
                    if let (Some(p), Blame::Backend) = (&ex.pick, failure.blame) {
                        p.backend.health.report_failure();
                    }
                    self.answer_locally(k, failure.answer.status, failure.answer.msg);
                    self.advance(k);
                }
            }
        }
        let rt = self.plane.runtime.load_full();
        let seen = Arc::as_ptr(&rt) as usize;
        let purge = seen != self.runtime_seen;
        self.runtime_seen = seen;
        let keys: Vec<usize> = self.backends.iter().map(|(k, _)| k).collect();
        for bk in keys {
            let Some(b) = self.backends.get(bk) else { continue };
            match b.state {
                BackendState::Connecting { deadline } if now >= deadline => {
                    tracing::debug!(backend = %b.addr, "backend connect timed out");
                    let ck = b.client;
                    self.close_backend(bk);
                    if let Some(ck) = ck {
                        self.retry_after_connect_failure(ck);
                    }
                }
                BackendState::Idle { until }
                    if now >= until || stopping || (purge && !rt.accepting.contains(&b.addr)) =>
                {
                    self.close_backend(bk);
                }
                _ => {}
            }
        }
        self.flush();
    }
}
