//! The double's HTTP side: one hyper server per simulated Marathon instance.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio::task::AbortHandle;

use super::world::{fixtures, iso_now, patch};
use super::{lock, AppsOverride, Inner, NonLeader};

type Body = BoxBody<Bytes, std::io::Error>;

/// A running instance.
pub(crate) struct Member {
    pub(crate) addr: SocketAddr,
    tasks: Arc<std::sync::Mutex<Vec<AbortHandle>>>,
}

impl Member {
    /// Listens on `addr` (port 0: any) as instance `index`.
    pub(crate) async fn start(inner: Arc<Inner>, index: usize, addr: SocketAddr) -> Member {
        let listener = TcpListener::bind(addr).await.expect("bind the Marathon double");
        let addr = listener.local_addr().expect("local addr");
        let tasks: Arc<std::sync::Mutex<Vec<AbortHandle>>> = Arc::default();
        let conns = tasks.clone();
        let tls = lock(&inner.tls).clone().map(tokio_rustls::TlsAcceptor::from);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let inner = inner.clone();
                let conns2 = conns.clone();
                let tls = tls.clone();
                let h = tokio::spawn(async move {
                    match tls {
                        None => serve(stream, inner, index, conns2).await,
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                serve(s, inner, index, conns2).await;
                            }
                        }
                    }
                });
                let mut c = lock(&conns);
                c.retain(|t| !t.is_finished());
                c.push(h.abort_handle());
            }
        });
        lock(&tasks).push(accept.abort_handle());
        Member { addr, tasks }
    }

    /// Closes the listener and resets every connection.
    pub(crate) fn stop(&mut self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}

async fn serve<S>(io: S, inner: Arc<Inner>, index: usize, conns: Arc<std::sync::Mutex<Vec<AbortHandle>>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let inner = inner.clone();
        let conns = conns.clone();
        async move { Ok::<_, Infallible>(handle(inner, index, req, conns).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), svc).await;
}

fn full(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, ctype)
        .body(Full::new(body.into()).map_err(|e: Infallible| match e {}).boxed())
        .expect("response")
}

fn message(status: StatusCode, msg: &str) -> Response<Body> {
    full(status, "application/json", json!({ "message": msg }).to_string())
}

async fn handle(
    inner: Arc<Inner>,
    index: usize,
    req: Request<Incoming>,
    conns: Arc<std::sync::Mutex<Vec<AbortHandle>>>,
) -> Response<Body> {
    let auth = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    lock(&inner.auth_seen).push(auth.clone());
    let want = lock(&inner.auth).clone();
    if let Some(want) = want {
        if auth.as_deref() != Some(want.as_str()) {
            return message(StatusCode::UNAUTHORIZED, "Unauthorized");
        }
    }
    let leader = inner.leader.load(Ordering::SeqCst);
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    if index != leader && path != "/ping" {
        let mode = *lock(&inner.non_leader);
        match mode {
            NonLeader::Proxy => {}
            NonLeader::Unavailable => {
                return message(StatusCode::SERVICE_UNAVAILABLE, "Could not determine the current leader")
            }
            NonLeader::Redirect => {
                let addr = lock(&inner.members).get(leader).map(|m| m.addr);
                let Some(addr) = addr else { return message(StatusCode::SERVICE_UNAVAILABLE, "no leader") };
                let pq = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or(path.clone());
                return Response::builder()
                    .status(StatusCode::TEMPORARY_REDIRECT)
                    .header(
                        LOCATION,
                        format!("{}://{addr}{pq}", if lock(&inner.tls).is_some() { "https" } else { "http" }),
                    )
                    .body(Full::new(Bytes::new()).map_err(|e: Infallible| match e {}).boxed())
                    .expect("response");
            }
        }
    }
    let leader_addr = lock(&inner.members).get(leader).map(|m| m.addr.to_string()).unwrap_or_default();
    match path.as_str() {
        "/ping" => full(StatusCode::OK, "text/plain", "pong"),
        "/v2/leader" => full(StatusCode::OK, "application/json", json!({ "leader": leader_addr }).to_string()),
        "/v2/info" => {
            let v = patch(Some(fixtures::INFO), json!({ "leader": leader_addr, "elected": index == leader }));
            full(StatusCode::OK, "application/json", v.to_string())
        }
        "/v2/apps" => {
            inner.apps_requests.fetch_add(1, Ordering::SeqCst);
            let o = lock(&inner.apps_override).clone();
            let with_tasks = query.split('&').any(|kv| kv == "embed=apps.tasks" || kv == "embed=app.tasks");
            match o {
                Some(AppsOverride::Body(b)) => full(StatusCode::OK, "application/json", b),
                Some(AppsOverride::Status(s)) => {
                    message(StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), "scripted error")
                }
                Some(AppsOverride::Delay(d)) => {
                    // State as of the request, answered late: changes made meanwhile are not in it.
                    let body = lock(&inner.world).render(with_tasks);
                    tokio::time::sleep(d).await;
                    full(StatusCode::OK, "application/json", body)
                }
                None => {
                    let body = lock(&inner.world).render(with_tasks);
                    full(StatusCode::OK, "application/json", body)
                }
            }
        }
        "/v2/events" => events(inner, &query, conns),
        _ => message(StatusCode::NOT_FOUND, "Not found"),
    }
}

/// `GET /v2/events`: SSE; `event_type=` parameters filter (none: everything).
fn events(inner: Arc<Inner>, query: &str, conns: Arc<std::sync::Mutex<Vec<AbortHandle>>>) -> Response<Body> {
    let filter: Vec<String> =
        query.split('&').filter_map(|kv| kv.strip_prefix("event_type=")).map(str::to_string).collect();
    let mut bus = inner.bus.subscribe();
    let mut cut = inner.cut.subscribe();
    cut.borrow_and_update();
    inner.stream_connections.fetch_add(1, Ordering::SeqCst);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(256);
    // Marathon tells every subscriber that one attached.
    inner.emit(vec![(
        "event_stream_attached".into(),
        patch(
            fixtures::event("event_stream_attached"),
            json!({ "remoteAddress": "127.0.0.1", "timestamp": iso_now() }),
        ),
    )]);
    let fwd = tokio::spawn(async move {
        loop {
            tokio::select! {
                r = bus.recv() => match r {
                    Ok(f) => {
                        let wanted = match &f.kind {
                            Some(k) => filter.is_empty() || filter.iter().any(|x| x == k),
                            None => true,
                        };
                        if wanted && tx.send(Ok(Frame::data(f.bytes))).await.is_err() {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.send(Err(std::io::Error::other("slow consumer dropped"))).await;
                        break;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = cut.changed() => {
                    let _ = tx.send(Err(std::io::Error::other("stream cut"))).await;
                    break;
                }
                _ = tx.closed() => break,
            }
        }
    });
    lock(&conns).push(fwd.abort_handle());
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "text/event-stream")
        .header(CACHE_CONTROL, "no-cache, no-store, must-revalidate")
        .body(StreamBody::new(stream).boxed())
        .expect("response")
}
