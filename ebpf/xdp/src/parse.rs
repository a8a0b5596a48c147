//! Parsing: Ethernet (+ one 802.1Q/802.1ad tag), IPv4, IPv6, TCP, UDP, and ICMP errors that quote a VIP flow.
//! Anything not addressed to a VIP address is passed untouched.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use padis_ebpf_common::stat;

use crate::{
    key::{Addr, Flow},
    lb, maps, verdict,
};

/// Pointer to a `T` at `off` bytes into the packet, if the packet is long enough.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// Copy of a `T` at `off` bytes into the packet.
#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    // SAFETY: ptr_at checked the bounds; unaligned read of plain bytes.
    ptr_at::<T>(ctx, off).map(|p| unsafe { p.read_unaligned() })
}

/// Writes `v` at `off` bytes into the packet; false if the packet is too short.
#[inline(always)]
pub fn write<T: Copy>(ctx: &XdpContext, off: usize, v: T) -> bool {
    match ptr_at::<T>(ctx, off) {
        // SAFETY: bounds checked by ptr_at.
        Some(p) => {
            unsafe { p.write_unaligned(v) };
            true
        }
        None => false,
    }
}

/// A packet addressed to a VIP address, as far as balancing needs it. `repr(C)`, the flow first: the small fields
/// share one aligned word after it, so LLVM's merged stores of them (word-wide with misaligned packet access on)
/// stay aligned on the stack, as the verifier requires.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pkt {
    /// The flow, client -> VIP (for an ICMP error: the quoted flow, reversed).
    pub flow: Flow,
    /// IPv6 (else IPv4) outer header.
    pub v6: bool,
    /// IPv4 "don't fragment".
    pub df: bool,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
    /// This is an ICMP error about `flow`, not a packet of it.
    pub icmp: bool,
}

/// Counts and passes a packet that is not for a VIP.
#[inline(always)]
fn pass(len: u64) -> u32 {
    maps::stat(stat::PASSED, len);
    verdict::PASS
}

/// Counts and drops a packet for a VIP address.
#[inline(always)]
fn drop(reason: u32, len: u64) -> u32 {
    maps::stat(reason, len);
    verdict::DROP
}

/// Program body: returns the XDP verdict.
#[inline(always)]
pub fn process(ctx: &XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let Some(eth) = bytes::<14>(ctx, 0) else {
        return verdict::PASS;
    };
    let mut et = u16::from_be_bytes([eth[12], eth[13]]);
    let mut l2len = 14;
    if et == 0x8100 || et == 0x88a8 {
        let Some(tag) = bytes::<4>(ctx, 14) else {
            return verdict::PASS;
        };
        et = u16::from_be_bytes([tag[2], tag[3]]);
        l2len = 18;
    }
    match (et, l2len) {
        (0x0800, 14) => parse_v4::<14>(ctx, len),
        (0x0800, _) => parse_v4::<18>(ctx, len),
        (0x86dd, 14) => parse_v6::<14>(ctx, len),
        (0x86dd, _) => parse_v6::<18>(ctx, len),
        _ => pass(len),
    }
}

/// The `N` packet bytes at `off`, in place (no copy), if the packet is long enough.
#[inline(always)]
pub fn bytes<const N: usize>(ctx: &XdpContext, off: usize) -> Option<&[u8; N]> {
    // SAFETY: ptr_at checked the bounds; packet memory outlives the program run and `[u8; N]` has alignment 1.
    ptr_at::<[u8; N]>(ctx, off).map(|p| unsafe { &*p })
}

/// Bytes `i..i + 4` of `b` as a word in memory order (addresses and port pairs are keyed as they are on the wire).
#[inline(always)]
fn word<const N: usize>(b: &[u8; N], i: usize) -> u32 {
    u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// TCP/UDP source + destination ports (one word, wire order) and TCP flags at `off`; None if truncated.
#[inline(always)]
fn ports(ctx: &XdpContext, off: usize, proto: u8) -> Option<(u32, u8)> {
    if proto == 6 {
        let h = bytes::<20>(ctx, off)?;
        Some((word(h, 0), h[13]))
    } else {
        let h = bytes::<8>(ctx, off)?;
        Some((word(h, 0), 0))
    }
}

#[inline(always)]
fn parse_v4<const L2: usize>(ctx: &XdpContext, len: u64) -> u32 {
    let l2len = L2;
    let Some(ip) = bytes::<20>(ctx, l2len) else {
        return pass(len);
    };
    let dst = word(ip, 16);
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    // Fast path: a plain TCP/UDP packet goes straight to the VIP lookup (lb::handle passes it if it is not for a
    // VIP); only unusual packets pay for the VIP-address check that decides whether they are ours to judge.
    let plain = ip[0] == 0x45 && frag & 0x3fff == 0 && (ip[9] == 6 || ip[9] == 17);
    // SAFETY: read-only lookup of a plain value.
    if !plain && unsafe { maps::VIP_ADDRS.get(Addr::v4(dst).bytes()) }.is_none() {
        return pass(len);
    }
    if ip[0] >> 4 != 4 {
        return drop(stat::DROP_MALFORMED, len);
    }
    if ip[0] & 0xf != 5 {
        return drop(stat::DROP_IP_OPTIONS, len);
    }
    if frag & 0x3fff != 0 {
        return drop(stat::DROP_FRAGMENT, len);
    }
    let df = frag & 0x4000 != 0;
    let proto = ip[9];
    let src = word(ip, 12);
    let l4 = l2len + 20;
    match proto {
        6 | 17 => {
            let Some((ports, tcp_flags)) = ports(ctx, l4, proto) else {
                return drop(stat::DROP_MALFORMED, len);
            };
            lb::dispatch::<L2>(ctx, &Pkt { v6: false, df, flow: Flow::v4(src, dst, ports, proto), tcp_flags, icmp: false }, len)
        }
        1 => {
            let Some(icmp) = bytes::<8>(ctx, l4) else {
                return drop(stat::DROP_MALFORMED, len);
            };
            // Destination unreachable (incl. fragmentation needed) and time exceeded quote a packet the backend
            // sent from the VIP: they belong to that flow's backend. Everything else (echo...) is the node's.
            if icmp[0] != 3 && icmp[0] != 11 {
                return pass(len);
            }
            let Some(inner) = bytes::<20>(ctx, l4 + 8) else {
                return drop(stat::DROP_MALFORMED, len);
            };
            let iproto = inner[9];
            if inner[0] != 0x45 || (iproto != 6 && iproto != 17) {
                return pass(len);
            }
            let Some(p) = bytes::<4>(ctx, l4 + 28) else {
                return drop(stat::DROP_MALFORMED, len);
            };
            // The quoted packet went VIP -> client: the flow is its reverse.
            let flow = Flow::v4(word(inner, 16), word(inner, 12), u32::from_ne_bytes([p[2], p[3], p[0], p[1]]), iproto);
            lb::dispatch::<L2>(ctx, &Pkt { v6: false, df, flow, tcp_flags: 0, icmp: true }, len)
        }
        _ => pass(len),
    }
}

/// The 16-byte address at `i` of `b` as four words.
#[inline(always)]
fn addr6<const N: usize>(b: &[u8; N], i: usize) -> [u32; 4] {
    [word(b, i), word(b, i + 4), word(b, i + 8), word(b, i + 12)]
}

#[inline(always)]
fn parse_v6<const L2: usize>(ctx: &XdpContext, len: u64) -> u32 {
    let l2len = L2;
    let Some(ip) = bytes::<40>(ctx, l2len) else {
        return pass(len);
    };
    let nh = ip[6];
    let plain = ip[0] >> 4 == 6 && (nh == 6 || nh == 17);
    let dst = addr6(ip, 24);
    // SAFETY: read-only lookup of a plain value.
    if !plain && unsafe { maps::VIP_ADDRS.get(Addr { w: dst }.bytes()) }.is_none() {
        return pass(len);
    }
    if ip[0] >> 4 != 6 {
        return drop(stat::DROP_MALFORMED, len);
    }
    let l4 = l2len + 40;
    match nh {
        44 => drop(stat::DROP_FRAGMENT, len),
        0 | 43 | 60 => drop(stat::DROP_IP_OPTIONS, len),
        6 | 17 => {
            let Some((ports, tcp_flags)) = ports(ctx, l4, nh) else {
                return drop(stat::DROP_MALFORMED, len);
            };
            let flow = Flow::v6(addr6(ip, 8), dst, ports, nh);
            lb::dispatch::<L2>(ctx, &Pkt { v6: true, df: true, flow, tcp_flags, icmp: false }, len)
        }
        58 => {
            let Some(icmp) = bytes::<8>(ctx, l4) else {
                return drop(stat::DROP_MALFORMED, len);
            };
            // Destination unreachable, packet too big, time exceeded: quote a packet sent from the VIP.
            if icmp[0] < 1 || icmp[0] > 3 {
                return pass(len);
            }
            let Some(inner) = bytes::<40>(ctx, l4 + 8) else {
                return drop(stat::DROP_MALFORMED, len);
            };
            let iproto = inner[6];
            if inner[0] >> 4 != 6 || (iproto != 6 && iproto != 17) {
                return pass(len);
            }
            let Some(p) = bytes::<4>(ctx, l4 + 48) else {
                return drop(stat::DROP_MALFORMED, len);
            };
            let flow = Flow::v6(addr6(inner, 24), addr6(inner, 8), u32::from_ne_bytes([p[2], p[3], p[0], p[1]]), iproto);
            lb::dispatch::<L2>(ctx, &Pkt { v6: true, df: true, flow, tcp_flags: 0, icmp: true }, len)
        }
        _ => pass(len),
    }
}
