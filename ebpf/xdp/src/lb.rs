//! Balancing: VIP lookup, ACL, connection table, Maglev ring lookup, bounded insertion, statistics.

use core::mem::MaybeUninit;

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, maps::lpm_trie::Key, programs::XdpContext};
use padis_ebpf_common::{
    acl_prefix_len, backend_flags, port_flags, stat, vip_flags, AclData, BackendInfo, FlowState, VipMeta, RING_STRIDE,
};

use crate::{fwd, key::Flow, maps, parse::Pkt, verdict};

const TCP_RST: u8 = 0x04;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Verdict of [`handle`] meaning "forward as described in the `Fwd`".
pub const FORWARD: u32 = 0x100;

/// Where and how to forward a packet (written whole by [`handle`] when it returns [`FORWARD`]; the caller's slot
/// is left uninitialised before: zeroing it was a byte-wise `memset` call, 16 iterations per packet).
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct Fwd {
    /// The backend's `BACKENDS` slot, read in place when it was found alive (not looked up twice).
    pub backend: &'static BackendInfo,
    /// Backend index (`BACKENDS`).
    pub idx: u32,
    /// VIP id.
    pub vip: u32,
    /// VIP flags.
    pub flags: u32,
    /// Flow hash (IPIP VIPs only: it picks the outer source; 0 otherwise).
    pub hash: u32,
}

/// Balances a packet addressed to a VIP address: a final verdict, or [`FORWARD`] with `out` filled.
/// (Not inlined, and the forwarding is called by the caller: keeps every call chain within the BPF stack limit.)
/// Map values are read in place (no copies); the keys are built as aligned words (see `key.rs`).
///
/// Plain TCP/UDP packets are first checked against `VIP_PORTS` (an array, no hashing): a port/protocol without
/// VIP is passed. When no VIP on the port hashes on the source only, the connection key does not depend on the
/// VIP, so the connection table is looked up first: a hit needs only its VIP's `VIP_BY_ID` slot (an array), i.e.
/// one hash lookup per established packet. Misses, and the rest (ICMP errors, source-hashed VIPs), go through
/// `VIPS` first.
#[inline(never)]
pub fn handle(p: &Pkt, len: u64, out: &mut MaybeUninit<Fwd>) -> u32 {
    if !p.icmp {
        let proto = p.flow.key().proto;
        let ports = match maps::VIP_PORTS.get(p.flow.dport() as u32) {
            Some(f) => *f,
            None => 0,
        };
        let (any, src_only) = port_flags::of(proto);
        if ports & any == 0 {
            maps::stat(stat::PASSED, len);
            return verdict::PASS;
        }
        if ports & src_only == 0 {
            // A TCP SYN opens a flow: straight to the VIP and Maglev, its entry (re)written (as Katran does).
            if proto == 6 && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
                return by_vip(p, len, out, true);
            }
            if let Some(st) = ct_get(p.v6, &p.flow) {
                if let Some(v) = established(p, &st, len, out) {
                    return v;
                }
            }
            return by_vip(p, len, out, true);
        }
    }
    by_vip(p, len, out, false)
}

/// A connection-table hit: forwards if the entry's VIP is still the packet's (ids are reused) and its backend is
/// alive; None sends the packet through the VIP lookup.
#[inline(always)]
fn established(p: &Pkt, st: &FlowState, len: u64, out: &mut MaybeUninit<Fwd>) -> Option<u32> {
    let (idx, id) = (st.backend, st.vip);
    let slot = maps::VIP_BY_ID.get(id)?;
    if !p.flow.vip_slot_key().matches(slot) {
        return None;
    }
    let backend = alive(idx)?;
    let flags = slot.flags;
    if flags & vip_flags::ACL != 0 && !acl_allows(p, id) {
        maps::stat(stat::DROP_ACL, len);
        return Some(verdict::DROP);
    }
    maps::stat(stat::CT_HIT, 0);
    let hash = if flags & vip_flags::IPIP != 0 { padis_ebpf_common::flow_hash(p.flow.key()) } else { 0 };
    out.write(Fwd { backend, idx, vip: id, flags, hash });
    Some(FORWARD)
}

/// Whether VIP `id`'s ACL allows the packet's source.
#[inline(always)]
fn acl_allows(p: &Pkt, id: u32) -> bool {
    let k = Key::new(acl_prefix_len(128), AclData { vip: id.to_be_bytes(), addr: p.flow.key().src });
    maps::ACL.get(&k).is_some()
}

/// The VIP lookup path. `looked_up`: the connection table was already searched (and gave nothing usable).
#[inline(always)]
fn by_vip(p: &Pkt, len: u64, out: &mut MaybeUninit<Fwd>, looked_up: bool) -> u32 {
    let vk = p.flow.vip_key();
    // SAFETY: read-only lookup; the value is only read during this run.
    let Some(meta) = (unsafe { maps::VIPS.get(vk.key()) }) else {
        maps::stat(stat::PASSED, len);
        return verdict::PASS;
    };
    let (id, flags) = (meta.id, meta.flags);
    if flags & vip_flags::ACL != 0 && !acl_allows(p, id) {
        maps::stat(stat::DROP_ACL, len);
        return verdict::DROP;
    }
    let mut flow = p.flow;
    if flags & vip_flags::HASH_SRC_ONLY != 0 {
        flow.clear_sport();
    }
    let rst = p.flow.key().proto == 6 && p.tcp_flags & TCP_RST != 0;
    let (idx, backend) = match pick(p.v6, &flow, meta, !p.icmp && !rst, looked_up) {
        Pick::Backend(idx, backend) => (idx, backend),
        Pick::NoBackend => {
            maps::stat(stat::DROP_NO_BACKEND, len);
            return verdict::DROP;
        }
        Pick::RateLimited => {
            maps::stat_rate_drop(id, len);
            return verdict::DROP;
        }
    };
    if p.icmp {
        maps::stat(stat::ICMP_FORWARDED, len);
    }
    let hash = if flags & vip_flags::IPIP != 0 { padis_ebpf_common::flow_hash(flow.key()) } else { 0 };
    out.write(Fwd { backend, idx, vip: id, flags, hash });
    FORWARD
}

/// The flow's connection entry (`FLOWS4` for IPv4, `CONNTRACK` for IPv6).
#[inline(always)]
fn ct_get(v6: bool, flow: &Flow) -> Option<FlowState> {
    if v6 {
        // SAFETY: read-only lookup; the value is copied out at once.
        unsafe { maps::CONNTRACK.get(flow.key()) }.copied()
    } else {
        crate::flows::get(&flow.v4_key())
    }
}

/// Inserts (or replaces) the flow's connection entry; `now_ns` is the coarse clock.
#[inline(always)]
fn ct_insert(v6: bool, flow: &Flow, st: &FlowState, now_ns: u64) -> bool {
    if v6 {
        maps::CONNTRACK.insert(flow.key(), st, 0).is_ok()
    } else {
        crate::flows::insert(&flow.v4_key(), st, now_ns)
    }
}

/// Forwards as `f` says (DSR or encapsulation; ICMP "too big" when needed) and counts it.
#[inline(always)]
pub fn forward<const L2: usize>(ctx: &XdpContext, p: &Pkt, f: &Fwd, len: u64) -> u32 {
    let b = f.backend;
    let v = if f.flags & vip_flags::IPIP != 0 {
        match fwd::encap::<L2>(ctx, p, f.hash, b, len) {
            fwd::TOO_BIG_V4 => return fwd::too_big_v4::<L2>(ctx, maps::config_mtu().saturating_sub(fwd::outer_len(b))),
            fwd::TOO_BIG_V6 => return fwd::too_big_v6::<L2>(ctx, maps::config_mtu().saturating_sub(fwd::outer_len(b))),
            v => v,
        }
    } else {
        fwd::dsr(ctx, b)
    };
    if v == verdict::TX {
        maps::stat_forward(f.vip, f.idx, len);
    }
    v
}

/// Balances then forwards a VIP packet.
#[inline(always)]
pub fn dispatch<const L2: usize>(ctx: &XdpContext, p: &Pkt, len: u64) -> u32 {
    let mut f = MaybeUninit::<Fwd>::uninit();
    match handle(p, len, &mut f) {
        // SAFETY: `handle` wrote the whole value before returning FORWARD.
        FORWARD => forward::<L2>(ctx, p, unsafe { f.assume_init_ref() }, len),
        v => v,
    }
}

/// Backend `idx`'s slot, if it exists and is alive.
#[inline(always)]
fn alive(idx: u32) -> Option<&'static BackendInfo> {
    maps::BACKENDS.get(idx).filter(|b| b.flags & backend_flags::ALIVE != 0)
}

/// What [`pick`] chose.
enum Pick {
    /// Backend index and its slot.
    Backend(u32, &'static BackendInfo),
    /// No usable backend.
    NoBackend,
    /// A new flow over its source prefix's rate (`SRC_LIMIT`).
    RateLimited,
}

/// The flow's backend index: from the connection table if that backend still exists (unless `looked_up`: the
/// caller already searched it), else from the VIP's Maglev ring (and then remembered, if `insert` and the
/// insertion budget allows). A flow that would get a new entry (`insert`) must first pass its source prefix's
/// rate limit.
#[inline(always)]
fn pick(v6: bool, flow: &Flow, meta: &VipMeta, insert: bool, looked_up: bool) -> Pick {
    if !looked_up {
        if let Some(st) = ct_get(v6, flow) {
            let idx = st.backend;
            if let Some(b) = alive(idx) {
                maps::stat(stat::CT_HIT, 0);
                return Pick::Backend(idx, b);
            }
        }
    }
    maps::stat(stat::CT_MISS, 0);
    let (ring, size, id) = (meta.ring, meta.table_size, meta.id);
    if size == 0 {
        return Pick::NoBackend;
    }
    // The coarse clock (the last tick's time, no clock-source read), read once for the limits and the entry.
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions.
    let now = if insert { unsafe { bpf_ktime_get_coarse_ns() } } else { 0 };
    if insert && !src_allows(flow, now) {
        return Pick::RateLimited;
    }
    let h = padis_ebpf_common::flow_hash(flow.key());
    let slot = ring.wrapping_mul(RING_STRIDE).wrapping_add(h % size);
    let Some(&idx) = maps::RINGS.get(slot) else { return Pick::NoBackend };
    let Some(backend) = alive(idx) else { return Pick::NoBackend };
    if insert {
        if budget(now) {
            let st = FlowState { backend: idx, vip: id };
            if ct_insert(v6, flow, &st, now) {
                maps::announce(flow.key(), &st);
            }
        } else {
            maps::stat(stat::CT_INSERT_SKIPPED, 0);
        }
    }
    Pick::Backend(idx, backend)
}

/// Per-source-prefix new-flow limit (GCRA, see `padis_ebpf_common::SrcLimitConfig`): whether the flow's source
/// prefix may open one more flow at `now` (and if so, its due time advances). Prefixes are kept in an LRU, so a
/// flood of spoofed sources costs bounded memory (and meets the global insertion budget). Updates from two CPUs
/// at once may both pass: the limit is exact per CPU, approximate across CPUs by at most one flow per race.
#[inline(always)]
fn src_allows(flow: &Flow, now: u64) -> bool {
    let Some(cfg) = maps::SRC_LIMIT.get(0) else { return true };
    let interval = cfg.interval_ns;
    if interval == 0 {
        return true;
    }
    let w = flow.words();
    let key: [u32; 4] = if w[2] == MAPPED_WORD && w[0] == 0 && w[1] == 0 {
        [0, 0, MAPPED_WORD, w[3] & cfg.mask_v4]
    } else {
        [w[0] & cfg.mask_v6[0], w[1] & cfg.mask_v6[1], w[2] & cfg.mask_v6[2], w[3] & cfg.mask_v6[3]]
    };
    match maps::SRC_RATE.get_ptr_mut(key) {
        Some(due) => {
            // SAFETY: a value pointer from a successful lookup; a racing update is benign (see above).
            let d = unsafe { *due };
            if d > now.wrapping_add(cfg.tolerance_ns) {
                return false;
            }
            // SAFETY: as above.
            unsafe { *due = if d > now { d } else { now }.wrapping_add(interval) };
            true
        }
        None => {
            let _ = maps::SRC_RATE.insert(key, now.wrapping_add(interval), 0);
            true
        }
    }
}

/// The `::ffff:0:0/96` word of an IPv4-mapped address (bytes 8..12), in memory order.
const MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// Bounded insertion: at most `max_new_flows_per_sec` new entries per CPU per second, so a flood of new flows
/// cannot push every established flow out of the connection table. `now`: the coarse clock (precise enough for a
/// one-second window).
#[inline(always)]
fn budget(now: u64) -> bool {
    let max = match maps::CONFIG.get(0) {
        Some(c) => c.max_new_flows_per_sec as u64,
        None => 0,
    };
    if max == 0 {
        return true;
    }
    let Some(r) = maps::FLOW_RATE.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: per-CPU value from a successful lookup.
    unsafe {
        if now.wrapping_sub((*r).window_start_ns) > 1_000_000_000 {
            (*r).window_start_ns = now;
            (*r).inserted = 0;
        }
        if (*r).inserted >= max {
            return false;
        }
        (*r).inserted += 1;
    }
    true
}
