//! The maps (see `padis_ebpf_common::map_names`) and the counter helpers.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use padis_ebpf_common::{
    config_flags, defaults, AclData, BackendInfo, Counters, FlowKey, FlowState, GlobalConfig, RateState,
    SrcLimitConfig, SyncRecord, VipKey, VipMeta, VipSlot, RING_STRIDE, VIP_PORTS_LEN,
};

#[map]
pub static VIPS: HashMap<VipKey, VipMeta> = HashMap::with_max_entries(defaults::MAX_VIPS, 0);
#[map]
pub static VIP_ADDRS: HashMap<[u8; 16], u32> = HashMap::with_max_entries(defaults::MAX_VIPS, 0);
#[map]
pub static VIP_BY_ID: Array<VipSlot> = Array::with_max_entries(defaults::MAX_VIPS, 0);
#[map]
pub static VIP_PORTS: Array<u32> = Array::with_max_entries(VIP_PORTS_LEN, 0);
#[map]
pub static RINGS: Array<u32> = Array::with_max_entries(defaults::MAX_RINGS * RING_STRIDE, 0);
#[map]
pub static BACKENDS: Array<BackendInfo> = Array::with_max_entries(defaults::MAX_BACKENDS, 0);
#[map]
/// Per-CPU LRU lists (BPF_F_NO_COMMON_LRU, as Katran): a flow stays on one CPU (RSS), and insertion takes no
/// global lock.
pub static CONNTRACK: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(defaults::MAX_FLOWS, 2);
#[map]
pub static ACL: LpmTrie<AclData, u32> = LpmTrie::with_max_entries(defaults::MAX_ACL, 0);
#[map]
pub static CONFIG: Array<GlobalConfig> = Array::with_max_entries(1, 0);
#[map]
pub static VIP_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(defaults::MAX_VIPS, 0);
#[map]
pub static BACKEND_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(defaults::MAX_BACKENDS, 0);
#[map]
pub static STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(padis_ebpf_common::stat::COUNT, 0);
#[map]
pub static FLOW_RATE: PerCpuArray<RateState> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static SRC_LIMIT: Array<SrcLimitConfig> = Array::with_max_entries(1, 0);
#[map]
/// One LRU shared by all CPUs: a prefix's new flows arrive on any CPU (RSS hashes the ports too).
pub static SRC_RATE: LruHashMap<[u32; 4], u64> = LruHashMap::with_max_entries(defaults::MAX_SOURCES, 0);
#[map]
pub static VIP_RATE_DROPS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(defaults::MAX_VIPS, 0);
#[map]
pub static SYNC_RING: RingBuf = RingBuf::with_byte_size(defaults::SYNC_RING_BYTES, 0);

#[inline(always)]
fn bump(map: &PerCpuArray<Counters>, idx: u32, bytes: u64) {
    if let Some(c) = map.get_ptr_mut(idx) {
        // SAFETY: per-CPU value, this CPU only; the pointer comes from a successful lookup.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

/// Counts one packet of `bytes` under global counter `idx` (`stat::*`).
#[inline(always)]
pub fn stat(idx: u32, bytes: u64) {
    bump(&STATS, idx, bytes)
}

/// Counts one forwarded packet for its VIP and backend.
#[inline(always)]
pub fn stat_forward(vip: u32, backend: u32, bytes: u64) {
    bump(&VIP_STATS, vip, bytes);
    bump(&BACKEND_STATS, backend, bytes);
    stat(padis_ebpf_common::stat::FORWARDED, bytes);
}

/// Counts one packet dropped by the per-source-prefix new-flow limit for VIP `vip`.
#[inline(always)]
pub fn stat_rate_drop(vip: u32, bytes: u64) {
    bump(&VIP_RATE_DROPS, vip, bytes);
}

/// The configured MTU (0 if userspace has not written the settings yet).
#[inline(always)]
pub fn config_mtu() -> u16 {
    match CONFIG.get(0) {
        Some(c) => c.mtu,
        None => 0,
    }
}

/// Announces a new connection-table entry to the sync daemon when sync is on; a full ring is counted, never waited
/// for.
#[inline(always)]
pub fn announce(flow: &FlowKey, st: &FlowState) {
    let on = match CONFIG.get(0) {
        Some(c) => c.flags & config_flags::SYNC != 0,
        None => false,
    };
    if on && SYNC_RING.output::<SyncRecord>(SyncRecord { key: *flow, state: *st }, 0).is_err() {
        stat(padis_ebpf_common::stat::SYNC_RING_FULL, 0);
    }
}
