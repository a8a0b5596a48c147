//! The sends of one loop turn in one system call (io_uring).
//!
//! With plain `send` calls, each send that wakes a peer (a backend, a client) marks the loop's thread for
//! rescheduling, and the kernel switches to that peer when the call returns: the loop is preempted in the middle
//! of its turn, the peer finds one message instead of the turn's worth, sleeps again, and is woken again by the
//! next send. Submitted together, the sends all happen inside one `io_uring_enter`, and the peers run when the turn
//! is out, each finding everything the turn had for it. Sends are non-blocking (`MSG_DONTWAIT`: io_uring then
//! answers `EAGAIN` instead of waiting), so the call returns as soon as the kernel went through them.

use std::os::fd::RawFd;

use io_uring::{opcode, types, IoUring};

/// Sends per submission (the ring's size).
const RING: u32 = 256;

/// One send: a socket and the bytes to write.
pub(crate) struct Item {
    pub fd: RawFd,
    pub ptr: *const u8,
    pub len: usize,
}

// SAFETY: an item is only a description of a send; the pointer is read only inside `Sender::send`, whose caller
// vouches for it. The loop keeps its (emptied) list of items across await points, hence `Send`.
unsafe impl Send for Item {}

/// Batched non-blocking sends.
pub(crate) struct Sender {
    ring: Option<IoUring>,
}

const FLAGS: i32 = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;

impl Sender {
    /// A sender with its ring (plain `send` calls if the kernel refuses io_uring).
    pub fn new() -> Sender {
        let ring = IoUring::new(RING)
            .inspect_err(
                |e| tracing::info!(error = %e, "fast path: io_uring unavailable; one send call per connection"),
            )
            .ok();
        Sender { ring }
    }

    /// Sends every item; `results[i]` is the bytes item `i` sent or a negative errno (`-EIO` for a send whose
    /// completion could not be had: its connection is closed rather than left waiting).
    ///
    /// # Safety
    /// Each item's `ptr` must be valid for reads of `len` bytes until the call returns.
    pub unsafe fn send(&mut self, items: &[Item], results: &mut Vec<i32>) {
        results.clear();
        results.resize(items.len(), -libc::EIO);
        let ring = match &mut self.ring {
            Some(r) if items.len() > 1 => r,
            _ => {
                for (i, it) in items.iter().enumerate() {
                    // SAFETY: the caller guarantees the buffer; `send` writes nothing to it.
                    let n = unsafe { libc::send(it.fd, it.ptr.cast(), it.len, FLAGS) };
                    results[i] = if n < 0 {
                        -std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
                    } else {
                        n as i32
                    };
                }
                return;
            }
        };
        let mut broken = false;
        for (c, chunk) in items.chunks(RING as usize).enumerate() {
            let base = c * RING as usize;
            for (i, it) in chunk.iter().enumerate() {
                let len = u32::try_from(it.len).unwrap_or(u32::MAX);
                let sqe =
                    opcode::Send::new(types::Fd(it.fd), it.ptr, len).flags(FLAGS).build().user_data((base + i) as u64);
                // SAFETY: the buffer stays valid until the completion is reaped below (the caller's guarantee);
                // the ring has room for a whole chunk since every earlier chunk was reaped.
                if unsafe { ring.submission().push(&sqe) }.is_err() {
                    results[base + i] = -libc::EAGAIN;
                }
            }
            let mut want = chunk.len();
            while want > 0 {
                match ring.submit_and_wait(want) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "fast path: io_uring submit failed; back to send calls");
                        broken = true;
                        break;
                    }
                }
                for cqe in ring.completion() {
                    if let Some(r) = results.get_mut(cqe.user_data() as usize) {
                        *r = cqe.result();
                    }
                    want = want.saturating_sub(1);
                }
            }
            if broken {
                break;
            }
        }
        if broken {
            self.ring = None;
        }
    }
}
