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
