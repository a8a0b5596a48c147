#![no_main]
//! Fuzz target `bfd_packet`: see [`padis_fuzz_entry::bfd_packet`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| padis_fuzz_entry::bfd_packet(data));
