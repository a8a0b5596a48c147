//! Copying bytes both ways between a client and its backend, with the half-close passed on, an idle timeout and
//! byte counters: by splice(2) (`splice`), or through a buffer per direction where a pipe cannot be had.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Buffer per direction.
const BUF: usize = 64 * 1024;

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

/// Copies `from` to `to` until end of stream, then shuts `to`'s sending half (the half-close travels on).
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
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
        counter.inc_by(n as u64);
        last.store(elapsed_ms(start), Ordering::Relaxed);
    }
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
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let pipes = super::splice::Pipe::new().and_then(|a| Ok((a, super::splice::Pipe::new()?)));
    match pipes {
        Ok((p_up, p_down)) => {
            let up = super::splice::pipe(&client, &backend, p_up, &counters.up, &last, start);
            let down = super::splice::pipe(&backend, &client, p_down, &counters.down, &last, start);
            drive(up, down, idle, &last, start, hard).await
        }
        Err(e) => {
            tracing::debug!(error = %e, "no pipe for splice: copying through buffers");
            relay_copy(client, backend, idle, counters, hard).await
        }
    }
}

/// [`relay`] through a buffer per direction (where splice cannot be used).
pub(crate) async fn relay_copy(
    client: TcpStream,
    backend: TcpStream,
    idle: Duration,
    counters: &Counters,
    hard: &CancellationToken,
) -> io::Result<End> {
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let (cr, cw) = client.into_split();
    let (br, bw) = backend.into_split();
    let up = pipe(cr, bw, &counters.up, &last, start);
    let down = pipe(br, cw, &counters.down, &last, start);
    drive(up, down, idle, &last, start, hard).await
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
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    let mut deadline = tokio::time::Instant::from_std(start) + idle;
    while !(up_done && down_done) {
        tokio::select! {
            r = &mut up, if !up_done => {
                r?;
                up_done = true;
            }
            r = &mut down, if !down_done => {
                r?;
                down_done = true;
            }
            _ = tokio::time::sleep_until(deadline) => {
                let quiet = elapsed_ms(start).saturating_sub(last.load(Ordering::Relaxed));
                if quiet >= idle_ms {
                    return Ok(End::Idle);
                }
                deadline = tokio::time::Instant::now() + Duration::from_millis(idle_ms - quiet);
            }
            _ = hard.cancelled() => return Ok(End::Shutdown),
        }
    }
    Ok(End::Closed)
}

#[cfg(test)]
mod tests {
    use super::*;
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
