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
        if metrics.retrain_jobs.with_label_values(&[outcome]).get() >= n {
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
    wait_jobs(&metrics, "completed", 1);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(metrics.retrain_jobs.with_label_values(&["completed"]).get(), 1);
}
