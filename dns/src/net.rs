//! Sockets: UDP workers (one thread per SO_REUSEPORT socket, blocking I/O for the lowest per-packet cost) and a
//! TCP server (tokio) with idle timeouts and a connection limit.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use padis_model::handover::{self, Registration, Tag};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::fast::{self, Warm};
use crate::handler::{Handler, Outcome, Worker};
use crate::DnsError;

fn udp_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_port(true)?;
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    Ok(s.into())
}

fn tcp_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Bound sockets for one listen address.
pub struct Bound {
    /// UDP sockets (same port).
    pub udp: Vec<UdpSocket>,
    /// TCP listener.
    pub tcp: std::net::TcpListener,
    /// The address (with the real port).
    pub addr: SocketAddr,
    /// The sockets' places in the upgrade registry (see `padis_model::handover`).
    pub handover: Vec<Registration>,
}

/// Binds `count` UDP sockets and a TCP listener on `addr` (port 0: one free port for all of them). Sockets the
/// process this one replaces handed over are taken first (their queued queries are answered here); the others
/// are bound fresh, on the port of the taken ones when `addr` has port 0.
pub fn bind(addr: SocketAddr, count: usize) -> Result<Bound, DnsError> {
    let mut udp = Vec::new();
    let mut missing = Vec::new();
    for i in 0..count {
        match handover::take(&Tag::new("dns-udp", addr, i)) {
            Some(fd) => udp.push(UdpSocket::from(fd)),
            None => missing.push(i),
        }
    }
    let tcp = handover::take(&Tag::new("dns-tcp", addr, "")).map(std::net::TcpListener::from);
    if !udp.is_empty() || tcp.is_some() {
        tracing::info!(%addr, udp = udp.len(), tcp = tcp.is_some(), "DNS sockets taken over from the previous process");
    }
    let err = |source| DnsError::Bind { addr, source };
    let taken = match udp.first().map(|s| s.local_addr()).or_else(|| tcp.as_ref().map(|t| t.local_addr())) {
        Some(r) => Some(r.map_err(err)?),
        None => None,
    };
    let mut last = None;
    for _ in 0..20 {
        let attempt = (|| -> std::io::Result<(Vec<UdpSocket>, std::net::TcpListener, SocketAddr)> {
            let mut fresh = Vec::new();
            let mut real = taken;
            for _ in &missing {
                let s = udp_socket(real.unwrap_or(addr))?;
                real.get_or_insert(s.local_addr()?);
                fresh.push(s);
            }
            let real = real.unwrap_or(addr);
            let tcp = match &tcp {
                Some(t) => t.try_clone()?,
                None => tcp_listener(real)?,
            };
            Ok((fresh, tcp, real))
        })();
        match attempt {
            Ok((fresh, tcp, real)) => {
                let mut all: Vec<(usize, UdpSocket)> = Vec::new();
                let mut taken_iter = udp.into_iter();
                let mut fresh_iter = fresh.into_iter();
                for i in 0..count {
                    let s = if missing.contains(&i) { fresh_iter.next() } else { taken_iter.next() };
                    if let Some(s) = s {
                        all.push((i, s));
                    }
                }
                let mut handover = Vec::new();
                for (i, s) in &all {
                    s.set_read_timeout(Some(Duration::from_millis(200))).map_err(err)?;
                    handover.push(handover::register(Tag::new("dns-udp", addr, i), s).map_err(err)?);
                }
                tcp.set_nonblocking(true).map_err(err)?;
                handover.push(handover::register(Tag::new("dns-tcp", addr, ""), &tcp).map_err(err)?);
                let udp = all.into_iter().map(|(_, s)| s).collect();
                return Ok(Bound { udp, tcp, addr: real, handover });
            }
            Err(e) if addr.port() == 0 && taken.is_none() => last = Some(e),
            Err(e) => return Err(DnsError::Bind { addr, source: e }),
        }
    }
    Err(DnsError::Bind { addr, source: last.unwrap_or_else(|| std::io::Error::other("no free port")) })
}

/// A receive that took fewer datagrams than this does not start a coalescing wait: the load is light and an
/// answer's latency matters more than the CPU a system call and a wake-up cost.
const COALESCE_MIN: usize = 4;
/// The batch a coalescing wait aims at (half of [`crate::mmsg::BATCH`]: a full batch would leave no room for
/// the queries that arrive while it is answered).
const COALESCE_TARGET: usize = 32;
/// Receives without a wait after a wait that did not bring a larger batch.
const COALESCE_HOLDOFF: u32 = 64;

/// Receive coalescing of a UDP worker, as NIC interrupt moderation: under load (the last receive found `n` >=
/// [`COALESCE_MIN`] queries queued, fewer than [`COALESCE_TARGET`]) the worker lets its socket queue fill
/// before the next receive, for the time the arrival rate seen since the previous receive needs to bring
/// [`COALESCE_TARGET`] queries, at most `max`. Each system call, and each wake-up of the worker and of the
/// clients it answers, then carries several times more queries. Light load (small batches) and a worker that is
/// behind (large batches) never wait, and neither does one whose clients wait for their answers before asking
/// again (a wait that did not bring a larger batch stops waits for the next [`COALESCE_HOLDOFF`] receives).
pub struct Coalescer {
    max: Duration,
    last_receive: Option<Instant>,
    /// The batch size that led to the last wait, while the receive after it is pending.
    waited_after: Option<usize>,
    holdoff: u32,
}

impl Coalescer {
    /// Waits of at most `max` (zero: never).
    pub fn new(max: Duration) -> Coalescer {
        Coalescer { max, last_receive: None, waited_after: None, holdoff: 0 }
    }

    /// How long to wait before the next receive, given that the one at `at` took `n` datagrams.
    pub fn after_receive(&mut self, n: usize, at: Instant) -> Duration {
        let cycle = self.last_receive.map(|t| at.saturating_duration_since(t));
        self.last_receive = Some(at);
        if let Some(before) = self.waited_after.take() {
            if n <= before {
                self.holdoff = COALESCE_HOLDOFF;
            }
        }
        if self.holdoff > 0 {
            self.holdoff -= 1;
            return Duration::ZERO;
        }
        let Some(cycle) = cycle else { return Duration::ZERO };
        if self.max.is_zero() || !(COALESCE_MIN..COALESCE_TARGET).contains(&n) {
            return Duration::ZERO;
        }
        let wait = (cycle * (COALESCE_TARGET - n) as u32 / n as u32).min(self.max);
        if !wait.is_zero() {
            self.waited_after = Some(n);
        }
        wait
    }
}

/// Runs a UDP worker until `stop` is set: receives a batch, answers each datagram, sends the answers as a batch;
/// under load, waits up to `batch_wait` before the next receive (see [`Coalescer`]).
pub fn udp_worker(sock: UdpSocket, handler: Arc<Handler>, stop: Arc<AtomicBool>, batch_wait: Duration) {
    let mut batch = crate::mmsg::RecvBatch::new();
    let mut replies = crate::mmsg::SendBatch::new();
    let mut w = Worker::new(&handler.metrics);
    if !batch_wait.is_zero() {
        // Sleeps of tens of microseconds: the default 50 us timer slack would more than double them.
        let slack = (batch_wait.as_nanos() / 10).max(1_000) as libc::c_ulong;
        // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects the calling thread only.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, slack, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong)
        };
    }
    let mut coalescer = Coalescer::new(batch_wait);
    while !stop.load(Ordering::Relaxed) {
        let n = match batch.recv(&sock) {
            Ok(n) => {
                w.received(n);
                n
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                w.flush();
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "UDP receive error");
                continue;
            }
        };
        // One zone-set load and one clock read per batch; each answer's latency counts from the batch's receipt.
        let mut set = handler.zones.load();
        let received = Instant::now();
        for warm in [Warm::Slot, Warm::Record] {
            let mut i = 0;
            while let Some(req) = batch.payload(i) {
                fast::prefetch(&set, req, warm);
                i += 1;
            }
        }
        let mut i = 0;
        while let Some((req, src)) = batch.get(i) {
            i += 1;
            let out = replies.next_buf();
            match handler.handle(&set, req, src, false, out, &mut w, received) {
                Outcome::Reply => replies.push(src),
                Outcome::Update(update) => {
                    let (job, pending, rx) = *update;
                    let rcode = if handler.updates.blocking_send(job).is_ok() { rx.blocking_recv().ok() } else { None };
                    let out = replies.next_buf();
                    if let Outcome::Reply = handler.finish_update(pending, rcode, false, out, &mut w) {
                        replies.push(src);
                    }
                    // The rest of the batch sees the update.
                    set = handler.zones.load();
                }
                Outcome::Stream(_) | Outcome::Drop => {}
            }
        }
        drop(set);
        replies.flush(&sock);
        w.end_batch();
        let wait = coalescer.after_receive(n, received);
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
    w.flush();
}

/// Serves TCP connections until `shutdown`.
pub async fn tcp_server(
    listener: std::net::TcpListener,
    handler: Arc<Handler>,
    idle: Duration,
    max_conns: usize,
    shutdown: CancellationToken,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the TCP listener");
            return;
        }
    };
    let limit = Arc::new(Semaphore::new(max_conns));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "TCP accept error");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "too many TCP connections; closing");
            continue;
        };
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = connection(stream, peer, handler, idle) => {}
            }
            drop(permit);
        });
    }
}

async fn connection(mut stream: TcpStream, peer: SocketAddr, handler: Arc<Handler>, idle: Duration) {
    let _ = stream.set_nodelay(true);
    let mut w = Worker::new(&handler.metrics);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(idle, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => break,
        }
        let n = u16::from_be_bytes(len) as usize;
        if n == 0 {
            break;
        }
        buf.resize(n, 0);
        match tokio::time::timeout(idle, stream.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            _ => break,
        }
        let set = handler.zones.load_full();
        let replies = match handler.handle(&set, &buf, peer, true, &mut out, &mut w, Instant::now()) {
            Outcome::Reply => vec![std::mem::take(&mut out)],
            Outcome::Stream(msgs) => msgs,
            Outcome::Update(update) => {
                let (job, pending, rx) = *update;
                let rcode = if handler.updates.send(job).await.is_ok() { rx.await.ok() } else { None };
                match handler.finish_update(pending, rcode, true, &mut out, &mut w) {
                    Outcome::Reply => vec![std::mem::take(&mut out)],
                    _ => vec![],
                }
            }
            Outcome::Drop => break,
        };
        let mut ok = true;
        for r in replies {
            let mut framed = Vec::with_capacity(r.len() + 2);
            framed.extend_from_slice(&(r.len() as u16).to_be_bytes());
            framed.extend_from_slice(&r);
            if tokio::time::timeout(idle, stream.write_all(&framed)).await.map_or(true, |r| r.is_err()) {
                ok = false;
                break;
            }
        }
        w.end_batch();
        if !ok {
            break;
        }
    }
    w.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(100);
    const US: Duration = Duration::from_micros(1);

    /// Feeds receives of `sizes`, `gap` apart, and returns the waits decided after each.
    fn waits(c: &mut Coalescer, t: &mut Instant, gap: Duration, sizes: &[usize]) -> Vec<Duration> {
        sizes
            .iter()
            .map(|&n| {
                *t += gap;
                let w = c.after_receive(n, *t);
                *t += w;
                w
            })
            .collect()
    }

    #[test]
    fn light_load_and_a_worker_behind_never_wait() {
        let mut c = Coalescer::new(MAX);
        let mut t = Instant::now();
        let w = waits(&mut c, &mut t, 50 * US, &[1, 1, 2, 3, 1, 32, 40, 64, 64, 3]);
        assert!(w.iter().all(|w| w.is_zero()), "{w:?}");
    }

    #[test]
    fn under_load_the_wait_is_what_the_arrival_rate_needs_for_a_target_batch_capped() {
        let mut c = Coalescer::new(MAX);
        let mut t = Instant::now();
        // The first receive has no rate to go by.
        assert_eq!(waits(&mut c, &mut t, 20 * US, &[8]), [Duration::ZERO]);
        // 8 queries over 20 us (one per 2.5 us): 24 more need 60 us.
        assert_eq!(waits(&mut c, &mut t, 20 * US, &[8]), [60 * US]);
        // The wait brought 24 over 60 + 40 us: 8 more need 33.3 us.
        assert_eq!(waits(&mut c, &mut t, 40 * US, &[24]), [Duration::from_nanos(33_333)]);
        // 4 over 200 us would need 1.4 ms: capped.
        let mut c = Coalescer::new(MAX);
        assert_eq!(waits(&mut c, &mut t, 200 * US, &[4, 4]), [Duration::ZERO, MAX]);
        let mut off = Coalescer::new(Duration::ZERO);
        assert_eq!(waits(&mut off, &mut t, 20 * US, &[8, 8, 8]), [Duration::ZERO; 3], "off");
    }

    #[test]
    fn a_wait_that_brings_no_larger_batch_stops_waits_for_a_while() {
        // A client that sends 8 queries and waits for their answers: waiting only delays it.
        let mut c = Coalescer::new(MAX);
        let mut t = Instant::now();
        let w = waits(&mut c, &mut t, 30 * US, &[8; 200]);
        // Receive 2 waits, receive 3 brings no more: 64 receives without, then one more try, and so on.
        let waited: Vec<usize> = (0..w.len()).filter(|&i| !w[i].is_zero()).collect();
        let period = COALESCE_HOLDOFF as usize + 1;
        assert_eq!(waited, [1, 1 + period, 1 + 2 * period, 1 + 3 * period], "{w:?}");
    }
}
