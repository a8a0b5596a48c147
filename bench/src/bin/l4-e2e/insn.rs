//! eBPF instruction encoding (`struct bpf_insn` as one little-endian `u64`), just the forms the loop program uses.

/// r0: helper results, program verdict.
pub const R0: u8 = 0;
/// r1: first argument (the program's context on entry).
pub const R1: u8 = 1;
/// r2: second argument.
pub const R2: u8 = 2;
/// r3: third argument.
pub const R3: u8 = 3;
/// r4: fourth argument.
pub const R4: u8 = 4;
/// r5: fifth argument.
pub const R5: u8 = 5;
/// r7: callee-saved.
pub const R7: u8 = 7;
/// r8: callee-saved.
pub const R8: u8 = 8;
/// r10: frame pointer (read-only).
pub const R10: u8 = 10;

/// Memory access sizes.
#[derive(Clone, Copy)]
pub enum Size {
    /// 2 bytes.
    H = 0x08,
    /// 4 bytes.
    W = 0x00,
    /// 8 bytes.
    Dw = 0x18,
}

fn raw(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | u64::from(dst & 0xf) << 8
        | u64::from(src & 0xf) << 12
        | u64::from(off as u16) << 16
        | u64::from(imm as u32) << 32
}

/// `dst = *(size *)(src + off)`
pub fn ldx(size: Size, dst: u8, src: u8, off: i16) -> u64 {
    raw(0x61 | size as u8, dst, src, off, 0)
}

/// `*(size *)(dst + off) = src`
pub fn stx(size: Size, dst: u8, off: i16, src: u8) -> u64 {
    raw(0x63 | size as u8, dst, src, off, 0)
}

/// `*(size *)(dst + off) = imm`
pub fn st(size: Size, dst: u8, off: i16, imm: i32) -> u64 {
    raw(0x62 | size as u8, dst, 0, off, imm)
}

/// `dst = src` (64-bit).
pub fn mov(dst: u8, src: u8) -> u64 {
    raw(0xbf, dst, src, 0, 0)
}

/// `dst = imm` (64-bit, sign-extended).
pub fn mov_imm(dst: u8, imm: i32) -> u64 {
    raw(0xb7, dst, 0, 0, imm)
}

/// `dst += imm` (64-bit).
pub fn add_imm(dst: u8, imm: i32) -> u64 {
    raw(0x07, dst, 0, 0, imm)
}

/// `dst -= src` (64-bit).
pub fn sub(dst: u8, src: u8) -> u64 {
    raw(0x1f, dst, src, 0, 0)
}

/// `dst &= imm` (32-bit: the upper half is cleared, `imm` is not sign-extended).
pub fn and32_imm(dst: u8, imm: u32) -> u64 {
    raw(0x54, dst, 0, 0, imm as i32)
}

/// `dst >>= imm` (64-bit logical).
pub fn rsh_imm(dst: u8, imm: i32) -> u64 {
    raw(0x77, dst, 0, 0, imm)
}

/// `dst = htobe16(dst)` (the upper bits cleared).
pub fn be16(dst: u8) -> u64 {
    raw(0xdc, dst, 0, 0, 16)
}

/// `if dst > src (unsigned) goto +off`
pub fn jgt(dst: u8, src: u8, off: i16) -> u64 {
    raw(0x2d, dst, src, off, 0)
}

/// `if dst == imm goto +off`
pub fn jeq_imm(dst: u8, imm: i32, off: i16) -> u64 {
    raw(0x15, dst, 0, off, imm)
}

/// `if (u32)dst != imm goto +off` (32-bit compare: `imm` is not sign-extended).
pub fn jne32_imm(dst: u8, imm: u32, off: i16) -> u64 {
    raw(0x56, dst, 0, off, imm as i32)
}

/// `goto +off`
pub fn ja(off: i16) -> u64 {
    raw(0x05, 0, 0, off, 0)
}

/// Helper call.
pub fn call(helper: i32) -> u64 {
    raw(0x85, 0, 0, 0, helper)
}

/// `exit`
pub fn exit() -> u64 {
    raw(0x95, 0, 0, 0, 0)
}

/// `dst = map` (two instruction slots; `src = BPF_PSEUDO_MAP_FD`).
pub fn ld_map_fd(dst: u8, fd: i32) -> [u64; 2] {
    [raw(0x18, dst, 1, 0, fd), 0]
}

/// `dst = &map.value[0] + off` for a plain array map (two instruction slots; `src = BPF_PSEUDO_MAP_VALUE`).
pub fn ld_map_value(dst: u8, fd: i32, off: i32) -> [u64; 2] {
    [raw(0x18, dst, 2, 0, fd), raw(0, 0, 0, 0, off)]
}
