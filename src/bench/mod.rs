//! The measurements behind `anomalyd bench`: each runs in this process (or, for
//! `http`, against a running service) and returns a report the CLI prints as JSON.
//!
//! - `model.rs`: the reference autoencoder against its PyTorch twin.
//! - `detector.rs`: one stream's scoring and retraining time; memory per stream.
//! - `ingest.rs`: the registry's ingest throughput without HTTP.
//! - `checkpoint.rs`: snapshot rounds and restarts with many streams.
//! - `console.rs`: the console's requests with many streams, over HTTP.
//! - `loadgen.rs`: an HTTP load generator (remote_write or JSON) for a running service.

pub mod checkpoint;
pub mod console;
pub mod detector;
pub mod ingest;
pub mod loadgen;
pub mod model;

pub use checkpoint::{CheckpointBenchReport, run_checkpoint_bench};
pub use console::{ConsoleBenchReport, run_console_bench};
pub use detector::{DetectorBenchReport, MemoryBenchReport, run_detector_bench, run_memory_bench};
pub use ingest::{IngestBenchConfig, IngestBenchReport, run_ingest_bench};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use model::{Measure, ModelBenchConfig, ModelBenchReport, flops_per_window, run_model_bench};

/// A size field of `/proc/self/status` (`VmRSS`, `VmHWM`) in MiB; 0 where /proc
/// is absent.
fn proc_status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.strip_prefix(field).is_some_and(|rest| rest.starts_with(':')))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Peak resident set size (VmHWM) in MiB; 0 where /proc is absent.
pub fn peak_rss_mib() -> f64 {
    proc_status_mib("VmHWM")
}

/// Current resident set size in MiB (VmRSS); 0 where /proc is absent.
pub fn rss_mib() -> f64 {
    proc_status_mib("VmRSS")
}

/// A detector fed `readings` readings of a noisy wave (training inline).
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
