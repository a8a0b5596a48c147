//! Batched UDP I/O with `recvmmsg`/`sendmmsg` (Linux): one system call moves up to [`BATCH`] datagrams, which is
//! where most of the per-query cost of a small authoritative answer goes.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use socket2::SockAddr;

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// Largest datagram received.
const MAX_DGRAM: usize = 65535;

/// Receive buffers and their addresses.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    addrs: Vec<libc::sockaddr_storage>,
    lens: Vec<usize>,
    count: usize,
}

impl RecvBatch {
    /// Buffers for [`BATCH`] datagrams.
    pub fn new() -> RecvBatch {
        RecvBatch {
            bufs: (0..BATCH).map(|_| vec![0u8; MAX_DGRAM]).collect(),
            // SAFETY: sockaddr_storage is plain data; all-zero is a valid (unspecified) value.
            addrs: (0..BATCH).map(|_| unsafe { zeroed() }).collect(),
            lens: vec![0; BATCH],
            count: 0,
        }
    }

    /// Waits (up to the socket's read timeout) for at least one datagram and takes all that are queued.
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        let mut iovs: Vec<libc::iovec> = self
            .bufs
            .iter_mut()
            .map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() })
            .collect();
        // SAFETY: mmsghdr is plain data; every pointer set below points into `iovs`/`self.addrs`, which outlive
        // the call and are not moved during it.
        let mut hdrs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { zeroed() }).collect();
        for (i, h) in hdrs.iter_mut().enumerate() {
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut iovs[i];
            h.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `hdrs` holds BATCH initialised headers whose buffers are valid for writes of their lengths.
        let n = unsafe {
            libc::recvmmsg(sock.as_raw_fd(), hdrs.as_mut_ptr(), BATCH as libc::c_uint, libc::MSG_WAITFORONE, std::ptr::null_mut())
        };
        if n < 0 {
            self.count = 0;
            return Err(io::Error::last_os_error());
        }
        self.count = n as usize;
        for (i, h) in hdrs.iter().take(self.count).enumerate() {
            self.lens[i] = h.msg_len as usize;
        }
        Ok(self.count)
    }

    /// Datagram `i` of the last receive and its source.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        if i >= self.count {
            return None;
        }
        let src = to_socket_addr(&self.addrs[i])?;
        Some((&self.bufs[i][..self.lens[i]], src))
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
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(ip, u16::from_be(v6.sin6_port), v6.sin6_flowinfo, v6.sin6_scope_id)))
        }
        _ => None,
    }
}

/// Sends `msgs` (payload, destination) with as few system calls as possible. Errors on single datagrams (e.g. an
/// unreachable client) are skipped.
pub fn send_all(sock: &UdpSocket, msgs: &[(Vec<u8>, SocketAddr)]) {
    let addrs: Vec<SockAddr> = msgs.iter().map(|(_, a)| SockAddr::from(*a)).collect();
    let mut iovs: Vec<libc::iovec> =
        msgs.iter().map(|(b, _)| libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() }).collect();
    // SAFETY: plain data; pointers below refer to `addrs`/`iovs`/`msgs`, alive and unmoved during the calls.
    let mut hdrs: Vec<libc::mmsghdr> = (0..msgs.len()).map(|_| unsafe { zeroed() }).collect();
    for (i, h) in hdrs.iter_mut().enumerate() {
        h.msg_hdr.msg_name = addrs[i].as_ptr() as *mut libc::c_void;
        h.msg_hdr.msg_namelen = addrs[i].len();
        h.msg_hdr.msg_iov = &mut iovs[i];
        h.msg_hdr.msg_iovlen = 1;
    }
    let mut off = 0;
    while off < hdrs.len() {
        // SAFETY: hdrs[off..] are initialised headers pointing at live buffers (the kernel only reads them).
        let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), hdrs[off..].as_mut_ptr(), (hdrs.len() - off) as libc::c_uint, 0) };
        if n <= 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            off += 1; // skip the datagram that failed
        } else {
            off += n as usize;
        }
    }
}
