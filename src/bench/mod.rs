//! `anomalyd bench model`: measures the reference autoencoder the way the PyTorch
//! peer script in `benches/` measures its twin, and reports one JSON line.
//!
//! Every figure is a median over repeated runs, so one noisy run moves nothing.

use std::time::{Duration, Instant};

use ndarray::Array3;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::nn::{Adam, AdamParams, Autoencoder, AutoencoderConfig, CellKind, ScoreWorkspace};

/// What to measure.
#[derive(Clone, Debug)]
pub struct ModelBenchConfig {
    /// Cell kind of encoder and decoder.
    pub kind: CellKind,
    /// Features per step.
    pub d_input: usize,
    /// Window length (steps).
    pub window: usize,
    /// Hidden units.
    pub d_hidden: usize,
    /// Worker threads for the throughput figures (each runs its own batches).
    pub threads: usize,
    /// Seconds spent on each measurement (after warm-up).
    pub seconds: f64,
    /// Which figures to measure (the others are reported as 0): any of
    /// [`Measure::Latency`], [`Measure::Batch`], [`Measure::Train`].
    pub measure: Vec<Measure>,
}

/// One of the timed figures of the model benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    /// `score_latency_us`.
    Latency,
    /// `score_windows_per_s`.
    Batch,
    /// `train_windows_per_s`.
    Train,
}

impl Measure {
    /// All three.
    pub const ALL: [Measure; 3] = [Measure::Latency, Measure::Batch, Measure::Train];

    /// Parses `latency`, `batch` or `train`.
    pub fn parse(s: &str) -> Option<Measure> {
        match s {
            "latency" => Some(Measure::Latency),
            "batch" => Some(Measure::Batch),
            "train" => Some(Measure::Train),
            _ => None,
        }
    }
}

/// The result, one JSON object.
#[derive(Clone, Debug, Serialize)]
pub struct ModelBenchReport {
    /// Always "anomalyd".
    pub implementation: &'static str,
    /// Cell kind.
    pub cell: &'static str,
    /// Features per step.
    pub d_input: usize,
    /// Window length.
    pub window: usize,
    /// Hidden units.
    pub hidden: usize,
    /// Worker threads.
    pub threads: usize,
    /// Median µs to reconstruct one window at batch 1 (one thread).
    pub score_latency_us: f64,
    /// Windows reconstructed per second in batches of 256.
    pub score_windows_per_s: f64,
    /// Windows per second through forward + backward + Adam at batch 32 (MSE loss).
    pub train_windows_per_s: f64,
    /// Floating-point operations of one window's forward pass (multiply-add = 2).
    pub flops_per_window: u64,
    /// Peak resident set size of the process, MiB.
    pub peak_rss_mib: f64,
}

/// Forward FLOPs for one window: encoder and decoder recurrences, input projections
/// (the decoder's once per window, since its input is constant) and the head.
pub fn flops_per_window(kind: CellKind, d: usize, w: usize, h: usize) -> u64 {
    let g = kind.n_gates() as u64;
    let (d, w, h) = (d as u64, w as u64, h as u64);
    let enc = w * 2 * g * h * (d + h);
    let dec = 2 * g * h * h + w * 2 * g * h * h;
    let head = w * 2 * h * d;
    enc + dec + head
}

/// Times `f` repeatedly for about `seconds` and returns the median duration of one call.
fn median_time(seconds: f64, mut f: impl FnMut()) -> Duration {
    let warm = Instant::now();
    while warm.elapsed().as_secs_f64() < seconds * 0.2 {
        f();
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds || samples.len() < 5 {
        let t = Instant::now();
        f();
        samples.push(t.elapsed());
    }
    samples.sort();
    samples[samples.len() / 2]
}

/// Runs `f(thread_idx)` on `threads` threads at once and returns the slowest median.
fn parallel_median(threads: usize, f: impl Fn(usize) -> Duration + Sync) -> Duration {
    if threads <= 1 {
        return f(0);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                s.spawn({
                    let f = &f;
                    move || f(i)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .max()
            .unwrap_or_default()
    })
}

fn random_windows(rng: &mut StdRng, w: usize, b: usize, d: usize) -> Array3<f32> {
    Array3::from_shape_fn((w, b, d), |_| rng.random::<f32>() * 2.0 - 1.0)
}

/// Runs the benchmark.
pub fn run_model_bench(cfg: &ModelBenchConfig) -> ModelBenchReport {
    let ac = AutoencoderConfig::new(cfg.kind, cfg.d_input, cfg.d_hidden);
    let model = Autoencoder::<f32>::new(ac, &mut StdRng::seed_from_u64(1));
    let scorer = model.compile();
    let (w, d) = (cfg.window, cfg.d_input);

    let mut rng = StdRng::seed_from_u64(2);
    let window: Vec<f32> = (0..w * d).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    let mut ws = ScoreWorkspace::default();
    let threads = cfg.threads.max(1) as f64;
    let wants = |m| cfg.measure.contains(&m);
    let zero = Duration::ZERO;
    let latency = if !wants(Measure::Latency) {
        zero
    } else {
        median_time(cfg.seconds, || {
            std::hint::black_box(scorer.reconstruct(std::hint::black_box(&window), &mut ws));
        })
    };

    let batch_time = if !wants(Measure::Batch) {
        zero
    } else {
        parallel_median(cfg.threads, |i| {
            let x = random_windows(&mut StdRng::seed_from_u64(10 + i as u64), w, 256, d);
            median_time(cfg.seconds, || {
                std::hint::black_box(scorer.reconstruct_batch(x.view()));
            })
        })
    };

    let train_time = if !wants(Measure::Train) {
        zero
    } else {
        parallel_median(cfg.threads, |i| {
            let x = random_windows(&mut StdRng::seed_from_u64(20 + i as u64), w, 32, d);
            let mut m = model.clone();
            let mut opt = Adam::new(AdamParams {
                lr: 1e-3,
                ..Default::default()
            });
            let mut r = StdRng::seed_from_u64(30 + i as u64);
            median_time(cfg.seconds, || {
                std::hint::black_box(m.train_step(x.view(), &mut opt, None, &mut r));
            })
        })
    };
    let per_s = |n: f64, t: Duration| {
        if t.is_zero() {
            0.0
        } else {
            threads * n / t.as_secs_f64()
        }
    };

    ModelBenchReport {
        implementation: "anomalyd",
        cell: cfg.kind.name(),
        d_input: d,
        window: w,
        hidden: cfg.d_hidden,
        threads: cfg.threads,
        score_latency_us: latency.as_secs_f64() * 1e6,
        score_windows_per_s: per_s(256.0, batch_time),
        train_windows_per_s: per_s(32.0, train_time),
        flops_per_window: flops_per_window(cfg.kind, d, w, cfg.d_hidden),
        peak_rss_mib: peak_rss_mib(),
    }
}

/// Peak resident set size (VmHWM) in MiB; 0 where /proc is absent.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_count_matches_hand_count_for_lstm_s() {
        // enc: 32 steps × 2·128·(1+32); dec: 2·128·32 once + 32 × 2·128·32; head 32 × 2·32.
        let expect = 32 * 2 * 128 * 33 + 2 * 128 * 32 + 32 * 2 * 128 * 32 + 32 * 2 * 32;
        assert_eq!(flops_per_window(CellKind::Lstm, 1, 32, 32), expect);
    }

    #[test]
    fn smoke_run_reports_positive_numbers() {
        let r = run_model_bench(&ModelBenchConfig {
            kind: CellKind::Gru,
            d_input: 2,
            window: 4,
            d_hidden: 3,
            threads: 2,
            seconds: 0.01,
            measure: Measure::ALL.to_vec(),
        });
        assert!(r.score_latency_us > 0.0 && r.score_windows_per_s > 0.0 && r.train_windows_per_s > 0.0);
        assert!(r.peak_rss_mib > 0.0);
    }
}

/// `anomalyd bench detector`: the cost of one stream's detector with a given config.
#[derive(Clone, Debug, Serialize)]
pub struct DetectorBenchReport {
    /// Cell kind.
    pub cell: String,
    /// Hidden units.
    pub hidden: usize,
    /// Ensemble members.
    pub ensemble: usize,
    /// Window length.
    pub window: usize,
    /// Median µs to score one reading once a model exists (no training in between).
    pub score_us_median: f64,
    /// 99th percentile of the same.
    pub score_us_p99: f64,
    /// Median ms of one retraining job on a full buffer (warm start).
    pub retrain_ms_median: f64,
    /// Training windows per job.
    pub retrain_windows: usize,
    /// Epochs of the first (cold) job, summed over members.
    pub retrain_epochs: usize,
}

/// Measures scoring and retraining of one stream on a seasonal series with noise.
pub fn run_detector_bench(
    config: &crate::detector::DetectorConfig,
    jobs: usize,
) -> Result<DetectorBenchReport, String> {
    use crate::detector::{Detector, TrainOutcome, train};
    let mut det = Detector::new(config.clone()).map_err(|e| e.to_string())?;
    let mut rng = StdRng::seed_from_u64(1);
    let value = |t: usize, rng: &mut StdRng| 100.0 + 20.0 * (t as f64 / 7.6).sin() + rng.random::<f64>() * 4.0;
    let mut t = 0usize;
    // Fill the training buffer, then train the first model.
    let fill = config.training.buffer.max(config.retrain.first_after);
    while t < fill {
        det.update(t as i64, &[value(t, &mut rng)]).map_err(|e| e.to_string())?;
        t += 1;
    }
    let outcome = train::train(&det.training_job(), &|| false);
    let (windows, epochs) = match &outcome {
        TrainOutcome::Trained(m) => (m.report.windows, m.report.epochs),
        other => return Err(format!("training failed: {other:?}")),
    };
    det.install(outcome);
    // A retrain job with warm start, as the service runs them.
    let job = det.training_job();
    let mut warm_times = Vec::new();
    for _ in 0..jobs.max(1) {
        let start = Instant::now();
        std::hint::black_box(train::train(&job, &|| false));
        warm_times.push(start.elapsed());
    }
    det.install(train::train(&job, &|| false));
    warm_times.sort();
    let mut score = Vec::new();
    for _ in 0..5000 {
        let v = value(t, &mut rng);
        let start = Instant::now();
        std::hint::black_box(det.update(t as i64, &[v]).map_err(|e| e.to_string())?);
        score.push(start.elapsed());
        t += 1;
    }
    score.sort();
    Ok(DetectorBenchReport {
        cell: config.model.cell.clone(),
        hidden: config.model.hidden,
        ensemble: config.model.ensemble,
        window: config.window,
        score_us_median: score[score.len() / 2].as_secs_f64() * 1e6,
        score_us_p99: score[score.len() * 99 / 100].as_secs_f64() * 1e6,
        retrain_ms_median: warm_times[warm_times.len() / 2].as_secs_f64() * 1e3,
        retrain_windows: windows,
        retrain_epochs: epochs,
    })
}

/// `anomalyd bench memory`: resident memory per stream, measured by holding many
/// copies of one stream's detector (cloned after feeding it readings).
#[derive(Clone, Debug, Serialize)]
pub struct MemoryBenchReport {
    /// Streams held.
    pub streams: usize,
    /// Readings fed to the template stream.
    pub readings: usize,
    /// Whether the template had a trained model.
    pub has_model: bool,
    /// Model ensemble members.
    pub members: usize,
    /// Resident memory before creating the streams, MiB.
    pub rss_before_mib: f64,
    /// Resident memory with them, MiB.
    pub rss_after_mib: f64,
    /// (after − before) / streams, KiB.
    pub kib_per_stream: f64,
}

/// Current resident set size in MiB (VmRSS); 0 where /proc is absent.
pub fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Feeds one detector `readings` readings (training inline), then holds `streams`
/// clones of it and reports the memory they take.
pub fn run_memory_bench(
    config: &crate::detector::DetectorConfig,
    streams: usize,
    readings: usize,
) -> Result<MemoryBenchReport, String> {
    use crate::detector::Detector;
    let mut template = Detector::new(config.clone()).map_err(|e| e.to_string())?;
    let mut rng = StdRng::seed_from_u64(1);
    for t in 0..readings {
        let v = 100.0 + 20.0 * (t as f64 / 7.6).sin() + rng.random::<f64>() * 4.0;
        template.update_sync(t as i64, &[v]).map_err(|e| e.to_string())?;
    }
    let before = rss_mib();
    let held: Vec<Detector> = (0..streams).map(|_| template.clone()).collect();
    let after = rss_mib();
    let report = MemoryBenchReport {
        streams,
        readings,
        has_model: template.model().is_some(),
        members: template.model().map_or(0, |m| m.scorers.len()),
        rss_before_mib: before,
        rss_after_mib: after,
        kib_per_stream: (after - before) * 1024.0 / streams.max(1) as f64,
    };
    drop(held);
    Ok(report)
}

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
}

/// Warms the streams up past their first model, then ingests for `seconds` from
/// `clients` threads at once.
pub fn run_ingest_bench(
    config: &crate::detector::DetectorConfig,
    b: &IngestBenchConfig,
) -> Result<IngestBenchReport, String> {
    use crate::registry::{Reading, Registry, RegistryConfig};
    let mut det = config.clone();
    det.retrain.every_readings = b.retrain_every;
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let dir = std::env::temp_dir().join(format!("anomalyd-bench-ingest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let reg = Registry::open(
        RegistryConfig {
            default_detector: det,
            training_threads: 1,
            data_dir: b.wal.map(|_| dir.clone()),
            wal_sync: b.wal.unwrap_or(crate::storage::wal::SyncPolicy::Always),
            ..Default::default()
        },
        metrics.clone(),
    )?;
    let next = |s: usize, t: i64, rng: &mut StdRng| {
        let v = 100.0 + 20.0 * (t as f64 / 7.6).sin() + rng.random::<f64>() * 4.0;
        Reading {
            stream: format!("s{s}"),
            timestamp: t,
            values: vec![v],
        }
    };
    // Warm-up: every stream past its first model.
    let warm = config.retrain.first_after + 20;
    let mut rng = StdRng::seed_from_u64(1);
    for s in 0..b.streams {
        let rs: Vec<Reading> = (1..=warm as i64).map(|t| next(s, t, &mut rng)).collect();
        reg.ingest(&rs).map_err(|e| e.to_string())?;
    }
    let jobs = || metrics.retrain_jobs.with_label_values(&["completed"]).get();
    let wait_start = Instant::now();
    while jobs() < b.streams as u64 && wait_start.elapsed() < Duration::from_secs(600) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let jobs_before = jobs();
    let start = Instant::now();
    let clients = b.clients.clamp(1, b.streams);
    let results: Vec<Result<(usize, Vec<Duration>), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let reg = &reg;
                scope.spawn(move || {
                    let mine: Vec<usize> = (c..b.streams).step_by(clients).collect();
                    let mut t = vec![warm as i64; mine.len()];
                    let mut rng = StdRng::seed_from_u64(2 + c as u64);
                    let (mut done, mut per_reading, mut k) = (0usize, Vec::new(), 0usize);
                    while start.elapsed().as_secs_f64() < b.seconds {
                        let rs: Vec<Reading> = (0..b.batch)
                            .map(|_| {
                                t[k] += 1;
                                next(mine[k], t[k], &mut rng)
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
    let elapsed = start.elapsed().as_secs_f64();
    let (mut done, mut per_reading) = (0, Vec::new());
    for r in results {
        let (d, p) = r?;
        done += d;
        per_reading.extend(p);
    }
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
    };
    drop(reg);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(report)
}

/// `anomalyd bench checkpoint`: how long snapshot rounds and a restart take with
/// `streams` streams, each a copy of one stream that has a model.
#[derive(Clone, Debug, Serialize)]
pub struct CheckpointBenchReport {
    /// Streams held.
    pub streams: usize,
    /// Bytes of one stream's state file (rewritten when the stream changed).
    pub state_bytes: usize,
    /// Bytes of one stream's model file (written once per model version).
    pub model_bytes: usize,
    /// Most streams a round writes (`checkpoint_max_streams`).
    pub max_streams_per_round: usize,
    /// The first round after every stream changed, seconds.
    pub first_round_s: f64,
    /// Rounds until every stream was written.
    pub rounds_to_write_all: usize,
    /// Those rounds together, seconds.
    pub write_all_s: f64,
    /// A round after 1% of the streams took a reading, seconds.
    pub one_percent_round_s: f64,
    /// A round after every stream took a reading (no new model), seconds: the
    /// steady state of a busy node.
    pub all_changed_round_s: f64,
    /// A round with nothing changed, seconds.
    pub idle_round_s: f64,
    /// Opening the data directory again (snapshots + log replay), seconds.
    pub restart_s: f64,
    /// Streams found after the restart.
    pub restarted_streams: usize,
}

/// Builds `streams` streams in a temporary data directory and times checkpoints.
pub fn run_checkpoint_bench(
    config: &crate::detector::DetectorConfig,
    streams: usize,
    readings: usize,
) -> Result<CheckpointBenchReport, String> {
    use crate::registry::{Reading, Registry, RegistryConfig};
    let dir = std::env::temp_dir().join(format!("anomalyd-bench-checkpoint-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let open = || {
        Registry::open(
            RegistryConfig {
                default_detector: config.clone(),
                data_dir: Some(dir.clone()),
                max_streams: streams.max(1),
                ..Default::default()
            },
            std::sync::Arc::new(crate::metrics::Metrics::new()),
        )
    };
    let template = trained_detector(config, readings)?;
    let snap = template.snapshot();
    let state_bytes = crate::storage::snapshot::encode("s0", 0, &snap, Some("s0.v1.model"))
        .map_err(|e| e.to_string())?
        .len();
    let model_bytes = crate::storage::snapshot::encode_model(&snap.members)
        .map_err(|e| e.to_string())?
        .len();
    let reg = open()?;
    for s in 0..streams {
        reg.adopt(&format!("s{s}"), template.clone())
            .map_err(|e| e.to_string())?;
    }
    let timed = |f: &dyn Fn() -> Result<usize, String>| -> Result<f64, String> {
        let t = Instant::now();
        f()?;
        Ok(t.elapsed().as_secs_f64())
    };
    let round = || reg.snapshot().map_err(|e| e.to_string());
    let start = Instant::now();
    let first_round_s = timed(&round)?;
    let mut rounds_to_write_all = 1;
    while reg.dirty_streams() > 0 {
        round()?;
        rounds_to_write_all += 1;
    }
    let write_all_s = start.elapsed().as_secs_f64();
    let last = template.last_timestamp().unwrap_or(0);
    let width = template.n_features().unwrap_or(1);
    let touched: Vec<Reading> = (0..streams.div_ceil(100))
        .map(|s| Reading {
            stream: format!("s{}", s * 100),
            timestamp: last + 1,
            values: vec![0.5; width],
        })
        .collect();
    reg.ingest(&touched).map_err(|e| e.to_string())?;
    let one_percent_round_s = timed(&round)?;
    let idle_round_s = timed(&round)?;
    let every: Vec<Reading> = (0..streams)
        .map(|s| Reading {
            stream: format!("s{s}"),
            timestamp: last + 1,
            values: vec![0.5; width],
        })
        .collect();
    for chunk in every.chunks(1000) {
        reg.ingest(chunk).map_err(|e| e.to_string())?;
    }
    let all_changed_round_s = timed(&round)?;
    while reg.dirty_streams() > 0 {
        round()?;
    }
    // Readings after the last round are replayed from the log on restart.
    let more: Vec<Reading> = touched
        .iter()
        .map(|r| Reading {
            timestamp: last + 2,
            ..r.clone()
        })
        .collect();
    reg.ingest(&more).map_err(|e| e.to_string())?;
    drop(reg);
    let t = Instant::now();
    let back = open()?;
    let restart_s = t.elapsed().as_secs_f64();
    let restarted_streams = back.len();
    drop(back);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(CheckpointBenchReport {
        streams,
        state_bytes,
        model_bytes,
        max_streams_per_round: crate::registry::RegistryConfig::default().checkpoint_max_streams,
        first_round_s,
        rounds_to_write_all,
        write_all_s,
        one_percent_round_s,
        all_changed_round_s,
        idle_round_s,
        restart_s,
        restarted_streams,
    })
}

fn trained_detector(
    config: &crate::detector::DetectorConfig,
    readings: usize,
) -> Result<crate::detector::Detector, String> {
    let mut d = crate::detector::Detector::new(config.clone()).map_err(|e| e.to_string())?;
    let mut rng = StdRng::seed_from_u64(3);
    for t in 0..readings as i64 {
        let v = 100.0 + 20.0 * (t as f64 / 7.6).sin() + rng.random::<f64>() * 4.0;
        d.update_sync(t, &[v]).map_err(|e| e.to_string())?;
    }
    Ok(d)
}
