//! The client connection's I/O wrapper: request-head deadline (slowloris guard answered with 408) and activity
//! tracking for the keep-alive idle timeout.

use std::io;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The answer to a client too slow to send its request head.
pub(crate) const REQUEST_TIMEOUT_REPLY: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: 16\r\nconnection: close\r\n\r\nrequest timeout\n";
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// State shared by a client connection's I/O wrapper, its request handler and its task.
pub(crate) struct ConnState {
    /// Requests whose response has not completed.
    pub in_flight: AtomicUsize,
    /// Request heads received so far.
    pub heads: AtomicU64,
    /// Last read or write, in ms since `started`.
    pub last_activity_ms: AtomicU64,
    /// When the connection was accepted.
    pub started: Instant,
    /// The connection was upgraded (WebSocket...): no more request heads, no head deadline.
    pub upgraded: std::sync::atomic::AtomicBool,
}

impl ConnState {
    pub fn new() -> ConnState {
        ConnState {
            in_flight: AtomicUsize::new(0),
            heads: AtomicU64::new(0),
            last_activity_ms: AtomicU64::new(0),
            started: Instant::now(),
            upgraded: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        self.last_activity_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Time since the last read or write.
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// Called by the handler when a request head was parsed.
    pub fn request_started(&self) {
        self.heads.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// Called when a request's response is complete (or dropped).
    pub fn request_finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Wraps a client stream. While no request is in flight, the first byte of a request head starts a
/// `header_timeout` deadline (also started at accept); if the head is not complete by then, the next read writes a
/// 408 and fails, which ends the connection. Disabled for HTTP/2 (ALPN h2 or the h2c preface) and once the
/// connection is upgraded.
///
/// The timer is coarse: it stays armed at the deadline it was set for, and when it fires before the deadline in
/// force (a later head started since) it is moved then, so a keep-alive connection does not touch the timer wheel
/// for every request head.
pub(crate) struct TimedIo<I> {
    inner: I,
    state: Arc<ConnState>,
    header_timeout: Duration,
    /// When the request head being read must be complete (none between requests).
    deadline: Option<Instant>,
    /// Wakes the connection at `deadline` or earlier.
    timer: Option<Pin<Box<Sleep>>>,
    seen_heads: u64,
    h2: bool,
    first_read: bool,
    reply_off: Option<usize>,
}

impl<I> TimedIo<I> {
    pub fn new(inner: I, state: Arc<ConnState>, header_timeout: Duration, h2: bool) -> TimedIo<I> {
        let deadline = (!h2).then(|| Instant::now() + header_timeout);
        TimedIo {
            inner,
            state,
            header_timeout,
            deadline,
            timer: None,
            seen_heads: 0,
            h2,
            first_read: true,
            reply_off: None,
        }
    }

    /// Whether the head deadline passed; otherwise makes sure the timer wakes the task by then.
    fn head_timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(at) = self.deadline else { return false };
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at.into())));
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        if Instant::now() >= at {
            return true;
        }
        // An earlier deadline's timer fired: move it to this one.
        timer.as_mut().reset(at.into());
        let _ = timer.as_mut().poll(cx);
        false
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for TimedIo<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if let Some(off) = this.reply_off {
                let mut off = off;
                while off < REQUEST_TIMEOUT_REPLY.len() {
                    match Pin::new(&mut this.inner).poll_write(cx, &REQUEST_TIMEOUT_REPLY[off..]) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => break,
                        Poll::Ready(Ok(n)) => off += n,
                        Poll::Pending => {
                            this.reply_off = Some(off);
                            return Poll::Pending;
                        }
                    }
                }
                this.reply_off = Some(REQUEST_TIMEOUT_REPLY.len());
                if Pin::new(&mut this.inner).poll_flush(cx).is_pending() {
                    return Poll::Pending;
                }
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "request head read timeout")));
            }
            if !this.h2 && this.state.upgraded.load(Ordering::Relaxed) {
                this.h2 = true;
                this.deadline = None;
                this.timer = None;
            }
            if !this.h2 {
                let heads = this.state.heads.load(Ordering::Relaxed);
                if heads != this.seen_heads {
                    this.seen_heads = heads;
                    this.deadline = None;
                }
            }
            let before = buf.filled().len();
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {
                    let got = &buf.filled()[before..];
                    if !got.is_empty() {
                        this.state.touch();
                        if this.first_read {
                            this.first_read = false;
                            let n = got.len().min(H2_PREFACE.len());
                            if got[..n] == H2_PREFACE[..n] {
                                this.h2 = true;
                                this.deadline = None;
                                this.timer = None;
                            }
                        }
                        if !this.h2
                            && this.deadline.is_none()
                            && this.state.in_flight.load(Ordering::Acquire) == 0
                        {
                            this.deadline = Some(Instant::now() + this.header_timeout);
                        }
                    }
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if !this.h2
                        && this.head_timed_out(cx)
                        && this.state.in_flight.load(Ordering::Acquire) == 0
                    {
                        this.reply_off = Some(0);
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TimedIo<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.state.touch();
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.state.touch();
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

