//! Bodies: what is sent to backends (buffered for retries, or streamed with the size limit), and the response
//! body that, when finished or dropped, records metrics, the access log and releases the in-flight slot.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, StatusCode, Uri};
use http_body_util::{Either, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use padis_balance::InFlight;

use crate::io::ConnState;
use crate::metrics::Metrics;
use crate::routes::CompiledRoute;

/// Request body towards a backend: the client's, streamed, with the body size limit.
pub(crate) type UpstreamBody = Limited<Incoming>;

/// Everything recorded when a response completes.
pub(crate) struct Completion {
    pub conn: Arc<ConnState>,
    pub metrics: Arc<Metrics>,
    pub listener: Arc<str>,
    pub started: Instant,
    pub method: Method,
    pub uri: Uri,
    pub host: String,
    pub status: StatusCode,
    pub route: Option<Arc<CompiledRoute>>,
    pub backend: Option<(SocketAddr, Arc<str>)>,
    pub in_flight: Option<InFlight>,
    pub bytes: u64,
}

impl Drop for Completion {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        let route = self.route.as_ref().map(|r| &*r.name).unwrap_or("");
        let backend = self.backend.as_ref().map(|b| &*b.1).unwrap_or("");
        self.metrics
            .requests
            .with_label_values(&[&*self.listener, route, backend, self.status.as_str()])
            .inc();
        if let Some(r) = &self.route {
            r.duration.observe(elapsed.as_secs_f64());
        }
        tracing::info!(
            target: "padis::access",
            listener = &*self.listener,
            method = self.method.as_str(),
            host = self.host.as_str(),
            path = self.uri.path(),
            status = self.status.as_u16(),
            route,
            backend,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            bytes = self.bytes,
        );
        self.in_flight.take();
        self.conn.request_finished();
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
