//! The generator's frame and XDP program, and the backends' counting sink, as raw eBPF instructions.
//!
//! Generator: live-frames test runs re-use page-pool pages whose data a receiver may have rewritten (Padis swaps
//! the MACs, nftables rewrites the destination and the TTL), so the program writes the whole 42-byte header on
//! every run, then picks a flow: `f = prandom() & (flows - 1)`, source address low 16 bits = `f & 0xffff`,
//! source port = `1024 + (f >> 16)`. The IPv4 identification is set to `0xffff - (f & 0xffff)`, which keeps the
//! one's-complement sum of the header, so the precomputed header checksum stays right. UDP checksum 0 (none).
//!
//! Sink: counts every frame by the last byte of its destination MAC in a per-CPU array and drops it.

use std::net::Ipv4Addr;

use crate::insn::{self, Size, R0, R1, R2, R3, R4, R7, R10};

/// Frame length: Ethernet + IPv4 + UDP headers (42 bytes) and 22 bytes of payload, the 64-byte minimum frame.
pub const FRAME_LEN: usize = 64;
const HDR_LEN: usize = 42;
/// First source port; flow `f` uses `FIRST_PORT + (f >> 16)`.
const FIRST_PORT: u16 = 1024;
/// Largest flow count (16 bits of address, 8 of port).
pub const MAX_FLOWS: u32 = 1 << 24;

/// What the generator sends.
pub struct FlowSpec {
    /// Destination MAC (the forwarder's interface).
    pub dst_mac: [u8; 6],
    /// Source MAC (the generator's interface).
    pub src_mac: [u8; 6],
    /// Source network: its first two octets are kept, the last two carry the flow.
    pub src_net: Ipv4Addr,
    /// Destination (the VIP).
    pub dst: Ipv4Addr,
    /// Destination UDP port.
    pub port: u16,
    /// Distinct flows, a power of two up to [`MAX_FLOWS`].
    pub flows: u32,
}

fn checksum(b: &[u8]) -> u16 {
    let mut s: u32 = b.chunks(2).map(|c| u32::from(c[0]) << 8 | u32::from(c.get(1).copied().unwrap_or(0))).sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// The template frame (flow 0): source low bits 0, identification `0xffff`, source port [`FIRST_PORT`].
pub fn frame(spec: &FlowSpec) -> [u8; FRAME_LEN] {
    let mut f = [0x61u8; FRAME_LEN];
    f[0..6].copy_from_slice(&spec.dst_mac);
    f[6..12].copy_from_slice(&spec.src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&((FRAME_LEN - 14) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&0xffffu16.to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
    ip[8] = 64;
    ip[9] = 17;
    ip[10..12].copy_from_slice(&[0, 0]);
    let net = spec.src_net.octets();
    ip[12..16].copy_from_slice(&[net[0], net[1], 0, 0]);
    ip[16..20].copy_from_slice(&spec.dst.octets());
    let sum = checksum(ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&FIRST_PORT.to_be_bytes());
    udp[2..4].copy_from_slice(&spec.port.to_be_bytes());
    udp[4..6].copy_from_slice(&((FRAME_LEN - 34) as u16).to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    f
}

/// The generator program for `spec` (see the module docs); returns `XDP_TX`.
pub fn generator(spec: &FlowSpec) -> Vec<u64> {
    let tmpl = frame(spec);
    let mut p = vec![
        insn::ldx(Size::W, R2, R1, 0), // data
        insn::ldx(Size::W, R3, R1, 4), // data_end
        insn::mov(R7, R2),
        insn::mov(R4, R2),
        insn::add_imm(R4, HDR_LEN as i32),
    ];
    let bounds_check = p.len();
    p.push(0); // patched below: if data + 42 > data_end goto out
    for off in (0..HDR_LEN - 2).step_by(4) {
        let w = u32::from_le_bytes([tmpl[off], tmpl[off + 1], tmpl[off + 2], tmpl[off + 3]]);
        p.push(insn::st(Size::W, R7, off as i16, w as i32));
    }
    let h = u16::from_le_bytes([tmpl[HDR_LEN - 2], tmpl[HDR_LEN - 1]]);
    p.push(insn::st(Size::H, R7, (HDR_LEN - 2) as i16, i32::from(h)));
    p.extend([
        insn::call(7), // bpf_get_prandom_u32
        insn::and32_imm(R0, spec.flows - 1),
        insn::mov(R1, R0),
        insn::and32_imm(R1, 0xffff),
        insn::mov_imm(R2, 0xffff),
        insn::sub(R2, R1),
        insn::be16(R1),
        insn::stx(Size::H, R7, 14 + 14, R1), // source address, low half
        insn::be16(R2),
        insn::stx(Size::H, R7, 14 + 4, R2), // identification
        insn::rsh_imm(R0, 16),
        insn::add_imm(R0, i32::from(FIRST_PORT)),
        insn::be16(R0),
        insn::stx(Size::H, R7, 34, R0), // source port
        insn::mov_imm(R0, 3),           // XDP_TX
        insn::exit(),
    ]);
    p[bounds_check] = insn::jgt(R4, R3, (p.len() - bounds_check - 1) as i16);
    p.extend([insn::mov_imm(R0, 0), insn::exit()]); // XDP_ABORTED
    p
}

/// The sink program: `counters[dst_mac[5]] += 1`, `XDP_DROP`. `counters` is a per-CPU array of 256 `u64`.
pub fn sink(counters_fd: i32) -> Vec<u64> {
    let mut p = vec![
        insn::ldx(Size::W, R2, R1, 0),
        insn::ldx(Size::W, R3, R1, 4),
        insn::mov(R4, R2),
        insn::add_imm(R4, 14),
    ];
    let bounds_check = p.len();
    p.push(0);
    p.extend([insn::ldx(Size::B, R4, R2, 5), insn::stx(Size::W, R10, -4, R4), insn::mov(R2, R10), insn::add_imm(R2, -4)]);
    p.extend(insn::ld_map_fd(R1, counters_fd));
    p.push(insn::call(1)); // bpf_map_lookup_elem
    p.push(insn::jeq_imm(R0, 0, 3));
    p.extend([insn::ldx(Size::Dw, R1, R0, 0), insn::add_imm(R1, 1), insn::stx(Size::Dw, R0, 0, R1)]);
    let drop = p.len();
    p[bounds_check] = insn::jgt(R4, R3, (drop - bounds_check - 1) as i16);
    p.extend([insn::mov_imm(R0, 1), insn::exit()]); // XDP_DROP
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FlowSpec {
        FlowSpec {
            dst_mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 2],
            src_net: Ipv4Addr::new(10, 64, 0, 0),
            dst: Ipv4Addr::new(10, 78, 100, 1),
            port: 9000,
            flows: 1 << 12,
        }
    }

    #[test]
    fn varied_fields_keep_the_header_checksum() {
        let mut f = frame(&spec());
        for v in [0u16, 1, 0x1234, 0xfffe, 0xffff] {
            f[28..30].copy_from_slice(&v.to_be_bytes());
            f[18..20].copy_from_slice(&(0xffff - v).to_be_bytes());
            assert_eq!(checksum(&f[14..34]), 0, "flow low bits {v:#x}");
        }
    }
}
