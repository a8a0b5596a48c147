//! HTTP/2 backend connections: one multiplexed connection per backend, shared by every request of the group
//! transport, driven by a task of its own; closed after the idle timeout without requests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::connect::{ConnectError, Connector};
use crate::body::UpstreamBody;

/// Sends requests on an HTTP/2 backend connection.
pub(crate) type H2Sender = http2::SendRequest<UpstreamBody>;

struct Shared {
    sender: H2Sender,
    last_used: Instant,
}

/// The HTTP/2 connections of one group transport.
pub(crate) struct H2Pool {
    connector: Connector,
    idle_timeout: Duration,
    conns: Mutex<HashMap<SocketAddr, Shared>>,
}

impl H2Pool {
    /// An empty pool opening connections with `connector`.
    pub fn new(connector: Connector, idle_timeout: Duration) -> H2Pool {
        H2Pool { connector, idle_timeout, conns: Mutex::new(HashMap::new()) }
    }

    fn cached(&self, addr: SocketAddr) -> Option<H2Sender> {
        let mut conns = self.conns.lock().ok()?;
        match conns.get_mut(&addr) {
            Some(s) if !s.sender.is_closed() => {
                s.last_used = Instant::now();
                Some(s.sender.clone())
            }
            Some(_) => {
                conns.remove(&addr);
                None
            }
            None => None,
        }
    }

    /// A sender on the connection to `addr`, opening it if there is none.
    pub async fn sender(&self, addr: SocketAddr) -> Result<H2Sender, ConnectError> {
        if let Some(s) = self.cached(addr) {
            return Ok(s);
        }
        let io = TokioIo::new(self.connector.connect(addr).await?);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(ConnectError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(backend = %addr, error = %e, "h2 backend connection ended with an error");
            }
        });
        if let Ok(mut conns) = self.conns.lock() {
            conns.insert(addr, Shared { sender: sender.clone(), last_used: Instant::now() });
        }
        Ok(sender)
    }

    /// Lets go of connections unused for longer than the idle timeout (they close once their streams end).
    pub fn prune(&self) {
        if let Ok(mut conns) = self.conns.lock() {
            let timeout = self.idle_timeout;
            conns.retain(|_, s| s.last_used.elapsed() < timeout && !s.sender.is_closed());
        }
    }
}
