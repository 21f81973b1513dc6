#![no_main]
//! `cargo +nightly fuzz run timestamp`: see `anomalyd::fuzz::timestamp`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| anomalyd::fuzz::timestamp(data));
