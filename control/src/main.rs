//! The `padis` binary.

/// mimalloc: fewer cycles per request than glibc malloc for the proxy's many small, short-lived buffers.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    padis_control::cli::main()
}
