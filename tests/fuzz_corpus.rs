//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`, seeds plus what
//! `cargo fuzz` found) through the fuzz targets' entry points: every input that
//! ever crashed one stays a regression test, and this runs on stable in CI.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        run(&bytes);
        n += 1;
    }
    n
}

#[test]
fn ingest_corpus() {
    assert!(replay("ingest", anomalyd::fuzz::ingest) >= 4);
}

#[test]
fn timestamp_corpus() {
    assert!(replay("timestamp", anomalyd::fuzz::timestamp) >= 5);
}

#[test]
fn config_corpus() {
    assert!(replay("config", anomalyd::fuzz::config) >= 4);
}

#[test]
fn snapshot_corpus() {
    assert!(replay("snapshot", anomalyd::fuzz::snapshot) >= 1);
}

#[test]
fn wal_corpus() {
    assert!(replay("wal", anomalyd::fuzz::wal) >= 1);
}

/// The seeds decode to what they say (so the corpus exercises the decoders'
/// happy paths, not just their error paths).
#[test]
fn seeds_decode() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let pb = std::fs::read(dir.join("ingest/pb-basic")).unwrap();
    let r = anomalyd::server::decode_ingest(&pb, true, None, 10).unwrap();
    assert_eq!((r.len(), r[0].values.len(), r[1].stream.as_str()), (2, 3, "mem"));
    let json = std::fs::read(dir.join("ingest/json-basic")).unwrap();
    assert_eq!(
        anomalyd::server::decode_ingest(&json, false, None, 10).unwrap().len(),
        2
    );
}
