#![no_main]
//! Fuzz target `http_request_head`: see [`padis_fuzz_entry::http_request_head`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| padis_fuzz_entry::http_request_head(data));
