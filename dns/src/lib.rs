//! Padis DNS: an authoritative server for static zone files and records generated from control snapshots.
