//! Forwarding: DSR by MAC rewrite, IP-in-IP / IPv6 encapsulation towards a next hop, and ICMP "fragmentation
//! needed" / "packet too big" replies when an encapsulated packet would exceed the MTU. `L2` is the Ethernet
//! header length (14, or 18 with a VLAN tag), a constant so every packet offset is known to the verifier.

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use padis_ebpf_common::{backend_flags, stat, BackendInfo};

use crate::{
    csum, maps,
    parse::{read, write, Pkt},
    verdict,
};

const TTL: u8 = 64;

/// Bytes of the client's packet quoted in an ICMPv6 "packet too big": its IPv6 header and the first 48 bytes of
/// its transport header (TCP ports + sequence number, which Linux checks against the connection's window; UDP
/// header). RFC 4443 asks for "as much as fits" in 1280 bytes; a fixed prefix (as Katran's) keeps the checksum a
/// fixed-size sum the verifier accepts, and is what path MTU discovery reads. An oversize packet is at least
/// 1241 bytes (the MTU is validated >= 1280), so it always has them.
pub const PTB6_QUOTE: usize = 88;
/// Hop limit of the generated ICMPv6 error: 64, like the generated IPv4 errors and Linux's default (255 is only
/// required of neighbour discovery, which checks it).
const PTB6_HOP_LIMIT: u8 = 64;

/// DSR: the frame goes to the backend's MAC, from ours (the frame's destination); IP is untouched.
#[inline(always)]
pub fn dsr(ctx: &XdpContext, b: &BackendInfo) -> u32 {
    let Some(eth) = read::<[u8; 6]>(ctx, 0) else {
        return verdict::DROP;
    };
    if write(ctx, 0, b.mac) && write(ctx, 6, eth) {
        verdict::TX
    } else {
        verdict::DROP
    }
}

/// The L2 header fields kept across a head adjustment: destination and source MAC, VLAN tag (TPID + TCI).
#[derive(Clone, Copy)]
struct L2Hdr {
    dst: [u8; 6],
    src: [u8; 6],
    tag: [u8; 4],
}

/// Reads the L2 header (before any head adjustment: the values travel in registers, never packet to packet,
/// which LLVM would turn into a `memmove` the verifier rejects).
#[inline(always)]
fn read_l2<const L2: usize>(ctx: &XdpContext) -> Option<L2Hdr> {
    let dst = read::<[u8; 6]>(ctx, 0)?;
    let src = read::<[u8; 6]>(ctx, 6)?;
    let tag = if L2 == 18 { read::<[u8; 4]>(ctx, 12)? } else { [0; 4] };
    Some(L2Hdr { dst, src, tag })
}

/// Writes an L2 header at the start of the frame, with the VLAN tag when `L2` is 18.
#[inline(always)]
fn write_l2<const L2: usize>(ctx: &XdpContext, dst: [u8; 6], src: [u8; 6], tag: [u8; 4], ethertype: u16) -> bool {
    if !(write(ctx, 0, dst) && write(ctx, 6, src)) {
        return false;
    }
    if L2 == 18 && !write(ctx, 12, tag) {
        return false;
    }
    write(ctx, L2 - 2, ethertype.to_be_bytes())
}

/// [`encap`] result: the packet needs an ICMP "fragmentation needed" reply ([`too_big_v4`]), sent by the caller.
pub const TOO_BIG_V4: u32 = 0x101;
/// [`encap`] result: the packet needs an ICMPv6 "packet too big" reply ([`too_big_v6`]), sent by the caller.
pub const TOO_BIG_V6: u32 = 0x102;

/// Outer header length towards `b`.
#[inline(always)]
pub fn outer_len(b: &BackendInfo) -> u16 {
    if b.flags & backend_flags::V6 != 0 {
        40
    } else {
        20
    }
}

/// Encapsulates the IP packet towards the backend (outer family = backend family), via the next hop.
#[inline(never)]
pub fn encap<const L2: usize>(ctx: &XdpContext, p: &Pkt, h: u32, b: &BackendInfo, len: u64) -> u32 {
    let Some(cfg) = maps::CONFIG.get(0) else {
        return verdict::DROP;
    };
    let outer_v6 = b.flags & backend_flags::V6 != 0;
    let olen: u64 = if outer_v6 { 40 } else { 20 };
    let inner_len = len - L2 as u64;
    if inner_len + olen > cfg.mtu as u64 {
        if p.icmp || (!p.v6 && !p.df) {
            // Cannot fragment in XDP, and an ICMP error gets no ICMP error.
            maps::stat(stat::DROP_ENCAP, len);
            return verdict::DROP;
        }
        return if p.v6 { TOO_BIG_V6 } else { TOO_BIG_V4 };
    }
    // Sequential reads, largest extent first: a tuple of overlapping bounds checks lets LLVM drop checks the
    // verifier cannot prove redundant.
    let Some(tos) = read::<[u8; 2]>(ctx, L2) else {
        return verdict::DROP;
    };
    let Some(l2) = read_l2::<L2>(ctx) else {
        return verdict::DROP;
    };
    let inner_proto = if p.v6 { 41u8 } else { 4u8 };
    if outer_v6 {
        // SAFETY: ctx.ctx is the live xdp_md of this invocation.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, -40) } != 0 {
            maps::stat(stat::DROP_ENCAP, len);
            return verdict::DROP;
        }
        if !write_l2::<L2>(ctx, cfg.next_hop_mac, l2.dst, l2.tag, 0x86dd) {
            return verdict::DROP;
        }
        // Version 6, traffic class 0, flow label from the flow hash (spreads flows over backend queues).
        let first = [0x60, ((h >> 16) & 0x0f) as u8, (h >> 8) as u8, h as u8];
        let l = (inner_len as u16).to_be_bytes();
        let mut src = cfg.encap_src_v6;
        let hb = h.to_be_bytes();
        src[12] = hb[0];
        src[13] = hb[1];
        src[14] = hb[2];
        src[15] = hb[3];
        let ok = write(ctx, L2, first)
            && write(ctx, L2 + 4, [l[0], l[1], inner_proto, TTL])
            && write(ctx, L2 + 8, src)
            && write(ctx, L2 + 24, b.addr);
        return if ok { verdict::TX } else { verdict::DROP };
    }
    // SAFETY: as above.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -20) } != 0 {
        maps::stat(stat::DROP_ENCAP, len);
        return verdict::DROP;
    }
    if !write_l2::<L2>(ctx, cfg.next_hop_mac, l2.dst, l2.tag, 0x0800) {
        return verdict::DROP;
    }
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    // Keep the inner IPv4 TOS (DSCP/ECN) visible outside.
    ip[1] = if p.v6 { 0 } else { tos[1] };
    let tl = ((inner_len + 20) as u16).to_be_bytes();
    ip[2] = tl[0];
    ip[3] = tl[1];
    ip[8] = TTL;
    ip[9] = inner_proto;
    ip[12] = cfg.encap_src_v4[0];
    ip[13] = cfg.encap_src_v4[1];
    ip[14] = (h >> 8) as u8;
    ip[15] = h as u8;
    ip[16] = b.addr[12];
    ip[17] = b.addr[13];
    ip[18] = b.addr[14];
    ip[19] = b.addr[15];
    let c = csum::fold(csum::add(0, &ip)).to_be_bytes();
    ip[10] = c[0];
    ip[11] = c[1];
    if write(ctx, L2, ip) {
        verdict::TX
    } else {
        verdict::DROP
    }
}

/// Keeps the first `keep` bytes of the frame, then grows `grow` bytes of headroom at its start.
#[inline(always)]
fn resize(ctx: &XdpContext, keep: usize, grow: i32) -> bool {
    let cur = (ctx.data_end() - ctx.data()) as i64;
    // SAFETY: ctx.ctx is the live xdp_md of this invocation.
    unsafe {
        bpf_xdp_adjust_tail(ctx.ctx, (keep as i64 - cur) as i32) == 0 && bpf_xdp_adjust_head(ctx.ctx, -grow) == 0
    }
}

/// Adds the 16-bit words of the `N` packet bytes at `off` (N even) to `sum` (copied to the stack: keep N small).
#[inline(always)]
fn sum_packet<const N: usize>(ctx: &XdpContext, off: usize, sum: u64) -> Option<u64> {
    let b = read::<[u8; N]>(ctx, off)?;
    Some(csum::add(sum, &b))
}

/// Replies ICMP "fragmentation needed" (type 3 code 4) to the IPv4 client, quoting its header + 8 bytes.
/// Layout after: L2 | IPv4 (20) | ICMP (8) | original IPv4 header + 8 bytes (28, left in place).
#[inline(never)]
pub fn too_big_v4<const L2: usize>(ctx: &XdpContext, next_mtu: u16) -> u32 {
    let Some(addrs) = read::<[u8; 8]>(ctx, L2 + 12) else {
        return verdict::DROP;
    };
    let Some(l2) = read_l2::<L2>(ctx) else {
        return verdict::DROP;
    };
    if !resize(ctx, L2 + 28, 28) {
        maps::stat(stat::DROP_ENCAP, 0);
        return verdict::DROP;
    }
    if !write_l2::<L2>(ctx, l2.src, l2.dst, l2.tag, 0x0800) {
        return verdict::DROP;
    }
    let mtu = next_mtu.to_be_bytes();
    let icmp = [3u8, 4, 0, 0, 0, 0, mtu[0], mtu[1]];
    let Some(sum) = sum_packet::<28>(ctx, L2 + 28, csum::add(0, &icmp)) else {
        return verdict::DROP;
    };
    let c = csum::fold(sum).to_be_bytes();
    let icmp = [3u8, 4, c[0], c[1], 0, 0, mtu[0], mtu[1]];
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[3] = 56;
    ip[8] = TTL;
    ip[9] = 1;
    ip[12] = addrs[4];
    ip[13] = addrs[5];
    ip[14] = addrs[6];
    ip[15] = addrs[7];
    ip[16] = addrs[0];
    ip[17] = addrs[1];
    ip[18] = addrs[2];
    ip[19] = addrs[3];
    let c = csum::fold(csum::add(0, &ip)).to_be_bytes();
    ip[10] = c[0];
    ip[11] = c[1];
    if write(ctx, L2, ip) && write(ctx, L2 + 20, icmp) {
        maps::stat(stat::ICMP_TOO_BIG_SENT, 0);
        verdict::TX
    } else {
        verdict::DROP
    }
}


/// Replies ICMPv6 "packet too big" (RFC 4443 §3.2: type 2, code 0, `mtu`) to the IPv6 client, from the VIP it
/// wrote to, quoting the first [`PTB6_QUOTE`] bytes of its packet. MACs swapped, VLAN tag kept, hop limit 64.
/// Layout after: L2 | IPv6 (40) | ICMPv6 (8) | original IPv6 header + 48 bytes (88, left in place).
/// Nothing is copied packet to packet or through a large stack buffer: the addresses (32 bytes) and the L2 header
/// are read before the resize, the quote is summed in place.
#[inline(never)]
pub fn too_big_v6<const L2: usize>(ctx: &XdpContext, mtu: u16) -> u32 {
    if ctx.data_end() - ctx.data() < L2 + PTB6_QUOTE {
        // Only with an unset or invalid MTU: a packet over a valid one is longer than the quote.
        maps::stat(stat::DROP_ENCAP, 0);
        return verdict::DROP;
    }
    // Source (the client) then destination (the VIP) address of the client's packet.
    let Some([client, vip]) = read::<[[u8; 16]; 2]>(ctx, L2 + 8) else {
        return verdict::DROP;
    };
    // RFC 4443 §2.4 (e): no error to a multicast or unspecified source.
    if client[0] == 0xff || client.iter().fold(0, |a, &b| a | b) == 0 {
        maps::stat(stat::DROP_ENCAP, 0);
        return verdict::DROP;
    }
    let Some(l2) = read_l2::<L2>(ctx) else {
        return verdict::DROP;
    };
    if !resize(ctx, L2 + PTB6_QUOTE, 48) {
        maps::stat(stat::DROP_ENCAP, 0);
        return verdict::DROP;
    }
    if !write_l2::<L2>(ctx, l2.src, l2.dst, l2.tag, 0x86dd) {
        return verdict::DROP;
    }
    let plen = (8 + PTB6_QUOTE) as u16;
    let pl = plen.to_be_bytes();
    let m = (mtu as u32).to_be_bytes();
    // Checksum: pseudo-header (both addresses, upper-layer length, next header 58), ICMPv6 header, quote.
    let mut sum = csum::add(csum::add(0, &client), &vip) + plen as u64 + 58;
    sum = csum::add(sum, &[2u8, 0, 0, 0, m[0], m[1], m[2], m[3]]);
    let Some(quote) = crate::parse::bytes::<PTB6_QUOTE>(ctx, L2 + 48) else {
        return verdict::DROP;
    };
    sum = csum::add(sum, quote);
    let c = csum::fold(sum).to_be_bytes();
    let ok = write(ctx, L2, [0x60u8, 0, 0, 0, pl[0], pl[1], 58, PTB6_HOP_LIMIT])
        && write(ctx, L2 + 8, vip)
        && write(ctx, L2 + 24, client)
        && write(ctx, L2 + 40, [2u8, 0, c[0], c[1], m[0], m[1], m[2], m[3]]);
    if ok {
        maps::stat(stat::ICMP_TOO_BIG_SENT, 0);
        verdict::TX
    } else {
        verdict::DROP
    }
}
