//! Training a stream's model: a pure function from a job (data, config, seed, the
//! previous weights) to an outcome. It never reads the clock; a wall-time budget is
//! a `should_stop` predicate supplied by the caller, checked between batches.

use ndarray::{Array3, Axis, CowArray, Ix3};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::config::{DetectorConfig, Objective};
use super::fit::{Epoch, Fitted, Schedule, fit};
pub use super::normaliser::{MIN_FEATURE_RMS, Normaliser};
use crate::nn::{Adam, AdamParams, Autoencoder, mse};

/// Distribution of a model's window errors on held-out windows: `ln(error + ε)` is
/// taken as Gaussian with this mean and standard deviation.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ErrorStats {
    /// Mean of `ln(error + ε)`.
    pub log_mean: f64,
    /// Standard deviation of `ln(error + ε)` (floored).
    pub log_std: f64,
    /// Mean error (a mean square, in normalised units).
    #[serde(default)]
    pub mean: f64,
    /// Per feature: root mean square of the newest step's residual on held-out
    /// windows (normalised units), the scale of the state's model statistics.
    #[serde(default)]
    pub feature_rms: Vec<f64>,
}

/// ε in `ln(error + ε)`: errors are in normalised units, so this is 1% of a scale².
pub const ERROR_EPS: f64 = 1e-4;

impl ErrorStats {
    /// Feature `j`'s residual scale (1 for models saved before it existed).
    pub fn feature_scale(&self, j: usize) -> f64 {
        self.feature_rms.get(j).copied().unwrap_or(1.0).max(MIN_FEATURE_RMS)
    }

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
    /// Per reading: whether it was learnt as normal (empty: all were). Windows that
    /// hold a reading that was not stay out of training and calibration.
    pub normal: Vec<bool>,
    /// The current members, to start from (warm start); `None` trains from scratch.
    pub warm_start: Option<Vec<Autoencoder<f32>>>,
    /// Version the new model will carry.
    pub version: u64,
    /// Seed for this job (initialisation and shuffling).
    pub seed: u64,
    /// Why the job was asked for.
    pub kind: JobKind,
    /// Per feature: whether it was context when the job was taken (empty: none
    /// was). Context features enter the network scaled to their range
    /// (`Normaliser::fit_with_context`); the change model, which compares the
    /// measured ones, is trained only for two or more.
    pub context: Vec<bool>,
    /// Per feature: the least residual scale its resolution allows, in its own
    /// units (`SensorResolution::floor`; empty or 0: none).
    pub floors: Vec<f64>,
}

impl TrainJob {
    /// Features judged as measurements: all but the context ones.
    pub fn measured(&self) -> usize {
        let d = self.readings.first().map_or(0, Vec::len);
        d - self.context.iter().filter(|&&c| c).count().min(d)
    }
}

/// Why a training job was asked for, as `/metrics` counts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    /// A stream without a model.
    First,
    /// The job that completes a first model of fewer members than the ensemble.
    Completion,
    /// The periodic retrain (`retrain.every_readings` or `every_seconds`).
    Scheduled,
    /// An early retrain of a drifting stream (`retrain.on_drift`).
    Drift,
    /// Asked for: by a client (`POST /v1/streams/{id}/retrain`), by accepting an
    /// incident, or by a restore that found a job lost in a crash.
    Requested,
}

impl JobKind {
    /// Every kind, in the order `/metrics` lists them.
    pub const ALL: [JobKind; 5] = [
        JobKind::First,
        JobKind::Completion,
        JobKind::Scheduled,
        JobKind::Drift,
        JobKind::Requested,
    ];

    /// The kind's `/metrics` label.
    pub fn name(self) -> &'static str {
        match self {
            JobKind::First => "first",
            JobKind::Completion => "completion",
            JobKind::Scheduled => "scheduled",
            JobKind::Drift => "drift",
            JobKind::Requested => "requested",
        }
    }
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
    /// What the members were trained for at the newest step.
    pub objective: Objective,
    /// Per held-out reading in time order, each feature's residual in units of
    /// `errors.feature_rms`: seeds the state's limits for this model.
    pub calibration: Vec<Vec<f64>>,
    /// How training went.
    pub report: TrainReport,
    /// The change model and its held-out residuals (multivariate streams).
    pub changes: Option<Box<super::changes::TrainedChanges>>,
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

/// The job's readings normalised and cut into windows.
struct Windows {
    w: usize,
    d: usize,
    /// What the model is asked for at the newest step.
    objective: Objective,
    normaliser: Normaliser,
    /// Per feature, the least residual scale its step allows (normalised units;
    /// 0 for a feature read finely): the job's `floors`.
    resolution: Vec<f64>,
    /// Normalised readings, flattened `[n][d]`.
    norm: Vec<f32>,
    /// Starts of the training windows (before the held-out slice), newest last.
    train: Vec<usize>,
    /// Starts of the held-out windows at stride 1: each ends at a reading that no
    /// training window contains. Empty buffers fall back to the training windows.
    held_out: Vec<usize>,
}

/// Least held-out readings worth calibrating on; fewer, and the training windows
/// calibrate (in-sample) instead.
const MIN_HELD_OUT: usize = 16;

impl Windows {
    /// Fits the normaliser on the readings learnt as normal and cuts windows that
    /// hold only such readings: the newest `holdout` share of them is held out, and
    /// training windows (every `stride` readings) end before it.
    fn cut(job: &TrainJob) -> Option<Windows> {
        let cfg = &job.config;
        let w = cfg.window;
        let n = job.readings.len();
        let d = job.readings.first().map_or(0, Vec::len);
        if n < w || d == 0 {
            return None;
        }
        let is_normal = |i: usize| job.normal.get(i).copied().unwrap_or(true);
        let normal_rows: Vec<Vec<f64>> = (0..n)
            .filter(|&i| is_normal(i))
            .map(|i| job.readings[i].clone())
            .collect();
        if normal_rows.len() < w {
            return None;
        }
        let normaliser = Normaliser::fit_with_context(&normal_rows, &job.context);
        let resolution = (0..d)
            .map(|j| job.floors.get(j).copied().unwrap_or(0.0) / normaliser.scale[j])
            .collect();
        let norm: Vec<f32> = job
            .readings
            .iter()
            .flat_map(|r| r.iter().enumerate().map(|(j, &x)| normaliser.apply(j, x)))
            .collect();
        // bad[i]: readings not learnt as normal among the first i.
        let mut bad = vec![0usize; n + 1];
        for i in 0..n {
            bad[i + 1] = bad[i] + usize::from(!is_normal(i));
        }
        let clean = |s: usize| bad[s + w] == bad[s];
        // The newest `holdout` share of the clean windows is held out (at stride 1);
        // training windows end before the first held-out window's last reading, so
        // no held-out reading was ever the target of training.
        let all: Vec<usize> = (0..=n - w).filter(|&s| clean(s)).collect();
        let n_hold = (all.len() as f64 * cfg.training.holdout).round() as usize;
        let held_out: Vec<usize> = all[all.len() - n_hold.min(all.len())..].to_vec();
        let split = held_out.first().map_or(n, |&s| s + w - 1);
        let train: Vec<usize> = all
            .iter()
            .copied()
            .filter(|&s| s + w <= split)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .step_by(cfg.training.stride)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let (train, held_out) = if train.is_empty() {
            (all.clone(), all)
        } else if held_out.len() < MIN_HELD_OUT {
            (train.clone(), train)
        } else {
            (train, held_out)
        };
        if train.is_empty() {
            return None;
        }
        Some(Windows {
            w,
            d,
            objective: cfg.model.objective,
            normaliser,
            resolution,
            norm,
            train,
            held_out,
        })
    }

    /// The model's input for windows `x` (`[w, B, d]`, standard layout, so each
    /// step's `B·d` values are contiguous): [`Objective::input`].
    fn input<'a>(&self, x: &'a Array3<f32>) -> CowArray<'a, f32, Ix3> {
        match self.objective {
            Objective::Reconstruct => CowArray::from(x.view()),
            Objective::Forecast => {
                let mut m = x.clone();
                let step = x.len_of(Axis(1)) * self.d;
                self.objective
                    .hide_newest(m.as_slice_mut().expect("standard layout"), step);
                CowArray::from(m)
            }
        }
    }

    /// The windows starting at `idx`, `[w, idx.len(), d]`.
    fn batch(&self, idx: &[usize]) -> Array3<f32> {
        let (w, d) = (self.w, self.d);
        Array3::from_shape_fn((w, idx.len(), d), |(t, b, j)| self.norm[(idx[b] + t) * d + j])
    }

    /// Mean loss of `model` over the held-out windows.
    fn held_out_loss(&self, m: &Autoencoder<f32>) -> f64 {
        let mut total = 0.0;
        for chunk in self.held_out.chunks(256) {
            let x = self.batch(chunk);
            let y = m.forward(self.input(&x).view());
            total += mse(y.view().into_dyn(), x.view().into_dyn()).0 as f64 * chunk.len() as f64;
        }
        total / self.held_out.len() as f64
    }
}

/// A member to train: its starting weights and its epoch budget.
struct Member {
    model: Autoencoder<f32>,
    max_epochs: usize,
}

/// Trains one ensemble member with Adam and clipping, keeping its best held-out
/// weights; stops after `patience` epochs without improvement or when `should_stop`
/// (checked between batches) or after `member.max_epochs`. `None` when it diverged.
fn train_member(
    win: &Windows,
    cfg: &DetectorConfig,
    member: Member,
    rng: &mut StdRng,
    report: &mut TrainReport,
    should_stop: &dyn Fn() -> bool,
) -> Option<Fitted<Autoencoder<f32>>> {
    let t = &cfg.training;
    let mut opt = Adam::new(AdamParams {
        lr: t.learning_rate,
        ..Default::default()
    });
    let mut first_loss = None;
    let schedule = Schedule {
        max_epochs: member.max_epochs,
        patience: t.patience,
        non_finite_diverges: true,
        stop: &|| false,
    };
    let mut order: Vec<usize> = win.train.clone();
    let epoch = |model: &mut Autoencoder<f32>, order: &[usize], rng: &mut StdRng| {
        let mut sum = 0.0;
        for chunk in order.chunks(t.batch) {
            let x = win.batch(chunk);
            let xi = win.input(&x);
            let loss = model.train_step_to(xi.view(), x.view(), &mut opt, Some(t.max_grad_norm as f32), rng) as f64;
            let first = *first_loss.get_or_insert(loss.max(1e-6));
            if !loss.is_finite() || loss > 1000.0 * first {
                return Epoch::Diverged;
            }
            sum += loss * chunk.len() as f64;
            if should_stop() {
                return Epoch::OutOfBudget(sum / order.len().max(1) as f64);
            }
        }
        Epoch::Trained(sum / order.len().max(1) as f64)
    };
    match fit(
        member.model,
        &mut order,
        rng,
        &schedule,
        |m| win.held_out_loss(m),
        epoch,
    ) {
        Ok(fitted) => {
            report.epochs += fitted.epochs;
            report.stopped_early |= fitted.stopped_early;
            report.budget_exhausted |= fitted.out_of_budget;
            Some(fitted)
        }
        Err(epochs) => {
            report.epochs += epochs;
            None
        }
    }
}

/// The ensemble's scored error over `starts`, per window, and, per window, each
/// feature's residual at the newest step.
fn ensemble_errors(
    win: &Windows,
    cfg: &DetectorConfig,
    members: &[Autoencoder<f32>],
    starts: &[usize],
) -> (Vec<f64>, Vec<Vec<f64>>) {
    let (w, d) = (win.w, win.d);
    let steps = scored_steps(cfg);
    let m = members.len() as f64;
    let mut errors = Vec::with_capacity(starts.len());
    let mut residuals = Vec::with_capacity(starts.len());
    for chunk in starts.chunks(256) {
        let x = win.batch(chunk);
        let mut err = vec![0.0f64; chunk.len()];
        let mut last = vec![vec![0.0f64; d]; chunk.len()];
        let input = win.input(&x);
        for member in members {
            let y = member.forward(input.view());
            let sq = (&y - &x)
                .slice(ndarray::s![w - steps.., .., ..])
                .mapv(|v| (v as f64) * (v as f64));
            let per_window = sq.sum_axis(Axis(2)).sum_axis(Axis(0)) / (steps * d) as f64;
            for (e, v) in err.iter_mut().zip(per_window.iter()) {
                *e += v / m;
            }
            for (b, row) in last.iter_mut().enumerate() {
                for (j, r) in row.iter_mut().enumerate() {
                    *r += y[[w - 1, b, j]] as f64 / m;
                }
            }
        }
        for (b, row) in last.iter_mut().enumerate() {
            for (j, r) in row.iter_mut().enumerate() {
                *r -= x[[w - 1, b, j]] as f64;
            }
        }
        errors.extend(err);
        residuals.extend(last);
    }
    (errors, residuals)
}

/// Trains a model on the job's readings.
///
/// Windows of W readings that hold only readings learnt as normal are cut every
/// `stride` readings and normalised with those readings' statistics; the newest
/// `holdout` fraction of readings is held out. Each member trains with Adam and
/// gradient clipping, keeps its best held-out weights, stops after `patience`
/// epochs without improvement, and is abandoned (the job reports
/// [`TrainOutcome::Diverged`]) if a loss becomes non-finite or exceeds 1000× its
/// first. The held-out windows then calibrate the model: each feature's residual
/// scale and the sequence that seeds the state's limits. Deterministic for a job.
pub fn train(job: &TrainJob, should_stop: &dyn Fn() -> bool) -> TrainOutcome {
    let cfg = &job.config;
    let Some(win) = Windows::cut(job) else {
        return TrainOutcome::NotEnoughData;
    };
    let ae_cfg = cfg.autoencoder(win.d);
    let mut report = TrainReport {
        windows: win.train.len(),
        ..Default::default()
    };
    let mut members = Vec::new();
    let mut rng = StdRng::seed_from_u64(job.seed);
    // A first model trains `first_members`; the next job completes the ensemble.
    let n_members = match &job.warm_start {
        None => cfg.training.first_model_members(cfg.model.ensemble),
        Some(_) => cfg.model.ensemble,
    };
    for k in 0..n_members {
        let start_from = job
            .warm_start
            .as_ref()
            .and_then(|m| m.get(k))
            .filter(|m| m.config == ae_cfg);
        let (model, max_epochs) = match start_from {
            Some(m) => (m.clone(), cfg.training.epochs),
            None => (Autoencoder::new(ae_cfg.clone(), &mut rng), cfg.training.first_epochs),
        };
        let member = Member { model, max_epochs };
        let Some(fitted) = train_member(&win, cfg, member, &mut rng, &mut report, should_stop) else {
            return TrainOutcome::Diverged(report);
        };
        report.train_loss += fitted.train_loss / n_members as f64;
        report.val_loss += fitted.val_loss / n_members as f64;
        // Streams hold their members in four bits: calibrate what will score.
        let mut model = fitted.model;
        model.round_to_nibbles();
        members.push(model);
        if report.budget_exhausted {
            break;
        }
    }

    let (errors, calibration) = calibrate(&win, cfg, &members);
    // The change model trains on the same normal readings, with its own seed, when
    // it has two measured features to compare.
    let changes = (job.measured() > 1)
        .then(|| {
            super::changes::train(
                &job.readings,
                &job.normal,
                cfg.model.hidden,
                job.seed ^ 0x6368_616e_6765,
                should_stop,
            )
        })
        .flatten()
        .map(Box::new);
    TrainOutcome::Trained(TrainedModel {
        version: job.version,
        members,
        normaliser: win.normaliser,
        errors,
        objective: cfg.model.objective,
        calibration,
        report,
        changes,
    })
}

/// The model's error statistics and the sequence that seeds the state's limits:
/// the event path's scale from every clean window (held-out ones alone may miss
/// rare but normal shapes, e.g. a daily transition), each feature's residual
/// scale and the calibration sequence from the held-out windows only.
fn calibrate(win: &Windows, cfg: &DetectorConfig, members: &[Autoencoder<f32>]) -> (ErrorStats, Vec<Vec<f64>>) {
    let all: Vec<usize> = {
        let mut a = win.train.clone();
        a.extend(win.held_out.iter().copied());
        a.sort_unstable();
        a.dedup();
        a
    };
    let (errs, _) = ensemble_errors(win, cfg, members, &all);
    let logs: Vec<f64> = errs.iter().map(|e| (e + ERROR_EPS).ln()).collect();
    let mean = logs.iter().sum::<f64>() / logs.len() as f64;
    let std = (logs.iter().map(|l| (l - mean) * (l - mean)).sum::<f64>() / logs.len() as f64).sqrt();
    // The state's scale: held-out residuals only.
    let (_, resid) = ensemble_errors(win, cfg, members, &win.held_out);
    let feature_rms: Vec<f64> = (0..win.d)
        .map(|j| (resid.iter().map(|r| r[j] * r[j]).sum::<f64>() / resid.len() as f64).sqrt())
        .zip(&win.resolution)
        .map(|(rms, &floor)| rms.max(floor))
        .collect();
    let errors = ErrorStats {
        log_mean: mean,
        log_std: std.max(0.25),
        mean: errs.iter().sum::<f64>() / errs.len() as f64,
        feature_rms,
    };
    // Signed, x − x̂ (as the live residuals): the drift statistic needs the sign.
    let calibration = resid
        .iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(j, v)| -v / errors.feature_scale(j))
                .collect()
        })
        .collect();
    (errors, calibration)
}
