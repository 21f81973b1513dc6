//! One stream's detector: synchronous and clock-free. Timestamps arrive with the
//! readings; training is a pure function ([`train::train`]) the caller runs when
//! [`Detector::training_due`] says so — inline in replay, on a background pool in the
//! service — and installs with [`Detector::install`], swapping the model in whole.
//!
//! Per reading:
//! ```text
//! baselines max(windowed-Gaussian z, AR(p) residual z, seasonal residual z) over
//!           features; the seasonal z is 0 until the stream shows a period
//! surprise  model phase:    max(√(error / mean training error) of the newest step,
//!                           ensemble-averaged, baselines)   (`model.error_scale`,
//!                           `model.combine` choose others)
//!           baseline phase: baselines
//! raw       1 − exp(−max(surprise, 0) / raw_scale)                       ∈ [0, 1)
//! score     anomaly likelihood of raw (see likelihood.rs)                ∈ [0, 1]
//!           1.0 when a value leaves the range seen so far (± tolerance), after
//!           `range_after` readings
//! alert     score ≥ threshold, at most one per cooldown
//! ```

pub mod baseline;
pub mod config;
pub mod likelihood;
pub mod train;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

pub use config::{ConfigError, DetectorConfig, DetectorKind};
pub use train::{TrainJob, TrainOutcome, TrainReport, TrainedModel};

use baseline::{OnlineAr, Seasonal, WindowedGaussian};
use likelihood::Likelihood;
use train::{ERROR_EPS, ErrorStats, Normaliser};

use crate::nn::{Autoencoder, ScoreWorkspace, Scorer};
use crate::timestamp::Micros;

thread_local! {
    /// Scratch space of the scorers, one per thread rather than per stream (streams
    /// are many, scoring threads few).
    static WORKSPACE: std::cell::RefCell<ScoreWorkspace> = std::cell::RefCell::new(ScoreWorkspace::default());
}

/// Which part of the detector produced a score.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Too few readings to score; the score is 0.
    Warmup,
    /// The classical baselines are scoring (no model yet, or the stream uses one).
    Baseline,
    /// The recurrent autoencoder is scoring.
    Model,
}

impl Phase {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Warmup => "warmup",
            Phase::Baseline => "baseline",
            Phase::Model => "model",
        }
    }
}

/// The outcome for one reading.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The reading's timestamp.
    pub timestamp: Micros,
    /// Calibrated anomaly score in [0, 1].
    pub score: f64,
    /// Whether this reading raised an alert.
    pub anomaly: bool,
    /// The uncalibrated surprise: the model's window error (normalised units) in the
    /// model phase, the largest baseline z-score otherwise.
    pub raw_error: f64,
    /// What the detector expected for this reading, per feature.
    pub expected: Vec<f64>,
    /// Each feature's share of the surprise (sums to 1 when anything is surprising).
    pub contributions: Vec<f64>,
    /// Version of the model that scored (0: none yet).
    pub model_version: u64,
    /// Which part scored.
    pub phase: Phase,
    /// The value left the range seen so far.
    pub out_of_range: bool,
}

/// A reading the detector cannot take; the detector is unchanged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReadingError {
    /// Wrong number of values.
    #[error("reading has {got} values, stream expects {expected}")]
    WrongWidth {
        /// Values sent.
        got: usize,
        /// Values the stream takes.
        expected: usize,
    },
    /// No values at all.
    #[error("reading has no values")]
    Empty,
    /// NaN or infinite.
    #[error("value {index} is not a finite number")]
    NotFinite {
        /// Position of the value.
        index: usize,
    },
    /// Earlier than the stream's last reading.
    #[error("timestamp {got} is older than the stream's last reading ({last})")]
    OutOfOrder {
        /// Timestamp sent (µs).
        got: Micros,
        /// The stream's last timestamp (µs).
        last: Micros,
    },
}

/// Checks a reading against a stream that takes `width` values (any, when `None`)
/// and last saw `last`: values present, finite, of the right count, and not older.
/// Equal timestamps are accepted.
pub fn check_reading(
    width: Option<usize>,
    last: Option<Micros>,
    timestamp: Micros,
    values: &[f64],
) -> Result<(), ReadingError> {
    if values.is_empty() {
        return Err(ReadingError::Empty);
    }
    if let Some(d) = width
        && values.len() != d
    {
        return Err(ReadingError::WrongWidth {
            got: values.len(),
            expected: d,
        });
    }
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        return Err(ReadingError::NotFinite { index });
    }
    if let Some(last) = last
        && timestamp < last
    {
        return Err(ReadingError::OutOfOrder { got: timestamp, last });
    }
    Ok(())
}

/// The model currently scoring a stream.
#[derive(Clone, Debug)]
pub struct ActiveModel {
    /// Version (1 for the first model).
    pub version: u64,
    /// Compiled ensemble members.
    pub scorers: Vec<Scorer>,
    /// Normalisation the members were trained with.
    pub normaliser: Normaliser,
    /// Held-out error distribution.
    pub errors: ErrorStats,
    /// Readings seen when the training data was taken.
    pub trained_at_reading: u64,
    /// Timestamp of the last reading in its training data.
    pub trained_at: Micros,
    /// How training went.
    pub report: TrainReport,
}

/// One stream's detector state.
#[derive(Clone, Debug)]
pub struct Detector {
    config: DetectorConfig,
    n_features: Option<usize>,
    seen: u64,
    last_ts: Option<Micros>,
    /// The most recent readings, flattened `[n][d]`, oldest first: the current window
    /// and the training buffer.
    history: VecDeque<f64>,
    gaussians: Vec<WindowedGaussian>,
    ars: Vec<OnlineAr>,
    seasonals: Vec<Seasonal>,
    /// Per-feature (min, max) seen so far.
    range: Vec<(f64, f64)>,
    likelihood: Likelihood,
    /// The model's own likelihood when `combine = "separate"`.
    model_likelihood: Likelihood,
    model: Option<ActiveModel>,
    last_alert: Option<u64>,
    /// Readings seen / timestamp when the last training job was taken.
    last_job: Option<(u64, Micros)>,
    job_in_flight: bool,
    /// Exponential average of the model's surprise, for drift-triggered retraining.
    drift: f64,
    /// Failed (diverged) jobs so far.
    failed_jobs: u64,
    /// Per-feature running mean square of the model's last-step residual (normalised
    /// units), for `error_scale = "running"`.
    resid_var: Vec<f64>,
}

impl Detector {
    /// A detector for a new stream.
    ///
    /// # Errors
    /// If the config is invalid.
    pub fn new(config: DetectorConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Detector {
            n_features: config.n_features,
            likelihood: Likelihood::new(config.likelihood.clone()),
            model_likelihood: Likelihood::new(config.likelihood.clone()),
            config,
            seen: 0,
            last_ts: None,
            history: VecDeque::new(),
            gaussians: Vec::new(),
            ars: Vec::new(),
            seasonals: Vec::new(),
            range: Vec::new(),
            model: None,
            last_alert: None,
            last_job: None,
            job_in_flight: false,
            drift: 0.0,
            failed_jobs: 0,
            resid_var: Vec::new(),
        })
    }

    /// The config.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Features per reading (once known).
    pub fn n_features(&self) -> Option<usize> {
        self.n_features
    }

    /// Readings scored so far.
    pub fn readings_seen(&self) -> u64 {
        self.seen
    }

    /// Timestamp of the last reading.
    pub fn last_timestamp(&self) -> Option<Micros> {
        self.last_ts
    }

    /// The model scoring now, if any.
    pub fn model(&self) -> Option<&ActiveModel> {
        self.model.as_ref()
    }

    /// Training jobs that diverged and were discarded.
    pub fn failed_jobs(&self) -> u64 {
        self.failed_jobs
    }

    /// Which part scores the stream now: the phase of the newest reading's verdict,
    /// or, after a model was installed or restored since, of the next one.
    pub fn phase(&self) -> Phase {
        let d = self.n_features.unwrap_or(1).max(1);
        let window_ready = self.history.len() >= self.config.window * d;
        if self.model.is_some() && window_ready && self.config.detector == DetectorKind::Autoencoder {
            Phase::Model
        } else if self.seen <= 2 {
            Phase::Warmup
        } else {
            Phase::Baseline
        }
    }

    /// Checks a reading without changing anything.
    pub fn check(&self, timestamp: Micros, values: &[f64]) -> Result<(), ReadingError> {
        check_reading(self.n_features, self.last_ts, timestamp, values)
    }

    /// Scores one reading and learns from it.
    ///
    /// # Errors
    /// If the reading is invalid (see [`ReadingError`]); the detector is then unchanged.
    pub fn update(&mut self, timestamp: Micros, values: &[f64]) -> Result<Verdict, ReadingError> {
        self.check(timestamp, values)?;
        let d = values.len();
        if self.n_features.is_none() || self.gaussians.is_empty() {
            self.n_features = Some(d);
            let b = &self.config.baseline;
            self.gaussians = (0..d).map(|_| WindowedGaussian::new(b.gaussian_window)).collect();
            self.ars = (0..d).map(|_| OnlineAr::new(b.ar_order, b.ar_forgetting)).collect();
            self.seasonals = (0..d).map(|_| Seasonal::new(b.gaussian_window)).collect();
            self.range = values.iter().map(|&v| (v, v)).collect();
        }
        self.seen += 1;
        self.last_ts = Some(timestamp);
        let cap = self.config.training.buffer.max(self.config.window) * d;
        while self.history.len() + d > cap {
            self.history.pop_front();
        }
        self.history.extend(values.iter().copied());

        // Baselines (always updated, so they are warm whenever they are needed).
        let b = &self.config.baseline;
        if b.seasonal && self.seen.is_multiple_of(b.seasonal_every as u64) {
            self.estimate_periods();
        }
        let (mut zg_max, mut za_max) = (0.0f64, 0.0f64);
        let mut base_z = vec![0.0; d];
        let mut base_expected = vec![0.0; d];
        let n_rows = self.history.len() / d;
        for j in 0..d {
            let (zg, mean) = self.gaussians[j].update(values[j]);
            let (za, pred) = self.ars[j].update(values[j]);
            // The same phase in earlier periods (validate() bounds their number).
            let mut past = [0.0; baseline::MAX_SEASONAL_PERIODS];
            let mut n_past = 0;
            if let Some(p) = self.seasonals[j].period() {
                for k in (1..=self.config.baseline.seasonal_periods).take_while(|k| k * p < n_rows) {
                    past[n_past] = self.history[(n_rows - 1 - k * p) * d + j];
                    n_past += 1;
                }
            }
            let (lo, hi) = self.range[j];
            let (zs, seasonal_expected) = self.seasonals[j].update(values[j], &mut past[..n_past], 5e-3 * (hi - lo));
            zg_max = zg_max.max(zg);
            za_max = za_max.max(za);
            base_z[j] = match self.config.detector {
                DetectorKind::Gaussian => zg,
                DetectorKind::Ar => za,
                DetectorKind::Seasonal => zs,
                DetectorKind::Autoencoder => zg.max(za).max(zs),
            };
            base_expected[j] = match self.config.detector {
                DetectorKind::Gaussian => mean,
                DetectorKind::Seasonal => seasonal_expected,
                _ => pred,
            };
        }

        // Range rule: beyond everything seen so far, widened by a fraction of the range.
        let mut out_of_range = false;
        for (j, &v) in values.iter().enumerate() {
            let (lo, hi) = self.range[j];
            if let Some(tol) = self.config.range_tolerance
                && hi > lo
                && self.seen > self.config.range_after.max(self.config.window) as u64
            {
                let margin = (hi - lo) * tol;
                out_of_range |= v > hi + margin || v < lo - margin;
            }
            self.range[j] = (lo.min(v), hi.max(v));
        }

        let base_max = base_z.iter().cloned().fold(0.0, f64::max);
        let raw_scale = self.config.raw_scale;
        let raw_of = |z: f64| 1.0 - (-z.max(0.0) / raw_scale).exp();
        let separate = self.config.model.combine == "separate";
        let (phase, surprise, raw_error, expected, contributions, model_score) = match self.phase() {
            Phase::Model => {
                let (z, err, expected, contributions) = self.model_surprise();
                self.drift = 0.98 * self.drift + 0.02 * z;
                if separate {
                    let (ms, _) = self.model_likelihood.update(raw_of(z));
                    (Phase::Model, base_max, err, expected, contributions, ms)
                } else if self.config.model.combine == "mean" {
                    // Mean of the three raw scores, mapped back to a surprise.
                    let raw = (raw_of(z) + raw_of(zg_max) + raw_of(za_max)) / 3.0;
                    let z = -raw_scale * (1.0 - raw).ln();
                    (Phase::Model, z, err, expected, contributions, 0.0)
                } else {
                    let z = if self.config.model.combine == "max" {
                        z.max(base_max)
                    } else {
                        z
                    };
                    (Phase::Model, z, err, expected, contributions, 0.0)
                }
            }
            Phase::Warmup => (Phase::Warmup, 0.0, 0.0, values.to_vec(), vec![0.0; d], 0.0),
            Phase::Baseline => {
                let total: f64 = base_z.iter().sum();
                let contributions = base_z
                    .iter()
                    .map(|v| if total > 0.0 { v / total } else { 0.0 })
                    .collect();
                (Phase::Baseline, base_max, base_max, base_expected, contributions, 0.0)
            }
        };
        let (score, _) = self.likelihood.update(raw_of(surprise));
        let mut score = score.max(model_score);
        if out_of_range {
            score = 1.0;
        }
        let cooled = self
            .last_alert
            .is_none_or(|at| self.seen - at > self.config.alert.cooldown as u64);
        let anomaly = phase != Phase::Warmup && score >= self.config.alert.threshold && cooled;
        if anomaly {
            self.last_alert = Some(self.seen);
        }
        Ok(Verdict {
            timestamp,
            score,
            anomaly,
            raw_error,
            expected,
            contributions,
            model_version: self.model.as_ref().map_or(0, |m| m.version),
            phase,
            out_of_range,
        })
    }

    /// Reconstructs the window ending at the newest reading with every member.
    /// Returns (z, mean squared error, expected last values, per-feature shares).
    fn model_surprise(&mut self) -> (f64, f64, Vec<f64>, Vec<f64>) {
        let model = self.model.as_ref().expect("model present");
        let d = self.n_features.unwrap_or(1);
        let w = self.config.window;
        let start = self.history.len() - w * d;
        let window: Vec<f32> = self
            .history
            .range(start..)
            .enumerate()
            .map(|(i, &x)| model.normaliser.apply(i % d, x))
            .collect();
        let steps = train::scored_steps(&self.config);
        let from = (w - steps) * d;
        let mut sq = vec![0.0f64; d];
        let mut last = vec![0.0f64; d];
        WORKSPACE.with_borrow_mut(|ws| {
            for scorer in &model.scorers {
                let y = scorer.reconstruct(&window, ws);
                for (i, (&a, &b)) in y[from..].iter().zip(&window[from..]).enumerate() {
                    sq[i % d] += ((a - b) as f64).powi(2);
                }
                for j in 0..d {
                    last[j] += y[(w - 1) * d + j] as f64;
                }
            }
        });
        let m = model.scorers.len() as f64;
        let err = sq.iter().sum::<f64>() / (m * (steps * d) as f64);
        let total: f64 = sq.iter().sum();
        let contributions = sq.iter().map(|s| if total > 0.0 { s / total } else { 0.0 }).collect();
        let expected: Vec<f64> = last
            .iter()
            .enumerate()
            .map(|(j, &v)| model.normaliser.invert(j, (v / m) as f32))
            .collect();
        if self.config.model.error_scale == "running" {
            // |x − x̂| of the newest reading against a running scale of such residuals.
            let typical = (model.errors.log_mean).exp();
            if self.resid_var.len() != d {
                self.resid_var = vec![typical; d];
            }
            let mut z: f64 = 0.0;
            for j in 0..d {
                let r = (window[(w - 1) * d + j] as f64) - last[j] / m;
                let sd = self.resid_var[j].sqrt().max(1e-3);
                z = z.max(r.abs() / sd);
                self.resid_var[j] = 0.98 * self.resid_var[j] + 0.02 * r * r;
            }
            return (z, err, expected, contributions);
        }
        if self.config.model.error_scale == "rms" {
            // Root of the error over the training windows' mean error: for one scored
            // step, |x − x̂| in residual standard deviations, like the baselines' z.
            let z = (err / (model.errors.mean + ERROR_EPS)).sqrt();
            return (z, err, expected, contributions);
        }
        (model.errors.z(err), err, expected, contributions)
    }

    /// Re-estimates each feature's period from the buffered readings.
    fn estimate_periods(&mut self) {
        let d = self.n_features.unwrap_or(1).max(1);
        let min_acf = self.config.baseline.seasonal_min_acf;
        for j in 0..d {
            let column: Vec<f64> = self.history.iter().skip(j).step_by(d).copied().collect();
            let period = baseline::find_period(&column, 4, min_acf).map(|(p, _)| p);
            self.seasonals[j].set_period(period);
        }
    }

    /// Whether the retrain policy asks for a job now (and none is in flight).
    pub fn training_due(&self) -> bool {
        let c = &self.config;
        if c.detector != DetectorKind::Autoencoder || self.job_in_flight {
            return false;
        }
        let n_rows = self.history.len() / self.n_features.unwrap_or(1).max(1);
        if n_rows < c.window + 1 {
            return false;
        }
        let Some((at, at_ts)) = self.last_job else {
            return self.seen >= c.retrain.first_after as u64;
        };
        let since = self.seen - at;
        let p = &c.retrain;
        (p.every_readings > 0 && since >= p.every_readings as u64)
            || (p.every_seconds > 0.0
                && self
                    .last_ts
                    .is_some_and(|t| (t - at_ts) as f64 / 1e6 >= p.every_seconds))
            || (p.on_drift && self.model.is_some() && since >= 2 * c.window as u64 && self.drift > 2.0)
    }

    /// Takes a training job from the buffered readings and marks one in flight.
    pub fn training_job(&mut self) -> TrainJob {
        let d = self.n_features.unwrap_or(1).max(1);
        let readings: Vec<Vec<f64>> = self
            .history
            .iter()
            .copied()
            .collect::<Vec<_>>()
            .chunks(d)
            .map(<[f64]>::to_vec)
            .collect();
        let version = self.model.as_ref().map_or(0, |m| m.version) + 1 + self.failed_jobs;
        self.last_job = Some((self.seen, self.last_ts.unwrap_or(0)));
        self.job_in_flight = true;
        self.drift = 0.0;
        TrainJob {
            config: self.config.clone(),
            readings,
            warm_start: self
                .model
                .as_ref()
                .map(|m| m.scorers.iter().map(|s| s.to_model()).collect()),
            version,
            seed: self
                .config
                .training
                .seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(version),
        }
    }

    /// Installs a job's outcome: a trained model is swapped in whole; a diverged job
    /// keeps the old model and is counted.
    pub fn install(&mut self, outcome: TrainOutcome) {
        self.job_in_flight = false;
        match outcome {
            TrainOutcome::Trained(m) => {
                self.resid_var.clear();
                let (at, at_ts) = self.last_job.unwrap_or((self.seen, self.last_ts.unwrap_or(0)));
                self.model = Some(ActiveModel {
                    version: m.version,
                    scorers: m.members.iter().map(|a| a.compile()).collect(),
                    normaliser: m.normaliser,
                    errors: m.errors,
                    trained_at_reading: at,
                    trained_at: at_ts,
                    report: m.report,
                });
            }
            TrainOutcome::Diverged(_) => self.failed_jobs += 1,
            TrainOutcome::NotEnoughData => {}
        }
    }

    /// Everything needed to rebuild this detector exactly: serde state plus the model
    /// weights (which `storage` writes as safetensors).
    pub fn snapshot(&self) -> DetectorSnapshot {
        let model = self.model.as_ref();
        DetectorSnapshot {
            state: DetectorState {
                config: self.config.clone(),
                n_features: self.n_features,
                seen: self.seen,
                last_ts: self.last_ts,
                history: self.history.iter().copied().collect(),
                gaussians: self.gaussians.clone(),
                ars: self.ars.clone(),
                seasonals: self.seasonals.clone(),
                range: self.range.clone(),
                likelihood: self.likelihood.clone(),
                model_likelihood: self.model_likelihood.clone(),
                last_alert: self.last_alert,
                last_job: self.last_job,
                drift: self.drift,
                failed_jobs: self.failed_jobs,
                resid_var: self.resid_var.clone(),
                model: model.map(|m| ModelMeta {
                    version: m.version,
                    normaliser: m.normaliser.clone(),
                    errors: m.errors,
                    trained_at_reading: m.trained_at_reading,
                    trained_at: m.trained_at,
                    report: m.report.clone(),
                }),
            },
            members: model
                .map(|m| m.scorers.iter().map(|s| s.to_model()).collect())
                .unwrap_or_default(),
        }
    }

    /// Rebuilds a detector from [`Detector::snapshot`]. A job that was in flight is
    /// not: the retrain policy schedules a new one.
    ///
    /// # Errors
    /// If the config is invalid or the weights do not fit it.
    pub fn restore(snapshot: DetectorSnapshot) -> Result<Self, ConfigError> {
        let s = snapshot.state;
        s.config.validate()?;
        let model = match s.model {
            Some(meta) => {
                if snapshot.members.is_empty() || snapshot.members.len() > s.config.model.ensemble {
                    return Err(ConfigError(format!(
                        "snapshot has {} model members",
                        snapshot.members.len()
                    )));
                }
                Some(ActiveModel {
                    version: meta.version,
                    scorers: snapshot.members.iter().map(|m| m.compile()).collect(),
                    normaliser: meta.normaliser,
                    errors: meta.errors,
                    trained_at_reading: meta.trained_at_reading,
                    trained_at: meta.trained_at,
                    report: meta.report,
                })
            }
            None => None,
        };
        // A snapshot from before the seasonal baseline starts it afresh.
        let seasonals = if s.seasonals.len() == s.gaussians.len() {
            s.seasonals
        } else {
            let window = s.config.baseline.gaussian_window;
            (0..s.gaussians.len()).map(|_| Seasonal::new(window)).collect()
        };
        Ok(Detector {
            config: s.config,
            n_features: s.n_features,
            seen: s.seen,
            last_ts: s.last_ts,
            history: s.history.into(),
            gaussians: s.gaussians,
            seasonals,
            ars: s.ars,
            range: s.range,
            likelihood: s.likelihood,
            model_likelihood: s.model_likelihood,
            model,
            last_alert: s.last_alert,
            last_job: s.last_job,
            job_in_flight: false,
            drift: s.drift,
            failed_jobs: s.failed_jobs,
            resid_var: s.resid_var,
        })
    }

    /// Scores a reading and, when due, trains inline before returning (replay mode:
    /// deterministic, the same input gives the same scores bit for bit).
    pub fn update_sync(&mut self, timestamp: Micros, values: &[f64]) -> Result<Verdict, ReadingError> {
        let v = self.update(timestamp, values)?;
        if self.training_due() {
            let job = self.training_job();
            let outcome = train::train(&job, &|| false);
            self.install(outcome);
        }
        Ok(v)
    }
}

/// A detector's state without its weights (see [`Detector::snapshot`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectorState {
    config: DetectorConfig,
    n_features: Option<usize>,
    seen: u64,
    last_ts: Option<Micros>,
    history: Vec<f64>,
    gaussians: Vec<WindowedGaussian>,
    ars: Vec<OnlineAr>,
    #[serde(default)]
    seasonals: Vec<Seasonal>,
    range: Vec<(f64, f64)>,
    likelihood: Likelihood,
    model_likelihood: Likelihood,
    last_alert: Option<u64>,
    last_job: Option<(u64, Micros)>,
    drift: f64,
    failed_jobs: u64,
    resid_var: Vec<f64>,
    model: Option<ModelMeta>,
}

/// The model's metadata in a snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ModelMeta {
    version: u64,
    normaliser: Normaliser,
    errors: ErrorStats,
    trained_at_reading: u64,
    trained_at: Micros,
    report: TrainReport,
}

/// A whole detector at one moment: serde state and model weights.
#[derive(Clone, Debug)]
pub struct DetectorSnapshot {
    /// Everything but the weights.
    pub state: DetectorState,
    /// Ensemble members (empty before the first model).
    pub members: Vec<Autoencoder<f32>>,
}

impl DetectorState {
    /// The same state under a new config of the same shape (alert, retrain policy,
    /// calibration settings).
    pub fn with_config(mut self, config: DetectorConfig) -> Self {
        self.config = config;
        self
    }

    /// The config inside (to rebuild weights of the right shape).
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// The feature count inside (to rebuild weights of the right shape).
    pub fn n_features(&self) -> Option<usize> {
        self.n_features
    }

    /// Whether the snapshot carries a model.
    pub fn has_model(&self) -> bool {
        self.model.is_some()
    }
}
