//! Errors of the L4 plane.

use std::path::PathBuf;

/// Why loading, attaching or programming the XDP balancer failed.
#[derive(Debug, thiserror::Error)]
pub enum L4Error {
    /// The eBPF object could not be loaded (verifier, map creation, pinned map mismatch...).
    #[error("loading the XDP program: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program operation failed (load, attach, test run).
    #[error("XDP program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    /// A map operation failed.
    #[error("BPF map {map}: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// Cause.
        source: aya::maps::MapError,
    },
    /// A map is missing from the object (build mismatch).
    #[error("BPF map {0} missing from the XDP object")]
    MissingMap(&'static str),
    /// A program is missing from the object (build mismatch).
    #[error("program {0} missing from the XDP object")]
    MissingProgram(&'static str),
    /// bpffs mount or pin directory problem.
    #[error("bpffs {path}: {source}")]
    Bpffs {
        /// Path involved.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Attaching to an interface (or taking over its pinned attachment) failed.
    #[error("attaching XDP to {iface}: {source}")]
    Attach {
        /// Interface name.
        iface: String,
        /// Cause.
        source: aya::programs::links::LinkError,
    },
    /// The attachment could not be pinned in bpffs.
    #[error("attaching XDP to {iface}: pinning the link: {source}")]
    PinLink {
        /// Interface name.
        iface: String,
        /// Cause.
        source: aya::pin::PinError,
    },
    /// A Maglev table could not be built.
    #[error("Maglev table for VIP {vip}: {source}")]
    Maglev {
        /// VIP name.
        vip: String,
        /// Cause.
        source: padis_balance::MaglevError,
    },
    /// Out of VIP ids, ring slots or backend slots.
    #[error("capacity exhausted: {0}")]
    Capacity(&'static str),
    /// The connection-table sync daemon could not start.
    #[error("L4 sync: {0}")]
    Sync(#[from] crate::sync::SyncError),
    /// Metrics registration failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Maps an aya map error to [`L4Error::Map`] for `map`.
pub(crate) fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> L4Error {
    move |source| L4Error::Map { map, source }
}
