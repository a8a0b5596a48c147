#![no_main]
//! Fuzz target `http_response`: see [`padis_fuzz_entry::http_response`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| padis_fuzz_entry::http_response(data));
