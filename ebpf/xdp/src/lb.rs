//! Balancing: VIP lookup, ACL, connection table, Maglev ring lookup, bounded insertion, statistics.

use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::lpm_trie::Key, programs::XdpContext};
use padis_ebpf_common::{
    acl_prefix_len, backend_flags, stat, vip_flags, AclData, BackendInfo, FlowKey, FlowState, VipKey, VipMeta,
    RING_STRIDE,
};

use crate::{fwd, maps, parse::Pkt, verdict};

const TCP_RST: u8 = 0x04;

/// Verdict of [`handle`] meaning "forward as described in the `Fwd`".
pub const FORWARD: u32 = 0x100;

/// Where and how to forward a packet (filled by [`handle`]).
#[derive(Clone, Copy, Default)]
pub struct Fwd {
    /// Backend index.
    pub idx: u32,
    /// VIP id.
    pub vip: u32,
    /// VIP flags.
    pub flags: u32,
    /// The backend.
    pub backend: BackendInfo,
    /// Flow hash (IPIP VIPs only: it picks the outer source).
    pub hash: u32,
}

/// Balances a packet addressed to a VIP address: a final verdict, or [`FORWARD`] with `out` filled.
/// (Not inlined, and the forwarding is called by the caller: keeps every call chain within the BPF stack limit.)
#[inline(never)]
pub fn handle(p: &Pkt, len: u64, out: &mut Fwd) -> u32 {
    let key = VipKey { addr: p.flow.dst, port: p.flow.dport, proto: p.flow.proto, pad: 0 };
    // SAFETY: the value is copied out at once.
    let Some(meta) = (unsafe { maps::VIPS.get(&key) }).copied() else {
        maps::stat(stat::PASSED, len);
        return verdict::PASS;
    };
    if meta.flags & vip_flags::ACL != 0 {
        let k = Key::new(acl_prefix_len(128), AclData { vip: meta.id.to_be_bytes(), addr: p.flow.src });
        if maps::ACL.get(&k).is_none() {
            maps::stat(stat::DROP_ACL, len);
            return verdict::DROP;
        }
    }
    let mut flow = p.flow;
    if meta.flags & vip_flags::HASH_SRC_ONLY != 0 {
        flow.sport = 0;
    }
    let rst = flow.proto == 6 && p.tcp_flags & TCP_RST != 0;
    let Some((idx, backend)) = pick(&flow, &meta, !p.icmp && !rst) else {
        maps::stat(stat::DROP_NO_BACKEND, len);
        return verdict::DROP;
    };
    if p.icmp {
        maps::stat(stat::ICMP_FORWARDED, len);
    }
    out.idx = idx;
    out.vip = meta.id;
    out.flags = meta.flags;
    out.backend = backend;
    if meta.flags & vip_flags::IPIP != 0 {
        out.hash = padis_ebpf_common::flow_hash(&flow);
    }
    FORWARD
}

/// Forwards as `f` says (DSR or encapsulation; ICMP "too big" when needed) and counts it.
#[inline(always)]
pub fn forward<const L2: usize>(ctx: &XdpContext, p: &Pkt, f: &Fwd, len: u64) -> u32 {
    let v = if f.flags & vip_flags::IPIP != 0 {
        match fwd::encap::<L2>(ctx, p, f.hash, &f.backend, len) {
            fwd::TOO_BIG_V4 => return fwd::too_big_v4::<L2>(ctx, maps::config_mtu().saturating_sub(fwd::outer_len(&f.backend))),
            v => v,
        }
    } else {
        fwd::dsr(ctx, &f.backend)
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

#[inline(always)]
fn backend(idx: u32) -> Option<BackendInfo> {
    let b = *maps::BACKENDS.get(idx)?;
    if b.flags & backend_flags::ALIVE != 0 {
        Some(b)
    } else {
        None
    }
}

/// The flow's backend: from the connection table if it still exists, else from the VIP's Maglev ring (and then
/// remembered, if `insert` and the insertion budget allows).
#[inline(always)]
fn pick(flow: &FlowKey, meta: &VipMeta, insert: bool) -> Option<(u32, BackendInfo)> {
    // SAFETY: the value is copied out at once.
    if let Some(st) = unsafe { maps::CONNTRACK.get(flow) }.copied() {
        if let Some(b) = backend(st.backend) {
            maps::stat(stat::CT_HIT, 0);
            return Some((st.backend, b));
        }
    }
    maps::stat(stat::CT_MISS, 0);
    if meta.table_size == 0 {
        return None;
    }
    let h = padis_ebpf_common::flow_hash(flow);
    let slot = meta.ring.wrapping_mul(RING_STRIDE).wrapping_add(h % meta.table_size);
    let idx = *maps::RINGS.get(slot)?;
    let b = backend(idx)?;
    if insert {
        if budget() {
            let st = FlowState { backend: idx, vip: meta.id };
            if maps::CONNTRACK.insert(flow, &st, 0).is_ok() {
                maps::announce(flow, &st);
            }
        } else {
            maps::stat(stat::CT_INSERT_SKIPPED, 0);
        }
    }
    Some((idx, b))
}

/// Bounded insertion: at most `max_new_flows_per_sec` new entries per CPU per second, so a flood of new flows
/// cannot push every established flow out of the LRU connection table.
#[inline(always)]
fn budget() -> bool {
    let max = maps::config().max_new_flows_per_sec as u64;
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
