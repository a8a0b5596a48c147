//! Polls a client connection, its HTTP/2 request streams and the backend connections it drives as one unit,
//! inside one task, absorbing the wake-ups they give each other.
//!
//! A request goes from the client connection (hyper server) to a backend connection (hyper client) through a
//! channel that wakes the backend side, and the response comes back through one that wakes the client side. Both
//! live in the client connection's task, so each such wake-up would otherwise send the whole task back through
//! the runtime's queue (behind every other ready connection) just to poll the other half: an extra task poll per
//! direction and a response that waits for a full scheduler round. [`Relay::poll`] gives each half a waker of its
//! own: a wake-up raised while the relay is polling only marks that half, and the relay polls it again at once; a
//! wake-up from outside (socket readiness, timers, other tasks) wakes the task as usual.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// The backend half (the client connection's backend connections and HTTP/2 request streams) needs polling.
const BACKENDS: u8 = 1;
/// The client half (the hyper server connection) needs polling.
const CLIENT: u8 = 2;
/// The relay is polling: wake-ups only mark their half.
const POLLING: u8 = 4;
/// Rounds of one poll before yielding to the runtime (other connections), when the halves keep waking each other.
const MAX_ROUNDS: usize = 8;

struct Shared {
    state: AtomicU8,
    task: AtomicWaker,
}

/// The waker handed to one half.
struct Half {
    shared: Arc<Shared>,
    bit: u8,
}

impl Wake for Half {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let prev = self.shared.state.fetch_or(self.bit, Ordering::AcqRel);
        // Not polling and nothing pending yet: the task must run. (Pending bits mean it was woken already.)
        if prev & (POLLING | BACKENDS | CLIENT) == 0 {
            self.shared.task.wake();
        }
    }
}

/// The wake-up relay of one client connection.
pub(crate) struct Relay {
    shared: Arc<Shared>,
    backends: Waker,
    client: Waker,
}

impl Relay {
    /// A relay with both halves due for a first poll.
    pub fn new() -> Relay {
        let shared = Arc::new(Shared { state: AtomicU8::new(BACKENDS | CLIENT), task: AtomicWaker::new() });
        let backends = Waker::from(Arc::new(Half { shared: shared.clone(), bit: BACKENDS }));
        let client = Waker::from(Arc::new(Half { shared: shared.clone(), bit: CLIENT }));
        Relay { shared, backends, client }
    }

    /// Marks both halves for polling (after the client connection was changed from outside, e.g. told to shut
    /// down gracefully).
    pub fn mark_all(&self) {
        self.shared.state.fetch_or(BACKENDS | CLIENT, Ordering::AcqRel);
    }

    /// Polls the halves that were woken: `backends` first (it delivers responses), then `client` (it sends
    /// requests and writes responses), again as long as either wakes the other, up to [`MAX_ROUNDS`]. Completes
    /// with `client`'s result; `backends` never completes.
    pub fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        mut backends: impl FnMut(&mut Context<'_>),
        mut client: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.shared.task.register(cx.waker());
        for _ in 0..MAX_ROUNDS {
            let due = self.shared.state.swap(POLLING, Ordering::AcqRel);
            if due & BACKENDS != 0 {
                backends(&mut Context::from_waker(&self.backends));
            }
            if due & CLIENT != 0 {
                if let Poll::Ready(v) = client(&mut Context::from_waker(&self.client)) {
                    self.shared.state.store(0, Ordering::Release);
                    return Poll::Ready(v);
                }
            }
            if self.shared.state.compare_exchange(POLLING, 0, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return Poll::Pending;
            }
        }
        // Still busy: keep the marks, let the other connections run, come back.
        self.shared.state.fetch_and(!POLLING, Ordering::AcqRel);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn wakes_between_halves_are_absorbed_and_outside_wakes_reach_the_task() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let task = Waker::from(count.clone());
        let mut cx = Context::from_waker(&task);
        let relay = Relay::new();
        let saved: std::cell::RefCell<Option<Waker>> = std::cell::RefCell::new(None);
        let (mut b_polls, mut c_polls) = (0, 0);
        // First poll: the client half sends a request (wakes the backend half), the backend half then runs once
        // more in the same poll.
        let r: Poll<()> = relay.poll(
            &mut cx,
            |cx| {
                b_polls += 1;
                *saved.borrow_mut() = Some(cx.waker().clone());
            },
            |cx| {
                c_polls += 1;
                if c_polls == 1 {
                    saved.borrow().as_ref().expect("backends polled first").wake_by_ref();
                }
                let _ = cx;
                Poll::Pending
            },
        );
        assert!(r.is_pending());
        assert_eq!((b_polls, c_polls), (2, 1));
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "no task wake-up for a wake raised inside the relay");
        // A wake from outside (the backend socket) wakes the task once, however often it is raised.
        let backend_waker = saved.borrow().clone().expect("a backend waker");
        backend_waker.wake_by_ref();
        backend_waker.wake_by_ref();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        // The next poll polls only the half that was woken.
        let r: Poll<u8> = relay.poll(&mut cx, |_| b_polls += 1, |_| Poll::Ready(7));
        assert_eq!(r, Poll::Pending);
        assert_eq!(b_polls, 3);
        relay.mark_all();
        assert_eq!(relay.poll(&mut cx, |_| {}, |_| Poll::Ready(7)), Poll::Ready(7));
    }
}
