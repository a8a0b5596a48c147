//! Batched UDP I/O with `recvmmsg`/`sendmmsg` (Linux): one system call moves up to [`BATCH`] datagrams, which is
//! where most of the per-query cost of a small authoritative answer goes. All buffers are allocated once.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use socket2::SockAddr;

/// Datagrams per system call (the receive takes what is queued, up to this many).
pub const BATCH: usize = 64;
/// Largest datagram received.
const MAX_DGRAM: usize = 65535;
/// Distance between receive buffers: not a multiple of 4 KiB, so that the buffers' first bytes (all a small
/// query touches) fall in different cache sets instead of evicting one another.
const STRIDE: usize = MAX_DGRAM + 1 + 5 * 64;

/// Receive buffers, their addresses and the kernel's message headers (which point into them).
pub struct RecvBatch {
    arena: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    count: usize,
}

impl RecvBatch {
    /// Buffers for [`BATCH`] datagrams.
    pub fn new() -> RecvBatch {
        let mut arena = vec![0u8; BATCH * STRIDE];
        // SAFETY: sockaddr_storage and mmsghdr are plain data; all-zero is a valid value.
        let mut addrs: Vec<libc::sockaddr_storage> = (0..BATCH).map(|_| unsafe { zeroed() }).collect();
        let mut iovs: Vec<libc::iovec> = arena
            .chunks_exact_mut(STRIDE)
            .map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: MAX_DGRAM })
            .collect();
        let mut hdrs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { zeroed() }).collect();
        for (i, h) in hdrs.iter_mut().enumerate() {
            h.msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_iov = &mut iovs[i];
            h.msg_hdr.msg_iovlen = 1;
        }
        RecvBatch { arena, addrs, iovs, hdrs, count: 0 }
    }

    /// Waits (up to the socket's read timeout) for at least one datagram and takes all that are queued.
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        for h in self.hdrs.iter_mut() {
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_flags = 0;
        }
        debug_assert_eq!(self.iovs.len(), BATCH);
        // SAFETY: `hdrs` holds BATCH headers whose name and iovec pointers refer to live buffers owned by self
        // (heap allocations that never move: `arena` is never resized), valid for writes of the lengths given.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.count = 0;
            return Err(io::Error::last_os_error());
        }
        self.count = n as usize;
        Ok(self.count)
    }

    /// The bytes of datagram `i` of the last receive.
    pub fn payload(&self, i: usize) -> Option<&[u8]> {
        let len = (self.hdrs[..self.count].get(i)?.msg_len as usize).min(MAX_DGRAM);
        self.arena.get(i * STRIDE..i * STRIDE + len)
    }

    /// Datagram `i` of the last receive and its source.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        if i >= self.count {
            return None;
        }
        let len = (self.hdrs[i].msg_len as usize).min(MAX_DGRAM);
        let src = to_socket_addr(&self.addrs[i])?;
        Some((&self.arena[i * STRIDE..i * STRIDE + len], src))
    }
}

fn to_socket_addr(a: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match a.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large and aligned enough for.
            let v4: &libc::sockaddr_in = unsafe { &*(a as *const libc::sockaddr_storage).cast() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(v4.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let v6: &libc::sockaddr_in6 = unsafe { &*(a as *const libc::sockaddr_storage).cast() };
            let ip = std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(v6.sin6_port),
                v6.sin6_flowinfo,
                v6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Outgoing datagrams of one batch, with reusable buffers.
pub struct SendBatch {
    bufs: Vec<Vec<u8>>,
    dests: Vec<SockAddr>,
    len: usize,
}

impl SendBatch {
    /// Room for [`BATCH`] answers.
    pub fn new() -> SendBatch {
        SendBatch {
            bufs: (0..BATCH).map(|_| Vec::with_capacity(4096)).collect(),
            dests: Vec::with_capacity(BATCH),
            len: 0,
        }
    }

    /// The buffer for the next answer (commit it with [`SendBatch::push`]).
    pub fn next_buf(&mut self) -> &mut Vec<u8> {
        &mut self.bufs[self.len.min(BATCH - 1)]
    }

    /// Queues the buffer last returned by `next_buf` for `dest`.
    pub fn push(&mut self, dest: SocketAddr) {
        if self.len < BATCH {
            self.dests.push(SockAddr::from(dest));
            self.len += 1;
        }
    }

    /// Sends everything queued (errors on single datagrams, e.g. an unreachable client, are skipped).
    pub fn flush(&mut self, sock: &UdpSocket) {
        if self.len == 0 {
            return;
        }
        let mut iovs: [libc::iovec; BATCH] =
            // SAFETY: iovec is plain data; all-zero is valid.
            unsafe { zeroed() };
        // SAFETY: as above for mmsghdr.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for (iov, buf) in iovs.iter_mut().zip(&self.bufs[..self.len]) {
            *iov = libc::iovec { iov_base: buf.as_ptr() as *mut libc::c_void, iov_len: buf.len() };
        }
        for i in 0..self.len {
            hdrs[i].msg_hdr.msg_name = self.dests[i].as_ptr() as *mut libc::c_void;
            hdrs[i].msg_hdr.msg_namelen = self.dests[i].len();
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        let mut off = 0;
        while off < self.len {
            // SAFETY: hdrs[off..len] are initialised headers pointing at live buffers (the kernel only reads them).
            let n = unsafe {
                libc::sendmmsg(sock.as_raw_fd(), hdrs[off..].as_mut_ptr(), (self.len - off) as libc::c_uint, 0)
            };
            if n <= 0 {
                if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    off += 1; // skip the datagram that failed
                }
            } else {
                off += n as usize;
            }
        }
        self.len = 0;
        self.dests.clear();
    }
}
