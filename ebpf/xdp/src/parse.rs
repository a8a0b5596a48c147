//! Parsing: Ethernet (+ one 802.1Q/802.1ad tag), IPv4, IPv6, TCP, UDP, and ICMP errors that quote a VIP flow.
//! Anything not addressed to a VIP address is passed untouched.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use padis_ebpf_common::{stat, v4_mapped, FlowKey};

use crate::{lb, maps, verdict};

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

#[inline(always)]
fn wire_u16(a: u8, b: u8) -> u16 {
    u16::from_ne_bytes([a, b])
}

/// A packet addressed to a VIP address, as far as balancing needs it.
#[derive(Clone, Copy)]
pub struct Pkt {
    /// Ethernet header length (14, or 18 with a VLAN tag).
    pub l2len: usize,
    /// IPv6 (else IPv4) outer header.
    pub v6: bool,
    /// IPv4 "don't fragment".
    pub df: bool,
    /// The flow, client -> VIP (for an ICMP error: the quoted flow, reversed).
    pub flow: FlowKey,
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
    let Some(eth) = read::<[u8; 14]>(ctx, 0) else {
        return verdict::PASS;
    };
    let mut et = u16::from_be_bytes([eth[12], eth[13]]);
    let mut l2len = 14;
    if et == 0x8100 || et == 0x88a8 {
        let Some(tag) = read::<[u8; 4]>(ctx, 14) else {
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

/// TCP/UDP ports (wire order) and TCP flags at `off`; None if truncated.
#[inline(always)]
fn ports(ctx: &XdpContext, off: usize, proto: u8) -> Option<(u16, u16, u8)> {
    if proto == 6 {
        let h = read::<[u8; 20]>(ctx, off)?;
        Some((wire_u16(h[0], h[1]), wire_u16(h[2], h[3]), h[13]))
    } else {
        let h = read::<[u8; 8]>(ctx, off)?;
        Some((wire_u16(h[0], h[1]), wire_u16(h[2], h[3]), 0))
    }
}

#[inline(always)]
fn parse_v4<const L2: usize>(ctx: &XdpContext, len: u64) -> u32 {
    let l2len = L2;
    let Some(ip) = read::<[u8; 20]>(ctx, l2len) else {
        return pass(len);
    };
    let dst = v4_mapped([ip[16], ip[17], ip[18], ip[19]]);
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    // Fast path: a plain TCP/UDP packet goes straight to the VIP lookup (lb::handle passes it if it is not for a
    // VIP); only unusual packets pay for the VIP-address check that decides whether they are ours to judge.
    let plain = ip[0] == 0x45 && frag & 0x3fff == 0 && (ip[9] == 6 || ip[9] == 17);
    // SAFETY: read-only lookup of a plain value.
    if !plain && unsafe { maps::VIP_ADDRS.get(&dst) }.is_none() {
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
    let src = v4_mapped([ip[12], ip[13], ip[14], ip[15]]);
    let l4 = l2len + 20;
    match proto {
        6 | 17 => {
            let Some((sport, dport, tcp_flags)) = ports(ctx, l4, proto) else {
                return drop(stat::DROP_MALFORMED, len);
            };
            lb::dispatch::<L2>(ctx, &Pkt {
                l2len,
                v6: false,
                df,
                flow: FlowKey { src, dst, sport, dport, proto, pad: [0; 3] },
                tcp_flags,
                icmp: false,
            }, len)
        }
        1 => {
            let Some(icmp) = read::<[u8; 8]>(ctx, l4) else {
                return drop(stat::DROP_MALFORMED, len);
            };
            // Destination unreachable (incl. fragmentation needed) and time exceeded quote a packet the backend
            // sent from the VIP: they belong to that flow's backend. Everything else (echo...) is the node's.
            if icmp[0] != 3 && icmp[0] != 11 {
                return pass(len);
            }
            let Some(inner) = read::<[u8; 20]>(ctx, l4 + 8) else {
                return drop(stat::DROP_MALFORMED, len);
            };
            let iproto = inner[9];
            if inner[0] != 0x45 || (iproto != 6 && iproto != 17) {
                return pass(len);
            }
            let Some(p) = read::<[u8; 4]>(ctx, l4 + 28) else {
                return drop(stat::DROP_MALFORMED, len);
            };
            lb::dispatch::<L2>(ctx, &Pkt {
                l2len,
                v6: false,
                df,
                flow: FlowKey {
                    src: v4_mapped([inner[16], inner[17], inner[18], inner[19]]),
                    dst: v4_mapped([inner[12], inner[13], inner[14], inner[15]]),
                    sport: wire_u16(p[2], p[3]),
                    dport: wire_u16(p[0], p[1]),
                    proto: iproto,
                    pad: [0; 3],
                },
                tcp_flags: 0,
                icmp: true,
            }, len)
        }
        _ => pass(len),
    }
}

#[inline(always)]
fn parse_v6<const L2: usize>(ctx: &XdpContext, len: u64) -> u32 {
    let l2len = L2;
    // Sequential reads, largest extent first (see fwd.rs).
    let Some(dst) = read::<[u8; 16]>(ctx, l2len + 24) else {
        return pass(len);
    };
    let Some(ip) = read::<[u8; 8]>(ctx, l2len) else {
        return pass(len);
    };
    let plain = ip[0] >> 4 == 6 && (ip[6] == 6 || ip[6] == 17);
    // SAFETY: read-only lookup of a plain value.
    if !plain && unsafe { maps::VIP_ADDRS.get(&dst) }.is_none() {
        return pass(len);
    }
    if ip[0] >> 4 != 6 {
        return drop(stat::DROP_MALFORMED, len);
    }
    let nh = ip[6];
    let Some(src) = read::<[u8; 16]>(ctx, l2len + 8) else {
        return pass(len);
    };
    let l4 = l2len + 40;
    match nh {
        44 => drop(stat::DROP_FRAGMENT, len),
        0 | 43 | 60 => drop(stat::DROP_IP_OPTIONS, len),
        6 | 17 => {
            let Some((sport, dport, tcp_flags)) = ports(ctx, l4, nh) else {
                return drop(stat::DROP_MALFORMED, len);
            };
            lb::dispatch::<L2>(ctx, &Pkt {
                l2len,
                v6: true,
                df: true,
                flow: FlowKey { src, dst, sport, dport, proto: nh, pad: [0; 3] },
                tcp_flags,
                icmp: false,
            }, len)
        }
        58 => {
            let Some(icmp) = read::<[u8; 8]>(ctx, l4) else {
                return drop(stat::DROP_MALFORMED, len);
            };
            // Destination unreachable, packet too big, time exceeded: quote a packet sent from the VIP.
            if icmp[0] < 1 || icmp[0] > 3 {
                return pass(len);
            }
            let Some(idst) = read::<[u8; 16]>(ctx, l4 + 32) else {
                return drop(stat::DROP_MALFORMED, len);
            };
            let Some(isrc) = read::<[u8; 16]>(ctx, l4 + 16) else {
                return drop(stat::DROP_MALFORMED, len);
            };
            let Some(inner) = read::<[u8; 8]>(ctx, l4 + 8) else {
                return drop(stat::DROP_MALFORMED, len);
            };
            let iproto = inner[6];
            if inner[0] >> 4 != 6 || (iproto != 6 && iproto != 17) {
                return pass(len);
            }
            let Some(p) = read::<[u8; 4]>(ctx, l4 + 48) else {
                return drop(stat::DROP_MALFORMED, len);
            };
            lb::dispatch::<L2>(ctx, &Pkt {
                l2len,
                v6: true,
                df: true,
                flow: FlowKey {
                    src: idst,
                    dst: isrc,
                    sport: wire_u16(p[2], p[3]),
                    dport: wire_u16(p[0], p[1]),
                    proto: iproto,
                    pad: [0; 3],
                },
                tcp_flags: 0,
                icmp: true,
            }, len)
        }
        _ => pass(len),
    }
}
