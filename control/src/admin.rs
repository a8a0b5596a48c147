//! The admin HTTP API: `/metrics`, `/healthz`, `/v1/state`, `/v1/config/validate`, `/v1/reload`, `/v1/drain`.
//!
//! Bound to loopback by default; when a token is configured every endpoint but `/healthz` needs
//! `Authorization: Bearer <token>`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use padis_model::parse_config;
use prometheus::{Encoder, Registry, TextEncoder};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config_source::{self, ConfigOrigin};
use crate::reconcile::Reconciler;

/// A data plane's or source's view for `/v1/state` (its report as JSON).
pub type ReportFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// An action started by `POST /v1/drain` (withdraw routes before maintenance).
pub type DrainFn = Arc<dyn Fn() + Send + Sync>;

/// Everything the admin API reads.
#[derive(Clone)]
pub struct AdminState {
    /// The reconciler (snapshot, last reload outcome, sources).
    pub reconciler: Arc<Mutex<Reconciler>>,
    /// Where the config came from (for `/v1/reload` and relative paths in `/v1/config/validate`).
    pub origin: ConfigOrigin,
    /// Metrics registry.
    pub registry: Registry,
    /// Reports of data planes and sources, by name.
    pub reports: Arc<Mutex<BTreeMap<String, ReportFn>>>,
    /// What `POST /v1/drain` does, if anything announces routes.
    pub drain: Arc<Mutex<Option<DrainFn>>>,
}

const MAX_BODY: usize = 4 << 20;

/// Binds the admin listener (a failure to bind is fatal at start).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the admin API on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: CancellationToken) {
    let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let http = http.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(req, state).await) }
            });
            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
        });
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

fn authorized(req: &Request<Incoming>, token: Option<&str>) -> bool {
    let Some(token) = token.filter(|t| !t.is_empty()) else { return true };
    let Some(v) = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else { return false };
    match v.strip_prefix("Bearer ") {
        // Constant-time comparison: the token guards a network-facing API.
        Some(given) => given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0,
        None => false,
    }
}

async fn handle(req: Request<Incoming>, state: AdminState) -> Response<Full<Bytes>> {
    let snapshot = state.reconciler.lock().unwrap_or_else(|p| p.into_inner()).store().load();
    let path = req.uri().path().to_string();
    if path != "/healthz" && !authorized(&req, snapshot.state.admin.token.as_deref()) {
        return reply(StatusCode::UNAUTHORIZED, "text/plain", "unauthorized\n");
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
            match TextEncoder::new().encode(&state.registry.gather(), &mut buf) {
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
                Ok(Ok(v)) => json_reply(
                    StatusCode::OK,
                    &json!({"valid": true, "summary": crate::summary::summary(&v.state)}),
                ),
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
                None => reply(StatusCode::CONFLICT, "text/plain", "nothing to drain: no route announcement configured\n"),
            }
        }
        (_, "/healthz" | "/metrics" | "/v1/state" | "/v1/config/validate" | "/v1/reload" | "/v1/drain") => {
            reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "method not allowed\n")
        }
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
            .map(|(k, c)| (k.clone(), json!({"status": c.status, "problems": c.problems})))
            .collect();
        (r.store().load(), r.reload_status().clone(), sources)
    };
    let reports: BTreeMap<String, serde_json::Value> = state
        .reports
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(k, f)| (k.clone(), f()))
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "generation": snapshot.generation,
        "snapshot": &*snapshot,
        "last_reload": reload,
        "sources": sources,
        "planes": reports,
    })
}
