//! The client connection's I/O wrapper: request-head deadline (slowloris guard answered with 408), send timeout
//! (a client that takes none of its answer), the HTTP/2 control-frame budget (PING and SETTINGS floods) and
//! activity tracking for the keep-alive idle timeout.

use std::io;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
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

const FRAME_HEAD: usize = 9;
const FRAME_SETTINGS: u8 = 4;
const FRAME_PING: u8 = 6;
const FLAG_ACK: u8 = 1;
/// The client's HTTP/2 connection preface.
const H2_FULL_PREFACE: usize = 24;

/// Follows the frames of an HTTP/2 client's byte stream (their 9-byte heads; payloads are skipped) and keeps a
/// token bucket for the PING and SETTINGS frames that are not acknowledgements: each one makes the server write
/// an acknowledgement, and h2 has no bound of its own on how many a client may send.
struct FrameBudget {
    /// Bytes still to skip (the preface, then the current frame's payload).
    skip: usize,
    head: [u8; FRAME_HEAD],
    head_len: usize,
    tokens: f64,
    per_sec: f64,
    last: Instant,
}

impl FrameBudget {
    fn new(per_sec: u32) -> FrameBudget {
        let per_sec = f64::from(per_sec.max(1));
        FrameBudget {
            skip: H2_FULL_PREFACE,
            head: [0; FRAME_HEAD],
            head_len: 0,
            tokens: 2.0 * per_sec,
            per_sec,
            last: Instant::now(),
        }
    }

    /// Follows `data`; false when a control frame went over the budget.
    fn scan(&mut self, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let n = (FRAME_HEAD - self.head_len).min(data.len());
            self.head[self.head_len..self.head_len + n].copy_from_slice(&data[..n]);
            self.head_len += n;
            data = &data[n..];
            if self.head_len < FRAME_HEAD {
                break;
            }
            self.head_len = 0;
            let h = &self.head;
            self.skip = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            if matches!(h[3], FRAME_PING | FRAME_SETTINGS) && h[4] & FLAG_ACK == 0 && !self.take() {
                return false;
            }
        }
        true
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.per_sec;
        self.last = now;
        self.tokens = (self.tokens + refill).min(2.0 * self.per_sec);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// Wraps a client stream. While no request is in flight, the first byte of a request head starts a
/// `header_timeout` deadline (also started at accept); if the head is not complete by then, the next read writes a
/// 408 and fails, which ends the connection. Disabled for HTTP/2 (ALPN h2 or the h2c preface) and once the
/// connection is upgraded.
///
/// A write (or flush) that cannot go on starts a `send_timeout` deadline, which any progress ends; when it passes,
/// the write fails (`TimedOut`), which ends the connection and releases its backend connections. On HTTP/2 the
/// client's PING and SETTINGS frames are counted against a budget ([`FrameBudget`]); over it, the read fails.
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
    /// The HTTP/2 control-frame budget (HTTP/2 connections only).
    frames: Option<FrameBudget>,
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
            frames: h2.then(|| FrameBudget::new(limits.h2_control_per_sec)),
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
                                this.frames = Some(FrameBudget::new(this.h2_control_per_sec));
                            }
                        }
                        match &mut this.frames {
                            None => this.state.touch(),
                            Some(f) => {
                                if !f.scan(got) {
                                    let _ = this.state.cut.set(CUT_H2_FLOOD);
                                    return Poll::Ready(Err(io::Error::other("HTTP/2 PING/SETTINGS flood")));
                                }
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

fn send_timeout_error<T>() -> Poll<io::Result<T>> {
    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "send timeout: the client takes no data")))
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TimedIo<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.frames.is_none() {
            this.state.touch();
        }
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if this.send_timed_out(cx, r.is_pending()) {
            return send_timeout_error();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.frames.is_none() {
            this.state.touch();
        }
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if this.send_timed_out(cx, r.is_pending()) {
            return send_timeout_error();
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


#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags, 0, 0, 0, 0];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn frame_budget_counts_pings_and_settings_across_splits() {
        let mut b = FrameBudget::new(5);
        let mut stream = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        stream.extend(frame(FRAME_SETTINGS, 0, &[0, 3, 0, 0, 0, 100]));
        // Acknowledgements and other frames (a DATA frame whose payload looks like a PING head) are free.
        stream.extend(frame(FRAME_SETTINGS, FLAG_ACK, &[]));
        stream.extend(frame(0, 0, &frame(FRAME_PING, 0, &[0; 8])));
        for _ in 0..20 {
            stream.extend(frame(FRAME_PING, FLAG_ACK, &[0; 8]));
        }
        for _ in 0..9 {
            stream.extend(frame(FRAME_PING, 0, &[1; 8]));
        }
        // One byte at a time: frame heads split at every boundary.
        for byte in stream.chunks(1) {
            assert!(b.scan(byte), "within the burst of 10");
        }
        assert!(!b.scan(&frame(FRAME_PING, 0, &[2; 8])), "the 11th control frame is over the budget");
    }
}
