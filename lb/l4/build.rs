//! Builds the XDP program (ebpf/xdp) for the bpf target with aya-build (nightly + rust-src + bpf-linker); the
//! object lands in OUT_DIR/padis-xdp and is embedded by `crate::program`.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let ebpf = manifest.join("../../ebpf/xdp").canonicalize()?;
    let common = manifest.join("../../ebpf/common").canonicalize()?;
    println!("cargo:rerun-if-changed={}", common.display());
    // ebpf/xdp is its own workspace (excluded from the Padis one): aya-build runs cargo in our cwd.
    std::env::set_current_dir(&ebpf)?;
    let root = ebpf.to_str().ok_or_else(|| anyhow::anyhow!("non UTF-8 path {}", ebpf.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "padis-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
