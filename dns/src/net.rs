//! Sockets: UDP workers (one thread per SO_REUSEPORT socket, blocking I/O for the lowest per-packet cost) and a
//! TCP server (tokio) with idle timeouts and a connection limit.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
}

/// Binds `count` UDP sockets and a TCP listener on `addr` (port 0: one free port for all of them).
pub fn bind(addr: SocketAddr, count: usize) -> Result<Bound, DnsError> {
    let mut last = None;
    for _ in 0..20 {
        let attempt = (|| -> std::io::Result<Bound> {
            let first = udp_socket(addr)?;
            let real = first.local_addr()?;
            let mut udp = vec![first];
            for _ in 1..count {
                udp.push(udp_socket(real)?);
            }
            let tcp = tcp_listener(real)?;
            Ok(Bound { udp, tcp, addr: real })
        })();
        match attempt {
            Ok(b) => return Ok(b),
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => return Err(DnsError::Bind { addr, source: e }),
        }
    }
    Err(DnsError::Bind { addr, source: last.unwrap_or_else(|| std::io::Error::other("no free port")) })
}

/// Runs a UDP worker until `stop` is set: receives a batch, answers each datagram, sends the answers as a batch.
pub fn udp_worker(sock: UdpSocket, handler: Arc<Handler>, stop: Arc<AtomicBool>) {
    let mut batch = crate::mmsg::RecvBatch::new();
    let mut replies = crate::mmsg::SendBatch::new();
    let mut w = Worker::new(&handler.metrics);
    while !stop.load(Ordering::Relaxed) {
        match batch.recv(&sock) {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                w.flush();
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "UDP receive error");
                continue;
            }
        }
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
                Outcome::Update(job, pending, rx) => {
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
            Outcome::Update(job, pending, rx) => {
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
