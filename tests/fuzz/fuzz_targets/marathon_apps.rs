#![no_main]
//! Fuzz target `marathon_apps`: see [`padis_fuzz_entry::marathon_apps`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| padis_fuzz_entry::marathon_apps(data));
