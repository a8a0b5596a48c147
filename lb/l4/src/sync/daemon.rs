//! The sync daemon's event loop: drain the XDP ring into batches, send them, receive and insert peers' flows,
//! say hello every second, start bulk dumps for (re)starting peers and periodic re-announcements to all peers.
//! Authenticated datagrams pass the replay window before anything else. With `[tls] share_ticket_keys`, the
//! node's TLS session ticket keys go to every peer with each hello (encrypted, see `codec`) and peers' keys are
//! taken. Without XDP (a node with `[l4.sync]` and no `[l4] interfaces`), the daemon only says hello and shares
//! ticket keys: a peer asking for its connection table gets an empty dump.

use std::collections::HashMap as StdHashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aya::maps::{MapData, PerCpuArray, RingBuf};
use padis_ebpf_common::{stat, Counters, FlowState, SyncRecord};
use padis_model::handover;
use padis_model::l4::SyncConfig;
use tokio::io::unix::AsyncFd;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::codec::{self, Body, CodecError, Origin, SyncKey, WireFlow, MAX_RECORDS};
use super::dump::{self, DumpJob, Purpose};
use super::index::{SyncIndex, Unknown};
use super::replay::ReplayGuard;
use super::status::{self, SyncStatus};
use super::{SyncError, SyncMaps, SyncMetrics};
use crate::conntrack::Inserted;

/// Period of hello messages.
const HELLO_EVERY: Duration = Duration::from_secs(1);
/// A peer not heard from for this long no longer counts as seen.
const PEER_TIMEOUT: Duration = status::PEER_UP;
/// Most ring records drained per wake-up (the loop comes back at once if more are waiting).
const DRAIN_MAX: usize = 16 * 1024;

struct Peer {
    incarnation: u64,
    last: Instant,
}

pub(super) struct Daemon {
    origin: Arc<Origin>,
    key: Arc<SyncKey>,
    listen: SocketAddr,
    peers: Vec<SocketAddr>,
    batch_interval: Duration,
    dump_rate: u32,
    refresh_interval: Duration,
    refresh_rate: u32,
    /// The running re-announcement pass (its token is cancelled when it ends).
    refresh: Option<CancellationToken>,
    next_refresh: Instant,
    replay: ReplayGuard,
    status: Arc<SyncStatus>,
    sock: UdpSocket,
    /// The socket's registration for the next upgrade.
    _handover: handover::Registration,
    ring: Option<RingBuf<MapData>>,
    /// The XDP maps (none: a node without XDP, sharing ticket keys only).
    xdp: Option<Xdp>,
    /// The TLS session ticket keys shared with the peers.
    tickets: Option<Arc<padis_tickets::TicketKeys>>,
    index: watch::Receiver<Arc<SyncIndex>>,
    metrics: SyncMetrics,
    seen: StdHashMap<u64, Peer>,
    dumps: StdHashMap<SocketAddr, CancellationToken>,
    pending: Vec<WireFlow>,
    ring_drops: u64,
}

/// The XDP side of the daemon: its handles on the connection table and the counters.
struct Xdp {
    conntrack: crate::conntrack::ConnTable,
    stats: PerCpuArray<MapData, Counters>,
    max_flows: u32,
}

/// This start's incarnation: the time in Unix ns, so that it grows across restarts (the replay window refuses
/// older incarnations).
fn incarnation() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    t.as_nanos() as u64
}

impl Daemon {
    pub(super) fn new(
        cfg: &SyncConfig,
        node: u64,
        key: SyncKey,
        maps: Option<SyncMaps>,
        index: watch::Receiver<Arc<SyncIndex>>,
        metrics: SyncMetrics,
        tickets: Option<Arc<padis_tickets::TicketKeys>>,
    ) -> Result<Daemon, SyncError> {
        let err = |source| SyncError::Socket { addr: cfg.listen, source };
        // The socket of the process this one replaces (`padis upgrade`), or a fresh one; handed to the next.
        let tag = handover::Tag::new("l4-sync", cfg.listen, "");
        let std_sock = match handover::take(&tag) {
            Some(fd) => std::net::UdpSocket::from(fd),
            None => std::net::UdpSocket::bind(cfg.listen).map_err(err)?,
        };
        std_sock.set_nonblocking(true).map_err(err)?;
        let registration = handover::register(tag, &std_sock).map_err(err)?;
        let sock = UdpSocket::from_std(std_sock).map_err(err)?;
        let origin = Arc::new(Origin::new(node, incarnation()));
        let peers: Vec<SocketAddr> = cfg.peers.iter().copied().filter(|p| *p != cfg.listen).collect();
        let status = Arc::new(SyncStatus {
            node,
            incarnation: origin.incarnation,
            listen: cfg.listen,
            peers: peers.clone(),
            metrics: metrics.clone(),
            hellos: Default::default(),
            started: Instant::now().into_std(),
            dumps_done: Default::default(),
            ready: Default::default(),
        });
        Ok(Daemon {
            origin,
            key: Arc::new(key),
            listen: cfg.listen,
            peers,
            batch_interval: cfg.batch_interval,
            dump_rate: cfg.dump_rate,
            refresh_interval: cfg.refresh_interval,
            refresh_rate: cfg.refresh_rate,
            refresh: None,
            next_refresh: Instant::now() + cfg.refresh_interval,
            replay: ReplayGuard::default(),
            status,
            sock,
            _handover: registration,
            ring: None,
            xdp: None,
            tickets,
            index,
            metrics,
            seen: StdHashMap::new(),
            dumps: StdHashMap::new(),
            pending: Vec::new(),
            ring_drops: 0,
        }
        .with_maps(maps))
    }

    fn with_maps(mut self, maps: Option<SyncMaps>) -> Daemon {
        if let Some(m) = maps {
            self.ring = Some(m.ring);
            self.xdp = Some(Xdp { conntrack: m.conntrack, stats: m.stats, max_flows: m.max_flows });
        }
        self
    }

    /// The state shown in the L4 report.
    pub(super) fn status(&self) -> Arc<SyncStatus> {
        self.status.clone()
    }

    pub(super) async fn run(mut self, shutdown: CancellationToken) {
        let mut ring = match self.ring.take() {
            // SAFETY: the ring buffer owns its fd and keeps it open for as long as the AsyncFd holds it.
            Some(ring) => match unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) } {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::error!(error = %e, "sync: cannot poll the ring buffer; sync stopped");
                    return;
                }
            },
            None => None,
        };
        let mut hello = tokio::time::interval(HELLO_EVERY);
        hello.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut flush_at: Option<Instant> = None;
        let mut buf = vec![0u8; 2048];
        loop {
            let deadline = flush_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                g = async {
                    match ring.as_mut() {
                        Some(r) => r.readable_mut().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let mut g = match g {
                        Ok(g) => g,
                        Err(e) => {
                            tracing::error!(error = %e, "sync: ring buffer poll failed; sync stopped");
                            break;
                        }
                    };
                    if self.drain(g.get_inner_mut()) {
                        g.clear_ready();
                    }
                    if self.pending.len() >= MAX_RECORDS {
                        self.flush(false).await;
                    }
                    if self.pending.is_empty() {
                        flush_at = None;
                    } else if flush_at.is_none() {
                        flush_at = Some(Instant::now() + self.batch_interval);
                    }
                }
                _ = tokio::time::sleep_until(deadline), if flush_at.is_some() => {
                    self.flush(true).await;
                    flush_at = None;
                }
                r = self.sock.recv_from(&mut buf) => match r {
                    Ok((n, from)) => self.receive(&buf[..n], from),
                    Err(e) => tracing::debug!(error = %e, "sync: receive failed"),
                },
                _ = hello.tick() => self.tick().await,
            }
        }
        for (_, t) in self.dumps.drain() {
            t.cancel();
        }
        if let Some(t) = self.refresh.take() {
            t.cancel();
        }
        tracing::info!("L4 connection-table sync stopped");
    }

    /// Moves ring records into `pending` as identities; true when the ring is empty.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> bool {
        let index = self.index.borrow().clone();
        for _ in 0..DRAIN_MAX {
            let Some(item) = ring.next() else { return true };
            if item.len() < std::mem::size_of::<SyncRecord>() {
                continue;
            }
            // SAFETY: the program writes whole `SyncRecord`s (plain integers); the length was checked.
            let rec: SyncRecord = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const SyncRecord) };
            match index.backend_addr(rec.state.backend) {
                Some(backend) => self.pending.push(WireFlow { key: rec.key, backend }),
                None => self.metrics.skipped.with_label_values(&["stale_backend"]).inc(),
            }
        }
        false
    }

    /// Sends full datagrams of `pending` (and the remainder too when `all`).
    async fn flush(&mut self, all: bool) {
        let keep = if all { 0 } else { self.pending.len() % MAX_RECORDS };
        let send: Vec<WireFlow> = self.pending.drain(..self.pending.len() - keep).collect();
        if send.is_empty() {
            return;
        }
        for d in codec::encode_flows(&self.origin, &send, &self.key) {
            self.send_all(&d).await;
        }
        self.metrics.sent.inc_by(send.len() as u64);
    }

    async fn send_all(&self, datagram: &[u8]) {
        for p in &self.peers {
            if let Err(e) = self.sock.send_to(datagram, p).await {
                self.metrics.send_errors.inc();
                tracing::debug!(peer = %p, error = %e, "sync: send failed");
            }
        }
    }

    async fn tick(&mut self) {
        match codec::encode(&self.origin.message(Body::Hello), &self.key) {
            Ok(d) => self.send_all(&d).await,
            Err(e) => tracing::warn!(error = %e, "sync: hello not encoded"),
        }
        if let Some(t) = &self.tickets {
            match codec::encode(&self.origin.message(Body::TicketKeys(t.export())), &self.key) {
                Ok(d) => self.send_all(&d).await,
                Err(e) => tracing::warn!(error = %e, "sync: ticket keys not encoded"),
            }
        }
        let now = Instant::now();
        self.seen.retain(|_, p| now.duration_since(p.last) < PEER_TIMEOUT * 10);
        self.metrics
            .peers_seen
            .set(self.seen.values().filter(|p| now.duration_since(p.last) < PEER_TIMEOUT).count() as i64);
        self.dumps.retain(|_, t| !t.is_cancelled());
        self.schedule_refresh(now);
        if let Some(Ok(v)) = self.xdp.as_ref().map(|x| x.stats.get(&stat::SYNC_RING_FULL, 0)) {
            let total: u64 = v.iter().map(|c| c.packets).sum();
            if total > self.ring_drops {
                self.metrics.ring_drops.inc_by(total - self.ring_drops);
                tracing::warn!(
                    dropped = total - self.ring_drops,
                    "sync: XDP ring buffer full, new flows not announced"
                );
            }
            self.ring_drops = self.ring_drops.max(total);
        }
    }

    fn receive(&mut self, data: &[u8], from: SocketAddr) {
        let msg = match codec::decode(data, &self.key) {
            Ok(m) => m,
            Err(CodecError::Auth) => {
                self.metrics.auth_failures.inc();
                tracing::debug!(%from, "sync: datagram with a wrong HMAC refused");
                return;
            }
            Err(e) => {
                self.metrics.malformed.inc();
                tracing::debug!(%from, error = %e, "sync: malformed datagram refused");
                return;
            }
        };
        if msg.node == self.origin.node {
            return;
        }
        if let Err(r) = self.replay.check(msg.node, msg.incarnation, msg.seq, Instant::now().into_std()) {
            self.metrics.replays.with_label_values(&[r.label()]).inc();
            tracing::debug!(%from, node = msg.node, seq = msg.seq, reason = %r, "sync: replayed datagram refused");
            return;
        }
        match msg.body {
            Body::Hello => self.hello(msg.node, msg.incarnation, from),
            Body::Flows(flows) => self.insert(&flows),
            Body::TicketKeys(keys) => match &self.tickets {
                Some(t) => {
                    let new = t.import(keys);
                    if new > 0 {
                        self.metrics.ticket_keys.inc_by(new as u64);
                        tracing::info!(%from, node = msg.node, new, "sync: TLS session ticket keys from a peer");
                    }
                }
                None => {
                    let n = keys.len() as u64;
                    self.metrics.skipped.with_label_values(&["ticket_keys_not_shared"]).inc_by(n);
                    tracing::debug!(%from, "sync: ticket keys received, but [tls] share_ticket_keys is off here");
                }
            },
            Body::DumpDone => {
                // Authenticated; sent from the dump's own socket, so known by node id, not address.
                tracing::debug!(%from, node = msg.node, "sync: peer's connection table received");
                self.status.dump_done(msg.node, msg.incarnation);
            }
        }
    }

    fn hello(&mut self, node: u64, incarnation: u64, from: SocketAddr) {
        let now = Instant::now();
        let new = self.seen.get(&node).is_none_or(|p| p.incarnation != incarnation);
        self.seen.insert(node, Peer { incarnation, last: now });
        if self.peers.contains(&from) {
            self.status.hello(from, status::Hello { node, incarnation, at: now.into_std() });
        }
        if !new {
            return;
        }
        if !self.peers.contains(&from) {
            tracing::warn!(%from, "sync: hello from an address that is not a configured peer: no dump sent");
            return;
        }
        tracing::info!(peer = %from, "sync: peer (re)started, sending it our connection table");
        if let Some(old) = self.dumps.remove(&from) {
            old.cancel();
        }
        if self.xdp.is_none() {
            // No connection table here: the dump is empty, and over at once.
            if let Ok(d) = codec::encode(&self.origin.message(Body::DumpDone), &self.key) {
                if let Err(e) = self.sock.try_send_to(&d, from) {
                    self.metrics.send_errors.inc();
                    tracing::debug!(peer = %from, error = %e, "sync: send failed");
                }
            }
            return;
        }
        if let Some(stop) = self.spawn_dump(Purpose::Dump, vec![from], self.dump_rate) {
            self.dumps.insert(from, stop);
            self.metrics.dumps.inc();
        }
    }

    /// Starts the next re-announcement pass to every peer once the previous one has ended and
    /// `refresh_interval` has passed since.
    fn schedule_refresh(&mut self, now: Instant) {
        if self.refresh_interval.is_zero() || self.peers.is_empty() {
            return;
        }
        if let Some(t) = &self.refresh {
            if !t.is_cancelled() {
                return;
            }
            self.refresh = None;
            self.next_refresh = now + self.refresh_interval;
        }
        if now >= self.next_refresh {
            self.refresh = self.spawn_dump(Purpose::Refresh, self.peers.clone(), self.refresh_rate);
            if self.refresh.is_none() {
                self.next_refresh = now + self.refresh_interval;
            }
        }
    }

    /// Sends the connection table to `to` at `rate` records/s on a blocking thread; the token stops it (and is
    /// cancelled by the job when it ends).
    fn spawn_dump(&self, purpose: Purpose, to: Vec<SocketAddr>, rate: u32) -> Option<CancellationToken> {
        let xdp = self.xdp.as_ref()?;
        let conntrack = match super::conntrack_handle(&xdp.conntrack) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, ?purpose, "sync: no dump (map handle)");
                return None;
            }
        };
        let stop = CancellationToken::new();
        let job = DumpJob {
            purpose,
            conntrack,
            index: self.index.clone(),
            from: SocketAddr::new(self.listen.ip(), 0),
            to,
            key: self.key.clone(),
            origin: self.origin.clone(),
            rate,
            max: xdp.max_flows,
            metrics: self.metrics.clone(),
            stop: stop.clone(),
        };
        tokio::task::spawn_blocking(move || dump::run(job));
        Some(stop)
    }

    fn insert(&mut self, flows: &[WireFlow]) {
        let index = self.index.borrow().clone();
        self.metrics.received.inc_by(flows.len() as u64);
        let Some(xdp) = &mut self.xdp else {
            self.metrics.skipped.with_label_values(&["no_xdp"]).inc_by(flows.len() as u64);
            return;
        };
        for f in flows {
            let (vip, backend) = match index.local(&f.key, &f.backend) {
                Ok(l) => l,
                Err(Unknown::Vip) => {
                    self.metrics.skipped.with_label_values(&["unknown_vip"]).inc();
                    continue;
                }
                Err(Unknown::Backend) => {
                    self.metrics.skipped.with_label_values(&["unknown_backend"]).inc();
                    continue;
                }
            };
            match xdp.conntrack.insert(f.key, FlowState { backend, vip }, true) {
                Ok(Inserted::Added) => self.metrics.inserted.inc(),
                Ok(Inserted::Exists) => self.metrics.skipped.with_label_values(&["exists"]).inc(),
                Err(e) => {
                    self.metrics.skipped.with_label_values(&["map_error"]).inc();
                    tracing::warn!(error = %e, "sync: connection-table insert failed");
                }
            }
        }
    }
}
