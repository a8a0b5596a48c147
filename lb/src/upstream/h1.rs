//! HTTP/1.1 backend connections: the shared pool of idle keep-alive connections of one group transport.
//!
//! A connection is a hyper `SendRequest` plus its `Connection` future. While a client connection uses it, the
//! client connection's own task drives it (see [`super::local`]): a request and its response never cross to
//! another task. Idle connections left when a client connection ends are parked here, undriven, for the next
//! client connection; a parked connection the backend closed is noticed (and dropped) when it is taken.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use hyper::client::conn::http1;

use super::connect::{ConnectError, Connector, UpstreamIo};
use crate::body::UpstreamBody;

/// Sends requests on one HTTP/1.1 backend connection.
pub(crate) type H1Sender = http1::SendRequest<UpstreamBody>;
/// The future that does a backend connection's I/O.
pub(crate) type H1Driver = Pin<Box<http1::Connection<UpstreamIo, UpstreamBody>>>;

/// Idle connections kept per backend, at most.
const MAX_IDLE_PER_BACKEND: usize = 1024;

struct Parked {
    since: Instant,
    sender: H1Sender,
    driver: H1Driver,
}

/// The shared pool of one group transport.
pub(crate) struct H1Pool {
    connector: Connector,
    idle_timeout: Duration,
    idle: Mutex<HashMap<SocketAddr, Vec<Parked>>>,
}

impl H1Pool {
    /// An empty pool opening connections with `connector`; idle connections live `idle_timeout`.
    pub fn new(connector: Connector, idle_timeout: Duration) -> H1Pool {
        H1Pool { connector, idle_timeout, idle: Mutex::new(HashMap::new()) }
    }

    /// Opens a new connection to `addr`. Nothing drives it yet.
    pub async fn connect(
        &self,
        addr: SocketAddr,
    ) -> Result<(H1Sender, http1::Connection<UpstreamIo, UpstreamBody>), ConnectError> {
        let io = self.connector.connect(addr).await?;
        http1::Builder::new().handshake(io).await.map_err(ConnectError::Handshake)
    }

    /// Takes the most recently parked live connection to `addr`, if any.
    pub fn take(&self, addr: SocketAddr) -> Option<(H1Sender, H1Driver)> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(&addr)?;
        let mut cx = Context::from_waker(Waker::noop());
        while let Some(mut p) = list.pop() {
            if p.since.elapsed() >= self.idle_timeout || !p.sender.is_ready() {
                continue;
            }
            // A parked connection is not driven: one poll notices a close or an error from the backend.
            if p.driver.as_mut().poll(&mut cx).is_ready() {
                continue;
            }
            return Some((p.sender, p.driver));
        }
        None
    }

    /// Parks an idle connection (dropped if it is not idle, or the pool for `addr` is full).
    pub fn put(&self, addr: SocketAddr, sender: H1Sender, driver: H1Driver) {
        if !sender.is_ready() {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else { return };
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push(Parked { since: Instant::now(), sender, driver });
        }
    }

    /// Closes parked connections idle for longer than the idle timeout.
    pub fn prune(&self) {
        let Ok(mut idle) = self.idle.lock() else { return };
        let timeout = self.idle_timeout;
        idle.retain(|_, list| {
            list.retain(|p| p.since.elapsed() < timeout);
            !list.is_empty()
        });
    }
}
