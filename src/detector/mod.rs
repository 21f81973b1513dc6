//! One stream's detector: synchronous and clock-free. Timestamps arrive with the
//! readings; training is a pure function ([`train::train`]) the caller runs when
//! [`Detector::training_due`] says so — inline in replay, on a background pool in the
//! service — and installs with [`Detector::install`], swapping the model in whole.
//!
//! Per reading, two judgements:
//! ```text
//! state   every component's surprise (windowed-Gaussian level, AR residual,
//!         seasonal residual; with a model, each feature's residual and their
//!         joint rms, in held-out residual sds, and on a multivariate stream the
//!         change model's residual, changes.rs) against limits learnt from
//!         normal readings only (state.rs)         → score ∈ [0, 1], 0.5 at the limit
//!         anomaly = score ≥ alert.threshold: true for as long as the fault lasts
//!         incidents open on the state and resolve after `resolve_after` normal
//!         readings; readings in an incident are never learnt (baselines, limits,
//!         training buffer, likelihood) until accepted
//! event   the surprise max(baselines, model √(error / mean training error))
//!         → raw = 1 − exp(−surprise / raw_scale) → Numenta-style anomaly
//!         likelihood (likelihood.rs) → event_score ∈ [0, 1], 1.0 when a value
//!         leaves the range seen so far: how new this reading is, the onset signal
//!         NAB rewards
//! ```

pub mod anchored;
pub mod baseline;
mod buffer;
pub mod cadence;
pub mod changes;
pub mod config;
pub mod context;
pub mod discrete;
mod fit;
mod gaps;
mod incident;
pub mod likelihood;
pub mod normaliser;
pub mod packed;
mod pipeline;
pub mod pruning;
pub mod recent;
mod retrain;
mod snapshot;
pub mod state;
mod tails;
pub mod train;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

pub use config::{ConfigError, DetectorConfig, DetectorKind, Objective};
pub use context::FeatureRef;
pub use train::{JobKind, TrainJob, TrainOutcome, TrainReport, TrainedModel};

use anchored::Anchored;
use baseline::{OnlineAr, Seasonal, StateBaselines, WindowedGaussian};
use cadence::Cadence;
pub use incident::SHORT_INCIDENT;
use incident::{Recurring, Stretch};
use likelihood::Likelihood;
use pipeline::Mode;
pub use snapshot::{DetectorSnapshot, DetectorState};
pub use state::{Incident, IncidentEvent, Resolution};
use state::{Judgement, StateCalibration};
use train::{ErrorStats, Normaliser};

use crate::nn::NibbleScorer;
use crate::timestamp::Micros;

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

/// Why a reading in an anomalous state raised no `opened` event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Suppressed {
    /// An incident is already open; this reading belongs to it.
    IncidentOpen,
    /// The state has not yet lasted `alert.min_duration` readings.
    MinDuration,
    /// The anomalous stretch began at the same phase of the stream's period as
    /// each of the last two, which both ended by themselves: a recurring pattern
    /// (a square wave's low half, a nightly batch job), not a new fault. Its
    /// readings are still not learnt.
    Recurring,
}

impl Suppressed {
    /// Snake-case name, as the API reports it.
    pub fn name(self) -> &'static str {
        match self {
            Suppressed::IncidentOpen => "incident_open",
            Suppressed::MinDuration => "min_duration",
            Suppressed::Recurring => "recurring",
        }
    }
}

/// The outcome for one reading.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The reading's timestamp.
    pub timestamp: Micros,
    /// Anomaly score in [0, 1] against the stream's learnt normal behaviour: 0.5 at
    /// its calibrated limit, 0.9 at three times it, 0.99 at ten times.
    pub score: f64,
    /// The anomaly state: this reading is abnormal (score ≥ `alert.threshold`).
    pub anomaly: bool,
    /// How new this reading is against the recent past (anomaly likelihood, 1.0 when
    /// it leaves the range seen so far): high at the onset of a change, not during.
    pub event_score: f64,
    /// The uncalibrated surprise: the model's window error (normalised units) in the
    /// model phase, the largest baseline z-score otherwise.
    pub raw_error: f64,
    /// What the detector expected for this reading, per feature.
    pub expected: Vec<f64>,
    /// Each feature's share of the surprise (sums to 1 when anything is surprising).
    pub contributions: Vec<f64>,
    /// Version of the model that scored (0: none yet).
    pub model_version: u64,
    /// Which part scored; `Warmup` while nothing is judged yet (then `score` is
    /// 0 and means "not judged", never "normal").
    pub phase: Phase,
    /// Normal readings still needed, after this one, before the stream judges (0
    /// once it does, and for the last reading of the warm-up).
    pub readings_needed: u64,
    /// The value left the range seen so far.
    pub out_of_range: bool,
    /// The incident open at this reading (or resolved by it), if any.
    pub incident: Option<u64>,
    /// An incident opened or resolved at this reading.
    pub event: Option<IncidentEvent>,
    /// Why an anomalous reading opened no incident.
    pub suppressed: Option<Suppressed>,
    /// Which statistic decided the score: `level`, `ar`, `seasonal`, `model` or
    /// `joint`, with `smoothed` when its sustained (EWMA) form did.
    pub cause: Option<String>,
}

impl Verdict {
    /// The score, or `None` while the stream was warming up (not judged).
    pub fn judged_score(&self) -> Option<f64> {
        (self.phase != Phase::Warmup).then_some(self.score)
    }

    /// Normal readings still needed, while warming up.
    pub fn warming_up(&self) -> Option<u64> {
        (self.phase == Phase::Warmup).then_some(self.readings_needed)
    }
}

/// What [`Detector::accept`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct Accepted {
    /// Buffered readings that had not been learnt and now were.
    pub readings: usize,
    /// The incident this resolved, if one was open.
    pub event: Option<IncidentEvent>,
}

/// Most recent readings a period is searched in (the search is O(n²)).
pub const PERIOD_SEARCH: usize = 2048;

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
    /// More values than any stream takes.
    #[error("reading has {got} values, at most {MAX_FEATURES} are allowed")]
    TooWide {
        /// Values sent.
        got: usize,
    },
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
    /// The stream's `context` does not fit its first reading's width.
    #[error("the stream's config does not fit a reading of {got} values: {why}")]
    ContextDoesNotFit {
        /// Values sent.
        got: usize,
        /// Why not (the config's check).
        why: String,
    },
}

/// [`check_reading`] for a stream of `config`, and on a new stream's first
/// reading (`width` `None`) its context against the reading: it names only
/// values the reading has, and not all of them.
pub fn check_stream_reading(
    config: &DetectorConfig,
    width: Option<usize>,
    last: Option<Micros>,
    timestamp: Micros,
    values: &[f64],
) -> Result<(), ReadingError> {
    check_reading(width, last, timestamp, values)?;
    if width.is_none() {
        let got = values.len();
        config
            .context_fits(Some(got))
            .map_err(|e| ReadingError::ContextDoesNotFit { got, why: e.0 })?;
    }
    Ok(())
}

/// Most values in one reading (the bound of `n_features`): per-feature state is
/// allocated for each, so a stream's first reading cannot ask for unbounded memory.
pub const MAX_FEATURES: usize = 256;

/// Largest magnitude the detector's state takes in: values beyond are clamped for
/// scoring and learning (the reading itself is kept as sent), so sums of squares over
/// any window stay finite whatever finite value arrives.
pub const MAX_MAGNITUDE: f64 = 1e150;

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
    if values.len() > MAX_FEATURES {
        return Err(ReadingError::TooWide { got: values.len() });
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
    /// Compiled ensemble members, their weights in four bits (trained models
    /// are rounded before calibration, so these score exactly what was calibrated).
    pub scorers: Vec<NibbleScorer>,
    /// Normalisation the members were trained with.
    pub normaliser: Normaliser,
    /// Held-out error distribution.
    pub errors: ErrorStats,
    /// What the members were trained for at the newest step (scoring hides the
    /// newest reading from a forecasting model as training did).
    pub objective: config::Objective,
    /// Readings seen when the training data was taken.
    pub trained_at_reading: u64,
    /// Timestamp of the last reading in its training data.
    pub trained_at: Micros,
    /// How training went.
    pub report: TrainReport,
    /// The change model (multivariate streams; boxed: a univariate stream pays
    /// one pointer for it).
    pub changes: Option<Box<changes::ChangeModel>>,
}

/// Distinct configs [`shared`] keeps.
const SHARED_CONFIGS: usize = 16;

/// `config` as an `Arc` shared with every detector whose config equals it (of
/// the last [`SHARED_CONFIGS`] distinct ones): most streams run the same
/// config, and a copy each cost a stream 464 bytes.
fn shared(config: DetectorConfig) -> Arc<DetectorConfig> {
    static SHARED: Mutex<Vec<Arc<DetectorConfig>>> = Mutex::new(Vec::new());
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    let c = match shared.iter().position(|c| **c == config) {
        Some(i) => shared.remove(i),
        None => Arc::new(config),
    };
    if shared.len() == SHARED_CONFIGS {
        shared.remove(0);
    }
    shared.push(c.clone());
    c
}

/// One stream's detector state.
#[derive(Clone, Debug)]
pub struct Detector {
    /// Shared with the other streams of the same config ([`shared`]).
    config: Arc<DetectorConfig>,
    n_features: Option<usize>,
    seen: u64,
    last_ts: Option<Micros>,
    /// The most recent readings, flattened `[n][d]`, oldest first: the current window
    /// and the training buffer.
    history: Anchored,
    /// Buffered readings that were not learnt (reading numbers, ascending; empty
    /// while the stream is normal): training skips windows that hold one, and
    /// `accept` learns them.
    unlearnt: VecDeque<u64>,
    /// Buffered rows that are not readings as they came (ascending): rows filled
    /// in for a gap, and the last row before a gap too long to fill. No training
    /// window holds one; `accept` does not learn them.
    filled: VecDeque<u64>,
    gaussians: Vec<WindowedGaussian>,
    ars: Vec<OnlineAr>,
    seasonals: Vec<Seasonal>,
    /// Per feature: the state's baselines, learnt from normal readings only (the
    /// three above serve the event path and learn every reading).
    state_baselines: Vec<StateBaselines>,
    /// Per-feature (min, max) seen so far.
    range: Vec<(f64, f64)>,
    likelihood: Likelihood,
    /// The model's own likelihood when `combine = "separate"` (boxed, and made
    /// at its first use: most streams never have one).
    model_likelihood: Option<Box<Likelihood>>,
    model: Option<ActiveModel>,
    /// Limits of the state's statistics, learnt from normal readings.
    state: StateCalibration,
    /// The open incident (boxed: most streams have none).
    incident: Option<Box<Incident>>,
    /// The statistics of the current anomalous stretch (at most `SHORT_INCIDENT`):
    /// a short incident that resolves by itself teaches them to the limits, so a
    /// kind of blip the stream shows again and again stops opening incidents (the
    /// baselines and the model still never learn it).
    stretch: Vec<Judgement>,
    /// Incidents opened so far (the next id is one more).
    incidents: u64,
    /// The last anomalous stretches (at most `MAX_STRETCHES`, oldest first).
    stretches: VecDeque<Stretch>,
    /// The recent largest ratios and the open excursion's bar (`pruning.rs`).
    pruning: pruning::Pruning,
    /// Per feature: the distinct values it has shown, for `context_auto`.
    levels: Vec<context::Levels>,
    /// Per feature: its values and runs, while it is discrete (`discrete.rs`).
    runs: Vec<discrete::Runs>,
    /// The recurring anomalous stretch that is open (no incident opens for it).
    recurring: Option<Recurring>,
    /// The open incident had a strong reading (one decade down its statistic's tail).
    incident_strong: bool,
    /// Consecutive anomalous readings (for `alert.min_duration`).
    anomalous_run: u64,
    /// The sampling step, to see gaps.
    cadence: Cadence,
    /// Rows filled in for readings a gap missed (counted in `seen`).
    imputed: u64,
    /// The first reading after the last gap too long to fill (0: none): rows
    /// before it are no season's past and no model window's.
    fresh_from: u64,
    /// Readings seen / timestamp when the last training job was taken.
    last_job: Option<(u64, Micros)>,
    /// The model version a job completing its ensemble was taken for (one try a
    /// model; not in snapshots: a restored stream may try once more).
    completion_for: Option<u64>,
    /// Readings seen / timestamp when the job in flight was taken (its model's
    /// `trained_at`).
    job_taken_at: Option<(u64, Micros)>,
    job_in_flight: bool,
    /// A job is wanted now (after history or an accepted change), whatever the policy.
    retrain_requested: bool,
    /// A change was accepted and the model, which knows only the old normal, is not
    /// yet retrained: its statistics do not judge the state until it is.
    model_stale: bool,
    /// Exponential average of the model's surprise, for drift-triggered retraining.
    drift: f64,
    /// Drift jobs in a row (each asks the next to wait twice as long).
    drift_streak: u32,
    /// Failed (diverged) jobs so far.
    failed_jobs: u64,
    /// Per-feature running mean square of the model's last-step residual (normalised
    /// units), for `error_scale = "running"`.
    resid_var: Vec<f64>,
    /// The newest readings and their verdicts, for charts.
    recent: recent::Recent,
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
            model_likelihood: None,
            config: shared(config),
            seen: 0,
            last_ts: None,
            history: Anchored::new(1),
            unlearnt: VecDeque::new(),
            filled: VecDeque::new(),
            gaussians: Vec::new(),
            ars: Vec::new(),
            seasonals: Vec::new(),
            state_baselines: Vec::new(),
            range: Vec::new(),
            model: None,
            state: StateCalibration::default(),
            incident: None,
            stretch: Vec::new(),
            incidents: 0,
            anomalous_run: 0,
            last_job: None,
            completion_for: None,
            job_taken_at: None,
            job_in_flight: false,
            retrain_requested: false,
            model_stale: false,
            stretches: VecDeque::new(),
            pruning: pruning::Pruning::default(),
            levels: Vec::new(),
            runs: Vec::new(),
            recurring: None,
            incident_strong: false,
            cadence: Cadence::default(),
            imputed: 0,
            fresh_from: 0,
            drift: 0.0,
            drift_streak: 0,
            failed_jobs: 0,
            resid_var: Vec::new(),
            recent: recent::Recent::default(),
        })
    }

    /// The config.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// The model's own likelihood (`combine = "separate"`), made at its first use.
    fn model_likelihood(&mut self) -> &mut Likelihood {
        let config = &self.config.likelihood;
        self.model_likelihood
            .get_or_insert_with(|| Box::new(Likelihood::new(config.clone())))
    }

    /// Features per reading (once known).
    pub fn n_features(&self) -> Option<usize> {
        self.n_features
    }

    /// Readings scored so far (not counting the rows filled in for gaps).
    pub fn readings_seen(&self) -> u64 {
        self.seen - self.imputed.min(self.seen)
    }

    /// Timestamp of the last reading.
    pub fn last_timestamp(&self) -> Option<Micros> {
        self.last_ts
    }

    /// The model scoring now, if any.
    pub fn model(&self) -> Option<&ActiveModel> {
        self.model.as_ref()
    }

    /// The open incident, if any.
    pub fn incident(&self) -> Option<&Incident> {
        self.incident.as_deref()
    }

    /// Training jobs that diverged and were discarded.
    pub fn failed_jobs(&self) -> u64 {
        self.failed_jobs
    }

    /// Which part scores the stream now: the phase of the newest reading's verdict,
    /// or, after a model was installed or restored since, of the next one;
    /// `Warmup` while no statistic has a limit yet ([`Detector::readings_needed`]).
    pub fn phase(&self) -> Phase {
        if self.readings_needed() > 0 {
            Phase::Warmup
        } else {
            self.scoring_phase()
        }
    }

    /// Normal readings the stream still needs before it judges (0 once it does).
    pub fn readings_needed(&self) -> u64 {
        u64::from(self.state.readings_needed(self.config.alert.min_normal as u32))
    }

    /// Which part computes the surprise: the model once it scores, the baselines
    /// before, nothing for the first two readings.
    pub(super) fn scoring_phase(&self) -> Phase {
        let d = self.n_features.unwrap_or(1).max(1);
        let window_ready =
            self.history.len() >= self.config.window * d && self.fresh_rows() >= self.config.window as u64;
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
        check_stream_reading(&self.config, self.n_features, self.last_ts, timestamp, values)
    }

    /// Scores one reading and, when it is normal, learns from it.
    ///
    /// # Errors
    /// If the reading is invalid (see [`ReadingError`]); the detector is then unchanged.
    pub fn update(&mut self, timestamp: Micros, values: &[f64]) -> Result<Verdict, ReadingError> {
        self.take(timestamp, values, Mode::Live)
    }

    /// Learns one reading known to be normal (history taught before live scoring):
    /// it is scored, never anomalous, never opens an incident, and always learnt.
    ///
    /// # Errors
    /// As [`Detector::update`].
    pub fn update_history(&mut self, timestamp: Micros, values: &[f64]) -> Result<Verdict, ReadingError> {
        self.take(timestamp, values, Mode::History)
    }

    /// The newest readings and their verdicts (for charts).
    pub fn recent(&self) -> &recent::Recent {
        &self.recent
    }

    /// The least residual scale feature `j`'s resolution allows over the range it
    /// has shown ([`baseline::SensorResolution::floor`]).
    fn resolution_floor(&self, j: usize) -> f64 {
        let (lo, hi) = self.range.get(j).copied().unwrap_or((0.0, 0.0));
        self.state_baselines.get(j).map_or(0.0, |b| b.resolution.floor(hi - lo))
    }

    /// [`Detector::resolution_floor`] of every feature.
    fn resolution_floors(&self) -> Vec<f64> {
        (0..self.state_baselines.len())
            .map(|j| self.resolution_floor(j))
            .collect()
    }

    /// Asks for a training job at the next chance (after history was taught).
    pub fn request_retrain(&mut self) {
        self.retrain_requested = true;
    }
}
