//! The HTTP/1.1 backend connections in use by one client connection's requests, driven by that client
//! connection's task.
//!
//! hyper's pooled client runs every backend connection in a task of its own, so each request and each response
//! crosses between two tasks (and a third one returns the connection to the pool). Here a request takes a
//! connection from the group's shared cache ([`super::h1::H1Pool`]) and the client connection's task polls it
//! ([`LocalConns::poll_drive`], next to the client connection) while the exchange lasts; once the response is
//! over the connection goes back to the shared cache, for the next request of any client connection.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};

use super::counted::ReadCount;
use super::h1::{H1Conn, H1Driver, H1Pool, H1Sender};

/// A backend connection lent to one request.
pub(crate) struct Lease {
    id: u64,
    /// Sends the request.
    pub sender: H1Sender,
    /// Bytes read from the backend so far.
    pub read: ReadCount,
    /// Whether the connection carried a response before this request.
    pub reused: bool,
}

/// Set on a connection whose response head arrived: park it in the shared cache once the response is over.
struct HandBack {
    sender: H1Sender,
    keep: Duration,
}

/// A backend connection's I/O, polled by the client connection's task.
struct Driven {
    id: u64,
    pool: Arc<H1Pool>,
    addr: SocketAddr,
    driver: Option<H1Driver>,
    read: ReadCount,
    hand_back: Option<HandBack>,
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
        if this.hand_back.as_ref().is_some_and(|h| h.sender.is_ready()) {
            if let (Some(h), Some(driver)) = (this.hand_back.take(), this.driver.take()) {
                let conn = H1Conn { sender: h.sender, driver, read: this.read.clone(), reused: true };
                this.pool.put(this.addr, conn, h.keep);
            }
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

#[derive(Default)]
struct Inner {
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

/// The backend connections one client connection's requests are using.
#[derive(Default)]
pub(crate) struct LocalConns {
    inner: Mutex<Inner>,
}

impl LocalConns {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain data behind: keep using it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts driving `conn` (from `pool`, to `addr`) in this client connection's task; returns its lease.
    pub fn adopt(&self, pool: &Arc<H1Pool>, addr: SocketAddr, conn: H1Conn) -> Lease {
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        let H1Conn { sender, driver, read, reused } = conn;
        inner.drivers.push(Driven {
            id,
            pool: pool.clone(),
            addr,
            driver: Some(driver),
            read: read.clone(),
            hand_back: None,
        });
        inner.wake();
        Lease { id, sender, read, reused }
    }

    /// Gives a lease back once its response head arrived: the connection is parked in the shared cache, for
    /// `keep` at most, as soon as the response is over.
    pub fn give_back(&self, lease: Lease, keep: Duration) {
        let mut inner = self.lock();
        if let Some(d) = inner.drivers.iter_mut().find(|d| d.id == lease.id) {
            d.hand_back = Some(HandBack { sender: lease.sender, keep });
        }
        inner.wake();
    }

    /// Drives every backend connection in use; never completes. Polled by the client connection's task next to
    /// the client connection itself.
    pub fn poll_drive(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.lock();
        if !inner.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            inner.waker = Some(cx.waker().clone());
        }
        while let Poll::Ready(Some(())) = inner.drivers.poll_next_unpin(cx) {}
        Poll::Pending
    }

    /// Backend connections in use (not yet back in the shared cache or closed).
    #[cfg(test)]
    pub fn in_use(&self) -> usize {
        self.lock().drivers.len()
    }

    /// Called when the client connection ends: connections whose response is over are parked in the shared
    /// cache, the others (an exchange cut short) are closed.
    pub fn release(&self) {
        let drivers = std::mem::take(&mut self.lock().drivers);
        for mut d in drivers {
            if let (Some(h), Some(driver)) = (d.hand_back.take(), d.driver.take()) {
                let conn = H1Conn { sender: h.sender, driver, read: d.read.clone(), reused: true };
                d.pool.put(d.addr, conn, h.keep);
            }
        }
    }
}
