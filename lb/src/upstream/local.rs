//! The HTTP/1.1 backend connections one client connection uses, driven by that client connection's task.
//!
//! hyper's pooled client runs every backend connection in a task of its own, so each request and each response
//! crosses between two tasks (and a third one returns the connection to the pool). Here the client connection's
//! task polls its backend connections itself ([`LocalConns::poll_drive`], next to the client connection), and a
//! connection goes back to this client connection's idle list as soon as the response head is in: the next
//! request of the same client reuses it with no lock contention and no task hand-off. When the client
//! connection ends, its idle backend connections are parked in the group's shared pool for other clients.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use futures_util::stream::{FuturesUnordered, StreamExt};

use super::h1::{H1Driver, H1Pool, H1Sender};

/// Idle backend connections one client connection keeps for itself; older ones go to the shared pool.
const MAX_LOCAL_IDLE: usize = 8;

/// A backend connection lent to one request.
pub(crate) struct Lease {
    id: u64,
    /// Sends the request.
    pub sender: H1Sender,
}

struct Idle {
    id: u64,
    pool: Arc<H1Pool>,
    addr: SocketAddr,
    sender: H1Sender,
}

/// A backend connection's I/O, polled by the client connection's task.
struct Driven {
    id: u64,
    pool: Arc<H1Pool>,
    addr: SocketAddr,
    driver: Option<H1Driver>,
    /// Set when the connection should move to the shared pool as soon as it is idle.
    hand_back: Option<H1Sender>,
}

impl Future for Driven {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let Some(driver) = this.driver.as_mut() else { return Poll::Ready(()) };
        if let Poll::Ready(r) = driver.as_mut().poll(cx) {
            if let Err(e) = r {
                tracing::debug!(backend = %this.addr, error = %e, "backend connection ended with an error");
            }
            return Poll::Ready(());
        }
        if this.hand_back.as_ref().is_some_and(|s| s.is_ready()) {
            if let (Some(sender), Some(driver)) = (this.hand_back.take(), this.driver.take()) {
                this.pool.put(this.addr, sender, driver);
            }
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

#[derive(Default)]
struct Inner {
    idle: Vec<Idle>,
    drivers: FuturesUnordered<Driven>,
    waker: Option<Waker>,
    next_id: u64,
}

impl Inner {
    fn wake(&self) {
        if let Some(w) = &self.waker {
            w.wake_by_ref();
        }
    }
}

/// The backend connections of one client connection.
#[derive(Default)]
pub(crate) struct LocalConns {
    inner: Mutex<Inner>,
}

impl LocalConns {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain data behind: keep using it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle connection of this client connection to `addr` in `pool`, if one is ready.
    pub fn checkout(&self, pool: &Arc<H1Pool>, addr: SocketAddr) -> Option<Lease> {
        let mut inner = self.lock();
        let mut i = inner.idle.len();
        while i > 0 {
            i -= 1;
            let e = &inner.idle[i];
            if e.addr != addr || !Arc::ptr_eq(&e.pool, pool) {
                continue;
            }
            if e.sender.is_closed() {
                inner.idle.swap_remove(i);
            } else if e.sender.is_ready() {
                let e = inner.idle.swap_remove(i);
                return Some(Lease { id: e.id, sender: e.sender });
            }
        }
        None
    }

    /// Starts driving a connection from `pool` to `addr` in this client connection's task; returns its lease.
    pub fn adopt(&self, pool: &Arc<H1Pool>, addr: SocketAddr, sender: H1Sender, driver: H1Driver) -> Lease {
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        inner.drivers.push(Driven { id, pool: pool.clone(), addr, driver: Some(driver), hand_back: None });
        inner.wake();
        Lease { id, sender }
    }

    /// Gives a lease back once its response head arrived; the connection is reused once the response is over.
    /// Beyond [`MAX_LOCAL_IDLE`], the oldest idle connection moves to the shared pool.
    pub fn checkin(&self, pool: &Arc<H1Pool>, addr: SocketAddr, lease: Lease) {
        let mut inner = self.lock();
        inner.idle.push(Idle { id: lease.id, pool: pool.clone(), addr, sender: lease.sender });
        if inner.idle.len() > MAX_LOCAL_IDLE {
            let oldest = inner.idle.remove(0);
            if let Some(d) = inner.drivers.iter_mut().find(|d| d.id == oldest.id) {
                d.hand_back = Some(oldest.sender);
            }
            inner.wake();
        }
    }

    /// Drives every backend connection of this client connection; never completes. Polled by the client
    /// connection's task next to the client connection itself.
    pub fn poll_drive(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.lock();
        if !inner.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            inner.waker = Some(cx.waker().clone());
        }
        while let Poll::Ready(Some(())) = inner.drivers.poll_next_unpin(cx) {}
        Poll::Pending
    }

    /// Called when the client connection ends: idle backend connections are parked in their shared pools, the
    /// others are closed.
    pub fn release(&self) {
        let mut inner = self.lock();
        let mut idle = std::mem::take(&mut inner.idle);
        let drivers = std::mem::take(&mut inner.drivers);
        drop(inner);
        for mut d in drivers {
            let sender = match d.hand_back.take() {
                Some(s) => Some(s),
                None => idle.iter().position(|e| e.id == d.id).map(|i| idle.swap_remove(i).sender),
            };
            if let (Some(sender), Some(driver)) = (sender, d.driver.take()) {
                d.pool.put(d.addr, sender, driver);
            }
        }
    }
}
