#![no_main]
//! Fuzz target `dns_message`: see [`padis_fuzz_entry::dns_message`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| padis_fuzz_entry::dns_message(data));
