//! Test helpers: dns.
