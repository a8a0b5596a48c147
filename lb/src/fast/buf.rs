//! Per-connection buffers of the loop: a read buffer (initialised once, no zeroing per read) and an output
//! buffer with what was already sent.

use std::io::{self, ErrorKind, Read, Write};

use super::OUT_KEEP;

/// A read buffer: initialised once, filled at `end`, consumed from `start`.
pub(super) struct Buf {
    pub(super) data: Vec<u8>,
    start: usize,
    end: usize,
    /// The size it starts with and goes back to when empty.
    base: usize,
}

impl Buf {
    pub(super) fn new(size: usize) -> Buf {
        Buf { data: vec![0; size], start: 0, end: 0, base: size }
    }

    pub(super) fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub(super) fn len(&self) -> usize {
        self.end - self.start
    }

    pub(super) fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Takes `n` bytes off the front; an emptied buffer that had grown past `4 * base` goes back to `base` bytes
    /// (a large head or response passed through once does not keep its memory on an idle connection).
    pub(super) fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.data.len() > 4 * self.base {
                self.data = vec![0; self.base];
            }
        }
    }

    /// The unconsumed bytes, for decrypting in place.
    pub(super) fn filled_mut(&mut self) -> &mut [u8] {
        &mut self.data[self.start..self.end]
    }

    /// At least `n` bytes of room at the end (moving the data to the front, or growing, as needed).
    pub(super) fn reserve(&mut self, n: usize) -> &mut [u8] {
        if self.data.len() - self.end < n && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.data.len() - self.end < n {
            let grown = (self.end + n).max(self.data.len() * 2);
            self.data.resize(grown, 0);
        }
        &mut self.data[self.end..]
    }

    /// Takes `n` bytes written into the room [`Buf::reserve`] or [`Buf::space`] gave as filled.
    pub(super) fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.data.len());
    }

    /// Appends `bytes` (growing past any limit: the caller bounds how much it appends).
    pub(super) fn push(&mut self, bytes: &[u8]) {
        self.reserve(bytes.len())[..bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// Room to read into (moving the data to the front first when that makes room), growing up to `max`.
    pub(super) fn space(&mut self, max: usize) -> &mut [u8] {
        if self.end == self.data.len() && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.data.len() && self.data.len() < max {
            let grown = (self.data.len() * 2).min(max);
            self.data.resize(grown, 0);
        }
        &mut self.data[self.end..]
    }

    /// Reads from `sock` until it would block, the buffer is full (`max`) or the peer closed: whether it
    /// closed (read 0), and whether the buffer filled up (more may be waiting). A short read is taken as "nothing
    /// more for now" (edge-triggered readiness reports what arrives later) unless `to_end`: the peer's close was
    /// reported, and the read that sees it must be made (its edge is already consumed).
    pub(super) fn fill(
        &mut self,
        sock: &mut mio::net::TcpStream,
        max: usize,
        to_end: bool,
    ) -> io::Result<(bool, bool)> {
        loop {
            let space = self.space(max);
            let room = space.len();
            if room == 0 {
                return Ok((false, true));
            }
            match sock.read(space) {
                Ok(0) => return Ok((true, false)),
                Ok(n) => {
                    self.end += n;
                    if n < room && !to_end {
                        return Ok((false, false));
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok((false, false)),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Output towards one peer.
#[derive(Default)]
pub(super) struct Out {
    pub(super) data: Vec<u8>,
    pos: usize,
}

impl Out {
    /// The bytes not sent yet.
    pub(super) fn unsent(&self) -> &[u8] {
        &self.data[self.pos..]
    }

    /// How many bytes are not sent yet.
    pub(super) fn pending(&self) -> usize {
        self.data.len() - self.pos
    }

    /// Takes the result of a send of the pending bytes (bytes sent, or a negative errno), writing on if it was
    /// cut short; `Ok(true)` when everything went out.
    pub(super) fn sent(&mut self, result: i32, sock: &mut mio::net::TcpStream) -> io::Result<bool> {
        match result {
            n if n >= 0 => self.pos += n as usize,
            e if -e == libc::EAGAIN || -e == libc::EINTR => return Ok(false),
            e => return Err(io::Error::from_raw_os_error(-e)),
        }
        self.flush(sock)
    }

    /// Forgets everything (it was taken elsewhere, e.g. encrypted), keeping the capacity.
    pub(super) fn clear(&mut self) {
        self.data.clear();
        self.pos = 0;
    }

    /// Writes what it can; `Ok(true)` when everything went out.
    pub(super) fn flush(&mut self, sock: &mut mio::net::TcpStream) -> io::Result<bool> {
        while self.pos < self.data.len() {
            match sock.write(&self.data[self.pos..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.pos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.data.clear();
        self.pos = 0;
        if self.data.capacity() > OUT_KEEP {
            // A large response went out: do not keep its memory on the connection.
            self.data = Vec::new();
        }
        Ok(true)
    }
}
