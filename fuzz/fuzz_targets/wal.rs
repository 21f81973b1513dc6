#![no_main]
//! `cargo +nightly fuzz run wal`: see `anomalyd::fuzz::wal`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| anomalyd::fuzz::wal(data));
