//! Zero-copy relaying on Linux: splice(2) from one socket into a pipe and from the pipe into the other socket, so
//! the bytes never enter user space. Driven by tokio's readiness of the two sockets.
//!
//! Pipes come from a process-wide pool (HAProxy's pipe pool): a pipe costs four system calls to make (pipe2, the
//! size change) and two to close, more than a short connection's whole relay; only empty pipes go back to it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use prometheus::IntCounter;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved per splice call, and the pipe's capacity when the kernel allows it.
const CHUNK: usize = 1 << 20;

/// Empty pipes kept for reuse at most (each holds two descriptors, and no page while empty).
const POOL_MAX: usize = 256;

/// The pool of empty pipes.
static POOL: Mutex<Vec<PipeFds>> = Mutex::new(Vec::new());

/// The two ends of a pipe.
struct PipeFds {
    read: OwnedFd,
    write: OwnedFd,
}

impl PipeFds {
    /// A new non-blocking pipe, enlarged to [`CHUNK`] where allowed.
    fn create() -> io::Result<PipeFds> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded: both are open descriptors owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A smaller pipe (the default 64 KiB, or the limit of pipe-max-size) still works: ignore a refusal.
        // SAFETY: F_SETPIPE_SZ on an open pipe descriptor.
        let _ = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int) };
        Ok(PipeFds { read, write })
    }
}

/// A pipe for one direction, taken from the pool (or made) and given back to it when dropped empty.
pub(crate) struct Pipe {
    fds: Option<PipeFds>,
    /// Bytes in the pipe not yet spliced out: a pipe with bytes left is closed, not pooled.
    pending: usize,
}

impl Pipe {
    /// An empty pipe from the pool, or a new one.
    pub fn take() -> io::Result<Pipe> {
        let pooled = POOL.lock().map(|mut p| p.pop()).unwrap_or(None);
        let fds = match pooled {
            Some(fds) => fds,
            None => PipeFds::create()?,
        };
        Ok(Pipe { fds: Some(fds), pending: 0 })
    }

    fn fds(&self) -> &PipeFds {
        self.fds.as_ref().expect("a pipe has its descriptors until dropped")
    }

    /// Empty pipes in the pool.
    #[cfg(test)]
    pub fn pooled() -> usize {
        POOL.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// `count` applied to both ends' descriptors.
    #[cfg(test)]
    pub fn queued<T>(&self, count: impl Fn(RawFd) -> T) -> (T, T) {
        (count(self.fds().read.as_raw_fd()), count(self.fds().write.as_raw_fd()))
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        let Some(fds) = self.fds.take() else { return };
        if self.pending == 0 {
            if let Ok(mut pool) = POOL.lock() {
                if pool.len() < POOL_MAX {
                    pool.push(fds);
                }
            }
        }
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    // SAFETY: both are open descriptors; null offsets (sockets and pipes have none).
    let n = unsafe { libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, flags) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Moves `from`'s bytes to `to` through `pipe` until end of stream, then shuts `to`'s sending half.
pub(crate) async fn pipe(
    from: &TcpStream,
    to: &TcpStream,
    mut pipe: Pipe,
    counter: &IntCounter,
    last: &AtomicU64,
    start: Instant,
) -> io::Result<()> {
    let (pipe_read, pipe_write) = (pipe.fds().read.as_raw_fd(), pipe.fds().write.as_raw_fd());
    loop {
        // The pipe is empty here: EAGAIN can only mean the socket has nothing to read. Tried before waiting:
        // after a full chunk, more is usually there.
        let n = loop {
            match from.try_io(Interest::READABLE, || splice(from.as_raw_fd(), pipe_write, CHUNK)) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => from.readable().await?,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
        }
        pipe.pending = n;
        while pipe.pending > 0 {
            match to.try_io(Interest::WRITABLE, || splice(pipe_read, to.as_raw_fd(), pipe.pending)) {
                Ok(m) => pipe.pending -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
                Err(e) => return Err(e),
            }
        }
        counter.inc_by(n as u64);
        last.store(super::relay::elapsed_ms(start), Ordering::Relaxed);
    }
}
