//! Listening sockets: binding (SO_REUSEADDR, large backlog) and the accept loop with the connection limits (per
//! listener, per client address: see `admission`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{ClientSlot, Refusal};
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

/// Accepts connections until `stop`: those of a TCP listener are relayed (`tcp`), plaintext ones go to the fast
/// path's loops (`fast`) when the listener uses it, the others are each served in their own task on `tracker`.
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
        let client = match admit(&plane, &count, peer) {
            Ok(slot) => slot,
            Err(why) => {
                tracing::debug!(listener = &*name, peer = %peer, reason = why.label(), "connection refused");
                plane.metrics.rejected.with_label_values(&[&*name, why.label()]).inc();
                // Reset rather than close: no TIME_WAIT kept here for a refused connection.
                let _ = stream.set_zero_linger();
                drop(stream);
                continue;
            }
        };
        count.fetch_add(1, Ordering::AcqRel);
        let local = stream.local_addr().unwrap_or_else(|_| listener.local_addr().unwrap_or(peer));
        let (tcp, fast_path) =
            plane.runtime.load().listeners.get(&*name).map_or((false, false), |l| (l.tcp.is_some(), l.fast_path));
        if tcp {
            // `mode = "tcp"`: relayed to a backend (see `tcp`).
            let a = Accepted { stream, peer, local, listener: name.clone(), count: count.clone(), client };
            tracker.spawn(crate::tcp::serve(plane.clone(), a, hard.clone()));
            continue;
        }
        let (stream, client) = match (&fast, fast_path) {
            (Some(loops), true) => {
                match hand_to_loop(&plane, loops, stream, peer, local, &name, &count, &stop, client) {
                    Ok(()) => continue,
                    Err(back) => back,
                }
            }
            _ => (stream, client),
        };
        let a = Accepted { stream, peer, local, listener: name.clone(), count: count.clone(), client };
        tracker.spawn(conn::serve(plane.clone(), a, stop.clone(), hard.clone()));
    }
    tracing::info!(listener = &*name, "listener stopped accepting");
}

/// The admission of a new connection from `peer` (see `admission`): the listener's `max_connections` (its open
/// connections `count`), then its client address's rate and open connections, over all listeners.
fn admit(plane: &PlaneShared, count: &AtomicUsize, peer: SocketAddr) -> Result<Option<Box<ClientSlot>>, Refusal> {
    let rt = plane.runtime.load();
    let limits = &rt.limits;
    if limits.max_connections > 0 && count.load(Ordering::Acquire) >= limits.max_connections {
        return Err(Refusal::MaxConnections);
    }
    let slot = plane.clients.admit(peer.ip(), limits.max_conns_per_client, limits.new_conns_per_client_per_sec)?;
    // Boxed: it travels with the connection (in every hand-over to a fast-path loop).
    Ok(Some(Box::new(slot)))
}

/// Gives an accepted connection to a fast-path loop; gives the stream (and its client slot) back when that is not
/// possible.
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
    client: Option<Box<ClientSlot>>,
) -> Result<(), (tokio::net::TcpStream, Option<Box<ClientSlot>>)> {
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
    let guard = ActiveGuard::new(plane, name, count.clone(), client);
    let h = Handoff { stream: std, peer, local, listener: name.clone(), guard, stop: stop.clone() };
    loops.submit(h).map_err(|h| {
        // No loop left (shutting down): the hyper path serves it; its guard counts again (with the same slot).
        let mut guard = h.guard;
        let client = guard.client.take();
        drop(guard);
        count.fetch_add(1, Ordering::AcqRel);
        let stream = tokio::net::TcpStream::from_std(h.stream)
            .expect("a stream that was registered a moment ago registers again");
        (stream, client)
    })
}
