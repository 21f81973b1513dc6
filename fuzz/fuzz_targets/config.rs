#![no_main]
//! `cargo +nightly fuzz run config`: see `anomalyd::fuzz::config`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| anomalyd::fuzz::config(data));
