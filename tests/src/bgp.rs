//! Test helpers: bgp.
