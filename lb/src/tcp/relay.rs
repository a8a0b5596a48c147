//! Copying bytes both ways between a client and its backend, with the half-close passed on, an idle timeout and
//! byte counters.
//!
//! Each direction starts by copying through a buffer (one read and one write per message: what a short exchange
//! needs, and no pipe to get); a read that fills the buffer marks a bulk transfer, and the direction moves on to
//! splice(2) (`splice`: no copy through user space) for the rest of the connection, as HAProxy's `splice-auto`.
//! Without a pipe (or with `relay_copy`) it keeps copying.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::splice::Pipe;

/// Buffer per direction (allocated at the direction's first read, never zeroed); a read that fills it moves the
/// direction to splice.
const BUF: usize = 16 * 1024;

/// The byte counters of one connection.
pub(crate) struct Counters {
    /// Client to backend.
    pub up: IntCounter,
    /// Backend to client.
    pub down: IntCounter,
}

/// How a relayed connection ended (when not by an I/O error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Both sides closed their sending half.
    Closed,
    /// No byte either way for the idle timeout.
    Idle,
    /// The shutdown grace is over.
    Shutdown,
}

/// How a direction relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Copy until a read fills the buffer, then splice.
    Auto,
    /// Copy only (the tests' reference relay).
    #[cfg(test)]
    Copy,
}

/// Copies `from` to `to` until end of stream, then shuts `to`'s sending half (the half-close travels on).
async fn forward(
    from: &TcpStream,
    to: &TcpStream,
    mode: Mode,
    counter: &IntCounter,
    last: &AtomicU64,
    start: Instant,
) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        from.readable().await?;
        if buf.capacity() == 0 {
            buf.reserve_exact(BUF);
        }
        buf.clear();
        let n = match from.try_read_buf(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
        }
        write_all(to, &buf[..n]).await?;
        counter.inc_by(n as u64);
        last.store(elapsed_ms(start), Ordering::Relaxed);
        if n == buf.capacity() && mode == Mode::Auto {
            match Pipe::take() {
                Ok(pipe) => {
                    drop(buf);
                    return super::splice::pipe(from, to, pipe, counter, last, start).await;
                }
                Err(e) => tracing::debug!(error = %e, "no pipe for splice: copying through a buffer"),
            }
        }
    }
}

/// Writes all of `bytes` to `to`.
async fn write_all(to: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match to.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(m) => bytes = &bytes[m..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(super) fn elapsed_ms(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Relays between `client` and `backend` until both directions ended, the connection was idle for `idle`, or
/// `hard`. An error in one direction ends both.
pub(crate) async fn relay(
    client: TcpStream,
    backend: TcpStream,
    idle: Duration,
    counters: &Counters,
    hard: &CancellationToken,
) -> io::Result<End> {
    relay_in(client, backend, Mode::Auto, idle, counters, hard).await
}

/// [`relay`] through a buffer per direction only (no splice).
#[cfg(test)]
pub(crate) async fn relay_copy(
    client: TcpStream,
    backend: TcpStream,
    idle: Duration,
    counters: &Counters,
    hard: &CancellationToken,
) -> io::Result<End> {
    relay_in(client, backend, Mode::Copy, idle, counters, hard).await
}

async fn relay_in(
    client: TcpStream,
    backend: TcpStream,
    mode: Mode,
    idle: Duration,
    counters: &Counters,
    hard: &CancellationToken,
) -> io::Result<End> {
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let up = forward(&client, &backend, mode, &counters.up, &last, start);
    let down = forward(&backend, &client, mode, &counters.down, &last, start);
    drive(up, down, idle, &last, start, hard).await
}

/// [`relay`] for a client stream that is not a plain socket (TLS terminated here): a buffer copy per direction; the
/// client's end of stream (its close_notify) is passed on as the backend's half-close and the backend's as the
/// client's close_notify.
pub(crate) async fn relay_stream<C: AsyncRead + AsyncWrite>(
    client: C,
    mut backend: TcpStream,
    idle: Duration,
    counters: &Counters,
    hard: &CancellationToken,
) -> io::Result<End> {
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut backend_read, mut backend_write) = backend.split();
    let up = copy(&mut client_read, &mut backend_write, &counters.up, &last, start);
    let down = copy(&mut backend_read, &mut client_write, &counters.down, &last, start);
    drive(up, down, idle, &last, start, hard).await
}

/// Copies `from` to `to` through a buffer until end of stream, then shuts `to`'s sending half.
async fn copy<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    from: &mut R,
    to: &mut W,
    counter: &IntCounter,
    last: &AtomicU64,
    start: Instant,
) -> io::Result<()> {
    let mut buf = vec![0u8; BUF];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
        counter.inc_by(n as u64);
        last.store(elapsed_ms(start), Ordering::Relaxed);
    }
}

/// Runs both directions until both ended, the idle timeout, or `hard`.
async fn drive(
    up: impl std::future::Future<Output = io::Result<()>>,
    down: impl std::future::Future<Output = io::Result<()>>,
    idle: Duration,
    last: &AtomicU64,
    start: Instant,
    hard: &CancellationToken,
) -> io::Result<End> {
    let cancelled = hard.cancelled();
    tokio::pin!(up, down, cancelled);
    let (mut up_done, mut down_done) = (false, false);
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    let timer = tokio::time::sleep_until(tokio::time::Instant::from_std(start) + idle);
    tokio::pin!(timer);
    while !(up_done && down_done) {
        tokio::select! {
            biased;
            r = &mut up, if !up_done => {
                r?;
                up_done = true;
            }
            r = &mut down, if !down_done => {
                r?;
                down_done = true;
            }
            () = &mut timer => {
                let quiet = elapsed_ms(start).saturating_sub(last.load(Ordering::Relaxed));
                if quiet >= idle_ms {
                    return Ok(End::Idle);
                }
                timer.as_mut().reset(tokio::time::Instant::now() + Duration::from_millis(idle_ms - quiet));
            }
            () = &mut cancelled => return Ok(End::Shutdown),
        }
    }
    Ok(End::Closed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Two connected sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (a, l.accept().await.unwrap().0)
    }

    fn counters() -> Counters {
        Counters { up: IntCounter::new("up", "up").unwrap(), down: IntCounter::new("down", "down").unwrap() }
    }

    /// Bytes in a pipe's buffer.
    fn queued(fd: std::os::fd::RawFd) -> libc::c_int {
        let mut n: libc::c_int = -1;
        // SAFETY: FIONREAD on an open descriptor writes one int.
        assert_eq!(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) }, 0);
        n
    }

    /// A bulk transfer both ways at once moves on to splice (the buffer fills) and arrives intact, counted, with
    /// the half-close after it; the pipes go back to the pool empty.
    #[tokio::test]
    async fn bulk_moves_to_splice_and_pipes_return_empty() {
        let (mut client, proxy_client) = pair().await;
        let (proxy_backend, mut backend) = pair().await;
        let c = counters();
        let hard = CancellationToken::new();
        let up: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..5_000_000u32).map(|i| (i % 241) as u8).collect();
        let run = relay(proxy_client, proxy_backend, Duration::from_secs(10), &c, &hard);
        let peers = async {
            let (mut cr, mut cw) = client.split();
            let (mut br, mut bw) = backend.split();
            let send_up = async {
                cw.write_all(&up).await.unwrap();
                cw.shutdown().await.unwrap();
            };
            let send_down = async {
                bw.write_all(&down).await.unwrap();
                bw.shutdown().await.unwrap();
            };
            let (mut got_up, mut got_down) = (Vec::new(), Vec::new());
            let recv_up = br.read_to_end(&mut got_up);
            let recv_down = cr.read_to_end(&mut got_down);
            let ((), (), a, b) = tokio::join!(send_up, send_down, recv_up, recv_down);
            a.expect("the backend reads to the end");
            b.expect("the client reads to the end");
            assert!(got_up == up, "client to backend intact ({} bytes)", got_up.len());
            assert!(got_down == down, "backend to client intact ({} bytes)", got_down.len());
        };
        let (end, ()) = tokio::join!(run, peers);
        assert_eq!(end.unwrap(), End::Closed);
        assert_eq!((c.up.get(), c.down.get()), (up.len() as u64, down.len() as u64));
        assert!(Pipe::pooled() >= 1, "the directions' pipes went back to the pool");
        let p = Pipe::take().unwrap();
        assert_eq!(p.queued(queued), (0, 0), "a pooled pipe is empty");
    }

    /// Both relays (splice and buffer copy): bytes both ways, half-close passed on, counters, idle timeout.
    #[tokio::test]
    async fn relays_both_ways_with_half_close_and_idle() {
        for splice in [true, false] {
            let (mut client, proxy_client) = pair().await;
            let (proxy_backend, mut backend) = pair().await;
            let c = counters();
            let hard = CancellationToken::new();
            let idle = Duration::from_millis(300);
            let run = async {
                if splice {
                    relay(proxy_client, proxy_backend, idle, &c, &hard).await
                } else {
                    relay_copy(proxy_client, proxy_backend, idle, &c, &hard).await
                }
            };
            let peers = async {
                client.write_all(b"request").await.unwrap();
                client.shutdown().await.unwrap();
                let mut got = Vec::new();
                backend.read_to_end(&mut got).await.unwrap();
                assert_eq!(got, b"request", "the client's end of stream reached the backend");
                backend.write_all(b"answer after the half-close").await.unwrap();
                backend.shutdown().await.unwrap();
                let mut back = Vec::new();
                client.read_to_end(&mut back).await.unwrap();
                assert_eq!(back, b"answer after the half-close");
            };
            let (end, ()) = tokio::join!(run, peers);
            assert_eq!(end.unwrap(), End::Closed, "splice: {splice}");
            assert_eq!((c.up.get(), c.down.get()), (7, 27));

            let (_client, proxy_client) = pair().await;
            let (proxy_backend, _backend) = pair().await;
            let t = Instant::now();
            let end = if splice {
                relay(proxy_client, proxy_backend, idle, &c, &hard).await
            } else {
                relay_copy(proxy_client, proxy_backend, idle, &c, &hard).await
            };
            assert_eq!(end.unwrap(), End::Idle);
            assert!(t.elapsed() >= idle && t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        }
    }
}
