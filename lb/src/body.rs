//! Bodies: what is sent to backends (buffered for retries, or streamed with the size limit), and the response
//! body that, when finished or dropped, records metrics, the access log and releases the in-flight slot.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode, Uri};
use http_body_util::{Either, Full, LengthLimitError, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use padis_balance::InFlight;

use crate::forward::ConnCtx;
use crate::metrics::Finished;
use crate::policy::ClientBodyError;
use crate::routes::CompiledRoute;

/// How far a client's request body has come: complete at once when there is none.
#[derive(Default)]
pub(crate) struct BodyProgress {
    done_at: std::sync::OnceLock<Instant>,
}

impl BodyProgress {
    /// When the whole body had been read from the client, if it has.
    pub fn done_at(&self) -> Option<Instant> {
        self.done_at.get().copied()
    }

    fn finish(&self) {
        let _ = self.done_at.set(Instant::now());
    }
}

/// Request body towards a backend: none (the client sent none: the request can be copied and sent again), or the
/// client's, streamed, with the body size limit and a read timeout. Its errors are [`ClientBodyError`]s: the
/// client's faults, which the request policy never counts against the backend.
pub(crate) enum UpstreamBody {
    /// No body.
    Empty,
    /// The client's body, streamed.
    Streamed {
        body: Limited<Incoming>,
        /// No frame for this long is the client's timeout.
        timeout: Duration,
        timer: Pin<Box<tokio::time::Sleep>>,
        progress: Arc<BodyProgress>,
    },
}

impl UpstreamBody {
    /// The body of a request whose client body is `body`, limited to `max` bytes, each frame due within
    /// `timeout`; `progress` learns when it is complete.
    pub fn new(body: Incoming, max: usize, timeout: Duration, progress: Arc<BodyProgress>) -> UpstreamBody {
        if body.is_end_stream() {
            progress.finish();
            UpstreamBody::Empty
        } else {
            let timer = Box::pin(tokio::time::sleep(timeout));
            UpstreamBody::Streamed { body: Limited::new(body, max), timeout, timer, progress }
        }
    }

    /// No body.
    pub fn empty() -> UpstreamBody {
        UpstreamBody::Empty
    }

    /// Whether there is no body at all.
    pub fn is_empty(&self) -> bool {
        matches!(self, UpstreamBody::Empty)
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let UpstreamBody::Streamed { body, timeout, timer, progress } = self.get_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                timer.as_mut().reset(tokio::time::Instant::now() + *timeout);
                if body.is_end_stream() {
                    progress.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let kind =
                    if e.is::<LengthLimitError>() { ClientBodyError::TooLarge } else { ClientBodyError::Malformed };
                tracing::debug!(error = %e, "client request body failed");
                Poll::Ready(Some(Err(Box::new(kind))))
            }
            Poll::Ready(None) => {
                progress.finish();
                Poll::Ready(None)
            }
            Poll::Pending => match timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(ClientBodyError::Timeout)))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Streamed { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Streamed { body, .. } => body.size_hint(),
        }
    }
}

/// Everything recorded when a response completes.
pub(crate) struct Completion {
    /// The client connection (its state, metrics, listener).
    pub ctx: Arc<ConnCtx>,
    pub started: Instant,
    pub method: Method,
    pub uri: Uri,
    pub host: String,
    pub status: StatusCode,
    pub route: Option<Arc<CompiledRoute>>,
    pub backend: Option<(SocketAddr, Arc<str>)>,
    pub in_flight: Option<InFlight>,
    pub bytes: u64,
    /// The request id (empty without `[request_id]`).
    pub request_id: String,
    /// The request's valid `traceparent`, for the access log.
    pub traceparent: Option<Box<str>>,
}

impl Drop for Completion {
    fn drop(&mut self) {
        let ctx = &*self.ctx;
        let finished = Finished {
            listener: &ctx.listener,
            client: ctx.peer,
            route: self.route.as_ref(),
            backend: self.backend.as_ref().map(|b| &b.1),
            status: self.status,
            method: self.method.as_str(),
            host: &self.host,
            path: self.uri.path(),
            elapsed: self.started.elapsed(),
            bytes: self.bytes,
            request_id: &self.request_id,
            traceparent: self.traceparent.as_deref().unwrap_or(""),
        };
        finished.record(&ctx.plane.metrics, &ctx.counters);
        self.in_flight.take();
        ctx.state.request_finished();
    }
}

/// The response body sent to the client.
pub(crate) struct RespBody {
    inner: Either<Full<Bytes>, Incoming>,
    done: Option<Box<Completion>>,
}

impl RespBody {
    /// A short local body (errors, redirects).
    pub fn local(bytes: Bytes, done: Box<Completion>) -> RespBody {
        RespBody { inner: Either::Left(Full::new(bytes)), done: Some(done) }
    }

    /// A backend's body.
    pub fn upstream(body: Incoming, done: Box<Completion>) -> RespBody {
        RespBody { inner: Either::Right(body), done: Some(done) }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(d), Some(data)) = (this.done.as_mut(), frame.data_ref()) {
                    d.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                this.done.take();
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
