#![no_main]
//! `cargo +nightly fuzz run ingest`: see `anomalyd::fuzz::ingest`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| anomalyd::fuzz::ingest(data));
