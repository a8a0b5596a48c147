//! The client connection's I/O wrapper: request-head deadline (slowloris guard answered with 408), send timeout
//! (a client that takes none of its answer), the HTTP/2 control-frame budget (PING and SETTINGS floods) and
//! activity tracking for the keep-alive idle timeout.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::conn::ActiveGuard;
use crate::h2watch::H2Watch;

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
    /// Why the I/O wrapper cut the connection (a `padis_http_connections_cut_total` reason), if it did.
    pub cut: OnceLock<&'static str>,
}

impl ConnState {
    pub fn new() -> ConnState {
        ConnState {
            in_flight: AtomicUsize::new(0),
            heads: AtomicU64::new(0),
            last_activity_ms: AtomicU64::new(0),
            started: Instant::now(),
            upgraded: std::sync::atomic::AtomicBool::new(false),
            cut: OnceLock::new(),
        }
    }

    fn touch(&self) {
        self.last_activity_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Time since the last activity: a read or write (HTTP/1.1), a request starting or finishing (both; on HTTP/2
    /// only these, so PINGs and other frames a client sends do not keep an idle connection open).
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// Called by the handler when a request head was parsed.
    pub fn request_started(&self) {
        self.touch();
        self.heads.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// Called when a request's response is complete (or dropped).
    pub fn request_finished(&self) {
        self.touch();
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The limits [`TimedIo`] enforces.
#[derive(Clone, Copy)]
pub(crate) struct IoLimits {
    /// Time to send a complete request head.
    pub header_timeout: Duration,
    /// Time a write may wait for the client to take bytes.
    pub send_timeout: Duration,
    /// HTTP/2 PING and SETTINGS frames per second (burst twice that).
    pub h2_control_per_sec: u32,
}

impl IoLimits {
    /// The I/O limits of `limits`.
    pub fn of(limits: &padis_model::Limits) -> IoLimits {
        IoLimits {
            header_timeout: limits.header_read_timeout,
            send_timeout: limits.send_timeout,
            h2_control_per_sec: limits.h2_max_control_frames_per_sec,
        }
    }
}

/// `cut` reason: a write waited longer than the send timeout.
pub(crate) const CUT_SEND_TIMEOUT: &str = "send_timeout";
/// `cut` reason: more HTTP/2 PING/SETTINGS frames than the budget.
pub(crate) const CUT_H2_FLOOD: &str = "h2_control_flood";

/// Wraps a client stream. While no request is in flight, the first byte of a request head starts a
/// `header_timeout` deadline (also started at accept); if the head is not complete by then, the next read writes a
/// 408 and fails, which ends the connection. Disabled for HTTP/2 (ALPN h2 or the h2c preface) and once the
/// connection is upgraded.
///
/// A write (or flush) that cannot go on starts a `send_timeout` deadline, which any progress ends; when it passes,
/// the write fails (`TimedOut`), which ends the connection and releases its backend connections. On HTTP/2 the
/// client's PING and SETTINGS frames are counted against a budget, over which the read fails, and a response that
/// waits for the client to grant flow-control window is a stalled write too (see [`H2Watch`]).
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
    send_timeout: Duration,
    /// When the write that could not go on must have gone on.
    send_deadline: Option<Instant>,
    send_timer: Option<Pin<Box<Sleep>>>,
    h2_control_per_sec: u32,
    /// The watch over HTTP/2 frames (HTTP/2 connections only).
    h2watch: Option<H2Watch>,
    /// Wakes the connection when a response stalled for want of window has waited `send_timeout`.
    stall_timer: Option<Pin<Box<Sleep>>>,
    /// Counts the connection for as long as its I/O lives (also in an upgraded tunnel).
    guard: Option<ActiveGuard>,
}

impl<I> TimedIo<I> {
    pub fn new(inner: I, state: Arc<ConnState>, limits: IoLimits, h2: bool) -> TimedIo<I> {
        let deadline = (!h2).then(|| Instant::now() + limits.header_timeout);
        TimedIo {
            inner,
            state,
            header_timeout: limits.header_timeout,
            deadline,
            timer: None,
            seen_heads: 0,
            h2,
            first_read: true,
            reply_off: None,
            send_timeout: limits.send_timeout,
            send_deadline: None,
            send_timer: None,
            h2_control_per_sec: limits.h2_control_per_sec,
            h2watch: h2.then(|| H2Watch::new(limits.h2_control_per_sec)),
            stall_timer: None,
            guard: None,
        }
    }

    /// Keeps `guard` (the connection's counts) until the I/O is dropped.
    pub fn holding(mut self, guard: ActiveGuard) -> TimedIo<I> {
        self.guard = Some(guard);
        self
    }

    /// Whether an HTTP/2 response has waited `send_timeout` for the client to grant window; otherwise makes sure
    /// the task wakes when it will have.
    fn response_stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(since) = self.h2watch.as_ref().and_then(H2Watch::stalled_since) else { return false };
        let at = since + self.send_timeout;
        if Instant::now() >= at {
            return true;
        }
        let at = tokio::time::Instant::from_std(at);
        let timer = self.stall_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if timer.deadline() != at {
            timer.as_mut().reset(at);
        }
        timer.as_mut().poll(cx).is_ready()
    }

    /// After a write on an HTTP/2 connection: if a response now waits for window, the task must wake when it has
    /// waited `send_timeout`, even if the client never sends another byte (the read side would not wake it).
    fn arm_stall_timer(&mut self, cx: &mut Context<'_>) {
        if self.response_stalled(cx) {
            cx.waker().wake_by_ref();
        }
    }

    /// After a write or flush of the inner stream: `pending` starts (or keeps) the send deadline and makes sure the
    /// task wakes at it; progress ends it. Whether the deadline passed.
    fn send_timed_out(&mut self, cx: &mut Context<'_>, pending: bool) -> bool {
        if !pending {
            self.send_deadline = None;
            return false;
        }
        let now = Instant::now();
        let at = *self.send_deadline.get_or_insert(now + self.send_timeout);
        if now >= at {
            let _ = self.state.cut.set(CUT_SEND_TIMEOUT);
            return true;
        }
        let at_tokio = tokio::time::Instant::from_std(at);
        let timer = self.send_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at_tokio)));
        if timer.deadline() != at_tokio {
            timer.as_mut().reset(at_tokio);
        }
        if timer.as_mut().poll(cx).is_ready() && Instant::now() >= at {
            let _ = self.state.cut.set(CUT_SEND_TIMEOUT);
            return true;
        }
        false
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
        if this.response_stalled(cx) {
            let _ = this.state.cut.set(CUT_SEND_TIMEOUT);
            return send_timeout_error();
        }
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
                        if this.first_read {
                            this.first_read = false;
                            let n = got.len().min(H2_PREFACE.len());
                            if got[..n] == H2_PREFACE[..n] {
                                this.h2 = true;
                                this.deadline = None;
                                this.timer = None;
                                this.h2watch = Some(H2Watch::new(this.h2_control_per_sec));
                            }
                        }
                        match &mut this.h2watch {
                            None => this.state.touch(),
                            Some(w) => {
                                if w.received(got).is_err() {
                                    let _ = this.state.cut.set(CUT_H2_FLOOD);
                                    return Poll::Ready(Err(io::Error::other("HTTP/2 PING/SETTINGS flood")));
                                }
                            }
                        }
                        if !this.h2 && this.deadline.is_none() && this.state.in_flight.load(Ordering::Acquire) == 0 {
                            this.deadline = Some(Instant::now() + this.header_timeout);
                        }
                    }
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if !this.h2 && this.head_timed_out(cx) && this.state.in_flight.load(Ordering::Acquire) == 0 {
                        this.reply_off = Some(0);
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

fn send_timeout_error<T>() -> Poll<io::Result<T>> {
    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "send timeout: the client takes no data")))
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TimedIo<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.h2watch.is_none() {
            this.state.touch();
        }
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if this.send_timed_out(cx, r.is_pending()) {
            return send_timeout_error();
        }
        if let (Poll::Ready(Ok(n)), Some(w)) = (&r, &mut this.h2watch) {
            w.sent(&buf[..*n]);
            this.arm_stall_timer(cx);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.h2watch.is_none() {
            this.state.touch();
        }
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if this.send_timed_out(cx, r.is_pending()) {
            return send_timeout_error();
        }
        if let (Poll::Ready(Ok(n)), Some(w)) = (&r, &mut this.h2watch) {
            let mut left = *n;
            for b in bufs {
                let take = left.min(b.len());
                w.sent(&b[..take]);
                left -= take;
                if left == 0 {
                    break;
                }
            }
            this.arm_stall_timer(cx);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        if this.send_timed_out(cx, r.is_pending()) {
            return send_timeout_error();
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        if this.send_timed_out(cx, r.is_pending()) {
            return send_timeout_error();
        }
        r
    }
}
