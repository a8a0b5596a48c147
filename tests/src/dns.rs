//! Test helpers: dns.
//!
//! The DNS end-to-end tests live with the crate, in `dns/tests/dns_*.rs` (in-process server on 127.0.0.1:0 and
//! ::1, driven by kdig, nsupdate, a Knot secondary and raw sockets); their helpers are in `dns/tests/common`.
//! They run with `cargo test -p padis-dns` and as part of `cargo test --workspace`.
