#![no_main]
//! `cargo +nightly fuzz run snapshot`: see `anomalyd::fuzz::snapshot`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| anomalyd::fuzz::snapshot(data));
