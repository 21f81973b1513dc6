//! `anomalyd bench model`: measures the reference autoencoder the way the PyTorch
//! peer script in `benches/` measures its twin, and reports one JSON line.
//!
//! Every figure is a median over repeated runs, so one noisy run moves nothing.

use std::time::{Duration, Instant};

use ndarray::Array3;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::peak_rss_mib;
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
    /// The kernels' instruction-set path ([`crate::nn::isa`]): `avx512`, `avx2` or
    /// `portable`.
    pub kernels: &'static str,
    /// The widest path this CPU supports (wider than `kernels` when `ANOMALYD_ISA`
    /// caps it).
    pub cpu_kernels: &'static str,
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
        kernels: crate::nn::isa::active().name(),
        cpu_kernels: crate::nn::isa::widest().name(),
        score_latency_us: latency.as_secs_f64() * 1e6,
        score_windows_per_s: per_s(256.0, batch_time),
        train_windows_per_s: per_s(32.0, train_time),
        flops_per_window: flops_per_window(cfg.kind, d, w, cfg.d_hidden),
        peak_rss_mib: peak_rss_mib(),
    }
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
