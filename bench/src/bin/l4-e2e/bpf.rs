//! The few `bpf(2)` commands the loop program needs, on raw file descriptors: a per-CPU array of counters, a
//! one-word control array, an XDP program from raw instructions, an XDP link.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::E2eError;

const MAP_CREATE: i64 = 0;
const MAP_LOOKUP_ELEM: i64 = 1;
const MAP_UPDATE_ELEM: i64 = 2;
const PROG_LOAD: i64 = 5;
const LINK_CREATE: i64 = 28;
const MAP_TYPE_ARRAY: u32 = 2;
const MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const PROG_TYPE_XDP: u32 = 6;
const ATTACH_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// `union bpf_attr`, as bytes (128 is more than every command here uses; the kernel wants the rest zeroed).
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }
    fn u32(mut self, off: usize, v: u32) -> Attr {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(mut self, off: usize, v: u64) -> Attr {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn call(&mut self, cmd: i64, what: &'static str) -> Result<i64, E2eError> {
        // SAFETY: the attribute buffer is valid for its length; every pointer stored in it points to memory that
        // outlives the call (the callers keep them borrowed).
        let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, self.0.as_mut_ptr(), self.0.len() as u32) };
        if r < 0 {
            return Err(E2eError::Bpf { what, source: std::io::Error::last_os_error() });
        }
        Ok(r)
    }
    fn call_fd(&mut self, cmd: i64, what: &'static str) -> Result<OwnedFd, E2eError> {
        let fd = self.call(cmd, what)?;
        // SAFETY: these commands return a new file descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }
}

/// A per-CPU array of `u64` counters.
pub struct Counters {
    fd: OwnedFd,
    cpus: usize,
}

impl Counters {
    /// Creates an array of `entries` per-CPU `u64`s.
    pub fn new(entries: u32) -> Result<Counters, E2eError> {
        let fd = Attr::new()
            .u32(0, MAP_TYPE_PERCPU_ARRAY)
            .u32(4, 4)
            .u32(8, 8)
            .u32(12, entries)
            .call_fd(MAP_CREATE, "map create")?;
        Ok(Counters { fd, cpus: possible_cpus()? })
    }

    /// The map's descriptor, for `ld_imm64` map references.
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Sum over CPUs of entry `idx`.
    pub fn sum(&self, idx: u32) -> Result<u64, E2eError> {
        let mut values = vec![0u64; self.cpus];
        Attr::new()
            .u32(0, self.fd.as_raw_fd() as u32)
            .u64(8, &idx as *const u32 as u64)
            .u64(16, values.as_mut_ptr() as u64)
            .call(MAP_LOOKUP_ELEM, "map lookup")?;
        Ok(values.iter().sum())
    }
}

/// An array of one `u32` that the program reads directly (`BPF_PSEUDO_MAP_VALUE`) and userspace sets.
pub struct Control {
    fd: OwnedFd,
}

impl Control {
    /// Creates the array, its word set to `value`.
    pub fn new(value: u32) -> Result<Control, E2eError> {
        let fd = Attr::new().u32(0, MAP_TYPE_ARRAY).u32(4, 4).u32(8, 4).u32(12, 1).call_fd(MAP_CREATE, "map create")?;
        let c = Control { fd };
        c.set(value)?;
        Ok(c)
    }

    /// The map's descriptor, for `ld_imm64` map value references.
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Sets the word.
    pub fn set(&self, value: u32) -> Result<(), E2eError> {
        let key = 0u32;
        Attr::new()
            .u32(0, self.fd.as_raw_fd() as u32)
            .u64(8, &key as *const u32 as u64)
            .u64(16, &value as *const u32 as u64)
            .call(MAP_UPDATE_ELEM, "map update")?;
        Ok(())
    }
}

/// Number of possible CPUs (the per-CPU value count), from `/sys/devices/system/cpu/possible` ("0-1", "0,2-3").
fn possible_cpus() -> Result<usize, E2eError> {
    let path = "/sys/devices/system/cpu/possible";
    let text = std::fs::read_to_string(path).map_err(|source| E2eError::Io { what: path.into(), source })?;
    let bad = || E2eError::Parse(format!("{path}: {text:?}"));
    let mut n = 0;
    for part in text.trim().split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let a: usize = a.parse().map_err(|_| bad())?;
        let b: usize = b.parse().map_err(|_| bad())?;
        n = n.max(b + 1).max(a + 1);
    }
    Ok(n)
}

/// A loaded XDP program.
pub struct Program {
    fd: OwnedFd,
}

impl Program {
    /// Loads raw instructions (see [`crate::insn`]) as an XDP program; the verifier log is in the error.
    pub fn load_xdp(name: &str, insns: &[u64]) -> Result<Program, E2eError> {
        let license = CString::new("GPL").map_err(|e| E2eError::Parse(e.to_string()))?;
        let mut log = vec![0u8; 1 << 16];
        let mut attr = Attr::new()
            .u32(0, PROG_TYPE_XDP)
            .u32(4, insns.len() as u32)
            .u64(8, insns.as_ptr() as u64)
            .u64(16, license.as_ptr() as u64)
            .u32(24, 1)
            .u32(28, log.len() as u32)
            .u64(32, log.as_mut_ptr() as u64)
            .u32(68, ATTACH_XDP);
        let n = name.len().min(15);
        attr.0[48..48 + n].copy_from_slice(&name.as_bytes()[..n]);
        match attr.call_fd(PROG_LOAD, "program load") {
            Ok(fd) => Ok(Program { fd }),
            Err(E2eError::Bpf { source, .. }) => {
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                Err(E2eError::Verifier { name: name.into(), source, log: String::from_utf8_lossy(&log[..end]).into() })
            }
            Err(e) => Err(e),
        }
    }

    /// Attaches in native (driver) mode to `ifindex` through a bpf link; dropping the link detaches.
    pub fn attach(&self, ifindex: u32) -> Result<OwnedFd, E2eError> {
        Attr::new()
            .u32(0, self.fd.as_raw_fd() as u32)
            .u32(4, ifindex)
            .u32(8, ATTACH_XDP)
            .u32(12, XDP_FLAGS_DRV_MODE)
            .call_fd(LINK_CREATE, "xdp link create")
    }
}
