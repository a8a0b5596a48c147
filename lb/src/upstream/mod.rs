//! Connections to backends, per group transport (protocol, TLS, timeouts), kept across snapshots while the
//! group's transport settings do not change so keep-alive connections survive reloads.
//!
//! HTTP/1.1 connections come from the group's shared LIFO cache of idle connections, are driven by the task of
//! the client connection whose request uses them ([`LocalConns`]) and go back to the cache when the response is
//! over; HTTP/2 connections are shared and driven by their own task. A request first gets a connection, then is
//! built and sent: a connect failure leaves the request untouched, so it can go to another backend without
//! copying it. An idempotent request with no body sent on a reused connection that fails before any response
//! byte (the backend closed it as the request went out) is sent again once, on a new connection.

mod connect;
mod counted;
mod h1;
mod h2;
mod local;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::header::{HeaderMap, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;
use padis_model::{BackendGroup, UpstreamProtocol, UpstreamTls};

pub(crate) use connect::ConnectError;
pub(crate) use local::LocalConns;

use crate::body::UpstreamBody;
use connect::Connector;
use h1::{H1Pool, H1Sender};
use h2::{H2Pool, H2Sender};
use local::Lease;

/// Margin kept below a backend's advertised `Keep-Alive: timeout`, so a connection is not reused just as the
/// backend closes it.
const KEEP_ALIVE_MARGIN: Duration = Duration::from_secs(1);

/// What decides whether a group's connections can be kept across snapshots.
#[derive(Clone, PartialEq)]
struct TransportKey {
    protocol: UpstreamProtocol,
    tls: Option<UpstreamTls>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

/// A group's connection pools.
#[derive(Clone)]
enum Transport {
    H1(Arc<H1Pool>),
    H2(Arc<H2Pool>),
}

impl Transport {
    fn build(g: &BackendGroup) -> Result<Transport, crate::L7Error> {
        let connector = Connector::new(g)?;
        let t = match g.protocol {
            UpstreamProtocol::Http1 => Transport::H1(Arc::new(H1Pool::new(connector, g.idle_timeout))),
            UpstreamProtocol::H2 => Transport::H2(Arc::new(H2Pool::new(connector, g.idle_timeout))),
        };
        t.spawn_pruner(g.idle_timeout);
        Ok(t)
    }

    /// Closes idle connections past the idle timeout, until the pools are dropped.
    fn spawn_pruner(&self, idle_timeout: Duration) {
        enum Pool {
            H1(Weak<H1Pool>),
            H2(Weak<H2Pool>),
        }
        let pool = match self {
            Transport::H1(p) => Pool::H1(Arc::downgrade(p)),
            Transport::H2(p) => Pool::H2(Arc::downgrade(p)),
        };
        let every = (idle_timeout / 2).max(Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                match &pool {
                    Pool::H1(w) => match w.upgrade() {
                        Some(p) => p.prune(),
                        None => break,
                    },
                    Pool::H2(w) => match w.upgrade() {
                        Some(p) => p.prune(),
                        None => break,
                    },
                }
            }
        });
    }
}

/// A group's transport and request policy.
pub(crate) struct Upstream {
    key: TransportKey,
    transport: Transport,
    /// `https` or `http`.
    pub https: bool,
    /// HTTP/2 to backends.
    pub h2: bool,
    /// Time from sending the request to the response head.
    pub request_timeout: Duration,
    /// Retries after connect failures.
    pub retries: u32,
    /// Group name (metrics).
    pub group: Arc<str>,
}

/// A backend connection picked for one request.
pub(crate) enum Conn<'a> {
    /// HTTP/1.1, driven by the client connection's task.
    H1 { pool: &'a Arc<H1Pool>, lease: Lease },
    /// HTTP/1.1 for a protocol upgrade, driven by a task of its own (it outlives the client request).
    Upgrade(H1Sender),
    /// HTTP/2, shared.
    H2(H2Sender),
}

/// Why a request got no response head from the backend.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// The connection closed before the request could be sent, and no new one could be opened.
    #[error("reconnect: {0}")]
    Connect(#[from] ConnectError),
    /// The exchange failed (backend closed or reset, bad response, request body error).
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

impl Upstream {
    /// A connection to backend `addr` for one request of client connection `local` (`upgrade`: a connection
    /// of its own that can be handed to a tunnel).
    pub async fn acquire<'a>(
        &'a self,
        local: &LocalConns,
        addr: SocketAddr,
        upgrade: bool,
    ) -> Result<Conn<'a>, ConnectError> {
        match &self.transport {
            Transport::H1(pool) if upgrade => {
                let (sender, conn, _) = pool.connect(addr).await?;
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!(backend = %addr, error = %e, "backend upgrade connection ended with an error");
                    }
                });
                Ok(Conn::Upgrade(sender))
            }
            Transport::H1(pool) => {
                let conn = match pool.take(addr) {
                    Some(idle) => idle,
                    None => pool.open(addr).await?,
                };
                Ok(Conn::H1 { pool, lease: local.adopt(pool, addr, conn) })
            }
            Transport::H2(pool) => Ok(Conn::H2(pool.sender(addr).await?)),
        }
    }
}

impl Conn<'_> {
    /// Sends `req` to backend `addr` and waits for the response head. An HTTP/1.1 connection that closed while
    /// idle (the request was not sent) is replaced once; an `idempotent` request with no body that failed on a
    /// reused connection before any response byte is sent again once, on a new connection.
    pub async fn send(
        self,
        local: &LocalConns,
        addr: SocketAddr,
        req: Request<UpstreamBody>,
        idempotent: bool,
    ) -> Result<Response<Incoming>, SendError> {
        match self {
            Conn::H1 { pool, lease } => send_h1(pool, local, addr, lease, req, idempotent).await,
            Conn::Upgrade(mut sender) => Ok(sender.send_request(req).await?),
            Conn::H2(mut sender) => Ok(sender.send_request(req).await?),
        }
    }
}

/// A copy of a request with no body, to send it again.
fn replay_of(req: &Request<UpstreamBody>) -> Option<Request<UpstreamBody>> {
    if !req.body().is_empty() {
        return None;
    }
    let mut copy = Request::new(UpstreamBody::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// [`Conn::send`] on an HTTP/1.1 connection of the shared cache: the connection goes back to the cache once the
/// response is over (see [`LocalConns::give_back`]).
async fn send_h1(
    pool: &Arc<H1Pool>,
    local: &LocalConns,
    addr: SocketAddr,
    mut lease: Lease,
    req: Request<UpstreamBody>,
    idempotent: bool,
) -> Result<Response<Incoming>, SendError> {
    let replay = if idempotent && lease.reused { replay_of(&req) } else { None };
    let read_before = lease.read.get();
    let mut e = match lease.sender.try_send_request(req).await {
        Ok(resp) => {
            local.give_back(lease, keep_for(pool, resp.headers()));
            return Ok(resp);
        }
        Err(e) => e,
    };
    let again = match (e.take_message(), replay) {
        // Not sent: the connection was closing. A new one gets it, untouched.
        (Some(req), _) => {
            tracing::debug!(backend = %addr, "idle backend connection closed; sending on a new one");
            req
        }
        // Sent, and the backend closed or reset the connection before answering anything.
        (None, Some(copy)) if lease.read.get() == read_before => {
            tracing::debug!(backend = %addr, error = %e.error(), "reused backend connection failed before any response byte; sending again on a new one");
            copy
        }
        (None, _) => return Err(SendError::Http(e.into_error())),
    };
    drop(lease);
    let mut lease = local.adopt(pool, addr, pool.open(addr).await?);
    let resp = lease.sender.send_request(again).await?;
    local.give_back(lease, keep_for(pool, resp.headers()));
    Ok(resp)
}

/// How long a connection whose response carried `headers` may stay idle: the group's idle timeout, or less when
/// the backend announces a shorter `Keep-Alive: timeout=N` (minus a margin).
fn keep_for(pool: &H1Pool, headers: &HeaderMap) -> Duration {
    let idle = pool.idle_timeout();
    match headers.get("keep-alive").and_then(keep_alive_timeout) {
        Some(t) => idle.min(t.saturating_sub(KEEP_ALIVE_MARGIN)),
        None => idle,
    }
}

/// The `timeout=N` parameter of a `Keep-Alive` header (RFC 2068 §19.7.1.1), in seconds.
fn keep_alive_timeout(v: &HeaderValue) -> Option<Duration> {
    v.to_str().ok()?.split(',').find_map(|p| {
        let (k, n) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("timeout").then(|| n.trim().parse::<u64>().ok().map(Duration::from_secs))?
    })
}

fn key_of(g: &BackendGroup) -> TransportKey {
    TransportKey {
        protocol: g.protocol,
        tls: g.tls.clone(),
        connect_timeout: g.connect_timeout,
        idle_timeout: g.idle_timeout,
    }
}

/// Builds the upstreams of every group, reusing `previous` pools whose transport did not change. A group
/// whose TLS settings cannot be loaded is left out (its requests get 503) and logged.
pub(crate) fn build_all<G: std::borrow::Borrow<BackendGroup>>(
    groups: &[G],
    previous: Option<&HashMap<Arc<str>, Arc<Upstream>>>,
) -> HashMap<Arc<str>, Arc<Upstream>> {
    let mut out = HashMap::with_capacity(groups.len());
    for g in groups.iter().map(std::borrow::Borrow::borrow) {
        let key = key_of(g);
        let prev = previous.and_then(|p| p.get(g.name.as_str())).filter(|u| u.key == key);
        let transport = match prev {
            Some(u) => u.transport.clone(),
            None => match Transport::build(g) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(group = %g.name, error = %e, "backend group transport not usable");
                    continue;
                }
            },
        };
        if let Transport::H1(pool) = &transport {
            pool.set_backends(g.backends.iter().filter(|b| b.accepts_new()).map(|b| b.addr));
        }
        let name: Arc<str> = g.name.as_str().into();
        out.insert(
            name.clone(),
            Arc::new(Upstream {
                key,
                transport,
                https: g.tls.is_some(),
                h2: g.protocol == UpstreamProtocol::H2,
                request_timeout: g.request_timeout,
                retries: g.retries,
                group: name,
            }),
        );
    }
    out
}
