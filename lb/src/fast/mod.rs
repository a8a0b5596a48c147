//! The HTTP/1.1 fast path of plaintext listeners: an event loop in the style of haproxy and nginx, run as one
//! task per runtime worker.
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
//! (`conn::serve_handoff`), which answers as it answers every other connection. Routing, balancing, health
//! reports, retries on connect failure, timeouts, limits, metrics and the access log are the same as there.

mod batch;
mod chunked;
mod request;
mod response;

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::HeaderMap;
use http::StatusCode;
use mio::{Events, Interest, Poll, Token};
use padis_balance::{GroupBalancer, InFlight, Pick, SelectCtx};
use padis_model::{Balance, HashKey};
use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::conn::{self, ActiveGuard};
use crate::headers::ClientId;
use crate::io::REQUEST_TIMEOUT_REPLY;
use crate::metrics::{Finished, RequestCounters};
use crate::plane::PlaneShared;
use crate::routes::{normalise_host, CompiledRoute};
use response::Framing;

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
    /// Starts one loop per runtime worker on the plane's task tracker. Loops end once `shutdown` is cancelled and
    /// their connections are done, or at once on the plane's hard stop.
    pub fn start(plane: &Arc<PlaneShared>, shutdown: &CancellationToken) -> io::Result<FastLoops> {
        let n = tokio::runtime::Handle::current().metrics().num_workers().max(1);
        let mut senders = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = mpsc::unbounded_channel();
            let l = Loop::new(plane.clone(), rx, shutdown.clone())?;
            plane.tasks.spawn(l.run());
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

/// A read buffer: initialised once, filled at `end`, consumed from `start`.
struct Buf {
    data: Vec<u8>,
    start: usize,
    end: usize,
    /// The size it starts with and goes back to when empty.
    base: usize,
}

impl Buf {
    fn new(size: usize) -> Buf {
        Buf { data: vec![0; size], start: 0, end: 0, base: size }
    }

    fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    fn len(&self) -> usize {
        self.end - self.start
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Takes `n` bytes off the front; an emptied buffer that had grown past `4 * base` goes back to `base` bytes
    /// (a large head or response passed through once does not keep its memory on an idle connection).
    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.data.len() > 4 * self.base {
                self.data = vec![0; self.base];
            }
        }
    }

    /// Room to read into (moving the data to the front first when that makes room), growing up to `max`.
    fn space(&mut self, max: usize) -> &mut [u8] {
        if self.end == self.data.len() && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.data.len() && self.data.len() < max {
            let grown = (self.data.len() * 2).min(max);
            self.data.resize(grown, 0);
        }
        &mut self.data[self.end..]
    }

    /// Reads from `sock` until it would block, the buffer is full (`max`) or the peer closed: whether it
    /// closed (read 0), and whether the buffer filled up (more may be waiting). A short read is taken as "nothing
    /// more for now" (edge-triggered readiness reports what arrives later) unless `to_end`: the peer's close was
    /// reported, and the read that sees it must be made (its edge is already consumed).
    fn fill(&mut self, sock: &mut mio::net::TcpStream, max: usize, to_end: bool) -> io::Result<(bool, bool)> {
        loop {
            let space = self.space(max);
            let room = space.len();
            if room == 0 {
                return Ok((false, true));
            }
            match sock.read(space) {
                Ok(0) => return Ok((true, false)),
                Ok(n) => {
                    self.end += n;
                    if n < room && !to_end {
                        return Ok((false, false));
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok((false, false)),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Output towards one peer.
#[derive(Default)]
struct Out {
    data: Vec<u8>,
    pos: usize,
}

impl Out {
    fn pending(&self) -> usize {
        self.data.len() - self.pos
    }

    /// Takes the result of a send of the pending bytes (bytes sent, or a negative errno), writing on if it was
    /// cut short; `Ok(true)` when everything went out.
    fn sent(&mut self, result: i32, sock: &mut mio::net::TcpStream) -> io::Result<bool> {
        match result {
            n if n >= 0 => self.pos += n as usize,
            e if -e == libc::EAGAIN || -e == libc::EINTR => return Ok(false),
            e => return Err(io::Error::from_raw_os_error(-e)),
        }
        self.flush(sock)
    }

    /// Writes what it can; `Ok(true)` when everything went out.
    fn flush(&mut self, sock: &mut mio::net::TcpStream) -> io::Result<bool> {
        while self.pos < self.data.len() {
            match sock.write(&self.data[self.pos..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.pos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.data.clear();
        self.pos = 0;
        if self.data.capacity() > OUT_KEEP {
            // A large response went out: do not keep its memory on the connection.
            self.data = Vec::new();
        }
        Ok(true)
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

enum ClientState {
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

/// Token layout: bit 0 = backend, bits 1..32 = slab key, bits 32.. = generation.
fn token(key: usize, gen: u32, backend: bool) -> Token {
    Token(((gen as usize) << 32) | (key << 1) | usize::from(backend))
}

fn untoken(t: Token) -> (usize, u32, bool) {
    ((t.0 & 0xffff_ffff) >> 1, (t.0 >> 32) as u32, t.0 & 1 == 1)
}

/// A local answer (the same status and text the hyper path gives).
fn local_reply(status: StatusCode, body: &str, close: bool, out: &mut Vec<u8>) {
    let reason = status.canonical_reason().unwrap_or("");
    let close = if close { "connection: close\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{close}\r\n",
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
    /// The runtime the idle cache was last checked against (see `sweep`).
    runtime_seen: usize,
    no_headers: HeaderMap,
    /// The turn's sends (see [`batch`]), and buffers reused for them.
    sender: batch::Sender,
    sends: Vec<Token>,
    send_items: Vec<batch::Item>,
    send_results: Vec<i32>,
}

impl Loop {
    fn new(plane: Arc<PlaneShared>, rx: mpsc::UnboundedReceiver<Handoff>, shutdown: CancellationToken) -> io::Result<Loop> {
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
            runtime_seen: 0,
            no_headers: HeaderMap::new(),
            sender: batch::Sender::new(),
            sends: Vec::new(),
            send_items: Vec::new(),
            send_results: Vec::new(),
        })
    }

    fn next_gen(&mut self) -> u32 {
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
            id: ClientId::new(h.peer, h.local.port(), false),
            listener: h.listener,
            stop: h.stop,
            guard: Some(h.guard),
            inb: Buf::new(CLIENT_BUF),
            out: Out::default(),
            dirty: false,
            state: ClientState::Head,
            head_deadline: Some(now + header_timeout),
            last_activity: now,
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

    fn mark_client(&mut self, k: usize) {
        if let Some(c) = self.clients.get_mut(k) {
            if !c.dirty && c.out.pending() > 0 {
                c.dirty = true;
                self.dirty.push(token(k, c.gen, false));
            }
        }
    }

    fn mark_backend(&mut self, k: usize) {
        if let Some(b) = self.backends.get_mut(k) {
            if !b.dirty && b.out.pending() > 0 && !matches!(b.state, BackendState::Connecting { .. }) {
                b.dirty = true;
                self.dirty.push(token(k, b.gen, true));
            }
        }
    }

    /// Sends the buffered output of every connection that has some — one system call for all of them (see
    /// [`batch`]) —, and acts on what that unblocked.
    fn flush(&mut self) {
        while !self.dirty.is_empty() {
            let dirty = std::mem::take(&mut self.dirty);
            let mut sends = std::mem::take(&mut self.sends);
            sends.clear();
            let mut items = std::mem::take(&mut self.send_items);
            items.clear();
            for t in dirty {
                let (key, gen, backend) = untoken(t);
                let out = if backend {
                    let Some(b) = self.backends.get_mut(key).filter(|b| b.gen == gen) else { continue };
                    b.dirty = false;
                    (b.sock.as_raw_fd(), &b.out)
                } else {
                    let Some(c) = self.clients.get_mut(key).filter(|c| c.gen == gen) else { continue };
                    c.dirty = false;
                    (c.sock.as_raw_fd(), &c.out)
                };
                let (fd, out) = out;
                let rest = &out.data[out.pos..];
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
                    match c.out.sent(r, &mut c.sock) {
                        Ok(all) => {
                            c.last_activity = Instant::now();
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
        }
    }

    /// A client's output went out completely.
    fn client_drained(&mut self, k: usize) {
        let c = &self.clients[k];
        match c.state {
            ClientState::Closing => self.close_client(k),
            ClientState::Head if c.handoff => self.handoff(k),
            // Pipelined requests waited for the client to read its responses.
            ClientState::Head => {
                self.advance(k);
                self.resume_client(k);
            }
            ClientState::Busy(_) => self.resume_backend_of(k),
        }
    }

    fn client_event(&mut self, k: usize, ev: Ready) {
        if ev.error {
            self.close_client(k);
            return;
        }
        let c = &mut self.clients[k];
        c.peer_closed |= ev.closed;
        if ev.writable {
            self.mark_client(k);
        }
        if ev.readable && !self.clients[k].read_paused {
            self.client_ready(k);
        }
    }

    /// Reads what client `k` sent and acts on it, for as long as acting makes room for more.
    fn client_ready(&mut self, k: usize) {
        let max = self.plane.runtime.load().limits.max_header_bytes.max(CLIENT_BUF) + 1;
        let Some(gen) = self.clients.get(k).map(|c| c.gen) else { return };
        loop {
            let Some(c) = self.clients.get_mut(k).filter(|c| c.gen == gen) else { return };
            if matches!(c.state, ClientState::Closing) || c.handoff {
                return;
            }
            match c.inb.fill(&mut c.sock, max, c.peer_closed) {
                Ok((eof, full)) => {
                    c.eof |= eof;
                    c.read_paused = full;
                    if !c.inb.is_empty() || eof {
                        c.last_activity = Instant::now();
                    }
                }
                Err(e) => {
                    tracing::debug!(peer = %c.peer, error = %e, "fast path: client read failed");
                    self.close_client(k);
                    return;
                }
            }
            self.advance(k);
            match self.clients.get_mut(k).filter(|c| c.gen == gen) {
                Some(c) if c.read_paused && c.inb.len() < c.inb.data.len() => c.read_paused = false,
                _ => return,
            }
        }
    }

    /// Reads on from client `k` if reading stopped for want of room and there is room now.
    fn resume_client(&mut self, k: usize) {
        if self.clients.get(k).is_some_and(|c| c.read_paused && c.inb.len() < c.inb.data.len()) {
            self.clients[k].read_paused = false;
            self.client_ready(k);
        }
    }

    /// Moves client `k`'s state machine as far as the bytes it has allow (it reads nothing itself).
    fn advance(&mut self, k: usize) {
        loop {
            let Some(c) = self.clients.get_mut(k) else { return };
            match c.state {
                ClientState::Closing => return,
                ClientState::Busy(_) => {
                    self.pump_request_body(k);
                    return;
                }
                ClientState::Head => {}
            }
            if c.handoff {
                return;
            }
            if c.inb.is_empty() {
                if c.eof {
                    self.close_client(k);
                }
                return;
            }
            if c.out.pending() > HIGH_WATER {
                // Pipelined requests wait until the client reads its responses.
                return;
            }
            if c.head_deadline.is_none() {
                let timeout = self.plane.runtime.load().limits.header_read_timeout;
                c.head_deadline = Some(Instant::now() + timeout);
            }
            match self.start_exchange(k) {
                Start::Partial => {
                    if self.clients[k].eof {
                        self.close_client(k);
                    }
                    return;
                }
                Start::Fallback => {
                    let c = &mut self.clients[k];
                    c.handoff = true;
                    if c.out.pending() == 0 {
                        self.handoff(k);
                    }
                    return;
                }
                Start::Answered => continue,
                Start::Forwarding => {
                    self.pump_request_body(k);
                    return;
                }
            }
        }
    }

    /// Parses the head at the front of client `k`'s buffer and starts its exchange.
    fn start_exchange(&mut self, k: usize) -> Start {
        let rt = self.plane.runtime.load();
        let limits = &rt.limits;
        let c = &mut self.clients[k];
        let mut slots = [httparse::EMPTY_HEADER; request::MAX_HEADERS];
        let head = match request::parse(c.inb.filled(), &mut slots, limits.max_headers) {
            request::Parsed::Partial => {
                return if c.inb.len() > limits.max_header_bytes { Start::Fallback } else { Start::Partial };
            }
            request::Parsed::Fallback => return Start::Fallback,
            request::Parsed::Head(h) => h,
        };
        let max_body = match limits.max_body_bytes {
            0 => u64::MAX,
            n => n,
        };
        if head.len > limits.max_header_bytes || head.body > max_body || normalise_host(head.host, &mut c.host).is_none() {
            return Start::Fallback;
        }
        let Some(lrt) = rt.listeners.get(&*c.listener) else { return Start::Fallback };
        let Some(route) = lrt.routes.lookup(&c.host, head.path()) else { return Start::Fallback };
        if route.redirect_https.is_some() {
            return Start::Fallback;
        }
        let Some(group) = route.pick_group() else { return Start::Fallback };
        let (Some(balancer), Some(upstream)) = (rt.balancers.group(group), rt.upstreams.get(group)) else {
            return Start::Fallback;
        };
        if upstream.https || upstream.h2 {
            return Start::Fallback;
        }
        let cfg = balancer.config();
        let select_headers = match (&cfg.balance, &cfg.hash_key) {
            (Balance::Sticky, _) | (Balance::Maglev, Some(HashKey::Header(_) | HashKey::Cookie(_))) => {
                Some(head.header_map())
            }
            _ => None,
        };
        head.write_backend_head(&c.id, &mut c.req_head);
        c.method.clear();
        c.method.push_str(head.method);
        c.path.clear();
        c.path.push_str(head.path());
        c.close_after |= head.close;
        let ex = Exchange {
            started: Instant::now(),
            route: route.clone(),
            balancer: balancer.clone(),
            group: upstream.group.clone(),
            select_headers,
            pick: None,
            label: None,
            in_flight: None,
            exclude: Vec::new(),
            retries: upstream.retries,
            connect_timeout: cfg.connect_timeout,
            request_timeout: upstream.request_timeout,
            idle_timeout: cfg.idle_timeout,
            idempotent: crate::forward::idempotent(head.method),
            head_request: head.method == "HEAD",
            body_left: head.body,
            has_body: head.body > 0,
            replayed: false,
            backend: None,
            deadline: None,
            framing: None,
            reusable: false,
            keep_alive: None,
            status: 0,
            bytes: 0,
        };
        let len = head.len;
        drop(rt);
        c.inb.consume(len);
        c.head_deadline = None;
        c.state = ClientState::Busy(Box::new(ex));
        self.pick_and_send(k)
    }

    /// Picks a backend for client `k`'s exchange (none of its `exclude` list) and sends the request over an idle
    /// connection to it or a new one; answers 503/502 itself when no backend can take it.
    fn pick_and_send(&mut self, k: usize) -> Start {
        let picked = {
            let c = &mut self.clients[k];
            let ClientState::Busy(ex) = &mut c.state else { return Start::Answered };
            let headers = ex.select_headers.as_ref().unwrap_or(&self.no_headers);
            let ctx = SelectCtx { client_ip: c.peer.ip().to_canonical(), headers };
            match ex.balancer.select(&ctx, &ex.exclude) {
                None if ex.exclude.is_empty() => Err((StatusCode::SERVICE_UNAVAILABLE, "no usable backend\n")),
                None => Err((StatusCode::BAD_GATEWAY, "backend connection failed\n")),
                Some(pick) => {
                    let addr = pick.backend.addr;
                    let rt = self.plane.runtime.load();
                    ex.label = Some(rt.backend_labels.get(&addr).cloned().unwrap_or_else(|| addr.to_string().into()));
                    ex.pick = Some(pick);
                    Ok((addr, ex.connect_timeout))
                }
            }
        };
        let (addr, timeout) = match picked {
            Ok(p) => p,
            Err((status, msg)) => {
                self.answer_locally(k, status, msg);
                return Start::Answered;
            }
        };
        let (bk, reused) = match self.take_idle(addr) {
            Some(bk) => (bk, true),
            None => match self.connect(addr, timeout) {
                Ok(bk) => (bk, false),
                Err(e) => {
                    tracing::debug!(backend = %addr, error = %e, "backend connect failed");
                    return self.connect_failed(k);
                }
            },
        };
        self.attach(k, bk, reused);
        Start::Forwarding
    }

    /// Puts client `k`'s request on backend connection `bk`.
    fn attach(&mut self, k: usize, bk: usize, reused: bool) {
        let c = &mut self.clients[k];
        let ClientState::Busy(ex) = &mut c.state else { return };
        let b = &mut self.backends[bk];
        b.client = Some(k);
        b.reused = reused;
        b.read_any = false;
        b.out.data.extend_from_slice(&c.req_head);
        ex.backend = Some(bk);
        if ex.in_flight.is_none() {
            ex.in_flight = ex.pick.as_ref().map(|p| p.backend.begin());
        }
        ex.deadline = None;
        if !matches!(b.state, BackendState::Connecting { .. }) {
            b.state = BackendState::Busy;
            ex.deadline = Some(Instant::now() + ex.request_timeout);
            self.mark_backend(bk);
        }
    }

    /// Moves request body bytes from client `k` to its backend connection, as far as buffers allow.
    fn pump_request_body(&mut self, k: usize) {
        let Some(c) = self.clients.get_mut(k) else { return };
        let ClientState::Busy(ex) = &mut c.state else { return };
        let Some(bk) = ex.backend else { return };
        let b = &mut self.backends[bk];
        if matches!(b.state, BackendState::Connecting { .. }) || ex.body_left == 0 {
            return;
        }
        let room = HIGH_WATER.saturating_sub(b.out.pending());
        let n = (c.inb.len() as u64).min(ex.body_left).min(room as u64) as usize;
        if n > 0 {
            b.out.data.extend_from_slice(&c.inb.filled()[..n]);
            c.inb.consume(n);
            ex.body_left -= n as u64;
            self.mark_backend(bk);
        }
        let c = &self.clients[k];
        if c.eof && c.inb.is_empty() && matches!(&c.state, ClientState::Busy(ex) if ex.body_left > 0) {
            tracing::debug!(peer = %c.peer, "fast path: client closed in the middle of its request body");
            self.close_client(k);
        }
    }

    /// An idle connection to `addr`, most recently used first.
    fn take_idle(&mut self, addr: SocketAddr) -> Option<usize> {
        let list = self.idle.get_mut(&addr)?;
        let bk = list.pop()?;
        if list.is_empty() {
            self.idle.remove(&addr);
        }
        Some(bk)
    }

    fn connect(&mut self, addr: SocketAddr, timeout: Duration) -> io::Result<usize> {
        let mut sock = mio::net::TcpStream::connect(addr)?;
        let gen = self.next_gen();
        let entry = self.backends.vacant_entry();
        let key = entry.key();
        let interest = Interest::READABLE | Interest::WRITABLE;
        self.poll.get_ref().registry().register(&mut sock, token(key, gen, true), interest)?;
        entry.insert(Backend {
            sock,
            gen,
            addr,
            state: BackendState::Connecting { deadline: Instant::now() + timeout },
            client: None,
            inb: Buf::new(BACKEND_BUF),
            out: Out::default(),
            dirty: false,
            reused: false,
            read_any: false,
            read_paused: false,
            eof: false,
            peer_closed: false,
        });
        Ok(key)
    }

    /// The connection attempt of client `k`'s exchange failed (refused, timed out): reported as the hyper path
    /// does, then another backend for an idempotent request while retries are left, else 502.
    fn connect_failed(&mut self, k: usize) -> Start {
        let retry = {
            let Some(c) = self.clients.get_mut(k) else { return Start::Answered };
            let ClientState::Busy(ex) = &mut c.state else { return Start::Answered };
            ex.backend = None;
            ex.in_flight = None;
            let Some(pick) = ex.pick.take() else { return Start::Answered };
            pick.backend.health.report_failure();
            let label = ex.label.as_deref().unwrap_or("");
            self.plane.metrics.connect_errors.with_label_values(&[&*ex.group, label]).inc();
            let retry = ex.idempotent && ex.exclude.len() < ex.retries as usize;
            if retry {
                ex.exclude.push(pick.backend.addr);
            }
            retry
        };
        if retry {
            self.pick_and_send(k)
        } else {
            self.answer_locally(k, StatusCode::BAD_GATEWAY, "backend connection failed\n");
            Start::Answered
        }
    }

    /// A connection attempt of client `ck` failed: the next backend, or the answer, then the client's next
    /// request.
    fn retry_after_connect_failure(&mut self, ck: usize) {
        if let Start::Answered = self.connect_failed(ck) {
            self.advance(ck);
        }
    }

    fn backend_event(&mut self, bk: usize, ev: Ready) {
        let Ready { readable, writable, error, closed } = ev;
        let b = &mut self.backends[bk];
        b.peer_closed |= closed;
        match b.state {
            BackendState::Connecting { .. } => {
                if !(writable || readable || error) {
                    return;
                }
                let failed = match b.sock.take_error() {
                    Ok(Some(e)) | Err(e) => Some(e),
                    Ok(None) => match b.sock.peer_addr() {
                        Ok(_) => None,
                        Err(e) if e.kind() == ErrorKind::NotConnected && !error => return,
                        Err(e) => Some(e),
                    },
                };
                let ck = b.client;
                if let Some(e) = failed {
                    tracing::debug!(backend = %b.addr, error = %e, "backend connect failed");
                    self.close_backend(bk);
                    if let Some(ck) = ck {
                        self.retry_after_connect_failure(ck);
                    }
                    return;
                }
                let _ = b.sock.set_nodelay(true);
                let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
                let _ = socket2::SockRef::from(&b.sock).set_tcp_keepalive(&keepalive);
                b.state = BackendState::Busy;
                if let Some(ck) = ck {
                    if let ClientState::Busy(ex) = &mut self.clients[ck].state {
                        ex.deadline = Some(Instant::now() + ex.request_timeout);
                    }
                    self.mark_backend(bk);
                    self.pump_request_body(ck);
                    self.resume_client(ck);
                }
            }
            BackendState::Idle { .. } => {
                // An idle connection has nothing to say: the backend closed it (or broke the protocol).
                if readable || error {
                    self.close_backend(bk);
                }
            }
            BackendState::Busy => {
                if error {
                    let e = b.sock.take_error().ok().flatten().unwrap_or_else(|| ErrorKind::ConnectionReset.into());
                    self.backend_failed(bk, &e);
                    return;
                }
                let paused = b.read_paused;
                if writable {
                    self.mark_backend(bk);
                }
                if readable && !paused {
                    self.backend_ready(bk);
                }
            }
        }
    }

    /// Reads what backend connection `bk` sent and forwards it, for as long as forwarding makes room for more.
    fn backend_ready(&mut self, bk: usize) {
        let Some(gen) = self.backends.get(bk).map(|b| b.gen) else { return };
        loop {
            let Some(b) = self.backends.get_mut(bk).filter(|b| b.gen == gen) else { return };
            let head_pending = b.client.is_some_and(|ck| {
                self.clients.get(ck).is_some_and(|c| matches!(&c.state, ClientState::Busy(ex) if ex.framing.is_none()))
            });
            let max = if head_pending { MAX_RESPONSE_HEAD + 1 } else { BACKEND_BUF };
            let (eof, full) = match b.inb.fill(&mut b.sock, max, b.peer_closed) {
                Ok(r) => r,
                Err(e) => {
                    self.backend_failed(bk, &e);
                    return;
                }
            };
            b.read_paused = full;
            b.eof |= eof;
            if !b.inb.is_empty() {
                b.read_any = true;
            }
            self.forward_response(bk);
            if eof {
                if self.backends.get(bk).is_some_and(|b| b.gen == gen) {
                    self.backend_eof(bk);
                }
                return;
            }
            let blocked = self.client_blocked(self.backends.get(bk).and_then(|b| b.client));
            match self.backends.get_mut(bk).filter(|b| b.gen == gen) {
                Some(b) if b.read_paused && b.inb.len() < b.inb.data.len() && !blocked => b.read_paused = false,
                _ => return,
            }
        }
    }

    /// Whether client `ck` has more output waiting than the loop lets pile up.
    fn client_blocked(&self, ck: Option<usize>) -> bool {
        ck.and_then(|ck| self.clients.get(ck)).is_some_and(|c| c.out.pending() > HIGH_WATER)
    }

    /// Forwards what backend connection `bk` has read to its client: the response head (rewritten), then body
    /// bytes as far as the framing and the client's buffer allow.
    fn forward_response(&mut self, bk: usize) {
        let mut client = None;
        loop {
            match self.forward_step(bk) {
                Step::More => client = self.backends.get(bk).and_then(|b| b.client),
                Step::Idle => break,
                Step::Stray => {
                    self.close_backend(bk);
                    return;
                }
                Step::Done(ck, reusable) => {
                    self.mark_client(ck);
                    self.finish(ck, Some(reusable));
                    self.advance(ck);
                    return;
                }
                Step::Bad(ck, why) => {
                    self.bad_response(ck, bk, why);
                    return;
                }
                Step::Abort(ck) => {
                    self.mark_client(ck);
                    self.close_backend(bk);
                    self.abort(ck);
                    return;
                }
            }
        }
        if let Some(ck) = client {
            self.mark_client(ck);
        }
    }

    fn forward_step(&mut self, bk: usize) -> Step {
        let Some(b) = self.backends.get_mut(bk) else { return Step::Idle };
        let Some(ck) = b.client else {
            return if b.inb.is_empty() { Step::Idle } else { Step::Stray };
        };
        let c = &mut self.clients[ck];
        let ClientState::Busy(ex) = &mut c.state else { return Step::Idle };
        let Some(framing) = &mut ex.framing else {
            let set_cookie = ex.pick.as_ref().and_then(|p| p.set_cookie.as_ref());
            return match response::parse(b.inb.filled(), ex.head_request, set_cookie, c.close_after, &mut c.out.data) {
                response::Parsed::Partial if b.inb.len() > MAX_RESPONSE_HEAD => Step::Bad(ck, "response head too large"),
                response::Parsed::Partial => Step::Idle,
                response::Parsed::Bad => Step::Bad(ck, "malformed response"),
                response::Parsed::Informational(n) => {
                    b.inb.consume(n);
                    Step::More
                }
                response::Parsed::Head(h) => {
                    b.inb.consume(h.len);
                    ex.deadline = None;
                    ex.status = h.status;
                    ex.reusable = h.reusable;
                    ex.keep_alive = h.keep_alive;
                    ex.framing = Some(h.framing);
                    c.close_after |= h.close_client;
                    if let Some(p) = &ex.pick {
                        if h.status >= 500 {
                            p.backend.health.report_failure();
                        } else {
                            p.backend.health.report_success();
                        }
                    }
                    Step::More
                }
            };
        };
        if c.out.pending() > HIGH_WATER {
            b.read_paused = true;
            return Step::Idle;
        }
        match framing.advance(b.inb.filled()) {
            Ok((n, done)) => {
                c.out.data.extend_from_slice(&b.inb.filled()[..n]);
                b.inb.consume(n);
                ex.bytes += n as u64;
                if done {
                    let reusable = ex.reusable && ex.body_left == 0 && b.inb.is_empty() && !b.eof && !b.read_paused;
                    Step::Done(ck, reusable)
                } else if n == 0 {
                    Step::Idle
                } else {
                    Step::More
                }
            }
            Err(e) => {
                tracing::debug!(backend = %b.addr, error = %e, "fast path: bad response body");
                Step::Abort(ck)
            }
        }
    }

    /// After client `k` took some output: reads on from its backend if that was paused for it.
    fn resume_backend_of(&mut self, k: usize) {
        let Some(c) = self.clients.get(k) else { return };
        let ClientState::Busy(ex) = &c.state else { return };
        let Some(bk) = ex.backend else { return };
        if c.out.pending() <= HIGH_WATER && self.backends.get(bk).is_some_and(|b| b.read_paused) {
            self.backends[bk].read_paused = false;
            self.forward_response(bk);
            if self.backends.get(bk).is_some_and(|b| b.client == Some(k) && !b.read_paused) {
                self.backend_ready(bk);
            }
        }
    }

    /// The backend closed its side of `bk`.
    fn backend_eof(&mut self, bk: usize) {
        let Some(b) = self.backends.get(bk) else { return };
        let Some(ck) = b.client else {
            self.close_backend(bk);
            return;
        };
        let (reused, read_any, addr) = (b.reused, b.read_any, b.addr);
        let ClientState::Busy(ex) = &mut self.clients[ck].state else { return };
        match &ex.framing {
            // The body ends with the close.
            Some(Framing::Close) => {
                self.close_backend(bk);
                self.mark_client(ck);
                self.finish(ck, None);
                self.advance(ck);
            }
            // The body was cut short.
            Some(_) => {
                tracing::debug!(backend = %addr, "fast path: backend closed in the middle of a response");
                self.close_backend(bk);
                self.mark_client(ck);
                self.abort(ck);
            }
            None if reused && !read_any && ex.idempotent && !ex.has_body && !ex.replayed => {
                // A reused connection the backend closed as the request went out: once more, on a new one.
                tracing::debug!(backend = %addr, "reused backend connection closed before any response byte; sending again on a new one");
                ex.replayed = true;
                let timeout = ex.connect_timeout;
                self.close_backend(bk);
                match self.connect(addr, timeout) {
                    Ok(nb) => self.attach(ck, nb, false),
                    Err(_) => self.retry_after_connect_failure(ck),
                }
            }
            None => self.bad_response(ck, bk, "backend closed before answering"),
        }
    }

    /// A read or write on `bk` failed.
    fn backend_failed(&mut self, bk: usize, e: &io::Error) {
        let Some(b) = self.backends.get(bk) else { return };
        tracing::debug!(backend = %b.addr, error = %e, "fast path: backend connection failed");
        match b.client {
            Some(ck) if matches!(&self.clients[ck].state, ClientState::Busy(ex) if ex.framing.is_none()) => {
                self.bad_response(ck, bk, "backend connection failed")
            }
            Some(ck) => {
                self.close_backend(bk);
                self.mark_client(ck);
                self.abort(ck);
            }
            None => self.close_backend(bk),
        }
    }

    /// The backend's answer cannot be forwarded and nothing of it was: 502, as the hyper path answers.
    fn bad_response(&mut self, ck: usize, bk: usize, why: &str) {
        if let Some(b) = self.backends.get(bk) {
            tracing::debug!(backend = %b.addr, why, "backend request failed");
        }
        self.close_backend(bk);
        if let ClientState::Busy(ex) = &mut self.clients[ck].state {
            if let Some(p) = &ex.pick {
                p.backend.health.report_failure();
            }
        }
        self.answer_locally(ck, StatusCode::BAD_GATEWAY, "bad gateway\n");
        self.advance(ck);
    }

    /// Answers client `k`'s exchange with a short local response and ends it.
    fn answer_locally(&mut self, k: usize, status: StatusCode, msg: &str) {
        let c = &mut self.clients[k];
        let mut backend = None;
        if let ClientState::Busy(ex) = &mut c.state {
            ex.status = status.as_u16();
            backend = ex.backend.take();
            if ex.body_left > 0 {
                // The rest of the request body would be read as the next request: close after this answer.
                c.close_after = true;
            }
        }
        local_reply(status, msg, c.close_after, &mut c.out.data);
        if let Some(bk) = backend {
            self.close_backend(bk);
        }
        self.mark_client(k);
        self.finish(k, None);
    }

    /// Ends client `k`'s exchange: records it (metrics, access log, in-flight count), gives its backend connection
    /// back to the idle cache when `reusable` (`None`: it is closed already), and gets the client ready for its
    /// next request, or closing.
    fn finish(&mut self, k: usize, reusable: Option<bool>) {
        let c = &mut self.clients[k];
        let ClientState::Busy(ex) = std::mem::replace(&mut c.state, ClientState::Head) else { return };
        self.record(&self.clients[k], &ex);
        if let (Some(bk), Some(keep)) = (ex.backend, reusable) {
            if keep {
                let b = &mut self.backends[bk];
                let keep_for = match ex.keep_alive {
                    Some(t) => ex.idle_timeout.min(t.saturating_sub(Duration::from_secs(1))),
                    None => ex.idle_timeout,
                };
                b.client = None;
                b.state = BackendState::Idle { until: Instant::now() + keep_for };
                self.idle.entry(b.addr).or_default().push(bk);
            } else {
                self.close_backend(bk);
            }
        }
        let c = &mut self.clients[k];
        c.last_activity = Instant::now();
        if c.close_after || (c.eof && c.inb.is_empty()) {
            c.state = ClientState::Closing;
            if c.out.pending() == 0 {
                self.close_client(k);
            }
        }
    }

    /// The response was cut short after its head went out: the client connection cannot carry on.
    fn abort(&mut self, k: usize) {
        let Some(c) = self.clients.get_mut(k) else { return };
        if let ClientState::Busy(ex) = &mut c.state {
            ex.backend = None;
        }
        c.close_after = true;
        self.finish(k, None);
    }

    /// Metrics and access log of an exchange of client `c`.
    fn record(&self, c: &Client, ex: &Exchange) {
        let finished = Finished {
            listener: &c.listener,
            route: Some(&ex.route),
            backend: ex.label.as_ref(),
            status: StatusCode::from_u16(ex.status).unwrap_or(StatusCode::BAD_GATEWAY),
            method: &c.method,
            host: &c.host,
            path: &c.path,
            elapsed: ex.started.elapsed(),
            bytes: ex.bytes,
        };
        finished.record(&self.plane.metrics, &c.counters);
    }

    fn close_client(&mut self, k: usize) {
        let Some(mut c) = self.clients.try_remove(k) else { return };
        let _ = self.poll.get_ref().registry().deregister(&mut c.sock);
        if let ClientState::Busy(ex) = &c.state {
            self.record(&c, ex);
            if let Some(bk) = ex.backend {
                // Mid-exchange: the backend connection cannot be reused.
                self.close_backend(bk);
            }
        }
        let _ = c.sock.shutdown(Shutdown::Write);
    }

    fn close_backend(&mut self, bk: usize) {
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
    fn handoff(&mut self, k: usize) {
        let Some(mut c) = self.clients.try_remove(k) else { return };
        let _ = self.poll.get_ref().registry().deregister(&mut c.sock);
        let Some(guard) = c.guard.take() else { return };
        // SAFETY: the descriptor comes out of the mio stream, which gives up its ownership: an open, connected,
        // non-blocking TCP socket now owned by the std stream alone.
        let std = unsafe { std::net::TcpStream::from_raw_fd(c.sock.into_raw_fd()) };
        let prefix = c.inb.filled().to_vec();
        let plane = self.plane.clone();
        let (peer, local, listener, stop) = (c.peer, c.local, c.listener, c.stop);
        self.plane.tasks.spawn(async move {
            match tokio::net::TcpStream::from_std(std) {
                Ok(stream) => conn::serve_handoff(plane, stream, peer, local, listener, guard, prefix, stop).await,
                Err(e) => tracing::debug!(error = %e, "fast path: hand-over failed"),
            }
        });
    }

    /// What the sweep does to client `k` at `now`.
    fn due(&self, k: usize, now: Instant, idle_timeout: Duration, stopping: bool) -> Due {
        let c = &self.clients[k];
        let stopped = stopping || c.stop.is_cancelled();
        match &c.state {
            ClientState::Head if c.handoff => Due::Nothing,
            ClientState::Head if c.head_deadline.is_some_and(|d| now >= d) => Due::RequestTimeout,
            ClientState::Head => {
                let idle = now.duration_since(c.last_activity) >= idle_timeout;
                if c.inb.is_empty() && c.out.pending() == 0 && (stopped || idle) {
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
            match self.due(k, now, idle_timeout, stopping) {
                Due::Nothing => {}
                Due::Close => self.close_client(k),
                Due::RequestTimeout => {
                    // Slowloris guard: 408, as `TimedIo` answers.
                    let c = &mut self.clients[k];
                    c.out.data.extend_from_slice(REQUEST_TIMEOUT_REPLY);
                    c.state = ClientState::Closing;
                    self.mark_client(k);
                }
                Due::GatewayTimeout => {
                    if let ClientState::Busy(ex) = &self.clients[k].state {
                        if let Some(p) = &ex.pick {
                            p.backend.health.report_failure();
                        }
                    }
                    self.answer_locally(k, StatusCode::GATEWAY_TIMEOUT, "gateway timeout\n");
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
                BackendState::Idle { until } if now >= until || stopping || (purge && !rt.accepting.contains(&b.addr)) => {
                    self.close_backend(bk);
                }
                _ => {}
            }
        }
        self.flush();
    }
}
