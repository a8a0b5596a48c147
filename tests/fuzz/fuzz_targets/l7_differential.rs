#![no_main]
//! Fuzz target `l7_differential`: see [`padis_fuzz_entry::l7_differential`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| padis_fuzz_entry::l7_differential(data));
