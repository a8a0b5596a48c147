#![no_main]
//! Fuzz target `bgp_message`: see [`padis_fuzz_entry::bgp_message`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| padis_fuzz_entry::bgp_message(data));
