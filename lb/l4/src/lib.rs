//! Padis L4 userspace: loads the XDP balancer with aya, programs its maps from control snapshots, reads its statistics
