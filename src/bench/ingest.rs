//! `anomalyd bench ingest`: the registry without HTTP, every stream on a model.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

use serde::Serialize;

use crate::detector::DetectorConfig;
use crate::metrics::Metrics;
use crate::registry::{Reading, Registry, RegistryConfig};
use crate::storage::wal::SyncPolicy;

/// `anomalyd bench ingest`: the registry without HTTP — throughput and per-reading
/// latency of `Registry::ingest`, the baseline the HTTP figures are compared with.
#[derive(Clone, Debug, Serialize)]
pub struct IngestBenchReport {
    /// Streams written round-robin.
    pub streams: usize,
    /// Readings per call.
    pub batch: usize,
    /// Threads calling `ingest` at once (each on its own streams).
    pub clients: usize,
    /// The write-ahead log's sync policy (`none`: no data directory, nothing durable).
    pub wal: String,
    /// Retrain policy's `every_readings` (continuous retraining when small).
    pub retrain_every: usize,
    /// Readings scored per second (all clients).
    pub readings_per_s: f64,
    /// Per-reading latency of an ingest call (call time / batch), median µs.
    pub score_us_p50: f64,
    /// Per-reading latency, 99th percentile µs.
    pub score_us_p99: f64,
    /// Retraining jobs completed during the run.
    pub retrain_jobs: u64,
    /// Training threads.
    pub training_threads: usize,
    /// Seconds from the first reading of the warm-up until every stream was on
    /// its first model (each stream past `first_after` readings at once, then
    /// one more reading a second, as a scrape; jobs that find the training queue
    /// full are asked again at a later reading, as in the service).
    pub first_models_s: f64,
    /// Streams on a model when that wait ended (all of them, unless it gave up
    /// after an hour).
    pub first_models_streams: usize,
    /// Jobs queued until then, by why they were asked for (`JobKind`).
    pub first_models_jobs: BTreeMap<String, u64>,
    /// Seconds the training threads spent until then, by the jobs' kind.
    pub first_models_train_s: BTreeMap<String, f64>,
}

/// What `anomalyd bench ingest` runs.
#[derive(Clone, Debug)]
pub struct IngestBenchConfig {
    /// Streams, split between clients.
    pub streams: usize,
    /// Readings per call.
    pub batch: usize,
    /// Seconds to measure.
    pub seconds: f64,
    /// Retrain every this many readings.
    pub retrain_every: usize,
    /// Calling threads.
    pub clients: usize,
    /// `None`: no data directory; else a temporary one with this sync policy.
    pub wal: Option<crate::storage::wal::SyncPolicy>,
    /// Training threads.
    pub training_threads: usize,
}

/// Warms the streams up past their first model, then ingests for `seconds` from
/// `clients` threads at once.
pub fn run_ingest_bench(config: &DetectorConfig, b: &IngestBenchConfig) -> Result<IngestBenchReport, String> {
    let mut det = config.clone();
    det.retrain.every_readings = b.retrain_every;
    det.retrain.max_every_readings = b.retrain_every;
    let metrics = Arc::new(Metrics::new());
    let dir = std::env::temp_dir().join(format!("anomalyd-bench-ingest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let training_threads = b.training_threads.max(1);
    let reg = Registry::open(
        RegistryConfig {
            default_detector: det,
            training_threads,
            data_dir: b.wal.map(|_| dir.clone()),
            wal_sync: b.wal.unwrap_or(SyncPolicy::Always),
            ..Default::default()
        },
        metrics.clone(),
    )?;
    let warm = config.retrain.first_after + 20;
    let jobs = || metrics.training.jobs.with_label_values(&["completed"]).get();
    let warm_start = Instant::now();
    warm_up(&reg, b.streams, warm)?;
    let (first_models_streams, now) = wait_for_first_models(&reg, &metrics, b.streams, warm as i64)?;
    let first_models_s = warm_start.elapsed().as_secs_f64();
    let (t, kinds) = (&metrics.training, crate::detector::JobKind::ALL.map(|k| k.name()));
    let first_models_jobs = kinds
        .iter()
        .map(|k| (k.to_string(), t.queued.with_label_values(&[k]).get()))
        .collect();
    let first_models_train_s = kinds
        .iter()
        .map(|k| (k.to_string(), t.seconds.with_label_values(&[k]).get()))
        .collect();
    let jobs_before = jobs();
    let start = Instant::now();
    let clients = b.clients.clamp(1, b.streams);
    let (done, mut per_reading) = drive(&reg, b, clients, now)?;
    let elapsed = start.elapsed().as_secs_f64();
    per_reading.sort();
    let pct = |p: f64| per_reading[((per_reading.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e6;
    let report = IngestBenchReport {
        streams: b.streams,
        batch: b.batch,
        clients,
        wal: b.wal.map_or("none".into(), |w| format!("{w:?}").to_lowercase()),
        retrain_every: b.retrain_every,
        readings_per_s: done as f64 / elapsed,
        score_us_p50: pct(0.5),
        score_us_p99: pct(0.99),
        retrain_jobs: jobs() - jobs_before,
        training_threads,
        first_models_s,
        first_models_streams,
        first_models_jobs,
        first_models_train_s,
    };
    drop(reg);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(report)
}

/// Stream `s`'s reading at `t`: a noisy wave.
fn reading(s: usize, t: i64, rng: &mut StdRng) -> Reading {
    let v = 100.0 + 20.0 * (t as f64 / 7.6).sin() + rng.random::<f64>() * 4.0;
    Reading {
        stream: format!("s{s}"),
        timestamp: t,
        values: vec![v],
    }
}

/// Feeds every stream readings 1..=`warm` (past its first training job).
fn warm_up(reg: &Registry, streams: usize, warm: usize) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(1);
    for s in 0..streams {
        let rs: Vec<Reading> = (1..=warm as i64).map(|t| reading(s, t, &mut rng)).collect();
        reg.ingest(&rs).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Waits until all `streams` are on a model (at most an hour), feeding each one
/// reading a second from `from` on, as a scrape would. Returns the streams on a
/// model and the newest timestamp written.
fn wait_for_first_models(reg: &Registry, metrics: &Metrics, streams: usize, from: i64) -> Result<(usize, i64), String> {
    let mut rng = StdRng::seed_from_u64(3);
    let start = Instant::now();
    let mut t = from;
    loop {
        reg.update_phase_gauges();
        let on_model = metrics.streams.with_label_values(&["model"]).get().max(0) as usize;
        if on_model >= streams || start.elapsed() > Duration::from_secs(3600) {
            return Ok((on_model, t));
        }
        let round = Instant::now();
        t += 1;
        for s in 0..streams {
            reg.ingest(&[reading(s, t, &mut rng)]).map_err(|e| e.to_string())?;
        }
        std::thread::sleep(Duration::from_secs(1).saturating_sub(round.elapsed()));
    }
}

/// `clients` threads, each on its own streams from `from` on, ingest batches for
/// `b.seconds`. Returns the readings taken and each call's time per reading.
fn drive(reg: &Registry, b: &IngestBenchConfig, clients: usize, from: i64) -> Result<(usize, Vec<Duration>), String> {
    let start = Instant::now();
    let results: Vec<Result<(usize, Vec<Duration>), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                scope.spawn(move || {
                    let mine: Vec<usize> = (c..b.streams).step_by(clients).collect();
                    let mut t = vec![from; mine.len()];
                    let mut rng = StdRng::seed_from_u64(2 + c as u64);
                    let (mut done, mut per_reading, mut k) = (0usize, Vec::new(), 0usize);
                    while start.elapsed().as_secs_f64() < b.seconds {
                        let rs: Vec<Reading> = (0..b.batch)
                            .map(|_| {
                                t[k] += 1;
                                reading(mine[k], t[k], &mut rng)
                            })
                            .collect();
                        let call = Instant::now();
                        reg.ingest(&rs).map_err(|e| e.to_string())?;
                        per_reading.push(call.elapsed() / b.batch as u32);
                        done += b.batch;
                        k = (k + 1) % mine.len();
                    }
                    Ok((done, per_reading))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("client thread")).collect()
    });
    let (mut done, mut per_reading) = (0, Vec::new());
    for r in results {
        let (d, p) = r?;
        done += d;
        per_reading.extend(p);
    }
    Ok((done, per_reading))
}
