//! The client side of a loop: reading requests, starting exchanges (parse, route, pick a backend, send), streaming
//! request bodies, answering locally, and ending exchanges (records, the backend connection back to the idle
//! cache, the next pipelined request).

use std::time::{Duration, Instant};

use http::StatusCode;
use padis_balance::SelectCtx;
use padis_model::{Balance, HashKey};

use super::tls::{self, Hello, Tls};
use super::{
    local_reply, request, BackendState, Client, ClientState, Exchange, Loop, Ready, Start, CLIENT_BUF, HIGH_WATER,
};
use crate::metrics::{Finished, CLIENT_CLOSED};
use crate::policy;

impl Loop {
    /// A client's output went out completely.
    pub(super) fn client_drained(&mut self, k: usize) {
        let c = &self.clients[k];
        match c.state {
            ClientState::Handshake => {}
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

    pub(super) fn client_event(&mut self, k: usize, ev: Ready) {
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
            if self.clients[k].hello.is_some() {
                self.hello(k);
            } else {
                self.client_ready(k);
            }
        }
    }

    /// A TLS connection's first bytes: the hyper path takes it (h2, or no ClientHello rustls reads), or its
    /// handshake starts here (see `tls`).
    fn hello(&mut self, k: usize) {
        let c = &mut self.clients[k];
        let Some(cfgs) = &c.hello else { return };
        match tls::peek_hello(&c.sock, &cfgs.0.alpn_protocols, &mut self.scratch) {
            Ok(Hello::Partial) if c.peer_closed => self.handoff(k),
            Ok(Hello::Partial) => {}
            Ok(Hello::Hyper) => self.handoff(k),
            Ok(Hello::Fast(sni)) => match Tls::new(cfgs.1.clone(), sni) {
                Ok(t) => {
                    c.tls = Some(Box::new(t));
                    c.hello = None;
                    self.client_ready(k);
                }
                Err(e) => {
                    tracing::debug!(peer = %c.peer, error = %e, "fast path: TLS connection not started");
                    self.handoff(k);
                }
            },
            Err(e) => {
                tracing::debug!(peer = %c.peer, error = %e, "fast path: client read failed");
                self.close_client(k);
            }
        }
    }

    /// The handshake of client `k` is complete: counted, then requests.
    fn tls_open(&mut self, k: usize) {
        let timeout = self.plane.runtime.load().limits.header_read_timeout;
        let c = &mut self.clients[k];
        let Some(t) = &mut c.tls else { return };
        t.read_subject();
        self.plane.metrics.handshakes.with_label_values(&[&*c.listener, t.version()]).inc();
        c.state = ClientState::Head;
        c.head_deadline = Some(Instant::now() + timeout);
    }

    /// Reads what client `k` sent and acts on it, for as long as acting makes room for more.
    pub(super) fn client_ready(&mut self, k: usize) {
        let max = self.plane.runtime.load().limits.max_header_bytes.max(CLIENT_BUF) + 1;
        let Some(gen) = self.clients.get(k).map(|c| c.gen) else { return };
        loop {
            let Some(c) = self.clients.get_mut(k).filter(|c| c.gen == gen) else { return };
            if matches!(c.state, ClientState::Closing) || c.handoff {
                return;
            }
            let read = match &mut c.tls {
                Some(t) => t.fill(&mut c.sock, &mut c.inb, max, c.peer_closed),
                None => c.inb.fill(&mut c.sock, max, c.peer_closed),
            };
            match read {
                Ok((eof, full)) => {
                    c.eof |= eof;
                    c.read_paused = full;
                    if !c.inb.is_empty() || eof {
                        c.last_activity = Instant::now();
                    }
                }
                Err(e) => {
                    // A TLS failure's alert goes out with the close.
                    tracing::debug!(peer = %c.peer, error = %e, "fast path: client read failed");
                    self.close_client(k);
                    return;
                }
            }
            if let Some(t) = &c.tls {
                let open = t.open;
                // Handshake messages, a key update's answer.
                self.mark_client(k);
                if matches!(self.clients[k].state, ClientState::Handshake) {
                    if !open {
                        if self.clients[k].eof {
                            self.close_client(k);
                        }
                        return;
                    }
                    self.tls_open(k);
                }
            }
            self.advance(k);
            match self.clients.get_mut(k).filter(|c| c.gen == gen) {
                Some(c) if c.read_paused && c.has_room(max) => c.read_paused = false,
                _ => return,
            }
        }
    }

    /// Reads on from client `k` if reading stopped for want of room and there is room now.
    pub(super) fn resume_client(&mut self, k: usize) {
        if !self.clients.get(k).is_some_and(|c| c.read_paused) {
            return;
        }
        let max = self.plane.runtime.load().limits.max_header_bytes.max(CLIENT_BUF) + 1;
        if self.clients[k].has_room(max) {
            self.clients[k].read_paused = false;
            self.client_ready(k);
        }
    }

    /// Moves client `k`'s state machine as far as the bytes it has allow (it reads nothing itself).
    pub(super) fn advance(&mut self, k: usize) {
        loop {
            let Some(c) = self.clients.get_mut(k) else { return };
            match c.state {
                ClientState::Closing | ClientState::Handshake => return,
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
            if c.pending() > HIGH_WATER {
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
                    if c.pending() == 0 {
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
    pub(super) fn start_exchange(&mut self, k: usize) -> Start {
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
        if head.len > limits.max_header_bytes {
            return Start::Fallback;
        }
        // The request policy decides (as on the hyper path); anything it answers itself, the hyper path answers.
        let Ok(admitted) = policy::admit(&head.policy_head(), &mut c.host) else { return Start::Fallback };
        let query = policy::RouteQuery {
            listener: &c.listener,
            host: &c.host,
            admitted: &admitted,
            https: c.tls.is_some(),
            sni: c.tls.as_ref().and_then(|t| t.sni.as_deref()),
            client: c.peer.ip().to_canonical(),
            body_len: Some(head.body),
        };
        let Ok(policy::Routed { route, balancer, upstream }) = policy::route(&rt, &query, head.headers()) else {
            return Start::Fallback;
        };
        // Framing the fast path does not do: TLS or HTTP/2 towards the backend; a route rewriting the exchange.
        if upstream.https || upstream.h2 || route.access.as_ref().is_some_and(|a| a.rewrites()) {
            return Start::Fallback;
        }
        // Served here from now on (no hand-over): the route's rate limit takes from its bucket here.
        let limited = policy::limit_rate(&rt, route, query.client).err();
        let cfg = balancer.config();
        let select_headers = match (&cfg.balance, &cfg.hash_key) {
            (Balance::Sticky, _) | (Balance::Maglev, Some(HashKey::Header(_) | HashKey::Cookie(_))) => {
                Some(head.header_map())
            }
            _ => None,
        };
        let tp = policy::identify(&rt, query.client, head.headers(), &mut c.request_id);
        c.traceparent.clear();
        c.traceparent.push_str(tp.unwrap_or(""));
        let vars = super::vars(c.peer, &c.tls, &c.request_id);
        let edits = request::Edits {
            strip: &rt.subject_headers,
            request_id: rt.request_ids.as_ref().map(|i| (&i.header, c.request_id.as_str())),
            rules: route.headers.as_ref().map(|r| (&r.request, &vars)),
        };
        head.write_backend_head(&admitted.target, &c.id, &edits, &mut c.req_head);
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
            body_timeout: limits.body_read_timeout,
            idle_timeout: cfg.idle_timeout,
            idempotent: policy::idempotent(head.method),
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
        if let Some(l) = limited {
            self.answer_policy(k, &l);
            return Start::Answered;
        }
        self.pick_and_send(k)
    }

    /// Picks a backend for client `k`'s exchange (none of its `exclude` list) and sends the request over an idle
    /// connection to it or a new one; answers 503/502 itself when no backend can take it.
    pub(super) fn pick_and_send(&mut self, k: usize) -> Start {
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
    pub(super) fn attach(&mut self, k: usize, bk: usize, reused: bool) {
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
            ex.arm(Instant::now());
            self.mark_backend(bk);
        }
    }

    /// Moves request body bytes from client `k` to its backend connection, as far as buffers allow.
    pub(super) fn pump_request_body(&mut self, k: usize) {
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
            ex.arm(Instant::now());
            self.mark_backend(bk);
        }
        let c = &self.clients[k];
        if c.eof && c.inb.is_empty() && matches!(&c.state, ClientState::Busy(ex) if ex.body_left > 0) {
            tracing::debug!(peer = %c.peer, "fast path: client closed in the middle of its request body");
            let answered = matches!(&c.state, ClientState::Busy(ex) if ex.framing.is_some());
            if answered {
                // The backend's answer is already on its way: nothing can be said any more.
                self.close_client(k);
            } else {
                // A body cut short is a malformed one: the policy's answer, as the hyper path gives it (the client
                // only closed its sending side); the backend's connection goes, the client's closes after it.
                let failure = policy::Failure::of_body(policy::ClientBodyError::Malformed);
                self.answer_locally(k, failure.answer.status, failure.answer.msg);
            }
        }
    }

    /// Answers client `k`'s exchange with a short local response and ends it.
    pub(super) fn answer_locally(&mut self, k: usize, status: StatusCode, msg: &str) {
        self.answer(k, status, msg, None);
    }

    /// [`answer_locally`](Self::answer_locally) with the policy's answer (its `Retry-After`).
    fn answer_policy(&mut self, k: usize, l: &policy::Local) {
        self.answer(k, l.status, l.msg, l.retry_after);
    }

    fn answer(&mut self, k: usize, status: StatusCode, msg: &str, retry_after: Option<u64>) {
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
        local_reply(status, msg, c.close_after, retry_after, &mut c.out.data);
        if let Some(bk) = backend {
            self.close_backend(bk);
        }
        self.mark_client(k);
        self.finish(k, None);
    }

    /// Ends client `k`'s exchange: records it (metrics, access log, in-flight count), gives its backend connection
    /// back to the idle cache when `reusable` (`None`: it is closed already), and gets the client ready for its
    /// next request, or closing.
    pub(super) fn finish(&mut self, k: usize, reusable: Option<bool>) {
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
            if c.pending() == 0 {
                self.close_client(k);
            }
        }
    }

    /// The response was cut short after its head went out: the client connection cannot carry on.
    pub(super) fn abort(&mut self, k: usize) {
        let Some(c) = self.clients.get_mut(k) else { return };
        if let ClientState::Busy(ex) = &mut c.state {
            ex.backend = None;
        }
        c.close_after = true;
        self.finish(k, None);
    }

    /// Metrics and access log of an exchange of client `c`.
    pub(super) fn record(&self, c: &Client, ex: &Exchange) {
        let finished = Finished {
            listener: &c.listener,
            client: c.peer,
            route: Some(&ex.route),
            backend: ex.label.as_ref(),
            // No status yet: the client went away before the answer.
            status: StatusCode::from_u16(ex.status)
                .unwrap_or(StatusCode::from_u16(CLIENT_CLOSED).unwrap_or(StatusCode::OK)),
            method: &c.method,
            host: &c.host,
            path: &c.path,
            elapsed: ex.started.elapsed(),
            bytes: ex.bytes,
            request_id: &c.request_id,
            traceparent: &c.traceparent,
        };
        finished.record(&self.plane.metrics, &c.counters);
    }
}
