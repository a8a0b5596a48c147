//! Runs the Padis L7 plane alone from a config file, for the L7 benchmark (no daemon needed).
//! Usage: `l7-proxy <config.toml>`; `PADIS_WORKERS` (default 1) worker threads; stops on SIGTERM/SIGINT.

use padis_balance::HealthRegistry;

/// mimalloc: fewer cycles per request than glibc malloc for the proxy's many small short-lived buffers.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use padis_lb::L7Plane;
use padis_model::{Snapshot, SnapshotStore};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: l7-proxy <config.toml>")?;
    let workers: usize = std::env::var("PADIS_WORKERS").ok().and_then(|w| w.parse().ok()).unwrap_or(1);
    let rt = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()?
    };
    rt.block_on(async move {
        let valid = padis_model::load_config(std::path::Path::new(&path))?;
        let store = SnapshotStore::new(Snapshot::new(valid, 1, Vec::new()));
        let registry = prometheus::Registry::new();
        let health = HealthRegistry::new(&registry)?;
        let shutdown = CancellationToken::new();
        let handle = L7Plane::start(store.reader(), health, &registry, shutdown.clone()).await?;
        for (name, addr) in handle.local_addrs() {
            println!("listening {name} {addr}");
        }
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        shutdown.cancel();
        handle.wait().await;
        drop(store);
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
