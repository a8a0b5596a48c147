//! The HTTP/2 request streams of one client connection, run inside that connection's task.
//!
//! hyper's HTTP/2 server hands every request stream to an executor. With tokio's, each stream is a task of its
//! own: its request crosses to the connection task (which drives the backend connections), its response comes
//! back, then crosses again to the connection task that writes the frames — four task hand-offs per request.
//! [`LocalExec`] queues the streams for the connection's own task instead, which polls them through its
//! [`Relay`](crate::relay::Relay) next to the client and backend connections.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use futures_util::stream::{FuturesUnordered, StreamExt};

type Stream = Pin<Box<dyn Future<Output = ()> + Send>>;

#[derive(Default)]
struct Queue {
    new: Vec<Stream>,
    waker: Option<Waker>,
}

/// The executor given to hyper for one client connection: it queues request streams for [`LocalStreams`].
#[derive(Clone, Default)]
pub(crate) struct LocalExec {
    queue: Arc<Mutex<Queue>>,
}

impl LocalExec {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Plain data behind the lock: a panic elsewhere does not make it unusable.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let waker = {
            let mut q = self.lock();
            q.new.push(Box::pin(fut));
            q.waker.clone()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The running request streams of one client connection (owned by its task).
pub(crate) struct LocalStreams {
    exec: LocalExec,
    running: FuturesUnordered<Stream>,
}

impl LocalStreams {
    /// The streams queued by `exec`.
    pub fn new(exec: LocalExec) -> LocalStreams {
        LocalStreams { exec, running: FuturesUnordered::new() }
    }

    /// Starts the queued streams and polls the ready ones; never completes.
    pub fn poll(&mut self, cx: &mut Context<'_>) {
        {
            let mut q = self.exec.lock();
            if !q.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                q.waker = Some(cx.waker().clone());
            }
            for s in q.new.drain(..) {
                self.running.push(s);
            }
        }
        while let Poll::Ready(Some(())) = self.running.poll_next_unpin(cx) {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn queued_streams_run_when_polled_and_wake_the_owner() {
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let exec = LocalExec::default();
        let mut streams = LocalStreams::new(exec.clone());
        streams.poll(&mut cx);
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        exec.execute(async move {
            d.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "a new stream wakes the connection task");
        assert_eq!(done.load(Ordering::SeqCst), 0, "nothing runs outside the connection task");
        streams.poll(&mut cx);
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }
}
