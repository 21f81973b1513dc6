//! The registry under concurrent requests: racing creations of one stream never
//! panic, every success is applied exactly once, every failure changes nothing.

use std::sync::Arc;

use anomalyd::metrics::Metrics;
use anomalyd::registry::{Reading, Registry, RegistryConfig, RegistryError};

#[test]
fn racing_first_readings_of_a_new_stream() {
    for round in 0..50 {
        let reg = Registry::open(RegistryConfig::default(), Arc::new(Metrics::new())).unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|k| {
                let (reg, barrier) = (reg.clone(), barrier.clone());
                std::thread::spawn(move || {
                    // Later threads carry older timestamps, and one sends two values.
                    let values = if k == 3 { vec![1.0, 2.0] } else { vec![k as f64] };
                    let batch = vec![
                        Reading {
                            stream: "race".into(),
                            timestamp: 1000 - k,
                            values: values.clone(),
                        },
                        Reading {
                            stream: format!("own-{k}"),
                            timestamp: 1,
                            values: vec![0.0],
                        },
                    ];
                    barrier.wait();
                    reg.ingest(&batch)
                })
            })
            .collect();
        let mut ok = 0;
        for h in handles {
            match h.join().expect("no panic") {
                Ok(results) => {
                    assert_eq!(results.len(), 2);
                    ok += 1;
                }
                Err(RegistryError::Reading { .. }) => {}
                Err(other) => panic!("round {round}: {other}"),
            }
        }
        let info = reg.info("race").unwrap();
        assert!(ok >= 1, "round {round}: the first writer always succeeds");
        assert_eq!(
            info.readings_seen, ok as u64,
            "round {round}: each success applied once"
        );
        // A failed batch left no trace: its own stream was not created either.
        assert_eq!(reg.len(), 1 + ok, "round {round}: streams {:?}", reg.list(None, 100));
    }
}

fn wave(stream: &str, from: usize, to: usize) -> Vec<Reading> {
    (from..to)
        .map(|t| Reading {
            stream: stream.into(),
            timestamp: t as i64 * 60_000_000,
            values: vec![50.0 + 10.0 * (t as f64 / 8.0).sin() + ((t * 7919) % 13) as f64 / 13.0],
        })
        .collect()
}

/// Waits until `n` jobs have ended with `outcome` (the metric counts them).
fn wait_jobs(metrics: &Metrics, outcome: &str, n: u64) {
    for _ in 0..600 {
        if metrics.training.jobs.with_label_values(&[outcome]).get() >= n {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("no {n} {outcome} jobs");
}

#[test]
fn a_job_started_before_a_reshape_is_not_installed() {
    // Hardening finding 4: the stale model was installed, scored with the wrong
    // shape, and the next snapshot could not be decoded.
    let metrics = Arc::new(Metrics::new());
    let reg = Registry::open(RegistryConfig::default(), metrics.clone()).unwrap();
    reg.ingest(&wave("s", 0, 400)).unwrap(); // the first job is queued at 384
    let reshaped = anomalyd::detector::DetectorConfig {
        window: 16,
        ..Default::default()
    };
    reg.put("s", reshaped).unwrap();
    wait_jobs(&metrics, "stale", 1);
    let info = reg.info("s").unwrap();
    assert!(info.model.is_none(), "the stale model stays out");
    assert_eq!(info.config.window, 16);
    // The reshaped stream scores and trains its own model.
    reg.ingest(&wave("s", 400, 900)).unwrap();
    wait_jobs(&metrics, "completed", 1);
    assert_eq!(reg.info("s").unwrap().config.window, 16);
}

#[test]
fn retrain_queues_one_job_per_stream() {
    // Hardening finding 12: every POST retrain queued another job for one stream.
    let metrics = Arc::new(Metrics::new());
    let reg = Registry::open(RegistryConfig::default(), metrics.clone()).unwrap();
    let mut quiet = anomalyd::detector::DetectorConfig::default();
    quiet.retrain.first_after = 1_000_000;
    reg.put("r", quiet).unwrap();
    reg.ingest(&wave("r", 0, 500)).unwrap();
    for _ in 0..5 {
        reg.retrain("r").unwrap();
    }
    // Training takes far longer than five calls: more than one job queued would show.
    assert!(metrics.training.queue_depth.get() <= 1, "one job queued");
    wait_jobs(&metrics, "completed", 1);
    // One more request once that job is done, behind anything the five queued: the
    // one training thread serves the queue in order, so when this job is done any
    // other would be too.
    reg.retrain("r").unwrap();
    wait_jobs(&metrics, "completed", 2);
    assert_eq!(metrics.training.jobs.with_label_values(&["completed"]).get(), 2);
}

#[test]
fn overlapping_batches_and_deletes_never_deadlock() {
    // Hardening finding 3: new streams were locked after existing ones in hash
    // order, and the undo path took stream locks under the map's write lock, so
    // {A new, B} and {A, B} could lock in opposite orders. Two streams, every batch
    // holds both, one thread keeps deleting them so they keep being re-created.
    let reg = Registry::open(RegistryConfig::default(), Arc::new(Metrics::new())).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let mut handles = Vec::new();
    for k in 0..6usize {
        let (reg, done_tx, stop) = (reg.clone(), done_tx.clone(), stop.clone());
        handles.push(std::thread::spawn(move || {
            for round in 0..4000i64 {
                if k == 0 {
                    let _ = reg.delete(["a", "b"][round as usize % 2]);
                    continue;
                }
                let (x, y) = if (round as usize + k).is_multiple_of(2) {
                    ("a", "b")
                } else {
                    ("b", "a")
                };
                // Every other batch fails validation (an old timestamp), taking the
                // undo path; a hang is the only wrong outcome.
                let ts = if round % 2 == 0 { round } else { -1 };
                let batch = [x, y].map(|s| Reading {
                    stream: s.into(),
                    timestamp: ts,
                    values: vec![1.0],
                });
                let _ = reg.ingest(&batch);
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            done_tx.send(()).unwrap();
        }));
    }
    for _ in 0..6 {
        done_rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("a batch deadlocked");
    }
    for h in handles {
        h.join().unwrap();
    }
    for id in reg.list(None, 10) {
        reg.info(&id).unwrap();
    }
}

#[test]
fn the_stream_limit_holds_under_racing_creations() {
    // Hardening finding 12: max_streams was checked outside the lock that inserts.
    let reg = Registry::open(
        RegistryConfig {
            max_streams: 10,
            ..Default::default()
        },
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let barrier = Arc::new(std::sync::Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|k| {
            let (reg, barrier) = (reg.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for j in 0..5 {
                    let _ = reg.ingest(&[Reading {
                        stream: format!("s{k}-{j}"),
                        timestamp: 0,
                        values: vec![1.0],
                    }]);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(reg.len(), 10);
}
