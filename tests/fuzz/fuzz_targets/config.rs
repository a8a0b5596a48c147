#![no_main]
//! Fuzz target `config`: see [`padis_fuzz_entry::config`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| padis_fuzz_entry::config(data));
