//! Listening sockets: binding (SO_REUSEADDR, large backlog) and the accept loop with the connection limit.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn::{self, Accepted};
use crate::error::L7Error;
use crate::plane::PlaneShared;

/// Binds a listening socket.
pub(crate) fn bind(name: &str, addr: SocketAddr) -> Result<TcpListener, L7Error> {
    let err = |source| L7Error::Bind { name: name.to_string(), addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(err)?;
    }
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(4096).map_err(err)?;
    TcpListener::from_std(socket.into()).map_err(err)
}

/// Accepts connections until `stop`, each served in its own task on `tracker`.
pub(crate) async fn accept_loop(
    plane: Arc<PlaneShared>,
    name: Arc<str>,
    listener: TcpListener,
    stop: CancellationToken,
    hard: CancellationToken,
    tracker: TaskTracker,
) {
    let count = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(listener = &*name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let max = plane.runtime.load().limits.max_connections;
        if max > 0 && count.load(Ordering::Acquire) >= max {
            tracing::debug!(listener = &*name, peer = %peer, "connection limit reached, closing");
            drop(stream);
            continue;
        }
        count.fetch_add(1, Ordering::AcqRel);
        let local = stream.local_addr().unwrap_or_else(|_| listener.local_addr().unwrap_or(peer));
        let a = Accepted { stream, peer, local, listener: name.clone(), count: count.clone() };
        tracker.spawn(conn::serve(plane.clone(), a, stop.clone(), hard.clone()));
    }
    tracing::info!(listener = &*name, "listener stopped accepting");
}
