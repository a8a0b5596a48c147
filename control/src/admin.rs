//! The admin HTTP API: `/metrics`, `/healthz`, `/v1/state`, `/v1/config/validate`, `/v1/reload`, `/v1/drain`,
//! `/v1/upgrade`, and the live status page `/status` ([`crate::statuspage`]).
//!
//! Served on TCP (loopback by default) and, when `[admin] socket` is set, on a Unix socket created with mode
//! 0600. Over TCP, reading endpoints are open without a token on loopback unless one is configured (then every
//! endpoint but `/healthz` needs `Authorization: Bearer <token>`, compared in constant time); endpoints that
//! change something (every method but GET/HEAD, `/v1/config/validate` aside) need the token always and are
//! refused over TCP when none is configured. The Unix socket serves everything: its file mode is the access
//! control. The token is accepted as `Authorization: Bearer <token>`, or as the password of HTTP Basic
//! authentication (any user name) so that a browser can open the status page: a 401 offers both. Each listener
//! closes connections that do not send a request head within `[admin] header_read_timeout` and refuses
//! connections beyond `[admin] max_connections`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use padis_model::handover::{self, Registration, Tag};
use padis_model::{parse_config, AdminConfig, Secret};
use prometheus::{Encoder, IntCounterVec, Opts, Registry, TextEncoder};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

use crate::config_source::{self, ConfigOrigin};
use crate::reconcile::Reconciler;

/// An action started by `POST /v1/drain` (withdraw routes before maintenance).
pub type DrainFn = Arc<dyn Fn() + Send + Sync>;

/// Registries gathered by `/metrics` besides the main one (e.g. the running Marathon source's, which is
/// replaced when the source restarts).
pub type ExtraRegistries = Arc<Mutex<BTreeMap<String, Registry>>>;

/// Everything the admin API reads.
#[derive(Clone)]
pub struct AdminState {
    /// The reconciler (snapshot, last reload outcome, sources).
    pub reconciler: Arc<Mutex<Reconciler>>,
    /// Where the config came from (for `/v1/reload` and relative paths in `/v1/config/validate`).
    pub origin: ConfigOrigin,
    /// Metrics registry.
    pub registry: Registry,
    /// More registries gathered by `/metrics`, by name.
    pub extra_registries: ExtraRegistries,
    /// Reports of data planes and sources, by name.
    pub reports: crate::planes::Reports,
    /// What `POST /v1/drain` does, if anything announces routes.
    pub drain: Arc<Mutex<Option<DrainFn>>>,
    /// Where `POST /v1/upgrade` asks the daemon to upgrade (see [`crate::upgrade`]).
    pub upgrade: Option<tokio::sync::mpsc::Sender<UpgradeReply>>,
}

/// Where the daemon answers an upgrade request: the new process's handover, or why there was none.
pub type UpgradeReply = tokio::sync::oneshot::Sender<Result<crate::upgrade::Handover, String>>;

const MAX_BODY: usize = 4 << 20;

/// Why the admin API could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The TCP address cannot be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The Unix socket cannot be created.
    #[error("socket {}: {source}", path.display())]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another process answers on the socket path.
    #[error("socket {}: another process is listening on it", path.display())]
    SocketInUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something that is not a socket is in the way.
    #[error("socket {}: exists and is not a socket; not replaced", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The admin metrics cannot be registered.
    #[error("admin metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The admin listeners, bound at start (a failure to bind is fatal).
pub struct AdminListeners {
    tcp: TcpListener,
    unix: Option<(UnixListener, PathBuf)>,
    refused: IntCounterVec,
    /// The sockets' places in the upgrade registry.
    handover: Vec<Registration>,
}

/// How a request reached the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP: the token rules apply.
    Tcp,
    /// The Unix socket (mode 0600): trusted.
    Unix,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Unix => "unix",
        }
    }
}

/// Binds the admin TCP listener and, when configured, the Unix socket; registers the admin metrics.
pub async fn bind(cfg: &AdminConfig, registry: &Registry) -> Result<AdminListeners, AdminError> {
    let refused = IntCounterVec::new(
        Opts::new("padis_admin_connections_refused_total", "Admin connections closed at once: over max_connections"),
        &["transport"],
    )?;
    registry.register(Box::new(refused.clone()))?;
    let bind_err = |source| AdminError::Bind { addr: cfg.listen, source };
    // Sockets handed over by the process this one replaces (an upgrade) are taken first.
    let tcp_tag = Tag::new("admin-tcp", cfg.listen, "");
    let tcp = match handover::take(&tcp_tag) {
        Some(fd) => {
            let l = std::net::TcpListener::from(fd);
            l.set_nonblocking(true).map_err(bind_err)?;
            TcpListener::from_std(l).map_err(bind_err)?
        }
        None => TcpListener::bind(cfg.listen).await.map_err(bind_err)?,
    };
    let mut handover = vec![handover::register(tcp_tag, &tcp).map_err(bind_err)?];
    let unix = match &cfg.socket {
        Some(p) => {
            let sock_err = |source| AdminError::Socket { path: p.clone(), source };
            let tag = Tag::new("admin-unix", p.display(), "");
            let l = match handover::take(&tag) {
                Some(fd) => {
                    let l = std::os::unix::net::UnixListener::from(fd);
                    l.set_nonblocking(true).map_err(sock_err)?;
                    UnixListener::from_std(l).map_err(sock_err)?
                }
                None => bind_unix(p)?,
            };
            handover.push(handover::register(tag, &l).map_err(sock_err)?);
            Some((l, p.clone()))
        }
        None => None,
    };
    Ok(AdminListeners { tcp, unix, refused, handover })
}

/// Creates the Unix socket with mode 0600 from the start: bound under a temporary name, its mode set, then
/// renamed into place, so no one can connect while it is more open. A stale socket (nobody listening) is
/// replaced; a live one or any other file is an error.
fn bind_unix(path: &Path) -> Result<UnixListener, AdminError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let err = |source| AdminError::Socket { path: path.to_path_buf(), source };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(AdminError::SocketInUse { path: path.to_path_buf() });
            }
            std::fs::remove_file(path).map_err(err)?;
        }
        Ok(_) => return Err(AdminError::NotASocket { path: path.to_path_buf() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "admin.sock".into());
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(err)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(listener)
}

/// Serves the admin API on its listeners until `shutdown`; removes the Unix socket at the end, unless an
/// upgrade handed it to the new process (`handed_over`).
pub async fn serve(
    listeners: AdminListeners,
    state: AdminState,
    shutdown: CancellationToken,
    handed_over: Arc<AtomicBool>,
) {
    let AdminListeners { tcp, unix, refused, handover: _handover } = listeners;
    let unix_task = unix.map(|(l, path)| {
        let (state, shutdown, refused) = (state.clone(), shutdown.clone(), refused.clone());
        tokio::spawn(async move {
            accept_loop(|| async { l.accept().await.map(|(s, _)| s) }, Transport::Unix, state, shutdown, refused).await;
            if !handed_over.load(Ordering::Acquire) {
                let _ = std::fs::remove_file(&path);
            }
        })
    });
    accept_loop(|| async { tcp.accept().await.map(|(s, _)| s) }, Transport::Tcp, state, shutdown, refused).await;
    if let Some(t) = unix_task {
        let _ = t.await;
    }
}

/// Accepts connections of one transport and serves each (HTTP/1.1) on its own task, within the limits.
async fn accept_loop<S, F, Fut>(
    accept: F,
    transport: Transport,
    state: AdminState,
    shutdown: CancellationToken,
    refused: IntCounterVec,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<S>>,
{
    let active = Arc::new(AtomicUsize::new(0));
    let mut last_refusal_log: Option<Instant> = None;
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, transport = transport.label(), "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admin = state.reconciler.lock().unwrap_or_else(|p| p.into_inner()).store().load().state.admin.clone();
        if active.load(Ordering::Relaxed) >= admin.max_connections {
            refused.with_label_values(&[transport.label()]).inc();
            if last_refusal_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                last_refusal_log = Some(Instant::now());
                tracing::warn!(
                    transport = transport.label(),
                    max_connections = admin.max_connections,
                    "admin connection refused: too many open (counted in padis_admin_connections_refused_total)"
                );
            }
            drop(stream);
            continue;
        }
        active.fetch_add(1, Ordering::Relaxed);
        let guard = ActiveGuard(active.clone());
        let state = state.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(req, state, transport).await) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(admin.header_read_timeout);
            let conn = http.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                }
            }
        });
    }
}

/// Counts an open admin connection until dropped.
struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn json_reply(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    reply(status, "application/json", body)
}

/// Whether the request carries the token: `Authorization: Bearer <token>`, or `Basic` with the token as the
/// password (browsers, for the status page). Compared in constant time.
fn bearer_matches(req: &Request<Incoming>, token: &Secret) -> bool {
    use base64::Engine;
    let Some(v) = req.headers().get(header::AUTHORIZATION) else { return false };
    if let Some(given) = v.as_bytes().strip_prefix(b"Bearer ") {
        return token.matches(given);
    }
    let Some(encoded) = v.as_bytes().strip_prefix(b"Basic ") else { return false };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else { return false };
    let decoded = zeroize::Zeroizing::new(decoded);
    match decoded.iter().position(|&b| b == b':') {
        Some(i) => token.matches(&decoded[i + 1..]),
        None => false,
    }
}

/// Whether a request changes something: any method but GET/HEAD, except validating a posted config.
fn changes_state(method: &Method, path: &str) -> bool {
    !(method == Method::GET || method == Method::HEAD || (method == Method::POST && path == "/v1/config/validate"))
}

/// The access rule: `None` lets the request through, `Some` is the refusal.
fn access(req: &Request<Incoming>, token: Option<&Secret>, transport: Transport) -> Option<Response<Full<Bytes>>> {
    let path = req.uri().path();
    if transport == Transport::Unix || (path == "/healthz" && req.method() == Method::GET) {
        return None;
    }
    match token {
        Some(t) if bearer_matches(req, t) => None,
        Some(_) => {
            let mut r = reply(StatusCode::UNAUTHORIZED, "text/plain", "unauthorized\n");
            r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            // Browsers ask for Basic credentials: the token as the password opens the status page.
            r.headers_mut()
                .append(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Basic realm=\"padis admin\""));
            Some(r)
        }
        None if changes_state(req.method(), path) => Some(reply(
            StatusCode::FORBIDDEN,
            "text/plain",
            "this endpoint changes the running state: it needs [admin] token (or token_file) over TCP, \
             or the Unix socket [admin] socket\n",
        )),
        None => None,
    }
}

async fn handle(req: Request<Incoming>, state: AdminState, transport: Transport) -> Response<Full<Bytes>> {
    let snapshot = state.reconciler.lock().unwrap_or_else(|p| p.into_inner()).store().load();
    let path = req.uri().path().to_string();
    if let Some(refusal) = access(&req, snapshot.state.admin.token.as_ref(), transport) {
        return refusal;
    }
    if let Some(page) = crate::statuspage::serve(req.method(), &path) {
        return page;
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => {
            if snapshot.generation > 0 {
                reply(StatusCode::OK, "text/plain", "ok\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "no config loaded\n")
            }
        }
        (&Method::GET, "/metrics") => {
            let mut buf = Vec::new();
            let mut families = state.registry.gather();
            for r in state.extra_registries.lock().unwrap_or_else(|p| p.into_inner()).values() {
                families.extend(r.gather());
            }
            if !snapshot.state.admin.metrics_backend_label {
                families = crate::metrics::without_label(families, "backend");
            }
            match TextEncoder::new().encode(&families, &mut buf) {
                Ok(()) => reply(StatusCode::OK, "text/plain; version=0.0.4", buf),
                Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e}\n")),
            }
        }
        (&Method::GET, "/v1/state") => json_reply(StatusCode::OK, &state_json(&state)),
        (&Method::POST, "/v1/config/validate") => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return reply(StatusCode::PAYLOAD_TOO_LARGE, "text/plain", format!("{e}\n")),
            };
            let Ok(text) = std::str::from_utf8(&body) else {
                return reply(StatusCode::BAD_REQUEST, "text/plain", "config must be UTF-8\n");
            };
            let base: PathBuf = state.origin.base_dir();
            let text = text.to_string();
            let res = tokio::task::spawn_blocking(move || parse_config(&text, "request", &base)).await;
            match res {
                Ok(Ok(v)) => {
                    json_reply(StatusCode::OK, &json!({"valid": true, "summary": crate::summary::summary(&v.state)}))
                }
                Ok(Err(e)) => json_reply(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &json!({"valid": false, "errors": e.0.iter().map(|x| json!({
                        "line": x.line, "column": x.column, "field": x.field, "message": x.message,
                        "text": x.to_string(),
                    })).collect::<Vec<_>>()}),
                ),
                Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e}\n")),
            }
        }
        (&Method::POST, "/v1/reload") => {
            let origin = state.origin.clone();
            let r = state.reconciler.clone();
            let ok = tokio::task::spawn_blocking(move || config_source::reload(&origin, &r, "admin API"))
                .await
                .unwrap_or(false);
            let status = state.reconciler.lock().unwrap_or_else(|p| p.into_inner()).reload_status().clone();
            json_reply(if ok { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY }, &json!(status))
        }
        (&Method::POST, "/v1/drain") => {
            let drain = state.drain.lock().unwrap_or_else(|p| p.into_inner()).clone();
            match drain {
                Some(f) => {
                    f();
                    reply(StatusCode::ACCEPTED, "text/plain", "draining\n")
                }
                None => {
                    reply(StatusCode::CONFLICT, "text/plain", "nothing to drain: no route announcement configured\n")
                }
            }
        }
        (&Method::POST, "/v1/upgrade") => {
            let Some(tx) = state.upgrade.clone() else {
                return reply(StatusCode::CONFLICT, "text/plain", "this process cannot upgrade\n");
            };
            let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
            if tx.send(reply_tx).await.is_err() {
                return reply(StatusCode::CONFLICT, "text/plain", "this process is stopping\n");
            }
            match reply_rx.await {
                Ok(Ok(h)) => json_reply(
                    StatusCode::OK,
                    &json!({"upgraded": true, "old_pid": std::process::id(),
                    "new_pid": h.pid, "sockets": h.sockets, "taken": h.taken}),
                ),
                Ok(Err(e)) => json_reply(StatusCode::UNPROCESSABLE_ENTITY, &json!({"upgraded": false, "error": e})),
                Err(_) => reply(StatusCode::CONFLICT, "text/plain", "this process is stopping\n"),
            }
        }
        (
            _,
            "/healthz" | "/metrics" | "/v1/state" | "/v1/config/validate" | "/v1/reload" | "/v1/drain" | "/v1/upgrade",
        ) => reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "method not allowed\n"),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// The `/v1/state` document: the snapshot in force, the last reload, sources and each plane's report.
pub fn state_json(state: &AdminState) -> serde_json::Value {
    let (snapshot, reload, sources) = {
        let r = state.reconciler.lock().unwrap_or_else(|p| p.into_inner());
        let sources: BTreeMap<String, serde_json::Value> = r
            .sources()
            .iter()
            .map(|(k, c)| {
                let rejected = r.rejected(k);
                let problems = c.problems.as_array().map_or(0, Vec::len);
                // A source that reads fine but has items left out is not shown healthy.
                let health = match (c.status.ok, rejected.is_empty() && problems == 0) {
                    (false, _) => "failing",
                    (true, false) => "degraded",
                    (true, true) => "ok",
                };
                let v = json!({"health": health, "status": c.status, "problems": c.problems, "rejected": rejected});
                (k.clone(), v)
            })
            .collect();
        (r.store().load(), r.reload_status().clone(), sources)
    };
    let reports = state.reports.all();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "generation": snapshot.generation,
        "snapshot": &*snapshot,
        "restart_required":
            reload.restart_required.iter().map(|f| format!("restart required: {f}")).collect::<Vec<_>>(),
        "last_reload": reload,
        "sources": sources,
        "planes": reports,
    })
}
