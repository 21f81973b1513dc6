use super::*;
use crate::detector::Detector;
use crate::storage::snapshot;
use std::time::Duration;

/// Hardening finding 7: a scrape never waits for a stream's lock (a batch or
/// a training install may hold it for long).
#[test]
fn phase_gauges_take_no_stream_lock() {
    let reg = Registry::open(RegistryConfig::default(), Arc::new(Metrics::new())).unwrap();
    let r = Reading {
        stream: "a".into(),
        timestamp: 1,
        values: vec![1.0],
    };
    reg.ingest(&[r]).unwrap();
    let stream = reg.get("a").unwrap();
    let held = lock(&stream.state);
    let (tx, rx) = std::sync::mpsc::channel();
    let reg2 = reg.clone();
    std::thread::spawn(move || {
        reg2.update_phase_gauges();
        let _ = tx.send(());
    });
    let done = rx.recv_timeout(Duration::from_secs(10));
    drop(held);
    assert!(done.is_ok(), "the scrape waited for a stream's lock");
    assert_eq!(reg.metrics().streams.with_label_values(&["warmup"]).get(), 1);
}

/// Hardening finding 9: one stream that cannot be written does not end the
/// round: the others are written, the service says it is not ready, the log
/// keeps its records, and the next round that succeeds makes it ready again.
#[test]
fn a_failing_stream_does_not_end_the_snapshot_round() {
    let dir = std::env::temp_dir().join(format!("anomalyd-round-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = RegistryConfig {
        data_dir: Some(dir.clone()),
        ..Default::default()
    };
    let reg = Registry::open(config.clone(), Arc::new(Metrics::new())).unwrap();
    let readings: Vec<Reading> = ["a", "b", "c"]
        .iter()
        .map(|s| Reading {
            stream: s.to_string(),
            timestamp: 1,
            values: vec![1.0],
        })
        .collect();
    reg.ingest(&readings).unwrap();
    let streams = dir.join("streams");
    let file = |s: &str| snapshot::stream_file(&streams, s);
    // A directory where b's temporary file would go: staging b fails.
    let mut blocked = file("b").into_os_string();
    blocked.push(".tmp");
    std::fs::create_dir_all(&blocked).unwrap();
    assert!(reg.snapshot().is_err());
    assert!(file("a").exists() && file("c").exists(), "the round went on past b");
    assert!(!file("b").exists());
    assert!(reg.storage_ready().is_err(), "not ready after a failed round");
    std::fs::remove_dir(&blocked).unwrap();
    assert_eq!(reg.snapshot().unwrap(), 1, "b stayed dirty and is written now");
    assert!(reg.storage_ready().is_ok());
    drop(reg);
    // Leftovers of an unfinished round are cleaned at start.
    let mut stale = file("a").into_os_string();
    stale.push(".tmp");
    std::fs::write(&stale, b"half").unwrap();
    let back = Registry::open(config, Arc::new(Metrics::new())).unwrap();
    assert_eq!(back.len(), 3);
    assert!(!std::path::Path::new(&stale).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 9, checkpoints: a round writes at most `checkpoint_max_streams`
/// streams (the oldest changes first) and keeps the log the others need, so a
/// crash between rounds loses nothing; rounds converge to a clean state.
#[test]
fn bounded_rounds_keep_the_log_the_unwritten_streams_need() {
    let dir = std::env::temp_dir().join(format!("anomalyd-bounded-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = RegistryConfig {
        data_dir: Some(dir.clone()),
        checkpoint_max_streams: 2,
        ..Default::default()
    };
    let reading = |s: usize, t: i64| Reading {
        stream: format!("s{s}"),
        timestamp: t,
        values: vec![t as f64],
    };
    let reg = Registry::open(config.clone(), Arc::new(Metrics::new())).unwrap();
    for t in 0..3 {
        let batch: Vec<Reading> = (0..5).map(|s| reading(s, t)).collect();
        reg.ingest(&batch).unwrap();
    }
    assert_eq!(reg.snapshot().unwrap(), 2);
    assert_eq!(reg.dirty_streams(), 3);
    // More readings for a written stream, then a crash (no further round).
    reg.ingest(&[reading(0, 3)]).unwrap();
    drop(reg);
    let back = Registry::open(config.clone(), Arc::new(Metrics::new())).unwrap();
    for s in 0..5 {
        let want = if s == 0 { 4 } else { 3 };
        assert_eq!(back.info(&format!("s{s}")).unwrap().readings_seen, want, "stream s{s}");
    }
    // Rounds converge: everything written, the log down to its current segment.
    let mut rounds = 0;
    while back.dirty_streams() > 0 {
        back.snapshot().unwrap();
        rounds += 1;
        assert!(rounds <= 3, "at most 2 streams a round");
    }
    back.snapshot().unwrap();
    let segments = std::fs::read_dir(dir.join("wal")).unwrap().count();
    assert_eq!(segments, 1, "the covered segments were removed");
    drop(back);
    let again = Registry::open(config, Arc::new(Metrics::new())).unwrap();
    assert_eq!(again.info("s0").unwrap().readings_seen, 4);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A registry on a fresh data directory named after `name`, holding stream
/// `m` with a trained model (version 1, no retraining after it), checkpointed
/// once. Returns the directory, the config and the registry.
fn checkpointed_stream(name: &str) -> (std::path::PathBuf, RegistryConfig, Arc<Registry>) {
    let dir = std::env::temp_dir().join(format!("anomalyd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = RegistryConfig {
        data_dir: Some(dir.clone()),
        ..Default::default()
    };
    let d = trained_detector();
    assert_eq!(d.model().map(|m| m.version), Some(1));
    let reg = Registry::open(config.clone(), Arc::new(Metrics::new())).unwrap();
    reg.adopt("m", d).unwrap();
    reg.snapshot().unwrap();
    (dir, config, reg)
}

/// A detector with a model (version 1, one member) that will not retrain.
pub(super) fn trained_detector() -> Detector {
    let mut c = DetectorConfig::default();
    c.model.ensemble = 1;
    c.retrain.first_after = 100;
    c.retrain.every_readings = 0;
    c.retrain.on_drift = false;
    let mut d = Detector::new(c).unwrap();
    for t in 0..160 {
        d.update_sync(t, &[(t as f64 / 5.0).sin()]).unwrap();
    }
    d
}

/// The model files under `streams`, sorted.
fn model_files(streams: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(streams)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "model"))
        .collect();
    v.sort();
    v
}

/// Issue 9, checkpoints: a stream's weights are written once per model
/// version, its state at every round that finds it changed; a restart
/// restores the model from its model file, and model files no state names
/// (after a reset) are removed at start.
#[test]
fn checkpoints_write_the_weights_once_per_model_version() {
    use std::os::unix::fs::MetadataExt;
    let (dir, config, reg) = checkpointed_stream("weights");
    let streams = dir.join("streams");
    let models = || model_files(&streams);
    let state = snapshot::stream_file(&streams, "m");
    let [model] = <[std::path::PathBuf; 1]>::try_from(models()).expect("one model file");
    let ino = |p: &std::path::Path| std::fs::metadata(p).unwrap().ino();
    let (state_ino, model_ino) = (ino(&state), ino(&model));
    reg.ingest(&[Reading {
        stream: "m".into(),
        timestamp: 160,
        values: vec![0.5],
    }])
    .unwrap();
    assert_eq!(reg.snapshot().unwrap(), 1);
    assert_ne!(ino(&state), state_ino, "the state was rewritten");
    assert_eq!(ino(&model), model_ino, "the weights were not");
    drop(reg);
    let back = Registry::open(config.clone(), Arc::new(Metrics::new())).unwrap();
    let info = back.info("m").unwrap();
    assert_eq!(info.readings_seen, 161);
    assert_eq!(
        info.model.map(|m| m.version),
        Some(1),
        "the model came back from its file"
    );
    // A reset discards the model: the state no longer names the file, and the
    // next start removes it.
    back.patch("m", &serde_json::json!({"window": 8}), true).unwrap();
    back.snapshot().unwrap();
    assert!(model.exists(), "removed only once no state can need it");
    drop(back);
    let again = Registry::open(config, Arc::new(Metrics::new())).unwrap();
    assert!(again.info("m").unwrap().model.is_none());
    assert!(!model.exists(), "an orphan model file is removed at start");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A model is on disk as soon as it is installed, not at the next round: a
/// crash (here: the registry dropped, no round ever run) keeps it, and a
/// restart scores with it instead of training it again.
#[test]
fn an_installed_model_survives_a_crash_before_the_next_round() {
    let dir = std::env::temp_dir().join(format!("anomalyd-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = RegistryConfig {
        data_dir: Some(dir.clone()),
        ..Default::default()
    };
    let reg = Registry::open(config.clone(), Arc::new(Metrics::new())).unwrap();
    let readings: Vec<Reading> = (0..400)
        .map(|t| Reading {
            stream: "w".into(),
            timestamp: t * 60_000_000,
            values: vec![50.0 + 10.0 * (t as f64 / 8.0).sin()],
        })
        .collect();
    reg.ingest(&readings).unwrap(); // the first job is queued at 384
    let streams = dir.join("streams");
    let saved = || streams.exists() && !model_files(&streams).is_empty();
    for _ in 0..1500 {
        if saved() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(saved(), "the weights were written when the model was installed");
    let version = reg.info("w").unwrap().model.map(|m| m.version);
    assert_eq!(version, Some(1));
    drop(reg);
    let back = Registry::open(config, Arc::new(Metrics::new())).unwrap();
    let info = back.info("w").unwrap();
    assert_eq!(info.readings_seen, 400, "the log replays every reading");
    assert_eq!(info.model.map(|m| m.version), version, "the model came back");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_lost_model_file_costs_the_model_not_the_stream() {
    let (dir, config, reg) = checkpointed_stream("lost-model");
    drop(reg);
    let streams = dir.join("streams");
    let [model] = <[std::path::PathBuf; 1]>::try_from(model_files(&streams)).expect("one model file");
    // Damaged: cut in half.
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let state = snapshot::stream_file(&streams, "m");
    let loaded = snapshot::read(&state).unwrap();
    assert!(loaded.model_lost.is_some());
    let detector = Detector::restore(loaded.snapshot).unwrap();
    assert!(detector.model().is_none() && detector.training_due(), "it retrains");

    let back = Registry::open(config.clone(), Arc::new(Metrics::new())).unwrap();
    let info = back.info("m").expect("the stream is loaded");
    assert_eq!(info.readings_seen, 160);
    assert!(info.model.is_none());
    assert!(state.exists(), "the state was not moved aside");
    assert!(model.with_extension("corrupt").exists(), "the damaged weights were");
    // The next checkpoint rewrites the state without the lost file's name;
    // then a missing file is no longer named at all.
    assert_eq!(back.snapshot().unwrap(), 1);
    drop(back);
    assert!(snapshot::read(&state).unwrap().model_lost.is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Found by the console's reset test: after a checkpoint emptied the log and the
/// service restarted, new records were numbered from 1 again, under the LSN the
/// snapshots hold, so a crash then lost them (replay took them as included).
#[test]
fn readings_taken_after_a_restart_survive_a_crash() {
    let dir = std::env::temp_dir().join(format!("anomalyd-renumber-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = || RegistryConfig {
        data_dir: Some(dir.clone()),
        ..Default::default()
    };
    let reading = |i: i64| Reading {
        stream: "s".into(),
        timestamp: i * 1_000_000,
        values: vec![(i % 5) as f64],
    };
    let reg = Registry::open(config(), Arc::new(Metrics::new())).unwrap();
    reg.ingest(&(0..10).map(reading).collect::<Vec<_>>()).unwrap();
    reg.snapshot().unwrap();
    drop(reg);
    let reg = Registry::open(config(), Arc::new(Metrics::new())).unwrap();
    reg.ingest(&[reading(10)]).unwrap();
    drop(reg); // a crash: the log alone holds reading 10
    let reg = Registry::open(config(), Arc::new(Metrics::new())).unwrap();
    assert_eq!(reg.info("s").unwrap().readings_seen, 11);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Training may take every core, below scoring: each training thread runs at
/// `TRAINING_NICE` (read back from the kernel, per thread).
#[cfg(target_os = "linux")]
#[test]
fn training_threads_run_below_the_scoring_priority() {
    let config = RegistryConfig {
        training_threads: 2,
        ..Default::default()
    };
    let _reg = Registry::open(config, Arc::new(Metrics::new())).unwrap();
    let nice_of_training_threads = || -> Vec<i32> {
        let tasks = std::fs::read_dir("/proc/self/task").unwrap();
        let mut nices = Vec::new();
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            if comm.starts_with("anomalyd-train") {
                // Fields after the command's ")": state is the 3rd, nice the 19th.
                let rest = &stat[stat.rfind(')').unwrap() + 2..];
                nices.push(rest.split(' ').nth(16).unwrap().parse().unwrap());
            }
        }
        nices
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut nices = nice_of_training_threads();
    while (nices.len() < 2 || nices.iter().any(|&n| n != training::TRAINING_NICE))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
        nices = nice_of_training_threads();
    }
    assert!(nices.len() >= 2, "{nices:?}");
    assert!(nices.iter().all(|&n| n == training::TRAINING_NICE), "{nices:?}");
}

/// A burst of new streams larger than the training queue: the streams whose
/// first job met a full queue ask again at their next readings, and get their
/// models long before their next periodic retrain (768 readings on).
#[test]
fn streams_that_met_a_full_training_queue_get_their_first_model_soon_after() {
    let config = RegistryConfig {
        training_threads: 1,
        training_queue: 1,
        ..Default::default()
    };
    let reg = Registry::open(config, Arc::new(Metrics::new())).unwrap();
    let first_after = DetectorConfig::default().retrain.first_after as i64;
    let reading = |s: usize, t: i64| Reading {
        stream: format!("s{s}"),
        timestamp: t,
        values: vec![100.0 + 20.0 * (t as f64 / 7.6).sin() + ((t * 7919 + s as i64) % 13) as f64 * 0.3],
    };
    let streams = 6;
    for s in 0..streams {
        let batch: Vec<Reading> = (1..=first_after + 1).map(|t| reading(s, t)).collect();
        reg.ingest(&batch).unwrap();
    }
    let on_model = || {
        (0..streams)
            .filter(|s| {
                lock(&reg.get(&format!("s{s}")).unwrap().state)
                    .detector
                    .model()
                    .is_some()
            })
            .count()
    };
    let in_flight = || (0..streams).any(|s| lock(&reg.get(&format!("s{s}")).unwrap().state).detector.job_in_flight());
    // One reading a round, as a scrape, each round once the queued job is done
    // (so the count of readings does not depend on how fast this machine
    // trains); 300 rounds stay far below 768.
    let mut t = first_after + 1;
    let started = std::time::Instant::now();
    for _ in 0..300 {
        while in_flight() {
            assert!(started.elapsed() < Duration::from_secs(600), "training hangs");
            std::thread::sleep(Duration::from_millis(10));
        }
        if on_model() == streams {
            break;
        }
        t += 1;
        for s in 0..streams {
            reg.ingest(&[reading(s, t)]).unwrap();
        }
    }
    assert_eq!(on_model(), streams, "after {} more readings", t - first_after - 1);
}
