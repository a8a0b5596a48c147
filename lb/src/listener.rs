//! Listening sockets: binding (SO_REUSEADDR, large backlog) and the accept loop with the connection limit.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn::{self, Accepted, ActiveGuard};
use crate::error::L7Error;
use crate::fast::{FastLoops, Handoff};
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

/// Accepts connections until `stop`: plaintext ones go to the fast path's loops (`fast`) when the listener uses
/// it, the others are each served in their own task on `tracker`.
pub(crate) async fn accept_loop(
    plane: Arc<PlaneShared>,
    name: Arc<str>,
    listener: TcpListener,
    stop: CancellationToken,
    hard: CancellationToken,
    tracker: TaskTracker,
    fast: Option<FastLoops>,
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
        let fast_path = plane.runtime.load().listeners.get(&*name).is_some_and(|l| l.fast_path);
        let stream = match (&fast, fast_path) {
            (Some(loops), true) => match hand_to_loop(&plane, loops, stream, peer, local, &name, &count, &stop) {
                Ok(()) => continue,
                Err(s) => s,
            },
            _ => stream,
        };
        let a = Accepted { stream, peer, local, listener: name.clone(), count: count.clone() };
        tracker.spawn(conn::serve(plane.clone(), a, stop.clone(), hard.clone()));
    }
    tracing::info!(listener = &*name, "listener stopped accepting");
}

/// Gives an accepted connection to a fast-path loop; gives the stream back when that is not possible.
#[allow(clippy::too_many_arguments)]
fn hand_to_loop(
    plane: &PlaneShared,
    loops: &FastLoops,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    name: &Arc<str>,
    count: &Arc<AtomicUsize>,
    stop: &CancellationToken,
) -> Result<(), tokio::net::TcpStream> {
    let std = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            // The stream is gone with the error: undo the count.
            tracing::debug!(error = %e, "fast path: cannot take over the connection");
            count.fetch_sub(1, Ordering::AcqRel);
            return Ok(());
        }
    };
    let _ = std.set_nodelay(true);
    let guard = ActiveGuard::new(plane, name, count.clone());
    let h = Handoff { stream: std, peer, local, listener: name.clone(), guard, stop: stop.clone() };
    loops.submit(h).map_err(|h| {
        // No loop left (shutting down): the hyper path serves it; its guard counts again.
        drop(h.guard);
        count.fetch_add(1, Ordering::AcqRel);
        tokio::net::TcpStream::from_std(h.stream).expect("a stream that was registered a moment ago registers again")
    })
}
