//! `anomalyd bench detector` (one stream's scoring and retraining time) and
//! `anomalyd bench memory` (resident memory per stream).

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::rss_mib;

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
        cell: config.model.cell.name().to_string(),
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
