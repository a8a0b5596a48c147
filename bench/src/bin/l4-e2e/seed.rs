//! What `run` needs besides the loop program: the seeder (requests injected through an `AF_PACKET` socket), an
//! interface counter read from sysfs, and the forwarder's NAPI thread's scheduler figures.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use crate::progs::{self, FRAME_LEN};
use crate::E2eError;

/// Largest seed batch (one `sendmmsg`).
pub const MAX_BATCH: usize = 1024;

/// Sends requests out of one interface through an `AF_PACKET` socket that bypasses the qdisc (each frame goes
/// straight to the driver's transmit: for veth, into the peer's receive ring, or dropped and counted when that
/// ring is full).
pub struct Seeder {
    fd: OwnedFd,
    addr: libc::sockaddr_ll,
    tmpl: [u8; FRAME_LEN],
    flows: u32,
    rng: fastrand::Rng,
    bufs: Vec<[u8; FRAME_LEN]>,
}

fn sys_err(what: &'static str) -> E2eError {
    E2eError::Io { what: what.into(), source: std::io::Error::last_os_error() }
}

impl Seeder {
    /// A seeder of `tmpl` requests with random flows of `flows` (a power of two) out of `ifindex`.
    pub fn new(ifindex: u32, tmpl: [u8; FRAME_LEN], flows: u32) -> Result<Seeder, E2eError> {
        // Protocol 0: the socket receives nothing (no tap on the interface's receive path).
        // SAFETY: plain socket(2).
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(sys_err("AF_PACKET socket"));
        }
        // SAFETY: a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let one: libc::c_int = 1;
        // SAFETY: the option value is a valid c_int for the call.
        let r = unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(sys_err("PACKET_QDISC_BYPASS"));
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&tmpl[0..6]);
        Ok(Seeder { fd, addr, tmpl, flows, rng: fastrand::Rng::new(), bufs: vec![[0; FRAME_LEN]; MAX_BATCH] })
    }

    /// Sends `n` (up to [`MAX_BATCH`]) requests with random flows in one `sendmmsg`; returns how many the kernel
    /// took (a frame refused at a full ring is taken and counted as dropped by the interface).
    pub fn send(&mut self, n: usize) -> Result<u64, E2eError> {
        let n = n.min(MAX_BATCH);
        for b in &mut self.bufs[..n] {
            *b = progs::request(&self.tmpl, self.rng.u32(..) & (self.flows - 1));
        }
        let mut iovs: Vec<libc::iovec> = self.bufs[..n]
            .iter_mut()
            .map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: FRAME_LEN })
            .collect();
        let addr = &mut self.addr as *mut libc::sockaddr_ll;
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: msghdr is plain data; all-zero is a valid value.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = addr.cast();
                h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        let mut sent = 0;
        while sent < n {
            // SAFETY: every header points into `iovs`, `self.bufs` and `self.addr`, all alive for the call.
            let r = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs[sent..].as_mut_ptr(), (n - sent) as u32, 0) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                // The socket's send buffer is full for a moment (frames not yet freed): the rest waits for the
                // next batch.
                if e.raw_os_error() == Some(libc::ENOBUFS) || e.raw_os_error() == Some(libc::EAGAIN) {
                    break;
                }
                return Err(E2eError::Io { what: "AF_PACKET sendmmsg".into(), source: e });
            }
            sent += r as usize;
        }
        Ok(sent as u64)
    }
}

/// One counter of an interface (`/sys/class/net/<dev>/statistics/<name>`), kept open and re-read.
pub struct IfStat {
    file: File,
    path: String,
}

impl IfStat {
    /// Opens `dev`'s counter `name`.
    pub fn open(dev: &str, name: &str) -> Result<IfStat, E2eError> {
        let path = format!("/sys/class/net/{dev}/statistics/{name}");
        let file = File::open(&path).map_err(|source| E2eError::Io { what: path.clone(), source })?;
        Ok(IfStat { file, path })
    }

    /// The counter now.
    pub fn read(&self) -> Result<u64, E2eError> {
        let mut buf = [0u8; 32];
        let n = self.file.read_at(&mut buf, 0).map_err(|source| E2eError::Io { what: self.path.clone(), source })?;
        let s = std::str::from_utf8(&buf[..n]).unwrap_or("").trim();
        s.parse().map_err(|_| E2eError::Parse(format!("{}: {s:?}", self.path)))
    }
}

/// A thread's scheduler figures at one moment.
#[derive(Clone, Copy)]
pub struct ThreadSample {
    /// CPU time (ns).
    pub run_ns: u64,
    /// Time runnable but waiting for a CPU (ns).
    pub wait_ns: u64,
    /// Voluntary context switches (the NAPI thread sleeps when it has no input).
    pub sleeps: u64,
}

/// Reads `/proc/<pid>/schedstat` and `/proc/<pid>/status`.
pub fn thread_sample(pid: u32) -> Result<ThreadSample, E2eError> {
    let read = |p: String| std::fs::read_to_string(&p).map_err(|source| E2eError::Io { what: p, source });
    let stat = read(format!("/proc/{pid}/schedstat"))?;
    let mut f = stat.split_whitespace().map(str::parse::<u64>);
    let bad = || E2eError::Parse(format!("/proc/{pid}/schedstat: {stat:?}"));
    let run_ns = f.next().and_then(Result::ok).ok_or_else(bad)?;
    let wait_ns = f.next().and_then(Result::ok).ok_or_else(bad)?;
    let status = read(format!("/proc/{pid}/status"))?;
    let sleeps = status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| E2eError::Parse(format!("/proc/{pid}/status: no voluntary_ctxt_switches")))?;
    Ok(ThreadSample { run_ns, wait_ns, sleeps })
}
