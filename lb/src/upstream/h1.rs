//! HTTP/1.1 backend connections: the shared cache of idle keep-alive connections of one group transport.
//!
//! A connection is a hyper `SendRequest` plus its `Connection` future. While a request uses it, the task of the
//! client connection that sent the request drives it (see [`super::local`]): a request and its response never
//! cross to another task. As soon as the response is over, the connection is parked here, undriven, for the
//! next request of any client connection of the worker. The cache is LIFO per backend (the most recently used
//! connection first, as nginx `keepalive` and haproxy `http-reuse` do): a few hot connections serve the load
//! and the cold ones age out. A parked connection the backend closed is noticed (and dropped) when it is taken.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use super::connect::{ConnectError, Connector, UpstreamStream};
use super::counted::{Counted, ReadCount};
use crate::body::UpstreamBody;

/// Sends requests on one HTTP/1.1 backend connection.
pub(crate) type H1Sender = http1::SendRequest<UpstreamBody>;
/// The stream under an HTTP/1.1 backend connection.
pub(crate) type H1Io = TokioIo<Counted<UpstreamStream>>;
/// The future that does a backend connection's I/O.
pub(crate) type H1Driver = Pin<Box<http1::Connection<H1Io, UpstreamBody>>>;

/// Idle connections kept per backend, at most.
const MAX_IDLE_PER_BACKEND: usize = 1024;

/// An HTTP/1.1 backend connection that nobody drives: just opened, or taken from the cache.
pub(crate) struct H1Conn {
    /// Sends the requests.
    pub sender: H1Sender,
    /// Does the I/O.
    pub driver: H1Driver,
    /// Bytes read from the backend so far.
    pub read: ReadCount,
    /// Whether it already carried a response (a request sent on it may meet a close from the backend).
    pub reused: bool,
}

struct Parked {
    /// Closed from then on (the group's idle timeout, or the backend's own `Keep-Alive: timeout`, if shorter).
    until: Instant,
    conn: H1Conn,
}

/// The shared cache of one group transport, per backend that takes new requests.
pub(crate) struct H1Pool {
    connector: Connector,
    idle_timeout: Duration,
    /// Only backends that take new requests have an entry: the others' connections are not kept.
    idle: Mutex<HashMap<SocketAddr, Vec<Parked>>>,
}

impl H1Pool {
    /// An empty pool opening connections with `connector`; idle connections live `idle_timeout` at most.
    pub fn new(connector: Connector, idle_timeout: Duration) -> H1Pool {
        H1Pool { connector, idle_timeout, idle: Mutex::new(HashMap::new()) }
    }

    /// How long an idle connection is kept at most.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Opens a new connection to `addr`. Nothing drives it yet.
    pub async fn connect(
        &self,
        addr: SocketAddr,
    ) -> Result<(H1Sender, http1::Connection<H1Io, UpstreamBody>, ReadCount), ConnectError> {
        let (io, read) = Counted::new(self.connector.connect(addr).await?);
        let (sender, conn) =
            http1::Builder::new().handshake(TokioIo::new(io)).await.map_err(ConnectError::Handshake)?;
        Ok((sender, conn, read))
    }

    /// Opens a new connection to `addr`, boxed for driving.
    pub async fn open(&self, addr: SocketAddr) -> Result<H1Conn, ConnectError> {
        let (sender, conn, read) = self.connect(addr).await?;
        Ok(H1Conn { sender, driver: Box::pin(conn), read, reused: false })
    }

    /// Takes the most recently parked live connection to `addr`, if any.
    pub fn take(&self, addr: SocketAddr) -> Option<H1Conn> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(&addr)?;
        let now = Instant::now();
        let mut cx = Context::from_waker(Waker::noop());
        while let Some(mut p) = list.pop() {
            if now >= p.until || !p.conn.sender.is_ready() {
                continue;
            }
            // A parked connection is not driven: one poll notices a close or an error from the backend.
            if p.conn.driver.as_mut().poll(&mut cx).is_ready() {
                continue;
            }
            return Some(p.conn);
        }
        None
    }

    /// Parks an idle connection for `keep` at most (dropped, which closes it, if it is not idle, if `addr` takes
    /// no new requests or the cache for `addr` is full).
    pub fn put(&self, addr: SocketAddr, conn: H1Conn, keep: Duration) {
        if !conn.sender.is_ready() || keep.is_zero() {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else { return };
        if let Some(list) = idle.get_mut(&addr) {
            if list.len() < MAX_IDLE_PER_BACKEND {
                list.push(Parked { until: Instant::now() + keep.min(self.idle_timeout), conn });
            }
        }
    }

    /// Sets the backends whose connections are kept: parked connections to any other (removed, weight 0,
    /// draining) are closed now, and their connections in use are closed when their request is over.
    pub fn set_backends(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        let Ok(mut idle) = self.idle.lock() else { return };
        let mut next: HashMap<SocketAddr, Vec<Parked>> = HashMap::new();
        for a in addrs {
            let list = idle.remove(&a).unwrap_or_default();
            next.insert(a, list);
        }
        // The connections left in the old map (backends no longer taking requests) are closed as it is dropped.
        *idle = next;
    }

    /// Closes parked connections past their idle deadline.
    pub fn prune(&self) {
        let Ok(mut idle) = self.idle.lock() else { return };
        let now = Instant::now();
        for list in idle.values_mut() {
            list.retain(|p| now < p.until);
        }
    }
}
