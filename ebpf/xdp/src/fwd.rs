//! Forwarding: DSR by MAC rewrite, IP-in-IP / IPv6 encapsulation towards a next hop, and ICMP "fragmentation
//! needed" / "packet too big" replies when an encapsulated packet would exceed the MTU.

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use padis_ebpf_common::{backend_flags, flow_hash, stat, BackendInfo, FlowKey};

use crate::{
    csum, maps,
    parse::{read, write, Pkt},
    verdict,
};

const TTL: u8 = 64;
const IPV6_MIN_MTU: u16 = 1280;

/// DSR: the frame goes to the backend's MAC, from ours (the frame's destination); IP is untouched.
#[inline(always)]
pub fn dsr(ctx: &XdpContext, b: &BackendInfo) -> u32 {
    let Some(eth) = read::<[u8; 12]>(ctx, 0) else {
        return verdict::DROP;
    };
    let mut out = [0u8; 12];
    out[..6].copy_from_slice(&b.mac);
    out[6..].copy_from_slice(&eth[..6]);
    write(ctx, 0, out);
    verdict::TX
}

/// Writes the Ethernet header (with the VLAN tag when `l2len` is 18) for a frame of `ethertype`.
#[inline(always)]
fn write_l2(ctx: &XdpContext, l2len: usize, dst: [u8; 6], src: [u8; 6], tag: [u8; 4], ethertype: u16) -> bool {
    let et = ethertype.to_be_bytes();
    let mut h = [0u8; 14];
    h[..6].copy_from_slice(&dst);
    h[6..12].copy_from_slice(&src);
    if l2len == 18 {
        h[12] = tag[0];
        h[13] = tag[1];
        write(ctx, 0, h) && write(ctx, 14, [tag[2], tag[3], et[0], et[1]])
    } else {
        h[12] = et[0];
        h[13] = et[1];
        write(ctx, 0, h)
    }
}

/// Reads the Ethernet header: (destination, source, VLAN tag bytes: TPID + TCI, or zeros).
#[inline(always)]
fn read_l2(ctx: &XdpContext, l2len: usize) -> Option<([u8; 6], [u8; 6], [u8; 4])> {
    let e = read::<[u8; 14]>(ctx, 0)?;
    let mut tag = [0u8; 4];
    if l2len == 18 {
        let t = read::<[u8; 2]>(ctx, 14)?;
        tag = [e[12], e[13], t[0], t[1]];
    }
    Some(([e[0], e[1], e[2], e[3], e[4], e[5]], [e[6], e[7], e[8], e[9], e[10], e[11]], tag))
}

/// Encapsulates the IP packet towards the backend (outer family = backend family), via the next hop.
#[inline(never)]
pub fn encap(ctx: &XdpContext, p: &Pkt, flow: &FlowKey, b: &BackendInfo, len: u64) -> u32 {
    let cfg = maps::config();
    let outer_v6 = b.flags & backend_flags::V6 != 0;
    let olen: u64 = if outer_v6 { 40 } else { 20 };
    let inner_len = len - p.l2len as u64;
    if inner_len + olen > cfg.mtu as u64 {
        if p.icmp || (!p.v6 && !p.df) {
            // Cannot fragment in XDP, and an ICMP error gets no ICMP error.
            maps::stat(stat::DROP_ENCAP, len);
            return verdict::DROP;
        }
        let next_mtu = cfg.mtu.saturating_sub(olen as u16);
        return if p.v6 { too_big_v6(ctx, p.l2len, next_mtu.max(IPV6_MIN_MTU)) } else { too_big_v4(ctx, p.l2len, next_mtu) };
    }
    let Some((dst, _src, tag)) = read_l2(ctx, p.l2len) else {
        return verdict::DROP;
    };
    let Some(inner_first) = read::<[u8; 2]>(ctx, p.l2len) else {
        return verdict::DROP;
    };
    let h = flow_hash(flow);
    let inner_proto = if p.v6 { 41u8 } else { 4u8 };
    // SAFETY: ctx.ctx is the live xdp_md of this invocation.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(olen as i32)) } != 0 {
        maps::stat(stat::DROP_ENCAP, len);
        return verdict::DROP;
    }
    let ok = if outer_v6 {
        let mut ip = [0u8; 40];
        // Version 6, traffic class 0, flow label from the flow hash (spreads flows over backend queues).
        ip[0] = 0x60;
        ip[1] = ((h >> 16) & 0x0f) as u8;
        ip[2] = (h >> 8) as u8;
        ip[3] = h as u8;
        ip[4..6].copy_from_slice(&(inner_len as u16).to_be_bytes());
        ip[6] = inner_proto;
        ip[7] = TTL;
        ip[8..24].copy_from_slice(&cfg.encap_src_v6);
        ip[20..24].copy_from_slice(&h.to_be_bytes());
        ip[24..40].copy_from_slice(&b.addr);
        write_l2(ctx, p.l2len, cfg.next_hop_mac, dst, tag, 0x86dd) && write(ctx, p.l2len, ip)
    } else {
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        // Keep the inner IPv4 TOS (DSCP/ECN) visible outside.
        ip[1] = if p.v6 { 0 } else { inner_first[1] };
        ip[2..4].copy_from_slice(&((inner_len + 20) as u16).to_be_bytes());
        ip[8] = TTL;
        ip[9] = inner_proto;
        ip[12] = cfg.encap_src_v4[0];
        ip[13] = cfg.encap_src_v4[1];
        ip[14] = (h >> 8) as u8;
        ip[15] = h as u8;
        ip[16..20].copy_from_slice(&b.addr[12..16]);
        let c = csum::fold(csum::add(0, &ip)).to_be_bytes();
        ip[10] = c[0];
        ip[11] = c[1];
        write_l2(ctx, p.l2len, cfg.next_hop_mac, dst, tag, 0x0800) && write(ctx, p.l2len, ip)
    };
    if ok {
        verdict::TX
    } else {
        verdict::DROP
    }
}

/// Resizes the frame to exactly `new_len` bytes.
#[inline(always)]
fn resize(ctx: &XdpContext, keep: usize, grow_head: usize) -> bool {
    let cur = (ctx.data_end() - ctx.data()) as i64;
    // SAFETY: ctx.ctx is the live xdp_md of this invocation.
    unsafe {
        bpf_xdp_adjust_tail(ctx.ctx, (keep as i64 - cur) as i32) == 0
            && bpf_xdp_adjust_head(ctx.ctx, -(grow_head as i32)) == 0
    }
}

/// Replies ICMP "fragmentation needed" (type 3 code 4) to the IPv4 client, quoting its header + 8 bytes.
#[inline(never)]
fn too_big_v4(ctx: &XdpContext, l2len: usize, next_mtu: u16) -> u32 {
    let (Some((dst, src, tag)), Some(orig)) = (read_l2(ctx, l2len), read::<[u8; 28]>(ctx, l2len)) else {
        return verdict::DROP;
    };
    if !resize(ctx, l2len + 28, 28) {
        maps::stat(stat::DROP_ENCAP, 0);
        return verdict::DROP;
    }
    let mut icmp = [0u8; 36];
    icmp[0] = 3;
    icmp[1] = 4;
    icmp[6..8].copy_from_slice(&next_mtu.to_be_bytes());
    icmp[8..36].copy_from_slice(&orig);
    let c = csum::fold(csum::add(0, &icmp)).to_be_bytes();
    icmp[2] = c[0];
    icmp[3] = c[1];
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&56u16.to_be_bytes());
    ip[8] = TTL;
    ip[9] = 1;
    ip[12..16].copy_from_slice(&orig[16..20]);
    ip[16..20].copy_from_slice(&orig[12..16]);
    let c = csum::fold(csum::add(0, &ip)).to_be_bytes();
    ip[10] = c[0];
    ip[11] = c[1];
    if write_l2(ctx, l2len, src, dst, tag, 0x0800) && write(ctx, l2len, ip) && write(ctx, l2len + 20, icmp) {
        maps::stat(stat::ICMP_TOO_BIG_SENT, 0);
        verdict::TX
    } else {
        verdict::DROP
    }
}

/// Replies ICMPv6 "packet too big" to the IPv6 client, quoting its header + 8 bytes.
#[inline(never)]
fn too_big_v6(ctx: &XdpContext, l2len: usize, mtu: u16) -> u32 {
    let (Some((dst, src, tag)), Some(orig)) = (read_l2(ctx, l2len), read::<[u8; 48]>(ctx, l2len)) else {
        return verdict::DROP;
    };
    if !resize(ctx, l2len + 48, 48) {
        maps::stat(stat::DROP_ENCAP, 0);
        return verdict::DROP;
    }
    let mut ip = [0u8; 40];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&56u16.to_be_bytes());
    ip[6] = 58;
    ip[7] = 255;
    ip[8..24].copy_from_slice(&orig[24..40]);
    ip[24..40].copy_from_slice(&orig[8..24]);
    let mut icmp = [0u8; 56];
    icmp[0] = 2;
    icmp[4..8].copy_from_slice(&(mtu as u32).to_be_bytes());
    icmp[8..56].copy_from_slice(&orig);
    // Pseudo-header: source, destination, upper-layer length (56), next header (58).
    let mut sum = csum::add(0, &ip);
    sum -= ((ip[0] as u64) << 8) + 56 + ((58u64 << 8) | 255); // keep only the addresses of the IPv6 header
    sum += 56 + 58;
    sum = csum::add(sum, &icmp);
    let c = csum::fold(sum).to_be_bytes();
    icmp[2] = c[0];
    icmp[3] = c[1];
    if write_l2(ctx, l2len, src, dst, tag, 0x86dd) && write(ctx, l2len, ip) && write(ctx, l2len + 40, icmp) {
        maps::stat(stat::ICMP_TOO_BIG_SENT, 0);
        verdict::TX
    } else {
        verdict::DROP
    }
}

