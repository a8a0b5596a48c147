#![no_main]
//! Fuzz target `proxy_header`: see [`padis_fuzz_entry::proxy_header`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| padis_fuzz_entry::proxy_header(data));
