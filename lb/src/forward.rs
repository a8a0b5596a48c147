//! The request path: route, pick a backend, rewrite headers, forward (with retries on connect failures and the
//! group's timeout), stream the answer back, tunnel upgrades. Every local answer is a short text body.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use padis_balance::SelectCtx;

use crate::body::{BodyProgress, Completion, RespBody, UpstreamBody};
use crate::headers;
use crate::io::ConnState;
use crate::metrics::RequestCounters;
use crate::plane::PlaneShared;
use crate::policy::{self, Blame, Failure, Local};
use crate::upstream::{LocalConns, SendError};

/// Per-connection context of the request handler.
pub(crate) struct ConnCtx {
    pub plane: Arc<PlaneShared>,
    pub listener: Arc<str>,
    pub peer: SocketAddr,
    pub https: bool,
    /// The TLS server name the client asked for (lowercase, no trailing dot).
    pub sni: Option<Box<str>>,
    /// The verified subject of the client's certificate.
    pub tls_subject: Option<Arc<str>>,
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

/// The answer the policy chose; `close` when the request's body was left unread (HTTP/1.x): the connection
/// cannot carry another request (the fast path closes in the same case).
fn answer(l: Local, done: Box<Completion>, close: bool) -> Response<RespBody> {
    let mut r = local(l.status, l.msg, done);
    if close {
        r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(v) = l.location.and_then(|loc| HeaderValue::from_str(&loc).ok()) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    if let Some(v) = l.authenticate.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    if let Some(secs) = l.retry_after {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
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
        request_id: String::new(),
        traceparent: None,
    });
    Ok(proxy(&ctx, req, done).await)
}

/// What the variables of header rules expand to for a request of this connection with request id `id`.
fn vars<'a>(ctx: &'a ConnCtx, id: &'a str) -> policy::rules::Vars<'a> {
    policy::rules::Vars {
        client: ctx.peer,
        https: ctx.https,
        request_id: id,
        tls_subject: ctx.tls_subject.as_deref(),
        sni: ctx.sni.as_deref(),
    }
}

/// The head of `req` as the admission phase reads it.
fn head_of(req: &Request<Incoming>) -> policy::Head<'_> {
    let h = req.headers();
    let mut hosts = h.get_all(header::HOST).iter();
    let host = hosts.next().map(HeaderValue::as_bytes);
    policy::Head {
        authority: req.uri().authority().map(|a| a.as_str()),
        host_fields: usize::from(host.is_some()) + hosts.count(),
        host,
        target: req.uri().path_and_query().map_or("/", |p| p.as_str()),
        length_and_chunked: h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH),
        upgrade_with_body: (h.contains_key(header::UPGRADE) || headers::connection_has(h, "upgrade"))
            && (h.contains_key(header::TRANSFER_ENCODING)
                || h.get_all(header::CONTENT_LENGTH).iter().any(|v| v.as_bytes().iter().any(|&b| b != b'0'))),
    }
}

async fn proxy(ctx: &ConnCtx, mut req: Request<Incoming>, mut done: Box<Completion>) -> Response<RespBody> {
    let rt = ctx.plane.runtime.load_full();
    let unread = req.version() != Version::HTTP_2 && !req.body().is_end_stream();
    let client = ctx.peer.ip().to_canonical();
    done.traceparent = policy::identify(&rt, client, req.headers(), &mut done.request_id).map(Into::into);
    let head = head_of(&req);
    let admitted = match policy::admit(&head, &mut done.host) {
        Ok(a) => a,
        Err(l) => return answer(l, done, unread),
    };
    // The Host and target the backend receives: the authority and the normalised target.
    let host_value = admitted.rewrite_host.then(|| HeaderValue::from_str(admitted.host));
    let target = match (&admitted.target, req.uri().authority()) {
        (Cow::Borrowed(_), None) => None,
        (t, _) => Some(Uri::try_from(t.as_ref())),
    };
    let query = policy::RouteQuery {
        listener: &ctx.listener,
        host: &done.host,
        admitted: &admitted,
        https: ctx.https,
        sni: ctx.sni.as_deref(),
        client: ctx.peer.ip().to_canonical(),
        body_len: req.body().size_hint().exact(),
    };
    let routed = policy::route(&rt, &query, req.headers());
    let policy::Routed { route, balancer, upstream } = match routed {
        Ok(r) => r,
        Err((l, route)) => {
            done.route = route.cloned();
            return answer(l, done, unread);
        }
    };
    done.route = Some(route.clone());
    if let Err(l) = policy::limit_rate(&rt, route, ctx.peer.ip().to_canonical()) {
        return answer(l, done, unread);
    }
    // The route's path rewrite towards the backend (`proxypass_path`).
    let access_target = route.access.as_ref().map(|a| a.backend_target(&admitted.target)).and_then(|t| match t {
        Cow::Owned(t) => Some(Uri::try_from(t)),
        Cow::Borrowed(_) => None,
    });
    let target = access_target.or(target);
    match (host_value, target) {
        (Some(Err(_)), _) | (_, Some(Err(_))) => return answer(policy::BAD_TARGET, done, unread),
        (host, target) => {
            if let Some(Ok(h)) = host {
                req.headers_mut().insert(header::HOST, h);
            }
            if let Some(Ok(t)) = target {
                *req.uri_mut() = t;
            }
        }
    }
    let max_body = policy::max_body(&rt);

    let upgrade = req.version() == Version::HTTP_11 && headers::is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let client_version = req.version();
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    let rules = route.headers.as_ref();
    if let Some(ids) = &rt.request_ids {
        headers::set_request_id(&mut parts.headers, &ids.header, &done.request_id);
    }
    if let Some(r) = rules {
        headers::drop_fields(&mut parts.headers, &r.request);
    }
    headers::add_forwarded(&mut parts.headers, &ctx.id);
    headers::set_client_cert(&mut parts.headers, &rt.subject_headers, &ctx.id);
    if let Some(r) = rules {
        headers::write_fields(&mut parts.headers, &r.request, &vars(ctx, &done.request_id));
    }
    let retryable = policy::idempotent(parts.method.as_str());

    // A connection first, then the request: a connect failure leaves the request untouched for the next backend.
    let select = SelectCtx { client_ip: ctx.peer.ip().to_canonical(), headers: &parts.headers };
    let mut exclude: Vec<SocketAddr> = Vec::new();
    let (pick, conn) = loop {
        let Some(pick) = balancer.select(&select, &exclude) else {
            return answer(Failure::no_backend(!exclude.is_empty()).answer, done, unread);
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
                if !policy::retry_after_connect_failure(exclude.len(), upstream.retries) {
                    return answer(Failure::connect_failed().answer, done, unread);
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
        None => return answer(policy::BAD_TARGET, done, unread),
    };
    parts.uri = uri;
    parts.version = if upstream.h2 { Version::HTTP_2 } else { Version::HTTP_11 };
    let progress = Arc::new(BodyProgress::default());
    let max = usize::try_from(max_body).unwrap_or(usize::MAX);
    let body = UpstreamBody::new(body, max, rt.limits.body_read_timeout, progress.clone());
    let out = Request::from_parts(parts, body);
    let outcome = send_timed(conn.send(&ctx.local, addr, out, retryable), upstream.request_timeout, &progress).await;
    let failure = match outcome {
        Some(Ok(mut resp)) => match policy::check_response(response_framing(resp.headers())) {
            Err(l) => Failure { answer: l, blame: Blame::Backend },
            Ok(()) => {
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
                if let Some(a) = &route.access {
                    a.rewrite_response(resp.headers_mut(), &done.host);
                }
                if let Some(r) = rules {
                    headers::drop_fields(resp.headers_mut(), &r.response);
                    headers::write_fields(resp.headers_mut(), &r.response, &vars(ctx, &done.request_id));
                }
                if let Some(cookie) = pick.set_cookie {
                    resp.headers_mut().append(header::SET_COOKIE, cookie);
                }
                *resp.version_mut() = client_version;
                let (p, b) = resp.into_parts();
                return Response::from_parts(p, RespBody::upstream(b, done));
            }
        },
        Some(Err(e)) => {
            let f = Failure::of_error(&e);
            tracing::debug!(backend = %addr, error = %e, blame = ?f.blame, "backend request failed");
            f
        }
        None => Failure::of_timeout(progress.done_at().is_some()),
    };
    if failure.blame == Blame::Backend {
        pick.backend.health.report_failure();
    }
    answer(failure.answer, done, unread && progress.done_at().is_none())
}

/// What the response framing check reads of a response head.
fn response_framing(h: &http::HeaderMap) -> policy::ResponseFraming {
    let mut lengths = h.get_all(header::CONTENT_LENGTH).iter();
    let first = lengths.next();
    let rest: Vec<&HeaderValue> = lengths.collect();
    policy::ResponseFraming {
        lengths: usize::from(first.is_some()) + rest.len(),
        lengths_agree: rest.iter().all(|v| Some(*v) == first),
        transfer_encoding: h.contains_key(header::TRANSFER_ENCODING),
    }
}

/// Sends a request and waits for its response head: `None` when none came within `timeout` of the request
/// body's end (while the client is still sending its body, that body's own read timeout applies instead).
async fn send_timed<F: Future<Output = Result<Response<Incoming>, SendError>>>(
    send: F,
    timeout: Duration,
    progress: &BodyProgress,
) -> Option<Result<Response<Incoming>, SendError>> {
    tokio::pin!(send);
    let mut deadline = tokio::time::Instant::now() + timeout;
    loop {
        tokio::select! {
            r = &mut send => return Some(r),
            _ = tokio::time::sleep_until(deadline) => match progress.done_at() {
                Some(at) if tokio::time::Instant::from_std(at) + timeout <= deadline => return None,
                Some(at) => deadline = tokio::time::Instant::from_std(at) + timeout,
                None => deadline += timeout,
            },
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
