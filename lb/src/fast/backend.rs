//! The backend side of a loop: idle connections and connects (with retries on failure), forwarding responses by
//! their framing with back-pressure, and a backend's close or failure at any point of an exchange.

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::StatusCode;
use mio::Interest;

use super::{
    response, token, Backend, BackendState, Buf, ClientState, Framing, Loop, Out, Ready, Start, Step, BACKEND_BUF,
    HIGH_WATER, MAX_RESPONSE_HEAD, TCP_KEEPALIVE,
};
use crate::policy;

impl Loop {
    /// An idle connection to `addr`, most recently used first.
    pub(super) fn take_idle(&mut self, addr: SocketAddr) -> Option<usize> {
        let list = self.idle.get_mut(&addr)?;
        let bk = list.pop()?;
        if list.is_empty() {
            self.idle.remove(&addr);
        }
        Some(bk)
    }

    pub(super) fn connect(&mut self, addr: SocketAddr, timeout: Duration) -> io::Result<usize> {
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
    /// does, then another backend while retries are left (`policy::retry_after_connect_failure`), else 502.
    pub(super) fn connect_failed(&mut self, k: usize) -> Start {
        let retry = {
            let Some(c) = self.clients.get_mut(k) else { return Start::Answered };
            let ClientState::Busy(ex) = &mut c.state else { return Start::Answered };
            ex.backend = None;
            ex.in_flight = None;
            let Some(pick) = ex.pick.take() else { return Start::Answered };
            pick.backend.health.report_failure();
            let label = ex.label.as_deref().unwrap_or("");
            self.plane.metrics.connect_errors.with_label_values(&[&*ex.group, label]).inc();
            let retry = policy::retry_after_connect_failure(ex.exclude.len(), ex.retries);
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
    pub(super) fn retry_after_connect_failure(&mut self, ck: usize) {
        if let Start::Answered = self.connect_failed(ck) {
            self.advance(ck);
        }
    }

    pub(super) fn backend_event(&mut self, bk: usize, ev: Ready) {
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
                        ex.arm(Instant::now());
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
    pub(super) fn backend_ready(&mut self, bk: usize) {
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
    pub(super) fn client_blocked(&self, ck: Option<usize>) -> bool {
        ck.and_then(|ck| self.clients.get(ck)).is_some_and(|c| c.pending() > HIGH_WATER)
    }

    /// Forwards what backend connection `bk` has read to its client: the response head (rewritten), then body
    /// bytes as far as the framing and the client's buffer allow.
    pub(super) fn forward_response(&mut self, bk: usize) {
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

    pub(super) fn forward_step(&mut self, bk: usize) -> Step {
        let Some(b) = self.backends.get_mut(bk) else { return Step::Idle };
        let Some(ck) = b.client else {
            return if b.inb.is_empty() { Step::Idle } else { Step::Stray };
        };
        let c = &mut self.clients[ck];
        let ClientState::Busy(ex) = &mut c.state else { return Step::Idle };
        let Some(framing) = &mut ex.framing else {
            let set_cookie = ex.pick.as_ref().and_then(|p| p.set_cookie.as_ref());
            let vars = super::vars(c.peer, &c.tls, &c.request_id);
            let rules = ex.route.headers.as_ref().map(|r| (&r.response, &vars));
            let out = &mut c.out.data;
            return match response::parse(b.inb.filled(), ex.head_request, rules, set_cookie, c.close_after, out) {
                response::Parsed::Partial if b.inb.len() > MAX_RESPONSE_HEAD => {
                    Step::Bad(ck, "response head too large")
                }
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
        if c.out.pending() + c.tls.as_ref().map_or(0, |t| t.pending()) > HIGH_WATER {
            b.read_paused = true;
            return Step::Idle;
        }
        match framing.advance(b.inb.filled()) {
            Ok((n, done)) => {
                c.out.data.extend_from_slice(&b.inb.filled()[..n]);
                b.inb.consume(n);
                ex.bytes += n as u64;
                if done {
                    // Reused only when the request went out whole (a backend may answer before the body is in)
                    // and nothing follows the response.
                    let reusable = ex.reusable
                        && ex.body_left == 0
                        && b.out.pending() == 0
                        && b.inb.is_empty()
                        && !b.eof
                        && !b.read_paused;
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
    pub(super) fn resume_backend_of(&mut self, k: usize) {
        let Some(c) = self.clients.get(k) else { return };
        let ClientState::Busy(ex) = &c.state else { return };
        let Some(bk) = ex.backend else { return };
        if c.pending() <= HIGH_WATER && self.backends.get(bk).is_some_and(|b| b.read_paused) {
            self.backends[bk].read_paused = false;
            self.forward_response(bk);
            if self.backends.get(bk).is_some_and(|b| b.client == Some(k) && !b.read_paused) {
                self.backend_ready(bk);
            }
        }
    }

    /// The backend closed its side of `bk`.
    pub(super) fn backend_eof(&mut self, bk: usize) {
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
    pub(super) fn backend_failed(&mut self, bk: usize, e: &io::Error) {
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
    pub(super) fn bad_response(&mut self, ck: usize, bk: usize, why: &str) {
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
}
