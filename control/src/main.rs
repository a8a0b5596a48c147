//! The `padis` binary.

/// mimalloc: fewer cycles per request than glibc malloc for the proxy's many small, short-lived buffers. Built
/// without transparent huge pages (`no_thp`): with them, the heap's partly used 2 MiB pages held most of the
/// daemon's RSS (136 of 229 MB following 10,000 Marathon tasks, see control/marathon/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    padis_control::cli::main()
}
