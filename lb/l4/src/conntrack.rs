//! The connection table over its two halves: `FLOWS4` (IPv4 flows: a set-associative array the program and this
//! process share, mapped into memory; layout and rules in `padis_ebpf_common::flows4`) and `CONNTRACK` (IPv6
//! flows, an LRU hash). Callers (sync, reports, tests) use the [`FlowKey`] form (IPv4-mapped addresses) whatever
//! the half, so the sync records and wire format do not depend on the program's key layout.

use std::os::fd::{AsFd as _, AsRawFd as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aya::maps::{HashMap, IterableMap as _, Map, MapData, MapError};
use padis_ebpf_common::flows4::{self, FlowBucket4, WAYS};
use padis_ebpf_common::{FlowKey, FlowKey4, FlowState};

/// What an insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// The entry was added (or replaced).
    Added,
    /// `only_new` and the flow had an entry already: left as it was.
    Exists,
}

/// The IPv4 half: `FLOWS4` mapped into this process.
struct Mapping {
    /// Keeps the map alive while mapped.
    _map: MapData,
    ptr: *mut AtomicU64,
    len: usize,
    buckets: u32,
}

// SAFETY: the mapping is shared memory used only through atomic 64-bit loads and stores (as the program uses it).
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` come from the successful mmap in `FlowTable4::map` and are unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// The IPv4 connection table.
#[derive(Clone)]
pub struct FlowTable4 {
    m: Arc<Mapping>,
}

/// Current time in entry units, on the kernel's clock scale close enough for ages (entries written here are
/// refreshed by the program when used).
fn now_units() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC_COARSE is what bpf_ktime_get_coarse_ns reads.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) } != 0 {
        return flows4::units(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0));
    }
    flows4::units(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

fn words(k: &FlowKey4) -> [u32; 4] {
    let w = |b: [u8; 4]| u32::from_ne_bytes(b);
    let p = k.sport.to_ne_bytes();
    let d = k.dport.to_ne_bytes();
    [w(k.src), w(k.dst), w([p[0], p[1], d[0], d[1]]), w([k.proto, k.pad[0], k.pad[1], k.pad[2]])]
}

impl FlowTable4 {
    /// Maps `FLOWS4` (an mmapable array of `buckets` buckets, a power of two) into memory.
    pub fn map(map: MapData, buckets: u32) -> Result<FlowTable4, MapError> {
        if !buckets.is_power_of_two() {
            let e = std::io::Error::other(format!("FLOWS4 of {buckets} buckets (not a power of two)"));
            return Err(MapError::IoError(e));
        }
        let len = buckets as usize * size_of::<FlowBucket4>();
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: maps the map's own memory (created BPF_F_MMAPABLE) read-write and shared; checked below.
        let ptr = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
        };
        if ptr == libc::MAP_FAILED {
            return Err(MapError::IoError(std::io::Error::last_os_error()));
        }
        Ok(FlowTable4 { m: Arc::new(Mapping { _map: map, ptr: ptr.cast(), len, buckets }) })
    }

    /// Buckets in the table.
    pub fn buckets(&self) -> u32 {
        self.m.buckets
    }

    /// Word `i` of bucket `b` (`b < buckets`, `i < 2 * WAYS`).
    fn word(&self, b: u32, i: usize) -> &AtomicU64 {
        debug_assert!(b < self.m.buckets && i < 2 * WAYS);
        // SAFETY: within the mapping (bounds above); buckets are 64-byte aligned arrays of u64 words.
        unsafe { &*self.m.ptr.add(b as usize * 2 * WAYS + i) }
    }

    fn bucket_of(&self, k: &[u32; 4]) -> (u32, u64) {
        let h = flows4::hash(k);
        (h as u32 & (self.m.buckets - 1), h)
    }

    /// The slot of `key`'s entry with VIP `vip` (any VIP: None), and its state.
    fn find(&self, key: &FlowKey4, vip: Option<u32>) -> Option<(u32, usize, FlowState)> {
        let k = words(key);
        let (b, h) = self.bucket_of(&k);
        let (id, tag) = (flows4::ident(&k), flows4::tag(h));
        (0..WAYS).find_map(|i| {
            let w0 = self.word(b, 2 * i).load(Ordering::Relaxed);
            if w0 & flows4::IDENT != id || vip.is_some_and(|v| w0 >> 48 != u64::from(v)) {
                return None;
            }
            let (backend, vip) = flows4::state(w0, self.word(b, 2 * i + 1).load(Ordering::Relaxed), tag)?;
            Some((b, i, FlowState { backend, vip }))
        })
    }

    /// The entry of `key`.
    pub fn get(&self, key: &FlowKey4) -> Option<FlowState> {
        self.find(key, None).map(|(_, _, st)| st)
    }

    /// Adds the entry of `key` (replacing its own, else taking a free or the least recently used slot of its
    /// bucket, as the program does); with `only_new`, an existing entry of the flow stays.
    pub fn insert(&self, key: &FlowKey4, st: FlowState, only_new: bool) -> Inserted {
        if only_new && self.find(key, Some(st.vip)).is_some() {
            return Inserted::Exists;
        }
        let k = words(key);
        let (b, h) = self.bucket_of(&k);
        let w0 = flows4::word0(flows4::ident(&k), st.vip);
        let now = now_units();
        let slot = (0..WAYS).find(|&i| self.word(b, 2 * i).load(Ordering::Relaxed) == w0).unwrap_or_else(|| {
            (0..WAYS).max_by_key(|&i| flows4::age(self.word(b, 2 * i + 1).load(Ordering::Relaxed), now)).unwrap_or(0)
        });
        self.word(b, 2 * slot).store(w0, Ordering::Relaxed);
        self.word(b, 2 * slot + 1).store(flows4::word1(w0, st.backend, flows4::tag(h), now), Ordering::Relaxed);
        Inserted::Added
    }

    /// Drops the entry of `key`; whether there was one.
    pub fn remove(&self, key: &FlowKey4) -> bool {
        match self.find(key, None) {
            Some((b, i, _)) => {
                self.word(b, 2 * i + 1).store(0, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Moves the IPv4 flows of an LRU map of an older layout (`CONNTRACK4`, or `CONNTRACK`'s IPv4-mapped keys)
    /// into the table; returns how many moved.
    pub fn absorb<K: aya::Pod>(
        &self,
        old: &mut HashMap<MapData, K, FlowState>,
        to_v4: impl Fn(&K) -> Option<FlowKey4>,
    ) -> u64 {
        let keys: Vec<K> = old.keys().filter_map(Result::ok).filter(|k| to_v4(k).is_some()).collect();
        let mut moved = 0;
        for k in keys {
            if let (Some(k4), Ok(st)) = (to_v4(&k), old.get(&k, 0)) {
                self.insert(&k4, st, false);
                moved += 1;
            }
            let _ = old.remove(&k);
        }
        moved
    }

    /// Every whole entry: (source address, source port as on the wire, state), for the caller to complete the
    /// key from the VIP.
    pub fn entries(&self) -> impl Iterator<Item = ([u8; 4], u16, FlowState)> + '_ {
        (0..self.m.buckets).flat_map(move |b| {
            (0..WAYS).filter_map(move |i| {
                let w0 = self.word(b, 2 * i).load(Ordering::Relaxed);
                let w1 = self.word(b, 2 * i + 1).load(Ordering::Relaxed);
                let (backend, vip) = flows4::state(w0, w1, (w1 >> 32) & 0xffff)?;
                let src = (w0 as u32).to_ne_bytes();
                let sport = u16::from_ne_bytes(((w0 >> 32) as u16).to_ne_bytes());
                Some((src, sport, FlowState { backend, vip }))
            })
        })
    }
}

/// `BPF_NOEXIST`: an LRU insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;

/// Handles on both halves of the connection table.
pub struct ConnTable {
    /// IPv4 flows.
    pub v4: FlowTable4,
    /// IPv6 flows.
    pub v6: HashMap<MapData, FlowKey, FlowState>,
}

/// A second handle on an LRU hash map (own fd).
fn dup_lru<K: aya::Pod, V: aya::Pod>(m: &HashMap<MapData, K, V>) -> Result<HashMap<MapData, K, V>, MapError> {
    let fd = m.map().fd().as_fd().try_clone_to_owned().map_err(MapError::IoError)?;
    HashMap::try_from(Map::LruHashMap(MapData::from_fd(fd)?))
}

/// The destination (VIP address, port, protocol) of VIP id `vip`, to complete IPv4 keys read from `FLOWS4`.
pub type VipDest<'a> = &'a dyn Fn(u32) -> Option<([u8; 16], u16, u8)>;

impl ConnTable {
    /// Second handles on both halves (for a task working next to the programmer).
    pub fn dup(&self) -> Result<ConnTable, MapError> {
        Ok(ConnTable { v4: self.v4.clone(), v6: dup_lru(&self.v6)? })
    }

    /// The entry of `key`.
    pub fn get(&self, key: &FlowKey) -> Option<FlowState> {
        match key.to_v4() {
            Some(k) => self.v4.get(&k),
            None => self.v6.get(key, 0).ok(),
        }
    }

    /// Adds the entry of `key`; with `only_new`, an entry the flow already has stays.
    pub fn insert(&mut self, key: FlowKey, state: FlowState, only_new: bool) -> Result<Inserted, MapError> {
        match key.to_v4() {
            Some(k) => Ok(self.v4.insert(&k, state, only_new)),
            None => match self.v6.insert(key, state, if only_new { BPF_NOEXIST } else { 0 }) {
                Ok(()) => Ok(Inserted::Added),
                Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                    Ok(Inserted::Exists)
                }
                Err(e) => Err(e),
            },
        }
    }

    /// Removes the entry of `key`.
    pub fn remove(&mut self, key: &FlowKey) -> Result<(), MapError> {
        match key.to_v4() {
            Some(k) => {
                self.v4.remove(&k);
                Ok(())
            }
            None => self.v6.remove(key),
        }
    }

    /// Every entry (in [`FlowKey`] form), IPv4 flows first; `dest` completes IPv4 keys from their VIP id (entries
    /// of VIPs it does not know are left out).
    pub fn entries<'a>(&'a self, dest: VipDest<'a>) -> impl Iterator<Item = (FlowKey, FlowState)> + 'a {
        let v4 = self.v4.entries().filter_map(move |(src, sport, st)| {
            let (dst, dport, proto) = dest(st.vip)?;
            let key = FlowKey { src: padis_ebpf_common::v4_mapped(src), dst, sport, dport, proto, pad: [0; 3] };
            Some((key, st))
        });
        let v6 = self.v6.iter().filter_map(Result::ok);
        v4.chain(v6)
    }

    /// Entries in the table.
    pub fn len(&self) -> usize {
        self.v4.entries().count() + self.v6.keys().filter(Result::is_ok).count()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_the_keys_bytes_in_memory_order() {
        let k = FlowKey4 { src: [1, 2, 3, 4], dst: [5, 6, 7, 8], sport: 0x0a0b, dport: 0x0c0d, proto: 6, pad: [0; 3] };
        let w = words(&k);
        // SAFETY: FlowKey4 is 16 bytes of plain data.
        let raw: [u32; 4] = unsafe { std::mem::transmute(k) };
        assert_eq!(w, raw);
    }
}
