//! Entry points of the fuzz targets (`fuzz/`, run with `cargo fuzz`) and of the
//! test that replays their committed corpus (`tests/fuzz_corpus.rs`). Each takes
//! arbitrary bytes and must never panic, hang or allocate without bound: whatever
//! a client or a damaged file can hand the service is an error value.

use std::sync::{Arc, OnceLock};

use crate::detector::{Detector, DetectorConfig};
use crate::registry::{Registry, RegistryConfig};

fn registry() -> &'static Arc<Registry> {
    static REGISTRY: OnceLock<Arc<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let config = RegistryConfig {
            max_streams: 64,
            ..RegistryConfig::default()
        };
        Registry::open(config, Arc::new(crate::metrics::Metrics::new())).expect("in-memory registry")
    })
}

/// An ingest body, as JSON and as protobuf; what decodes is then validated and
/// scored by a registry (in memory), as the handlers do.
pub fn ingest(data: &[u8]) {
    for protobuf in [false, true] {
        if let Ok(readings) = crate::server::decode_ingest(data, protobuf, None, 64) {
            let _ = registry().ingest(&readings);
        }
    }
}

/// A timestamp, as text (RFC 3339, NAB's format) and as Unix seconds.
pub fn timestamp(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::timestamp::parse(text);
        let _ = text.trim().parse::<f64>().map(crate::timestamp::seconds);
    }
    if let Ok(bytes) = <[u8; 8]>::try_from(data.get(..8).unwrap_or_default()) {
        let _ = crate::timestamp::seconds(f64::from_le_bytes(bytes));
    }
}

/// A detector config as JSON and as TOML (the service's file, `[detector]`
/// included); a config that validates must build a detector that takes readings.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = toml::from_str::<crate::config::ServeSettings>(text).map(|f| f.detector.map(|d| d.validate()));
    let parsed = [
        serde_json::from_str::<DetectorConfig>(text).ok(),
        toml::from_str::<DetectorConfig>(text).ok(),
    ];
    for c in parsed.into_iter().flatten() {
        if c.validate().is_ok()
            && let Ok(mut d) = Detector::new(c)
        {
            for t in 0..4 {
                let _ = d.update(t, &[t as f64]);
            }
        }
    }
    // A JSON merge patch onto the default config, as PUT applies it.
    if let Ok(patch) = serde_json::from_str::<serde_json::Value>(text) {
        let mut v = serde_json::to_value(DetectorConfig::default()).expect("serialises");
        crate::registry::merge_patch(&mut v, &patch);
        let _ = serde_json::from_value::<DetectorConfig>(v).map(|c| c.validate());
    }
}

/// A stream snapshot file; one that decodes must restore (or be refused). The
/// input is also tried with its checksum fixed, so the fuzzer reaches the parsing
/// behind it (a file damaged in a way the CRC misses).
pub fn snapshot(data: &[u8]) {
    let mut fixed = data.to_vec();
    if fixed.len() >= 4 {
        let n = fixed.len() - 4;
        let crc = crc32fast::hash(&fixed[..n]);
        fixed[n..].copy_from_slice(&crc.to_le_bytes());
    }
    for bytes in [data, &fixed] {
        // A model file decodes against a state of the default shape.
        let state = Detector::new(crate::detector::DetectorConfig::default())
            .expect("default config")
            .snapshot()
            .state;
        let _ = crate::storage::snapshot::decode_model(bytes, &state);
        if let Ok(decoded) = crate::storage::snapshot::decode(bytes)
            && let Ok(mut d) = Detector::restore(decoded.snapshot)
        {
            let width = d.n_features().unwrap_or(1);
            let ts = d.last_timestamp().unwrap_or(0);
            let _ = d.update(ts, &vec![0.0; width]);
        }
    }
}

/// A write-ahead log segment: every record it yields is decoded.
pub fn wal(data: &[u8]) {
    crate::storage::wal::scan(data, |_, payload| {
        let _ = crate::registry::log::Record::decode(payload);
    });
    let _ = crate::registry::log::Record::decode(data);
}
