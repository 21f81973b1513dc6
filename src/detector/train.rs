//! Training a stream's model: a pure function from a job (data, config, seed, the
//! previous weights) to an outcome. It never reads the clock; a wall-time budget is
//! a `should_stop` predicate supplied by the caller, checked between batches.

use ndarray::{Array3, Axis};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::baseline::std_floor;
use super::config::DetectorConfig;
use crate::nn::{Adam, AdamParams, Autoencoder, mse};

/// Per-feature affine normalisation frozen with a model: `(x − center) / scale`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normaliser {
    /// Per-feature center.
    pub center: Vec<f64>,
    /// Per-feature scale (> 0).
    pub scale: Vec<f64>,
}

impl Normaliser {
    /// Mean and standard deviation of each feature of `rows` (`[n][d]`), with the
    /// scale floored so flat features do not blow up.
    pub fn fit(rows: &[Vec<f64>]) -> Self {
        let d = rows.first().map_or(0, Vec::len);
        let n = rows.len().max(1) as f64;
        let mut center = vec![0.0; d];
        let mut scale = vec![0.0; d];
        for j in 0..d {
            let m = rows.iter().map(|r| r[j]).sum::<f64>() / n;
            let s = (rows.iter().map(|r| (r[j] - m) * (r[j] - m)).sum::<f64>() / n).sqrt();
            center[j] = m;
            scale[j] = std_floor(m, s);
        }
        Normaliser { center, scale }
    }

    /// Normalises one value of feature `j`, clamped to ±50 scales so one wild value
    /// cannot produce non-finite activations.
    pub fn apply(&self, j: usize, x: f64) -> f32 {
        ((x - self.center[j]) / self.scale[j]).clamp(-50.0, 50.0) as f32
    }

    /// Inverse of [`Normaliser::apply`].
    pub fn invert(&self, j: usize, v: f32) -> f64 {
        v as f64 * self.scale[j] + self.center[j]
    }
}

/// Distribution of a model's window errors on held-out windows: `ln(error + ε)` is
/// taken as Gaussian with this mean and standard deviation.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ErrorStats {
    /// Mean of `ln(error + ε)`.
    pub log_mean: f64,
    /// Standard deviation of `ln(error + ε)` (floored).
    pub log_std: f64,
    /// Mean error (a mean square, in normalised units).
    #[serde(default)]
    pub mean: f64,
}

/// ε in `ln(error + ε)`: errors are in normalised units, so this is 1% of a scale².
pub const ERROR_EPS: f64 = 1e-4;

impl ErrorStats {
    /// How many standard deviations `error` lies above the held-out errors.
    pub fn z(&self, error: f64) -> f64 {
        ((error + ERROR_EPS).ln() - self.log_mean) / self.log_std
    }
}

/// Steps at the end of a window whose error scores a reading.
pub fn scored_steps(cfg: &DetectorConfig) -> usize {
    match cfg.model.score_steps {
        0 => cfg.window,
        k => k.min(cfg.window),
    }
}

/// Everything a training job needs, detached from the detector so it can run on
/// another thread while the detector goes on scoring.
#[derive(Clone, Debug)]
pub struct TrainJob {
    /// The stream's config (model shape, training settings, window).
    pub config: DetectorConfig,
    /// Buffered raw readings, oldest first, `[n][d]`.
    pub readings: Vec<Vec<f64>>,
    /// The current members, to start from (warm start); `None` trains from scratch.
    pub warm_start: Option<Vec<Autoencoder<f32>>>,
    /// Version the new model will carry.
    pub version: u64,
    /// Seed for this job (initialisation and shuffling).
    pub seed: u64,
}

/// What a job reports, trained or not.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainReport {
    /// Windows cut from the buffer.
    pub windows: usize,
    /// Epochs run (summed over ensemble members).
    pub epochs: usize,
    /// Mean training loss of the last epoch (averaged over members).
    pub train_loss: f64,
    /// Held-out loss of the kept weights (averaged over members).
    pub val_loss: f64,
    /// Whether early stopping ended a member's training.
    pub stopped_early: bool,
    /// Whether the job was cut short by the caller's budget.
    pub budget_exhausted: bool,
}

/// A trained model, ready to be swapped in whole.
#[derive(Clone, Debug)]
pub struct TrainedModel {
    /// Version (one more than the model it replaces).
    pub version: u64,
    /// Ensemble members.
    pub members: Vec<Autoencoder<f32>>,
    /// Normalisation the members were trained with.
    pub normaliser: Normaliser,
    /// Held-out error distribution, for scoring.
    pub errors: ErrorStats,
    /// How training went.
    pub report: TrainReport,
}

/// The result of a job.
#[derive(Clone, Debug)]
pub enum TrainOutcome {
    /// A new model.
    Trained(TrainedModel),
    /// Training produced a non-finite or exploding loss; the old model stays.
    Diverged(TrainReport),
    /// Too few readings to cut a training window.
    NotEnoughData,
}

/// Trains a model on the job's readings.
///
/// Windows of W readings are cut every `stride` readings and normalised with the
/// buffer's statistics; the most recent `holdout` fraction is held out. Each member
/// trains with Adam and gradient clipping, keeps its best held-out weights, stops
/// after `patience` epochs without improvement, and is abandoned (the job reports
/// [`TrainOutcome::Diverged`]) if a loss becomes non-finite or exceeds 1000× its first.
/// Deterministic for a given job.
pub fn train(job: &TrainJob, should_stop: &dyn Fn() -> bool) -> TrainOutcome {
    let cfg = &job.config;
    let w = cfg.window;
    let n = job.readings.len();
    let d = job.readings.first().map_or(0, Vec::len);
    let stride = cfg.training.stride;
    if n < w || d == 0 {
        return TrainOutcome::NotEnoughData;
    }
    let normaliser = Normaliser::fit(&job.readings);
    let norm: Vec<f32> = job
        .readings
        .iter()
        .flat_map(|r| r.iter().enumerate().map(|(j, &x)| normaliser.apply(j, x)))
        .collect();
    // Window start positions, newest window last.
    let starts: Vec<usize> = (0..=n - w)
        .rev()
        .step_by(stride)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let n_hold = ((starts.len() as f64 * cfg.training.holdout).round() as usize).min(starts.len().saturating_sub(1));
    let (train_starts, hold_starts) = starts.split_at(starts.len() - n_hold);
    let hold_starts = if hold_starts.is_empty() {
        train_starts
    } else {
        hold_starts
    };
    let batch_of = |idx: &[usize]| -> Array3<f32> {
        Array3::from_shape_fn((w, idx.len(), d), |(t, b, j)| norm[(idx[b] + t) * d + j])
    };

    let ae_cfg = cfg.autoencoder(d);
    let mut report = TrainReport {
        windows: starts.len(),
        ..Default::default()
    };
    let mut members = Vec::new();
    let mut rng = StdRng::seed_from_u64(job.seed);
    for k in 0..cfg.model.ensemble {
        let start_from = job
            .warm_start
            .as_ref()
            .and_then(|m| m.get(k))
            .filter(|m| m.config == ae_cfg);
        let mut model = match start_from {
            Some(m) => m.clone(),
            None => Autoencoder::new(ae_cfg.clone(), &mut rng),
        };
        let mut opt = Adam::new(AdamParams {
            lr: cfg.training.learning_rate,
            ..Default::default()
        });
        let val = |m: &Autoencoder<f32>| -> f64 {
            let mut total = 0.0;
            for chunk in hold_starts.chunks(256) {
                let x = batch_of(chunk);
                let y = m.forward(x.view());
                total += mse(y.view().into_dyn(), x.view().into_dyn()).0 as f64 * chunk.len() as f64;
            }
            total / hold_starts.len() as f64
        };
        let mut best = (val(&model), model.clone());
        let mut first_loss = None;
        let mut since_best = 0;
        let mut order: Vec<usize> = train_starts.to_vec();
        let mut last_train = f64::NAN;
        for _epoch in 0..cfg.training.epochs {
            order.shuffle(&mut rng);
            let mut sum = 0.0;
            for chunk in order.chunks(cfg.training.batch) {
                let x = batch_of(chunk);
                let loss =
                    model.train_step(x.view(), &mut opt, Some(cfg.training.max_grad_norm as f32), &mut rng) as f64;
                let first = *first_loss.get_or_insert(loss.max(1e-6));
                if !loss.is_finite() || loss > 1000.0 * first {
                    report.epochs += 1;
                    return TrainOutcome::Diverged(report);
                }
                sum += loss * chunk.len() as f64;
                if should_stop() {
                    report.budget_exhausted = true;
                    break;
                }
            }
            report.epochs += 1;
            last_train = sum / order.len().max(1) as f64;
            let v = val(&model);
            if !v.is_finite() {
                return TrainOutcome::Diverged(report);
            }
            if v < best.0 {
                best = (v, model.clone());
                since_best = 0;
            } else {
                since_best += 1;
                if since_best >= cfg.training.patience {
                    report.stopped_early = true;
                    break;
                }
            }
            if report.budget_exhausted {
                break;
            }
        }
        report.train_loss += last_train / cfg.model.ensemble as f64;
        report.val_loss += best.0 / cfg.model.ensemble as f64;
        members.push(best.1);
        if report.budget_exhausted {
            break;
        }
    }

    // Calibrate on every buffered window (held-out ones alone may miss rare but
    // normal shapes, e.g. a daily transition): the ensemble's mean scored error.
    let mut logs = Vec::with_capacity(starts.len());
    let mut sum_err = 0.0;
    for chunk in starts.chunks(256) {
        let x = batch_of(chunk);
        let mut err = vec![0.0f64; chunk.len()];
        for m in &members {
            let y = m.forward(x.view());
            let steps = scored_steps(cfg);
            let sq = (&y - &x)
                .slice(ndarray::s![w - steps.., .., ..])
                .mapv(|v| (v as f64) * (v as f64));
            let per_window = sq.sum_axis(Axis(2)).sum_axis(Axis(0)) / (steps * d) as f64;
            for (e, v) in err.iter_mut().zip(per_window.iter()) {
                *e += v / members.len() as f64;
            }
        }
        logs.extend(err.iter().map(|e| (e + ERROR_EPS).ln()));
        sum_err += err.iter().sum::<f64>();
    }
    let mean = logs.iter().sum::<f64>() / logs.len() as f64;
    let std = (logs.iter().map(|l| (l - mean) * (l - mean)).sum::<f64>() / logs.len() as f64).sqrt();
    TrainOutcome::Trained(TrainedModel {
        version: job.version,
        members,
        normaliser,
        errors: ErrorStats {
            log_mean: mean,
            log_std: std.max(0.25),
            mean: sum_err / logs.len() as f64,
        },
        report,
    })
}
