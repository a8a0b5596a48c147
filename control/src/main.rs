//! The `padis` binary.

/// mimalloc: fewer cycles per request than glibc malloc for the proxy's many small, short-lived buffers. Built
/// without transparent huge pages (`no_thp`): with them, the heap's partly used 2 MiB pages held most of the
/// daemon's RSS (136 of 229 MB following 10,000 Marathon tasks, see control/marathon/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's index of `mi_option_purge_delay` (mimalloc.h; libmimalloc-sys has no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// mimalloc v3's default purge delay (ms), used to check that the index above names that option.
const MI_DEFAULT_PURGE_DELAY_MS: std::ffi::c_long = 1000;
/// The purge delay Padis runs with (ms).
const PURGE_DELAY_MS: std::ffi::c_long = 10;

/// Freed memory goes back to the OS after 10 ms instead of mimalloc v3's 1 s (10 s for arenas): following
/// 10,000 Marathon tasks, RSS 242 -> 190 MB at the same latency (control/marathon/README.md).
/// `MIMALLOC_PURGE_DELAY` in the environment wins.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: reads and sets a process-wide integer option of the allocator; mimalloc reads it at each purge.
    unsafe {
        if libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) == MI_DEFAULT_PURGE_DELAY_MS {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        }
    }
}

fn main() -> std::process::ExitCode {
    tune_allocator();
    padis_control::cli::main()
}
