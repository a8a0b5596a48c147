//! Link flags of the XDP object. `allows-misaligned-mem-access` (LLVM 22's BPF backend, which bpf-linker 0.13 is
//! built against by `tests/setup`) lets LLVM load and store packet fields (addresses, ports, MACs) as whole
//! words instead of byte by byte: the kernel accepts misaligned packet access on every architecture that has
//! efficient unaligned access (x86-64, arm64). Stack accesses stay aligned (the verifier requires it), which
//! `Pkt`'s `repr(C)` layout ensures. An older LLVM ignores the unknown feature with a warning (byte loads).

fn main() {
    println!("cargo:rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
}
