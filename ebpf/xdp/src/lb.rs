//! Balancing: VIP lookup, ACL, connection table, Maglev ring lookup, bounded insertion, statistics.

use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::lpm_trie::Key, programs::XdpContext};
use padis_ebpf_common::{
    acl_prefix_len, backend_flags, stat, vip_flags, AclData, FlowKey, FlowState, VipMeta, RING_STRIDE,
};

use crate::{fwd, maps, parse::Pkt, verdict};

const TCP_RST: u8 = 0x04;

/// Verdict of [`handle`] meaning "forward as described in the `Fwd`".
pub const FORWARD: u32 = 0x100;

/// Where and how to forward a packet (filled by [`handle`]). 8-byte aligned so that zeroing it is two stores,
/// not a `memset` call.
#[repr(C, align(8))]
#[derive(Clone, Copy, Default)]
pub struct Fwd {
    /// Backend index (`BACKENDS`).
    pub idx: u32,
    /// VIP id.
    pub vip: u32,
    /// VIP flags.
    pub flags: u32,
    /// Flow hash (IPIP VIPs only: it picks the outer source).
    pub hash: u32,
}

/// Balances a packet addressed to a VIP address: a final verdict, or [`FORWARD`] with `out` filled.
/// (Not inlined, and the forwarding is called by the caller: keeps every call chain within the BPF stack limit.)
/// Map values are read in place (no copies); the keys are built as aligned words (see `key.rs`).
#[inline(never)]
pub fn handle(p: &Pkt, len: u64, out: &mut Fwd) -> u32 {
    let vk = p.flow.vip_key();
    // SAFETY: read-only lookup; the value is only read during this run.
    let Some(meta) = (unsafe { maps::VIPS.get(vk.key()) }) else {
        maps::stat(stat::PASSED, len);
        return verdict::PASS;
    };
    let (id, flags) = (meta.id, meta.flags);
    if flags & vip_flags::ACL != 0 {
        let k = Key::new(acl_prefix_len(128), AclData { vip: id.to_be_bytes(), addr: p.flow.key().src });
        if maps::ACL.get(&k).is_none() {
            maps::stat(stat::DROP_ACL, len);
            return verdict::DROP;
        }
    }
    let mut flow = p.flow;
    if flags & vip_flags::HASH_SRC_ONLY != 0 {
        flow.clear_sport();
    }
    let rst = p.flow.key().proto == 6 && p.tcp_flags & TCP_RST != 0;
    let Some(idx) = pick(flow.key(), meta, !p.icmp && !rst) else {
        maps::stat(stat::DROP_NO_BACKEND, len);
        return verdict::DROP;
    };
    if p.icmp {
        maps::stat(stat::ICMP_FORWARDED, len);
    }
    out.idx = idx;
    out.vip = id;
    out.flags = flags;
    if flags & vip_flags::IPIP != 0 {
        out.hash = padis_ebpf_common::flow_hash(flow.key());
    }
    FORWARD
}

/// Forwards as `f` says (DSR or encapsulation; ICMP "too big" when needed) and counts it.
#[inline(always)]
pub fn forward<const L2: usize>(ctx: &XdpContext, p: &Pkt, f: &Fwd, len: u64) -> u32 {
    // The entry `handle` found alive: read in place rather than copied out of `handle`.
    let Some(b) = maps::BACKENDS.get(f.idx) else {
        return verdict::DROP;
    };
    let v = if f.flags & vip_flags::IPIP != 0 {
        match fwd::encap::<L2>(ctx, p, f.hash, b, len) {
            fwd::TOO_BIG_V4 => return fwd::too_big_v4::<L2>(ctx, maps::config_mtu().saturating_sub(fwd::outer_len(b))),
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
    let mut f = Fwd::default();
    match handle(p, len, &mut f) {
        FORWARD => forward::<L2>(ctx, p, &f, len),
        v => v,
    }
}

/// Whether backend `idx` exists and is alive.
#[inline(always)]
fn alive(idx: u32) -> bool {
    match maps::BACKENDS.get(idx) {
        Some(b) => b.flags & backend_flags::ALIVE != 0,
        None => false,
    }
}

/// The flow's backend index: from the connection table if that backend still exists, else from the VIP's Maglev
/// ring (and then remembered, if `insert` and the insertion budget allows).
#[inline(always)]
fn pick(flow: &FlowKey, meta: &VipMeta, insert: bool) -> Option<u32> {
    // SAFETY: read-only lookup; the value is only read during this run.
    if let Some(st) = unsafe { maps::CONNTRACK.get(flow) } {
        let idx = st.backend;
        if alive(idx) {
            maps::stat(stat::CT_HIT, 0);
            return Some(idx);
        }
    }
    maps::stat(stat::CT_MISS, 0);
    let (ring, size, id) = (meta.ring, meta.table_size, meta.id);
    if size == 0 {
        return None;
    }
    let h = padis_ebpf_common::flow_hash(flow);
    let slot = ring.wrapping_mul(RING_STRIDE).wrapping_add(h % size);
    let idx = *maps::RINGS.get(slot)?;
    if !alive(idx) {
        return None;
    }
    if insert {
        if budget() {
            let st = FlowState { backend: idx, vip: id };
            if maps::CONNTRACK.insert(flow, &st, 0).is_ok() {
                maps::announce(flow, &st);
            }
        } else {
            maps::stat(stat::CT_INSERT_SKIPPED, 0);
        }
    }
    Some(idx)
}

/// Bounded insertion: at most `max_new_flows_per_sec` new entries per CPU per second, so a flood of new flows
/// cannot push every established flow out of the LRU connection table.
#[inline(always)]
fn budget() -> bool {
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
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
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
