//! A shard's move between two registries: release, export, import, forget,
//! and crashes on the way.

use std::sync::Arc;

use super::super::{Ownership, Reading, Registry, RegistryConfig, RegistryError};
use crate::metrics::Metrics;
use crate::shard::{DEFAULT_LABELS, ShardFunction};

fn function() -> ShardFunction {
    ShardFunction::new(16, DEFAULT_LABELS.map(String::from).to_vec()).unwrap()
}

fn node(name: &str, owned: &[u32], fresh: bool) -> (RegistryConfig, Arc<Registry>) {
    let dir = std::env::temp_dir().join(format!("anomalyd-move-{name}-{}", std::process::id()));
    if fresh {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let config = RegistryConfig {
        data_dir: Some(dir),
        shards: Some(Ownership::new(function(), owned)),
        ..Default::default()
    };
    let reg = Registry::open(config.clone(), Arc::new(Metrics::new())).unwrap();
    (config, reg)
}

fn reading(stream: &str, t: i64, v: f64) -> Reading {
    Reading {
        stream: stream.into(),
        timestamp: t,
        values: vec![v],
    }
}

/// The first id `stream-<i>` in shard `shard` (or, with `not`, outside it).
fn id_in(shard: u32, not: bool) -> String {
    (0..)
        .map(|i| format!("stream-{i}"))
        .find(|id| (function().of_id(id) == shard) != not)
        .unwrap()
}

fn export(reg: &Registry, shard: u32) -> Vec<u8> {
    let mut out = Vec::new();
    reg.export_shard(shard, |c| {
        out.extend(c);
        true
    })
    .unwrap();
    out
}

/// Issue 23, point 3: a shard moves with its models, every reading and its open
/// incident; the source refuses it while it moves and forgets it after; both
/// nodes come back from a crash as the move left them.
#[test]
fn a_shard_moves_with_its_models_readings_and_open_incident() {
    let (m, other) = (id_in(5, false), id_in(5, true));
    let (a_config, a) = node("a", &(0..16).collect::<Vec<_>>(), true);
    let (b_config, b) = node("b", &[], true);
    a.adopt(&m, super::super::tests::trained_detector()).unwrap();
    a.adopt(&other, super::super::tests::trained_detector()).unwrap();
    a.ingest(&[reading(&m, 160, 0.1)]).unwrap();
    // A fault: the incident opens on A.
    let spike: Vec<Reading> = (161..200).map(|t| reading(&m, t, 40.0)).collect();
    a.ingest(&spike).unwrap();
    let before = a.info(&m).unwrap();
    let incident = before.incident.as_ref().expect("an incident is open").id;

    assert_eq!(a.release_shard(5, Some("http://b:8080".into())).unwrap(), 1);
    // One move at a time: again to the same node is harmless, to another refused.
    assert_eq!(a.release_shard(5, Some("http://b:8080".into())).unwrap(), 1);
    assert!(matches!(
        a.release_shard(5, Some("http://c:8080".into())),
        Err(RegistryError::ShardState(_))
    ));
    assert!(matches!(
        a.ingest(&[reading(&m, 200, 40.0)]),
        Err(RegistryError::Moving { shard: 5, .. })
    ));
    assert!(matches!(a.info(&m), Err(RegistryError::Moving { .. })));
    a.ingest(&[reading(&other, 160, 0.2)]).expect("other shards go on");
    let archive = export(&a, 5);

    let mut damaged = archive.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 1;
    assert!(matches!(
        b.import_shard(5, &damaged, false),
        Err(RegistryError::ShardArchive(_))
    ));
    assert!(matches!(
        b.import_shard(6, &archive, false),
        Err(RegistryError::ShardArchive(_))
    ));
    assert!(!b.holds(&m), "a refused archive changes nothing");
    let done = b.import_shard(5, &archive, false).unwrap();
    assert_eq!((done.streams, done.open_incidents), (1, 1));
    let after = b.info(&m).unwrap();
    assert_eq!(after.readings_seen, before.readings_seen);
    assert_eq!(after.model.map(|x| x.version), Some(1), "no retraining");
    assert_eq!(
        after.incident.map(|i| i.id),
        Some(incident),
        "the incident is still open"
    );
    b.ingest(&[reading(&m, 200, 40.0)]).unwrap();

    assert_eq!(a.forget_shard(5, Some("http://b:8080".into())).unwrap(), 1);
    assert_eq!(a.route(&m), super::Route::Moved(5, "http://b:8080".into()));
    let streams = a_config.data_dir.as_ref().unwrap().join("streams");
    assert!(
        !crate::storage::snapshot::stream_file(&streams, &m).exists(),
        "its files went"
    );
    drop((a, b));

    // Both restart on their volumes with the flags they started with.
    let a = Registry::open(a_config, Arc::new(Metrics::new())).unwrap();
    let b = Registry::open(b_config.clone(), Arc::new(Metrics::new())).unwrap();
    assert!(!a.holds(&m) && a.holds(&other), "A owns what the move left it");
    assert!(matches!(
        a.ingest(&[reading(&m, 300, 1.0)]),
        Err(RegistryError::NotOwned { .. })
    ));
    let back = b.info(&m).unwrap();
    assert_eq!(
        back.readings_seen,
        before.readings_seen + 1,
        "the log replays the import"
    );
    assert_eq!(back.model.map(|x| x.version), Some(1));
    assert!(b.shard_table().unwrap().0.owned.contains(&5));
    let _ = std::fs::remove_dir_all(b_config.data_dir.unwrap());
}

/// A node that crashes while a shard is released still holds it, parked: it
/// can export it again or take it back, with its model.
#[test]
fn a_crash_mid_move_leaves_the_shard_parked_and_reclaimable() {
    let m = id_in(9, false);
    let (config, a) = node("crash", &(0..16).collect::<Vec<_>>(), true);
    a.adopt(&m, super::super::tests::trained_detector()).unwrap();
    a.snapshot().unwrap();
    a.ingest(&[reading(&m, 160, 0.3)]).unwrap();
    a.release_shard(9, None).unwrap();
    a.snapshot().unwrap(); // the log's records of m may go: its state is on disk
    drop(a);
    let a = Registry::open(config.clone(), Arc::new(Metrics::new())).unwrap();
    assert!(matches!(a.info(&m), Err(RegistryError::Moving { .. })));
    let archive = export(&a, 9);
    assert_eq!(crate::storage::archive::read(&archive).unwrap().streams.len(), 1);
    assert_eq!(a.reclaim_shard(9).unwrap(), 1);
    let info = a.info(&m).unwrap();
    assert_eq!(info.readings_seen, 161);
    assert_eq!(info.model.map(|x| x.version), Some(1));
    a.ingest(&[reading(&m, 161, 0.3)]).unwrap();
    drop(a);
    let a = Registry::open(config.clone(), Arc::new(Metrics::new())).unwrap();
    assert_eq!(a.info(&m).unwrap().readings_seen, 162);
    let _ = std::fs::remove_dir_all(config.data_dir.unwrap());
}
