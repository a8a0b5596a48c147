//! Padis L4 userspace: loads the XDP balancer with aya, programs its maps from control snapshots, reads its statistics
/// The compiled XDP object.
pub static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/padis-xdp"));
