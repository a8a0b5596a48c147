//! Padis L4 userspace: loads the XDP balancer (ebpf/xdp) with aya, attaches it to the configured interfaces,
//! programs its maps from control snapshots as diffs (VIPs, backends, deterministic Maglev tables swapped
//! atomically, ACLs), keeps state in pinned maps across restarts, and reads its per-CPU statistics into
//! Prometheus metrics and the L4 report. With `[l4.sync]` it also synchronises the connection table with the
//! other Padis nodes (`sync`).

pub mod bpffs;
pub mod conntrack;
pub mod desired;
mod error;
pub mod layout;
pub mod loader;
mod metrics;
pub mod naive;
pub mod neigh;
pub mod plan;
mod plane;
pub mod programmer;
pub mod stats;
pub mod sync;

pub use error::L4Error;
pub use loader::{Balancer, LoadOptions};
pub use plane::{L4Handle, L4Plane, L4Report, VipReport};

/// The compiled XDP object (built by build.rs with aya-build).
pub static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/padis-xdp"));
