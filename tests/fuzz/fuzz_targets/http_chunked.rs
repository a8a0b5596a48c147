#![no_main]
//! Fuzz target `http_chunked`: see [`padis_fuzz_entry::http_chunked`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| padis_fuzz_entry::http_chunked(data));
