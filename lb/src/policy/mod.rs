//! The request policy of the L7 plane: every decision about a request that the hyper path (`forward`) and the
//! HTTP/1.1 fast path (`fast`) both make lives here, once, and both call it. The paths keep their own I/O and
//! framing, nothing else. The phases, in the order a request meets them (after pingora-proxy's named phases):
//!
//! 1. [`admit`] — the request head: one Host (or the absolute-form / `:authority` authority, which then is the
//!    Host the backend receives), a strict authority, no `Content-Length` with `Transfer-Encoding`, the target
//!    normalised (so the path a route matches is the path the backend receives);
//! 2. [`route`] — the listener's route for host and path, an `https` redirect, the access phase of the route,
//!    the body size limit, a backend group and its balancer; then [`limit_rate`], the route's rate limit;
//! 3. header rewriting — [`hop::Connection::class`] decides what is hop-by-hop, `crate::headers` writes the
//!    forwarding headers, [`rules`] holds the route's header rules (HSTS among them) and the request id;
//! 4. retries — [`retry_after_connect_failure`]: a request whose backend connection could not be opened goes to
//!    another backend whatever its method (nothing of it was sent); [`idempotent`]: a request that was sent on a
//!    reused connection that closed before any answer byte is sent again only when idempotent (and bodiless);
//! 5. [`check_response`] — a backend's response head must have unambiguous framing;
//! 6. [`Failure`] — what an error is answered with and whose fault it is (a client's fault never counts against
//!    a backend);
//! 7. the record of a finished request (`crate::metrics::Finished`).

pub(crate) mod hop;
pub(crate) mod rules;
pub(crate) mod target;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use http::StatusCode;
use padis_balance::GroupBalancer;

use crate::routes::CompiledRoute;
use crate::runtime::Runtime;
use crate::upstream::Upstream;

/// An answer the proxy gives itself: status, a short text body, and a `Location` for redirects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Local {
    pub status: StatusCode,
    pub msg: &'static str,
    pub location: Option<String>,
    /// `WWW-Authenticate` of a 401.
    pub authenticate: Option<String>,
    /// `Retry-After` seconds of a 429.
    pub retry_after: Option<u64>,
}

impl Local {
    const fn new(status: StatusCode, msg: &'static str) -> Local {
        Local { status, msg, location: None, authenticate: None, retry_after: None }
    }
}

/// Read access to a request's header fields, whichever path parsed them.
pub(crate) trait Headers {
    /// The first value of the field `name` (lowercase).
    fn first(&self, name: &str) -> Option<&[u8]>;
}

impl Headers for http::HeaderMap {
    fn first(&self, name: &str) -> Option<&[u8]> {
        self.get(name).map(http::HeaderValue::as_bytes)
    }
}

impl Headers for [httparse::Header<'_>] {
    fn first(&self, name: &str) -> Option<&[u8]> {
        self.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
    }
}

/// What the admission phase reads of a request head.
pub(crate) struct Head<'a> {
    /// The authority of an absolute-form target or of HTTP/2's `:authority`.
    pub authority: Option<&'a str>,
    /// How many `Host` fields the head has, and the first.
    pub host_fields: usize,
    pub host: Option<&'a [u8]>,
    /// The origin-form part of the target (`path[?query]`).
    pub target: &'a str,
    /// Both `Content-Length` and `Transfer-Encoding` are present.
    pub length_and_chunked: bool,
    /// It asks for a protocol upgrade (an `Upgrade` field or `Connection: upgrade`) and declares a body.
    pub upgrade_with_body: bool,
}

/// A request head the proxy takes.
#[derive(Debug)]
pub(crate) struct Admitted<'a> {
    /// The `Host` the backend receives: the authority when the request had one, else its Host field.
    pub host: &'a str,
    /// Whether `host` differs from the request's own Host field (absolute-form, `:authority`): it is rewritten.
    pub rewrite_host: bool,
    /// The normalised target the route matches and the backend receives.
    pub target: Cow<'a, str>,
}

impl Admitted<'_> {
    /// The path part of the target.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }
}

const MANY_HOSTS: Local = Local::new(StatusCode::BAD_REQUEST, "bad request: several Host headers\n");
const BAD_HOST: Local = Local::new(StatusCode::BAD_REQUEST, "bad request: invalid Host\n");
const NO_HOST: Local = Local::new(StatusCode::BAD_REQUEST, "bad request: missing Host\n");
const LENGTH_AND_CHUNKED: Local =
    Local::new(StatusCode::BAD_REQUEST, "bad request: both Content-Length and Transfer-Encoding\n");
/// A target that is not origin-form or has a bad escape.
pub(crate) const UPGRADE_WITH_BODY: Local = Local::new(StatusCode::BAD_REQUEST, "bad request: upgrade with a body\n");
/// A target that is not origin-form or has a bad escape.
pub(crate) const BAD_TARGET: Local = Local::new(StatusCode::BAD_REQUEST, "bad request: invalid target\n");

/// Phase 1: whether the proxy takes this request head; the routing host (lowercase, no port) goes into `host`.
pub(crate) fn admit<'a>(h: &Head<'a>, host: &mut String) -> Result<Admitted<'a>, Local> {
    if h.host_fields > 1 {
        return Err(MANY_HOSTS);
    }
    let field = match h.host.map(std::str::from_utf8) {
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => return Err(BAD_HOST),
        None => None,
    };
    let (value, rewrite_host) = match (h.authority, field) {
        (Some(a), f) => (a, f != Some(a)),
        (None, Some(f)) => (f, false),
        (None, None) => return Err(NO_HOST),
    };
    if target::routing_host(value, host).is_none() {
        return Err(BAD_HOST);
    }
    // A Host field beside an authority must itself be a valid authority (it is replaced, not trusted).
    if let (Some(_), Some(f)) = (h.authority, field) {
        if target::routing_host(f, &mut String::new()).is_none() {
            return Err(BAD_HOST);
        }
    }
    if h.length_and_chunked {
        return Err(LENGTH_AND_CHUNKED);
    }
    // An upgrade's bytes after the head belong to the new protocol: a body would be dropped or misread.
    if h.upgrade_with_body {
        return Err(UPGRADE_WITH_BODY);
    }
    let target = target::normalise_target(h.target).map_err(|_| BAD_TARGET)?;
    Ok(Admitted { host: value, rewrite_host, target })
}

/// Phase 1, before admission (so that every request has them in the access log): the request's id
/// (`[request_id]`, see [`rules::RequestIds::take`]) written into `id` (left empty without `[request_id]`), and
/// its valid W3C `traceparent`.
pub(crate) fn identify<'h, H: Headers + ?Sized>(
    rt: &Runtime,
    client: IpAddr,
    headers: &'h H,
    id: &mut String,
) -> Option<&'h str> {
    if let Some(ids) = &rt.request_ids {
        ids.take(client, headers.first(ids.header.as_str()), id);
    }
    rules::traceparent(headers.first("traceparent"))
}

/// The route, group and backends that serve a request.
pub(crate) struct Routed<'r> {
    pub route: &'r Arc<CompiledRoute>,
    pub balancer: &'r Arc<GroupBalancer>,
    pub upstream: &'r Arc<Upstream>,
}

/// What the routing phase reads of a request.
pub(crate) struct RouteQuery<'a> {
    pub listener: &'a str,
    /// Routing host (from [`admit`]).
    pub host: &'a str,
    pub admitted: &'a Admitted<'a>,
    /// The connection is TLS.
    pub https: bool,
    /// The TLS server name the client asked for.
    pub sni: Option<&'a str>,
    pub client: IpAddr,
    /// The declared body length (`None`: unknown, chunked or h2 without length).
    pub body_len: Option<u64>,
}

const MISDIRECTED: Local = Local::new(StatusCode::MISDIRECTED_REQUEST, "misdirected request\n");
const LISTENER_GONE: Local = Local::new(StatusCode::SERVICE_UNAVAILABLE, "listener removed\n");
const NO_ROUTE: Local = Local::new(StatusCode::NOT_FOUND, "no route\n");
const NO_GROUP: Local = Local::new(StatusCode::SERVICE_UNAVAILABLE, "no backend group\n");
const NO_BACKEND: Local = Local::new(StatusCode::SERVICE_UNAVAILABLE, "no usable backend\n");
/// A body over `limits.max_body_bytes`.
pub(crate) const TOO_LARGE: Local = Local::new(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");

/// The largest request body taken (`limits.max_body_bytes`, 0 = no limit).
pub(crate) fn max_body(rt: &Runtime) -> u64 {
    match rt.limits.max_body_bytes {
        0 => u64::MAX,
        n => n,
    }
}

const FORBIDDEN: Local = Local::new(StatusCode::FORBIDDEN, "forbidden\n");

/// The answer to a request the access phase refuses.
fn denied(d: crate::access::Denied) -> Local {
    match d {
        crate::access::Denied::Forbidden => FORBIDDEN,
        crate::access::Denied::Unauthorized(challenge) => {
            let mut l = Local::new(StatusCode::UNAUTHORIZED, "authentication required\n");
            l.authenticate = Some(challenge);
            l
        }
    }
}

/// Phase 2: the route of a request, or the local answer it gets. `Err` carries the route when one matched (for
/// the record).
#[allow(clippy::result_large_err)]
pub(crate) fn route<'r, H: Headers + ?Sized>(
    rt: &'r Runtime,
    q: &RouteQuery<'_>,
    headers: &H,
) -> Result<Routed<'r>, (Local, Option<&'r Arc<CompiledRoute>>)> {
    let lrt = rt.listeners.get(q.listener).ok_or((LISTENER_GONE, None))?;
    // A request for a host the connection's certificate was not chosen for (HTTP/2 connection reuse, or a
    // client sending another Host than its SNI) is misdirected: the client must connect for that host.
    if let (Some(sni), Some((_, certs))) = (q.sni, &lrt.tls) {
        if sni != q.host && !certs.same_certificate(sni, q.host) {
            return Err((MISDIRECTED, None));
        }
    }
    // On a listener with client authentication by server name, the connection's authentication (chosen by its
    // SNI, or the listener's without one) must be the one of the Host: a client cannot reach a name that
    // requires a certificate over a connection made for one that does not.
    if let Some(auth) = &lrt.client_auth {
        if !auth.same_auth(q.sni, q.host) {
            return Err((MISDIRECTED, None));
        }
    }
    let route = lrt.routes.lookup(q.host, q.admitted.path()).ok_or((NO_ROUTE, None))?;
    let fail = |l: Local| (l, Some(route));
    if let (Some(port), false) = (route.redirect_https, q.https) {
        let pq = &q.admitted.target;
        let location =
            if port == 443 { format!("https://{}{pq}", q.host) } else { format!("https://{}:{port}{pq}", q.host) };
        let mut l = Local::new(StatusCode::PERMANENT_REDIRECT, "redirecting to https\n");
        l.location = Some(location);
        return Err(fail(l));
    }
    // access phase: checks of the route on the client (address, credentials) go here.
    if let Some(a) = &route.access {
        a.check(q.client, headers.first("authorization")).map_err(|d| fail(denied(d)))?;
    }
    if q.body_len.is_some_and(|n| n > max_body(rt)) {
        return Err(fail(TOO_LARGE));
    }
    let group = route.pick_group().ok_or_else(|| fail(NO_GROUP))?;
    match (rt.balancers.group(group), rt.upstreams.get(group)) {
        (Some(balancer), Some(upstream)) => Ok(Routed { route, balancer, upstream }),
        _ => Err(fail(NO_BACKEND)),
    }
}

/// Phase 2, once a route serves the request, where it is served (so a request takes from a bucket once, even
/// when the fast path hands it to the hyper path): the route's request rate limit (`crate::ratelimit`), 429 with
/// `Retry-After` over it (counted in `padis_http_rate_limited_total`).
pub(crate) fn limit_rate(rt: &Runtime, route: &CompiledRoute, client: IpAddr) -> Result<(), Local> {
    let Some(limit) = route.access.as_ref().and_then(|a| a.limit.as_ref()) else { return Ok(()) };
    rt.rates.check(limit, client).map_err(|wait| {
        let mut l = Local::new(StatusCode::TOO_MANY_REQUESTS, "too many requests\n");
        l.retry_after = Some(crate::ratelimit::retry_after_secs(wait));
        l
    })
}

/// Phase 4: whether a request whose connection attempt to a backend failed goes to another backend, after `tried`
/// failed attempts: while retries are left, whatever its method — nothing of it was sent (HAProxy's
/// `retry-on conn-failure`).
pub(crate) fn retry_after_connect_failure(tried: usize, retries: u32) -> bool {
    tried < retries as usize
}

/// Phase 4: whether a request with this method may be sent again once it was sent (RFC 9110 §9.2.2).
pub(crate) fn idempotent(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE")
}

/// What phase 5 reads of a response head.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ResponseFraming {
    /// `Content-Length` fields: how many, and whether they all carry the same valid number (true when none).
    pub lengths: usize,
    pub lengths_agree: bool,
    /// A `Transfer-Encoding` field is present.
    pub transfer_encoding: bool,
}

/// A response whose framing is ambiguous.
pub(crate) const BAD_RESPONSE: Local = Local::new(StatusCode::BAD_GATEWAY, "bad gateway\n");

/// Phase 5: a response head whose body framing is ambiguous (`Content-Length` with `Transfer-Encoding`,
/// conflicting or invalid lengths) is never passed on: the answer is 502, the backend's fault.
pub(crate) fn check_response(f: ResponseFraming) -> Result<(), Local> {
    if (f.lengths > 0 && f.transfer_encoding) || !f.lengths_agree {
        return Err(BAD_RESPONSE);
    }
    Ok(())
}

/// Whose fault a failed request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blame {
    /// The client's (a malformed or stalled body): never counted against the backend.
    Client,
    /// The backend's: a passive-health failure.
    Backend,
}

/// Phase 6: the answer to a request that failed, and whose fault it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub answer: Local,
    pub blame: Blame,
}

/// How a client's request body failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ClientBodyError {
    /// Malformed framing (a bad chunk size, a cut chunk).
    #[error("malformed request body")]
    Malformed,
    /// No body bytes for `limits.body_read_timeout`.
    #[error("request body timed out")]
    Timeout,
    /// Over `limits.max_body_bytes`.
    #[error("request body too large")]
    TooLarge,
}

impl Failure {
    fn client(status: StatusCode, msg: &'static str) -> Failure {
        Failure { answer: Local::new(status, msg), blame: Blame::Client }
    }

    fn backend(status: StatusCode, msg: &'static str) -> Failure {
        Failure { answer: Local::new(status, msg), blame: Blame::Backend }
    }

    /// A client body failure.
    pub fn of_body(e: ClientBodyError) -> Failure {
        match e {
            ClientBodyError::Malformed => Failure::client(StatusCode::BAD_REQUEST, "bad request: malformed body\n"),
            ClientBodyError::Timeout => Failure::client(StatusCode::REQUEST_TIMEOUT, "request timeout\n"),
            ClientBodyError::TooLarge => Failure { answer: TOO_LARGE, blame: Blame::Client },
        }
    }

    /// The exchange with the backend failed with `e`: the client's fault when a client body error is its
    /// cause, else the backend's (502).
    pub fn of_error(e: &(dyn std::error::Error + 'static)) -> Failure {
        let mut cur = Some(e);
        while let Some(err) = cur {
            if let Some(b) = err.downcast_ref::<ClientBodyError>() {
                return Failure::of_body(*b);
            }
            if err.is::<http_body_util::LengthLimitError>() {
                return Failure::of_body(ClientBodyError::TooLarge);
            }
            cur = err.source();
        }
        Failure::backend(StatusCode::BAD_GATEWAY, "bad gateway\n")
    }

    /// No response head within the request timeout: the backend's fault once the request was sent whole, the
    /// client's while its body was still coming (then the timeout is its body's).
    pub fn of_timeout(body_complete: bool) -> Failure {
        if body_complete {
            Failure::backend(StatusCode::GATEWAY_TIMEOUT, "gateway timeout\n")
        } else {
            Failure::of_body(ClientBodyError::Timeout)
        }
    }

    /// No backend connection could be had.
    pub fn connect_failed() -> Failure {
        Failure::backend(StatusCode::BAD_GATEWAY, "backend connection failed\n")
    }

    /// No backend to try (none usable, or all tried).
    pub fn no_backend(tried: bool) -> Failure {
        if tried {
            Failure::connect_failed()
        } else {
            Failure { answer: NO_BACKEND, blame: Blame::Backend }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head<'a>(authority: Option<&'a str>, hosts: &'a [&'a str], target: &'a str) -> Head<'a> {
        Head {
            authority,
            host_fields: hosts.len(),
            host: hosts.first().map(|h| h.as_bytes()),
            target,
            length_and_chunked: false,
            upgrade_with_body: false,
        }
    }

    #[test]
    fn admission() {
        let mut host = String::new();
        let a = admit(&head(None, &["A.example:8080"], "/x/../y"), &mut host).unwrap();
        assert_eq!((a.host, a.rewrite_host, &*a.target, host.as_str()), ("A.example:8080", false, "/y", "a.example"));
        let a = admit(&head(Some("b.example"), &["a.example"], "/"), &mut host).unwrap();
        assert_eq!((a.host, a.rewrite_host, host.as_str()), ("b.example", true, "b.example"));
        let a = admit(&head(Some("b.example"), &[], "/"), &mut host).unwrap();
        assert!(a.rewrite_host);
        let a = admit(&head(Some("b.example"), &["b.example"], "/"), &mut host).unwrap();
        assert!(!a.rewrite_host);
        assert_eq!(admit(&head(None, &[], "/"), &mut host).unwrap_err(), NO_HOST);
        assert_eq!(admit(&head(None, &["a", "b"], "/"), &mut host).unwrap_err(), MANY_HOSTS);
        assert_eq!(admit(&head(None, &["u@a"], "/"), &mut host).unwrap_err(), BAD_HOST);
        assert_eq!(admit(&head(Some("u@a"), &["a"], "/"), &mut host).unwrap_err(), BAD_HOST);
        assert_eq!(admit(&head(Some("a"), &["a b"], "/"), &mut host).unwrap_err(), BAD_HOST);
        assert_eq!(admit(&head(None, &["a"], "/%zz"), &mut host).unwrap_err(), BAD_TARGET);
        let mut h = head(None, &["a"], "/");
        h.length_and_chunked = true;
        assert_eq!(admit(&h, &mut host).unwrap_err(), LENGTH_AND_CHUNKED);
        let mut h = head(None, &["a"], "/");
        h.upgrade_with_body = true;
        assert_eq!(admit(&h, &mut host).unwrap_err(), UPGRADE_WITH_BODY);
    }

    #[test]
    fn response_framing() {
        let f = |lengths, lengths_agree, transfer_encoding| {
            check_response(ResponseFraming { lengths, lengths_agree, transfer_encoding }).is_ok()
        };
        assert!(f(0, true, false) && f(1, true, false) && f(0, true, true) && f(2, true, false));
        assert!(!f(1, true, true) && !f(2, false, false) && !f(1, false, false));
    }

    #[test]
    fn blame() {
        assert_eq!(Failure::of_timeout(true).blame, Blame::Backend);
        assert_eq!(Failure::of_timeout(false).answer.status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(Failure::of_timeout(false).blame, Blame::Client);
        // As hyper reports a body error: its cause is the body's error.
        #[derive(Debug, thiserror::Error)]
        #[error("body write failed")]
        struct Wrapped(#[source] ClientBodyError);
        let f = Failure::of_error(&Wrapped(ClientBodyError::Malformed));
        assert_eq!((f.answer.status, f.blame), (StatusCode::BAD_REQUEST, Blame::Client));
        let f = Failure::of_error(&std::io::Error::other("reset"));
        assert_eq!((f.answer.status, f.blame), (StatusCode::BAD_GATEWAY, Blame::Backend));
    }
}
