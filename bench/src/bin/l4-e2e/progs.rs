//! The request frame, and the XDP program on the generator's interface that closes the loop, as raw eBPF
//! instructions.
//!
//! Loop program (on the generator's interface, where the forwarder's output arrives): every frame is counted by
//! its destination MAC in a per-CPU array (entry `i` for backend `i`, the last entry for anything else: another
//! MAC, or too short to be a request). A backend's frame is then, while the control word is 1, rewritten into a
//! new request and sent back to the forwarder (see [`Resend`]): the whole 42-byte header is written from the
//! template (destination MAC back to the forwarder's, destination address back to the VIP after DNAT, TTL back
//! to 64), then a new flow is drawn: `f = prandom() & (flows - 1)`, source address low 16 bits = `f & 0xffff`,
//! source port = `1024 + (f >> 16)`. The IPv4 identification is set to `0xffff - (f & 0xffff)`, which keeps the
//! one's-complement sum of the header, so the precomputed header checksum stays right. UDP checksum 0 (none).
//! Other frames, and every frame once the control word is 0 (the drain at the end), are dropped.

use std::net::Ipv4Addr;

use crate::insn::{self, Size, R0, R1, R10, R2, R3, R4, R5, R7, R8};

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

/// Writes the template header over the frame at `R7` (bounds already checked) and draws a new flow (see the
/// module docs). Clobbers r0-r5.
fn rewrite(p: &mut Vec<u64>, spec: &FlowSpec) {
    let tmpl = frame(spec);
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
    ]);
}

/// How the loop program sends a request back out of its interface.
#[derive(Clone, Copy)]
pub enum Resend {
    /// `XDP_TX`: the cheapest, but veth wakes the peer's NAPI after an `XDP_TX` only if the peer runs an XDP
    /// program (use it when the forwarder is an XDP program).
    XdpTx,
    /// `bpf_redirect` to the interface itself (veth's `ndo_xdp_xmit`, which always wakes the peer's NAPI): for a
    /// forwarder without XDP (the kernel stack). Holds the interface's index.
    Redirect(u32),
}

/// The loop program (see the module docs). `counters` is a per-CPU array of `backends.len() + 1` `u64`s;
/// `control` a plain array of one `u32`: 1 = send requests back, 0 = count and drop.
pub fn loop_program(
    spec: &FlowSpec,
    resend: Resend,
    backends: &[[u8; 6]],
    counters_fd: i32,
    control_fd: i32,
) -> Vec<u64> {
    let other = backends.len() as i32;
    let mut p = vec![
        insn::ldx(Size::W, R2, R1, 0), // data
        insn::ldx(Size::W, R3, R1, 4), // data_end
        insn::mov(R7, R2),
        insn::mov_imm(R8, other),
        insn::mov(R4, R2),
        insn::add_imm(R4, HDR_LEN as i32),
    ];
    let mut to_count = vec![p.len()];
    p.push(0); // if data + 42 > data_end goto count (as other)
    p.extend([insn::ldx(Size::W, R4, R7, 0), insn::ldx(Size::H, R5, R7, 4)]);
    for (i, m) in backends.iter().enumerate() {
        let w = u32::from_le_bytes([m[0], m[1], m[2], m[3]]);
        let h = u32::from(u16::from_le_bytes([m[4], m[5]]));
        p.extend([insn::jne32_imm(R4, w, 3), insn::jne32_imm(R5, h, 2), insn::mov_imm(R8, i as i32)]);
        to_count.push(p.len());
        p.push(0); // goto count
    }
    let count = p.len();
    p[to_count[0]] = insn::jgt(R4, R3, (count - to_count[0] - 1) as i16);
    for &j in &to_count[1..] {
        p[j] = insn::ja((count - j - 1) as i16);
    }
    p.extend([insn::stx(Size::W, R10, -4, R8), insn::mov(R2, R10), insn::add_imm(R2, -4)]);
    p.extend(insn::ld_map_fd(R1, counters_fd));
    p.push(insn::call(1)); // bpf_map_lookup_elem
    p.push(insn::jeq_imm(R0, 0, 3));
    p.extend([insn::ldx(Size::Dw, R1, R0, 0), insn::add_imm(R1, 1), insn::stx(Size::Dw, R0, 0, R1)]);
    let mut to_drop = vec![p.len()];
    p.push(0); // if other goto drop
    p.extend(insn::ld_map_value(R1, control_fd, 0));
    p.push(insn::ldx(Size::W, R1, R1, 0));
    to_drop.push(p.len());
    p.push(0); // if control == 0 goto drop
    rewrite(&mut p, spec);
    match resend {
        Resend::XdpTx => p.extend([insn::mov_imm(R0, 3), insn::exit()]), // XDP_TX
        Resend::Redirect(ifindex) => {
            // bpf_redirect(ifindex, 0): XDP_REDIRECT
            p.extend([insn::mov_imm(R1, ifindex as i32), insn::mov_imm(R2, 0), insn::call(23), insn::exit()])
        }
    }
    let drop = p.len();
    p[to_drop[0]] = insn::jeq_imm(R8, other, (drop - to_drop[0] - 1) as i16);
    p[to_drop[1]] = insn::jeq_imm(R1, 0, (drop - to_drop[1] - 1) as i16);
    p.extend([insn::mov_imm(R0, 1), insn::exit()]); // XDP_DROP
    p
}

/// A request for flow `f` (see the module docs), as the loop program would write it.
pub fn request(tmpl: &[u8; FRAME_LEN], f: u32) -> [u8; FRAME_LEN] {
    let mut r = *tmpl;
    let low = (f & 0xffff) as u16;
    r[28..30].copy_from_slice(&low.to_be_bytes());
    r[18..20].copy_from_slice(&(0xffff - low).to_be_bytes());
    r[34..36].copy_from_slice(&(FIRST_PORT + (f >> 16) as u16).to_be_bytes());
    r
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
    fn requests_keep_the_header_checksum() {
        let tmpl = frame(&spec());
        assert_eq!(checksum(&tmpl[14..34]), 0);
        for f in [0u32, 1, 0x1234, 0xfffe, 0xffff, 0x12_3456, MAX_FLOWS - 1] {
            let r = request(&tmpl, f);
            assert_eq!(checksum(&r[14..34]), 0, "flow {f:#x}");
            assert_eq!(u16::from_be_bytes([r[28], r[29]]), (f & 0xffff) as u16);
            assert_eq!(u16::from_be_bytes([r[34], r[35]]), FIRST_PORT + (f >> 16) as u16);
        }
    }

    #[test]
    fn loop_program_jumps_stay_inside() {
        let backends = [[2, 0, 0, 0, 0, 0x10], [2, 0, 0, 0, 0, 0x11], [2, 0, 0, 0, 0, 0x12]];
        for resend in [Resend::XdpTx, Resend::Redirect(2)] {
            let p = loop_program(&spec(), resend, &backends, 3, 4);
            for (i, &ins) in p.iter().enumerate() {
                let code = ins as u8;
                if code & 0x07 == 0x05 || code & 0x07 == 0x06 {
                    if code == 0x85 || code == 0x95 {
                        continue;
                    }
                    let off = i64::from((ins >> 16) as u16 as i16);
                    let target = i as i64 + 1 + off;
                    assert!(target > i as i64 && (target as usize) < p.len(), "insn {i}: {ins:#x}");
                }
            }
        }
    }
}
