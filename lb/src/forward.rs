//! The request path: route, pick a backend, rewrite headers, forward (with retries on connect failures and the
//! group's timeout), stream the answer back, tunnel upgrades. Every local answer is a short text body.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::LengthLimitError;
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use padis_balance::SelectCtx;

use crate::body::{Completion, RespBody, UpstreamBody};
use crate::headers;
use crate::io::ConnState;
use crate::metrics::RequestCounters;
use crate::plane::PlaneShared;
use crate::routes::normalise_host;
use crate::upstream::LocalConns;

/// Per-connection context of the request handler.
pub(crate) struct ConnCtx {
    pub plane: Arc<PlaneShared>,
    pub listener: Arc<str>,
    pub peer: SocketAddr,
    pub https: bool,
    pub state: Arc<ConnState>,
    /// Forwarding-header values of this client.
    pub id: headers::ClientId,
    /// The backend connections this client connection drives.
    pub local: LocalConns,
    /// The request counters it used lately.
    pub counters: RequestCounters,
}

fn local(status: StatusCode, msg: &'static str, mut done: Box<Completion>) -> Response<RespBody> {
    done.status = status;
    let mut r = Response::new(RespBody::local(Bytes::from_static(msg.as_bytes()), done));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// Whether a request with this method may be sent again (RFC 9110 §9.2.2).
pub(crate) fn idempotent(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE")
}

fn body_too_large(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Handles one client request.
pub(crate) async fn handle(ctx: Arc<ConnCtx>, req: Request<Incoming>) -> Result<Response<RespBody>, Infallible> {
    ctx.state.request_started();
    let done = Box::new(Completion {
        ctx: ctx.clone(),
        started: Instant::now(),
        method: req.method().clone(),
        uri: req.uri().clone(),
        host: String::new(),
        // Until an answer is chosen: a request dropped before that (its client went away) counts as 499.
        status: StatusCode::from_u16(crate::metrics::CLIENT_CLOSED).unwrap_or(StatusCode::OK),
        route: None,
        backend: None,
        in_flight: None,
        bytes: 0,
    });
    Ok(proxy(&ctx, req, done).await)
}

async fn proxy(ctx: &ConnCtx, mut req: Request<Incoming>, mut done: Box<Completion>) -> Response<RespBody> {
    let rt = ctx.plane.runtime.load_full();
    // Host: the authority (h2, absolute-form) or the single Host header.
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return local(StatusCode::BAD_REQUEST, "bad request: several Host headers\n", done);
    }
    let raw_host = match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => match host_header.map(|h| h.to_str()) {
            Some(Ok(h)) => Some(h),
            Some(Err(_)) => return local(StatusCode::BAD_REQUEST, "bad request: invalid Host\n", done),
            None => None,
        },
    };
    match raw_host {
        Some(h) if normalise_host(h, &mut done.host).is_none() => {
            return local(StatusCode::BAD_REQUEST, "bad request: invalid Host\n", done);
        }
        Some(_) => {}
        None if req.version() == Version::HTTP_11 => {
            return local(StatusCode::BAD_REQUEST, "bad request: missing Host\n", done)
        }
        None => {}
    }
    if req.headers().contains_key(header::TRANSFER_ENCODING) && req.headers().contains_key(header::CONTENT_LENGTH) {
        return local(StatusCode::BAD_REQUEST, "bad request: both Content-Length and Transfer-Encoding\n", done);
    }
    let Some(lrt) = rt.listeners.get(&*ctx.listener) else {
        return local(StatusCode::SERVICE_UNAVAILABLE, "listener removed\n", done);
    };
    let Some(route) = lrt.routes.lookup(&done.host, req.uri().path()) else {
        return local(StatusCode::NOT_FOUND, "no route\n", done);
    };
    done.route = Some(route.clone());
    if let (Some(port), false) = (route.redirect_https, ctx.https) {
        let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let location = if port == 443 {
            format!("https://{}{pq}", done.host)
        } else {
            format!("https://{}:{port}{pq}", done.host)
        };
        let mut r = local(StatusCode::PERMANENT_REDIRECT, "redirecting to https\n", done);
        if let Ok(v) = HeaderValue::from_str(&location) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return r;
    }
    let max_body = match rt.limits.max_body_bytes {
        0 => u64::MAX,
        n => n,
    };
    if req.body().size_hint().exact().is_some_and(|n| n > max_body) {
        return local(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n", done);
    }
    let Some(group) = route.pick_group() else {
        return local(StatusCode::SERVICE_UNAVAILABLE, "no backend group\n", done);
    };
    let (Some(balancer), Some(upstream)) = (rt.balancers.group(group), rt.upstreams.get(group)) else {
        return local(StatusCode::SERVICE_UNAVAILABLE, "no usable backend\n", done);
    };

    let upgrade = req.version() == Version::HTTP_11 && headers::is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let client_version = req.version();
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    if !parts.headers.contains_key(header::HOST) {
        if let Some(a) = parts.uri.authority() {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                parts.headers.insert(header::HOST, v);
            }
        }
    }
    headers::add_forwarded(&mut parts.headers, &ctx.id);
    let retryable = idempotent(parts.method.as_str());

    // A connection first, then the request: a connect failure leaves the request untouched for the next backend.
    let select = SelectCtx { client_ip: ctx.peer.ip().to_canonical(), headers: &parts.headers };
    let mut exclude: Vec<SocketAddr> = Vec::new();
    let (pick, conn) = loop {
        let Some(pick) = balancer.select(&select, &exclude) else {
            return if exclude.is_empty() {
                local(StatusCode::SERVICE_UNAVAILABLE, "no usable backend\n", done)
            } else {
                local(StatusCode::BAD_GATEWAY, "backend connection failed\n", done)
            };
        };
        let addr = pick.backend.addr;
        let label = rt.backend_labels.get(&addr).cloned().unwrap_or_else(|| addr.to_string().into());
        done.backend = Some((addr, label));
        match upstream.acquire(&ctx.local, addr, upgrade).await {
            Ok(c) => break (pick, c),
            Err(e) => {
                pick.backend.health.report_failure();
                let backend = done.backend.as_ref().map(|b| &*b.1).unwrap_or("");
                ctx.plane.metrics.connect_errors.with_label_values(&[&*upstream.group, backend]).inc();
                tracing::debug!(backend = %addr, error = %e, "backend connect failed");
                if !retryable || exclude.len() >= upstream.retries as usize {
                    return local(StatusCode::BAD_GATEWAY, "backend connection failed\n", done);
                }
                exclude.push(addr);
            }
        }
    };
    let addr = pick.backend.addr;
    let in_flight = pick.backend.begin();
    let h2_authority = if upstream.h2 { done.backend.as_ref().map(|b| &*b.1) } else { None };
    let uri = match target_uri(&parts.uri, h2_authority, upstream.https) {
        Some(u) => u,
        None => return local(StatusCode::BAD_REQUEST, "bad request: invalid target\n", done),
    };
    parts.uri = uri;
    parts.version = if upstream.h2 { Version::HTTP_2 } else { Version::HTTP_11 };
    let out = Request::from_parts(parts, UpstreamBody::new(body, usize::try_from(max_body).unwrap_or(usize::MAX)));
    match tokio::time::timeout(upstream.request_timeout, conn.send(&ctx.local, addr, out, retryable)).await {
        Ok(Ok(mut resp)) => {
            if resp.status().is_server_error() {
                pick.backend.health.report_failure();
            } else {
                pick.backend.health.report_success();
            }
            let status = resp.status();
            done.status = status;
            done.in_flight = Some(in_flight);
            let switching = status == StatusCode::SWITCHING_PROTOCOLS;
            if switching {
                if let Some(client) = client_upgrade {
                    ctx.state.upgraded.store(true, std::sync::atomic::Ordering::Relaxed);
                    let upstream_up = hyper::upgrade::on(&mut resp);
                    ctx.plane.tasks.spawn(tunnel(client, upstream_up, ctx.plane.hard.clone()));
                }
            }
            headers::strip_hop_by_hop(resp.headers_mut(), switching);
            if let Some(cookie) = pick.set_cookie {
                resp.headers_mut().append(header::SET_COOKIE, cookie);
            }
            *resp.version_mut() = client_version;
            let (p, b) = resp.into_parts();
            Response::from_parts(p, RespBody::upstream(b, done))
        }
        Ok(Err(e)) => {
            if body_too_large(&e) {
                return local(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n", done);
            }
            pick.backend.health.report_failure();
            tracing::debug!(backend = %addr, error = %e, "backend request failed");
            local(StatusCode::BAD_GATEWAY, "bad gateway\n", done)
        }
        Err(_) => {
            pick.backend.health.report_failure();
            local(StatusCode::GATEWAY_TIMEOUT, "gateway timeout\n", done)
        }
    }
}

/// The request target towards the backend: origin-form for HTTP/1.1 (the client's own URI when it already is),
/// absolute-form `scheme://backend/path?query` for HTTP/2 (`h2_authority`).
fn target_uri(uri: &Uri, h2_authority: Option<&str>, https: bool) -> Option<Uri> {
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    match h2_authority {
        Some(authority) => {
            let scheme = if https { "https" } else { "http" };
            let mut target = String::with_capacity(scheme.len() + 3 + authority.len() + pq.len());
            target.push_str(scheme);
            target.push_str("://");
            target.push_str(authority);
            target.push_str(pq);
            Uri::try_from(target).ok()
        }
        None if uri.scheme().is_none() && uri.authority().is_none() && uri.path_and_query().is_some() => {
            Some(uri.clone())
        }
        None => Uri::try_from(pq).ok(),
    }
}

/// Copies bytes both ways between an upgraded client connection and the upgraded backend connection, until
/// either side closes or the shutdown grace is over (`hard`).
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    hard: tokio_util::sync::CancellationToken,
) {
    let run = async {
        match tokio::try_join!(client, upstream) {
            Ok((c, u)) => {
                let mut c = TokioIo::new(c);
                let mut u = TokioIo::new(u);
                if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                    tracing::debug!(error = %e, "upgraded connection ended with an error");
                }
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    };
    tokio::select! {
        _ = run => {}
        _ = hard.cancelled() => tracing::debug!("upgraded connection closed at the end of the shutdown grace"),
    }
}
