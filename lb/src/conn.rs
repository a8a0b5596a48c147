//! One client connection: optional TLS handshake (bounded by the header timeout), then HTTP/1.1 or HTTP/2
//! (ALPN, or h2c prior knowledge) with the client limits, the keep-alive idle timeout and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use padis_model::Limits;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::admission::ClientSlot;
use crate::forward::{self, ConnCtx};
use crate::io::{ConnState, IoLimits, TimedIo};
use crate::metrics::RequestCounters;
use crate::plane::PlaneShared;
use crate::relay::Relay;
use crate::streams::{LocalExec, LocalStreams};
use crate::upstream::LocalConns;

/// HTTP/2 streams a client may reset before hyper has accepted them (h2's default), then GOAWAY.
const H2_MAX_PENDING_RESETS: usize = 20;
/// HTTP/2 streams of a client that may fail locally (reset by the server) over the connection's life, then GOAWAY.
const H2_MAX_LOCAL_RESETS: usize = 1024;
/// `padis_http_connections_cut_total` reason: a graceful close was not over within `limits.close_grace`.
const CUT_CLOSE_GRACE: &str = "close_grace";

/// Which HTTP versions a connection may speak.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Auto,
    H1,
    H2,
}

/// Counts an open client connection (the listener's count for `max_connections`, the
/// `padis_active_connections` gauge and its client address's count) until dropped.
pub(crate) struct ActiveGuard {
    count: Arc<AtomicUsize>,
    gauge: prometheus::IntGauge,
    /// Its client address's admission (none if not counted).
    pub client: Option<Box<ClientSlot>>,
}

impl ActiveGuard {
    /// Counts a connection of `listener`, whose count `count` the accept loop already raised and whose client
    /// address `client` counts.
    pub fn new(
        plane: &PlaneShared,
        listener: &str,
        count: Arc<AtomicUsize>,
        client: Option<Box<ClientSlot>>,
    ) -> ActiveGuard {
        let gauge = plane.metrics.active_connections.with_label_values(&[listener]);
        gauge.inc();
        ActiveGuard { count, gauge, client }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

/// A client connection handed over by a listener.
pub(crate) struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub listener: Arc<str>,
    pub count: Arc<AtomicUsize>,
    /// Its client address's admission.
    pub client: Option<Box<ClientSlot>>,
}

/// What a TLS connection negotiated that requests are checked against.
pub(crate) struct TlsSession {
    /// The server name the client asked for (lowercase, no trailing dot).
    pub sni: Option<Box<str>>,
    /// The verified subject of the client's certificate (`crate::tls::client_subject`).
    pub subject: Option<Arc<str>>,
    /// The client's verified certificate, on a connection whose config asked for one.
    pub cert: Option<crate::headers::ClientCert>,
}

/// Serves one accepted connection until it ends, `stop` (graceful) or `hard` (immediate).
pub(crate) async fn serve(plane: Arc<PlaneShared>, a: Accepted, stop: CancellationToken, hard: CancellationToken) {
    let guard = ActiveGuard::new(&plane, &a.listener, a.count.clone(), a.client);
    let _ = a.stream.set_nodelay(true);
    let (limits, tls) = {
        let rt = plane.runtime.load();
        let Some(l) = rt.listeners.get(&*a.listener) else { return };
        if l.tls_required && l.tls.is_none() {
            return;
        }
        (rt.limits.clone(), Configs::of(l))
    };
    match tls {
        None => {
            let (peer, local) = (a.peer, a.local);
            serve_http(plane, a.stream, guard, Mode::Auto, None, peer, local, a.listener, limits, stop, hard).await
        }
        Some(cfg) => handshake(plane, a.stream, cfg, guard, a.peer, a.local, a.listener, limits, stop, hard).await,
    }
}

/// A TLS listener's server config, and its configs by server name when it asks for client certificates.
pub(crate) struct Configs {
    cfg: Arc<rustls::ServerConfig>,
    auth: Option<Arc<crate::tls::ClientAuthConfigs>>,
}

impl Configs {
    /// The TLS configs of a listener that terminates TLS (none if it does not, or if its config could not be
    /// built: see `tls_required`).
    pub fn of(l: &crate::runtime::ListenerRt) -> Option<Configs> {
        l.tls.as_ref().map(|(cfg, _)| Configs { cfg: cfg.clone(), auth: l.client_auth.clone() })
    }
}

/// The TLS handshake of an accepted connection, bounded by `timeout` and counted (`padis_tls_handshakes_total`
/// by version, or `padis_tls_handshake_errors_total`); `None` when it failed or `stop` came first.
pub(crate) async fn tls_handshake(
    plane: &PlaneShared,
    stream: TcpStream,
    cfg: Configs,
    peer: SocketAddr,
    listener: &str,
    timeout: Duration,
    stop: &CancellationToken,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, Option<http::HeaderName>)> {
    let handshake = tokio::time::timeout(timeout, accept_tls(stream, cfg));
    let res = tokio::select! {
        r = handshake => r,
        _ = stop.cancelled() => return None,
    };
    let done = match res {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(listener, peer = %peer, error = %e, "TLS handshake failed");
            plane.metrics.handshake_errors.with_label_values(&[listener]).inc();
            return None;
        }
        Err(_) => {
            tracing::debug!(listener, peer = %peer, "TLS handshake timed out");
            plane.metrics.handshake_errors.with_label_values(&[listener]).inc();
            return None;
        }
    };
    let version = match done.0.get_ref().1.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "other",
    };
    plane.metrics.handshakes.with_label_values(&[listener, version]).inc();
    Some(done)
}

/// The TLS handshake with the listener's config, or, on a listener with client authentication, with the config
/// its ClientHello's server name chooses (and the header its verified subject goes in).
async fn accept_tls(
    stream: TcpStream,
    tls: Configs,
) -> std::io::Result<(tokio_rustls::server::TlsStream<TcpStream>, Option<http::HeaderName>)> {
    let Some(auth) = tls.auth else {
        return Ok((tokio_rustls::TlsAcceptor::from(tls.cfg).accept(stream).await?, None));
    };
    let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
    let name = start.client_hello().server_name().map(|n| n.trim_end_matches('.').to_ascii_lowercase());
    let m = auth.pick(name.as_deref());
    let header = m.header.clone();
    Ok((start.into_stream(m.config.clone()).await?, header))
}

/// The TLS handshake of a connection of a TLS listener (bounded by the header timeout), then HTTP by its ALPN.
#[allow(clippy::too_many_arguments)]
async fn handshake(
    plane: Arc<PlaneShared>,
    stream: TcpStream,
    cfg: Configs,
    guard: ActiveGuard,
    peer: SocketAddr,
    local: SocketAddr,
    listener: Arc<str>,
    limits: Limits,
    stop: CancellationToken,
    hard: CancellationToken,
) {
    let done = tls_handshake(&plane, stream, cfg, peer, &listener, limits.header_read_timeout, &stop).await;
    let Some((stream, subject_header)) = done else { return };
    let session = stream.get_ref().1;
    let mode = match session.alpn_protocol() {
        Some(b"h2") => Mode::H2,
        Some(b"http/1.1") => Mode::H1,
        _ => Mode::Auto,
    };
    let sni = session.server_name().map(|n| n.trim_end_matches('.').to_ascii_lowercase().into_boxed_str());
    let subject = crate::tls::client_subject(session);
    // The subject header of the configuration the handshake used (none: no certificate asked for).
    let cert = subject_header.zip(subject.as_deref()).and_then(|(header, s)| {
        Some(crate::headers::ClientCert { header, subject: http::HeaderValue::from_str(s).ok()? })
    });
    let tls = Some(TlsSession { sni, subject, cert });
    serve_http(plane, stream, guard, mode, tls, peer, local, listener, limits, stop, hard).await
}

/// Serves a connection of a TLS listener the fast path hands over before its handshake (an h2 client, or one
/// whose first bytes are no ClientHello): the handshake here, then HTTP by its ALPN.
pub(crate) async fn serve_tls(
    plane: Arc<PlaneShared>,
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    listener: Arc<str>,
    guard: ActiveGuard,
    stop: CancellationToken,
) {
    let (limits, cfg) = {
        let rt = plane.runtime.load();
        let Some(l) = rt.listeners.get(&*listener) else { return };
        let Some((cfg, _)) = l.tls.clone() else { return };
        (rt.limits.clone(), Configs { cfg, auth: l.client_auth.clone() })
    };
    let hard = plane.hard.clone();
    handshake(plane, stream, cfg, guard, peer, local, listener, limits, stop, hard).await
}

/// Serves a TLS connection the fast path hands over after its handshake, with what it had decrypted and not
/// served: HTTP/1.1 (or h2 with prior knowledge when the client chose no ALPN protocol) from there.
pub(crate) async fn serve_tls_handoff(
    plane: Arc<PlaneShared>,
    io: crate::fast::TlsStream,
    peer: SocketAddr,
    local: SocketAddr,
    listener: Arc<str>,
    guard: ActiveGuard,
    stop: CancellationToken,
) {
    let limits = plane.runtime.load().limits.clone();
    let hard = plane.hard.clone();
    let mode = if io.alpn() == Some(b"http/1.1") { Mode::H1 } else { Mode::Auto };
    // The fast path never serves a listener that asks for client certificates: no subject header.
    let tls = Some(TlsSession { sni: io.sni(), subject: io.subject(), cert: None });
    serve_http(plane, io, guard, mode, tls, peer, local, listener, limits, stop, hard).await
}

/// Serves a plaintext connection the fast path hands over, with the bytes it had read (`prefix`): the hyper path
/// takes it from there, HTTP/1.1 or h2c, until it ends.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_handoff(
    plane: Arc<PlaneShared>,
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    listener: Arc<str>,
    guard: ActiveGuard,
    prefix: Vec<u8>,
    stop: CancellationToken,
) {
    let limits = plane.runtime.load().limits.clone();
    let hard = plane.hard.clone();
    // Reads give the bytes already read back first.
    let (read, write) = stream.into_split();
    let io = tokio::io::join(AsyncReadExt::chain(std::io::Cursor::new(prefix), read), write);
    serve_http(plane, io, guard, Mode::Auto, None, peer, local, listener, limits, stop, hard).await
}

#[allow(clippy::too_many_arguments)]
async fn serve_http<I>(
    plane: Arc<PlaneShared>,
    io: I,
    guard: ActiveGuard,
    mode: Mode,
    tls: Option<TlsSession>,
    peer: SocketAddr,
    local: SocketAddr,
    listener: Arc<str>,
    limits: Limits,
    stop: CancellationToken,
    hard: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let https = tls.is_some();
    let state = Arc::new(ConnState::new());
    // The guard goes with the I/O: an upgraded connection (WebSocket) stays counted until its tunnel ends.
    let io = TimedIo::new(io, state.clone(), IoLimits::of(&limits), mode == Mode::H2).holding(guard);
    let (sni, tls_subject, cert) = tls.map_or((None, None, None), |t| (t.sni, t.subject, t.cert));
    let id = crate::headers::ClientId::new(peer, local.port(), https).with_cert(cert);
    let ctx = Arc::new(ConnCtx {
        plane,
        listener,
        peer,
        https,
        sni,
        tls_subject,
        state: state.clone(),
        id,
        local: LocalConns::default(),
        counters: RequestCounters::default(),
    });
    let backends = ctx.clone();
    let svc = service_fn(move |req| forward::handle(ctx.clone(), req));
    // HTTP/2 request streams run in this task too (see `streams`).
    let exec = LocalExec::default();
    let mut streams = LocalStreams::new(exec.clone());
    let mut builder = auto::Builder::new(exec);
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        // A client that shuts its write side after its requests still gets its answers (as on the fast path).
        .half_close(true)
        // The head deadline is `TimedIo`'s (it answers 408); hyper's own would arm a timer for every request.
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // Rapid reset (CVE-2023-44487) and streams the client keeps making fail: GOAWAY past these.
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS);
    let builder = match mode {
        Mode::Auto => builder,
        Mode::H1 => builder.http1_only(),
        Mode::H2 => builder.http2_only(),
    };
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let idle = limits.client_idle_timeout.max(Duration::from_millis(100));
    // Once closing: when it started, and when to look again whether the grace is over.
    let mut closing: Option<Instant> = None;
    let mut close_check = Instant::now();
    // The client connection and its backend connections are polled together (see `relay`).
    let relay = Relay::new();
    loop {
        let mut wait = idle.saturating_sub(state.idle_for());
        if wait.is_zero() {
            wait = idle;
        }
        if let Some(since) = closing {
            // The grace is over: closed now if no request is in flight (an HTTP/2 client that never acknowledges
            // the GOAWAY's PING, or keeps sending PINGs), at the latest after the shutdown grace as well.
            let over = since.elapsed();
            if over >= limits.close_grace
                && (state.in_flight.load(Ordering::Acquire) == 0 || over >= limits.close_grace + limits.shutdown_grace)
            {
                tracing::debug!(peer = %peer, "closing grace over, closing the connection");
                let _ = state.cut.set(CUT_CLOSE_GRACE);
                break;
            }
            close_check = if over < limits.close_grace {
                since + limits.close_grace
            } else {
                Instant::now() + (limits.close_grace / 4).max(Duration::from_millis(50))
            };
        }
        relay.mark_all();
        let both = std::future::poll_fn(|cx| {
            relay.poll(
                cx,
                |cx| {
                    streams.poll(cx);
                    let _ = backends.local.poll_drive(cx);
                },
                |cx| conn.as_mut().poll(cx),
            )
        });
        tokio::select! {
            biased;
            r = both => {
                if let Err(e) = r {
                    tracing::debug!(peer = %peer, error = %e, "client connection ended with an error");
                }
                break;
            }
            _ = stop.cancelled(), if closing.is_none() => {
                closing = Some(Instant::now());
                conn.as_mut().graceful_shutdown();
            }
            _ = hard.cancelled() => break,
            _ = tokio::time::sleep(wait), if closing.is_none() => {
                if state.in_flight.load(Ordering::Acquire) == 0 && state.idle_for() >= idle {
                    closing = Some(Instant::now());
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = tokio::time::sleep_until(close_check.into()), if closing.is_some() => {}
        }
    }
    if let Some(reason) = state.cut.get() {
        backends.plane.metrics.cut.with_label_values(&[&*backends.listener, reason]).inc();
    }
    backends.local.release();
}
