//! Listening sockets: binding (SO_REUSEADDR, large backlog) and the accept loop with the connection limits (per
//! listener, per client address: see `admission`) and the PROXY protocol (see `proxy_protocol`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use padis_model::handover::{self, Registration, Tag};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{ClientSlot, Refusal};
use crate::conn::{self, Accepted, ActiveGuard};
use crate::error::L7Error;
use crate::fast::{FastLoops, Handoff};
use crate::plane::PlaneShared;
use crate::runtime::Runtime;

/// The listening socket of listener `name` on its configured address `addr`: the one the process this one
/// replaces handed over (see `padis_model::handover`), or a fresh one (SO_REUSEADDR, backlog 4096); registered
/// for the next upgrade while the returned registration lives.
pub(crate) fn bind(name: &str, addr: SocketAddr) -> Result<(TcpListener, Registration), L7Error> {
    let err = |source| L7Error::Bind { name: name.to_string(), addr, source };
    let tag = Tag::new("l7", addr, name);
    let socket: std::net::TcpListener = match handover::take(&tag) {
        Some(fd) => {
            let l = std::net::TcpListener::from(fd);
            tracing::info!(listener = name, %addr, "listening socket taken over from the previous process");
            l
        }
        None => {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
            socket.set_reuse_address(true).map_err(err)?;
            if addr.is_ipv6() {
                socket.set_only_v6(true).map_err(err)?;
            }
            socket.bind(&addr.into()).map_err(err)?;
            socket.listen(4096).map_err(err)?;
            socket.into()
        }
    };
    socket.set_nonblocking(true).map_err(err)?;
    let reg = handover::register(tag, &socket).map_err(err)?;
    Ok((TcpListener::from_std(socket).map_err(err)?, reg))
}

/// Accepts connections until `stop`: those of a TCP listener are relayed (`tcp`), plaintext ones go to the fast
/// path's loops (`fast`) when the listener uses it, the others are each served in their own task on `tracker`.
/// On a listener with `proxy_protocol`, a connection from a trusted source is first read up to the end of its
/// PROXY header in a task of its own (see `proxy_protocol`); its client admission uses the address announced.
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
    let dispatch = Dispatch {
        plane: plane.clone(),
        name: name.clone(),
        count: count.clone(),
        stop: stop.clone(),
        hard,
        tracker: tracker.clone(),
        fast,
    };
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
        let local = stream.local_addr().unwrap_or_else(|_| listener.local_addr().unwrap_or(peer));
        let c = Conn { stream, peer, local };
        let rt = plane.runtime.load();
        let lrt = rt.listeners.get(&*name);
        if let Some(trusted) = lrt.and_then(|l| l.proxy.as_ref()) {
            if !trusted.contains(peer.ip()) {
                refuse(&plane, &name, c, crate::proxy_protocol::UNTRUSTED);
                continue;
            }
            if let Err(why) = admit_listener(&rt, &count) {
                refuse(&plane, &name, c, why.label());
                continue;
            }
            drop(rt);
            // Counted against `max_connections` while its header is awaited.
            count.fetch_add(1, Ordering::AcqRel);
            let pending = Pending(Some(count.clone()));
            let d = dispatch.clone();
            tracker.spawn(async move {
                let Some(c) = d.proxied(c).await else { return };
                let rt = d.plane.runtime.load();
                let client = match admit_client(&d.plane, &rt, &d.name, c.peer) {
                    Ok(slot) => slot,
                    Err(why) => return refuse(&d.plane, &d.name, c, why.label()),
                };
                pending.keep();
                d.dispatch(&rt, c, client);
            });
            continue;
        }
        let client = match admit_listener(&rt, &count).and_then(|()| admit_client(&plane, &rt, &name, peer)) {
            Ok(slot) => slot,
            Err(why) => {
                refuse(&plane, &name, c, why.label());
                continue;
            }
        };
        count.fetch_add(1, Ordering::AcqRel);
        dispatch.dispatch(&rt, c, client);
    }
    tracing::info!(listener = &*name, "listener stopped accepting");
}

/// An accepted connection and its addresses (the client's and the one it reached: those of its PROXY header on
/// a `proxy_protocol` listener).
struct Conn {
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
}

/// Closes a connection refused at accept and counts it (`padis_http_connections_rejected_total`).
fn refuse(plane: &PlaneShared, name: &str, c: Conn, reason: &'static str) {
    tracing::debug!(listener = name, peer = %c.peer, reason, "connection refused");
    plane.metrics.rejected.with_label_values(&[name, reason]).inc();
    // Reset rather than close: no TIME_WAIT kept here for a refused connection.
    let _ = c.stream.set_zero_linger();
}

/// A connection counted in its listener's open connections while its PROXY header is awaited: uncounted when
/// dropped (the connection went nowhere).
struct Pending(Option<Arc<AtomicUsize>>);

impl Pending {
    /// The connection goes on: its count is now its guard's.
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(count) = &self.0 {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Where an admitted connection of one listener goes (cloned into the task that awaits a PROXY header).
#[derive(Clone)]
struct Dispatch {
    plane: Arc<PlaneShared>,
    name: Arc<str>,
    count: Arc<AtomicUsize>,
    stop: CancellationToken,
    hard: CancellationToken,
    tracker: TaskTracker,
    fast: Option<FastLoops>,
}

impl Dispatch {
    /// Reads the PROXY header of a connection from a trusted source: the connection with the addresses it
    /// announces, or `None` when it was refused (counted) or the listener is stopping.
    async fn proxied(&self, mut c: Conn) -> Option<Conn> {
        let timeout = self.plane.runtime.load().limits.header_read_timeout;
        let read = tokio::select! {
            r = crate::proxy_protocol::read_header(&mut c.stream, timeout) => r,
            _ = self.stop.cancelled() => return None,
        };
        match read {
            Ok(Some(a)) => Some(Conn { peer: a.client, local: a.local, ..c }),
            Ok(None) => Some(c),
            Err(e) => {
                tracing::debug!(listener = &*self.name, peer = %c.peer, error = %e, "PROXY header refused");
                refuse(&self.plane, &self.name, c, e.label());
                None
            }
        }
    }

    /// Serves an admitted connection (counted in the listener's `count` already).
    fn dispatch(&self, rt: &Runtime, c: Conn, client: Option<Box<ClientSlot>>) {
        let Conn { stream, peer, local } = c;
        let (plane, name, count) = (&self.plane, &self.name, &self.count);
        let (tcp, fast_path) = rt.listeners.get(&**name).map_or((false, false), |l| (l.tcp.is_some(), l.fast_path));
        if tcp {
            // `mode = "tcp"`: relayed to a backend (see `tcp`).
            let a = Accepted { stream, peer, local, listener: name.clone(), count: count.clone(), client };
            self.tracker.spawn(crate::tcp::serve(plane.clone(), a, self.hard.clone()));
            return;
        }
        let (stream, client) = match (&self.fast, fast_path) {
            (Some(loops), true) => {
                match hand_to_loop(plane, loops, stream, peer, local, name, count, &self.stop, client) {
                    Ok(()) => return,
                    Err(back) => back,
                }
            }
            _ => (stream, client),
        };
        let a = Accepted { stream, peer, local, listener: name.clone(), count: count.clone(), client };
        self.tracker.spawn(conn::serve(plane.clone(), a, self.stop.clone(), self.hard.clone()));
    }
}

/// The listener's `max_connections` (its open connections `count`).
fn admit_listener(rt: &Runtime, count: &AtomicUsize) -> Result<(), Refusal> {
    let max = rt.limits.max_connections;
    if max > 0 && count.load(Ordering::Acquire) >= max {
        return Err(Refusal::MaxConnections);
    }
    Ok(())
}

/// The admission of a new connection from `peer`: the listener's `allow_cidrs`, then (see `admission`) its
/// client address's rate and open connections, over all listeners.
fn admit_client(
    plane: &PlaneShared,
    rt: &Runtime,
    name: &str,
    peer: SocketAddr,
) -> Result<Option<Box<ClientSlot>>, Refusal> {
    if rt.listeners.get(name).and_then(|l| l.allow.as_ref()).is_some_and(|allow| !allow.contains(peer.ip())) {
        return Err(Refusal::Acl);
    }
    let limits = &rt.limits;
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
