#![no_main]
//! Fuzz target `marathon_sse`: see [`padis_fuzz_entry::marathon_sse`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| padis_fuzz_entry::marathon_sse(data));
