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

pub mod baseline;
pub mod cadence;
pub mod changes;
pub mod config;
pub mod likelihood;
pub mod packed;
pub mod state;
pub mod train;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

pub use config::{ConfigError, DetectorConfig, DetectorKind};
pub use train::{TrainJob, TrainOutcome, TrainReport, TrainedModel};

use baseline::{OnlineAr, Seasonal, StateBaselines, WindowedGaussian};
use cadence::Cadence;
use likelihood::Likelihood;
use state::{Component, Judgement, N_COMPONENTS, StateCalibration, score_of_ratio};
pub use state::{Incident, IncidentEvent, Resolution};
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
    /// Which part scored.
    pub phase: Phase,
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

/// What [`Detector::accept`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct Accepted {
    /// Buffered readings that had not been learnt and now were.
    pub readings: usize,
    /// The incident this resolved, if one was open.
    pub event: Option<IncidentEvent>,
}

/// Anomalous readings an incident may have and still teach its statistics to the
/// limits when it resolves by itself.
pub const SHORT_INCIDENT: usize = 32;

/// Earlier anomalous stretches, each begun one period after the one before, that
/// make a stretch recurring (see [`Suppressed::Recurring`]).
const RECURRENCES: usize = 2;

/// Anomalous stretches kept for [`Detector::recurs`].
const MAX_STRETCHES: usize = 8;

/// A recurring stretch whose ratio to the limit exceeds this multiple of the
/// largest the stretches it recurs reached is a fault (an incident opens).
const RECURRING_ESCALATION: f64 = 2.0;

/// One anomalous stretch: reading numbers of its first and last anomalous
/// readings, and its largest ratio to the limit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct Stretch {
    start: u64,
    end: u64,
    peak: f64,
}

/// An open recurring stretch.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct Recurring {
    /// Normal readings since its last anomalous one.
    normal_run: u64,
    /// The reading number after which it has lasted half again as long as the
    /// stretches it recurs.
    until: u64,
    /// The largest ratio those stretches reached.
    peak: f64,
}

/// A surprise (in standard deviations) as a raw score in [0, 1):
/// `1 − exp(−max(z, 0) / raw_scale)`.
fn raw_of(z: f64, raw_scale: f64) -> f64 {
    1.0 - (-z.max(0.0) / raw_scale).exp()
}

/// Most recent readings a period is searched in (the search is O(n²)).
pub const PERIOD_SEARCH: usize = 2048;

/// Normal readings the state's level needs before its z is judged.
const WARM_LEVEL: u64 = 128;

/// How a reading is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Scored live: state, incidents, and learnt only when normal.
    Live,
    /// Taught as known-normal history: learnt, never anomalous.
    History,
}

/// Per-feature scores of the baselines for one reading: the event path's (learnt
/// already) and the state's (not learnt yet).
struct BaselineScores {
    zg: Vec<f64>,
    za: Vec<f64>,
    zs: Vec<f64>,
    /// The state's level, AR and seasonal z.
    state_level: Vec<f64>,
    state_ar: Vec<f64>,
    state_seasonal: Vec<f64>,
    /// Each feature's run of repeated values over its limit.
    stuck: Vec<f64>,
    /// Seasonal expectation, when the feature has a period and history for it.
    seasonal_expected: Vec<Option<f64>>,
    /// The configured baseline's z and expectation per feature.
    base_z: Vec<f64>,
    base_expected: Vec<f64>,
}

/// `values`, each clamped to ±`MAX_MAGNITUDE` (borrowed when none needs it).
fn clamp_magnitude(values: &[f64]) -> std::borrow::Cow<'_, [f64]> {
    if values.iter().any(|v| v.abs() > MAX_MAGNITUDE) {
        values.iter().map(|v| v.clamp(-MAX_MAGNITUDE, MAX_MAGNITUDE)).collect()
    } else {
        values.into()
    }
}

/// Each value's share of their sum (all 0 when the sum is not positive).
fn shares(xs: &[f64]) -> Vec<f64> {
    let total: f64 = xs.iter().sum();
    xs.iter().map(|v| if total > 0.0 { v / total } else { 0.0 }).collect()
}

/// The model-or-baseline surprise of one reading.
struct Surprise {
    phase: Phase,
    /// For the event score.
    surprise: f64,
    raw_error: f64,
    expected: Vec<f64>,
    contributions: Vec<f64>,
    /// The model's own likelihood score (`combine = "separate"`).
    model_score: f64,
    /// Each feature's model residual in held-out residual sds (model phase).
    model_z: Option<Vec<f64>>,
    /// Each feature's change-model residual (model phase, multivariate).
    change_z: Option<Vec<f64>>,
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
    /// The change model (multivariate streams; boxed: a univariate stream pays
    /// one pointer for it).
    pub changes: Option<Box<changes::ChangeModel>>,
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
    /// The model's own likelihood when `combine = "separate"`.
    model_likelihood: Likelihood,
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
    /// The recurring anomalous stretch that is open (no incident opens for it).
    recurring: Option<Recurring>,
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
    job_in_flight: bool,
    /// A job is wanted now (after history or an accepted change), whatever the policy.
    retrain_requested: bool,
    /// A change was accepted and the model, which knows only the old normal, is not
    /// yet retrained: its statistics do not judge the state until it is.
    model_stale: bool,
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
            job_in_flight: false,
            retrain_requested: false,
            model_stale: false,
            stretches: VecDeque::new(),
            recurring: None,
            cadence: Cadence::default(),
            imputed: 0,
            fresh_from: 0,
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
    /// or, after a model was installed or restored since, of the next one.
    pub fn phase(&self) -> Phase {
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
        check_reading(self.n_features, self.last_ts, timestamp, values)
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

    fn take(&mut self, timestamp: Micros, values: &[f64], mode: Mode) -> Result<Verdict, ReadingError> {
        self.check(timestamp, values)?;
        let values = &clamp_magnitude(values)[..];
        self.fill_gap(timestamp);
        self.admit(timestamp, values);
        let base = self.score_baselines(values);
        let out_of_range = self.widen_range(values);
        let mut sur = self.surprise(&base, values);
        let judgement = self.judge(&base, &sur);
        if judgement.component == Some(state::STUCK) {
            // The stuck features are what the incident is about.
            sur.contributions = shares(&base.stuck);
        }
        if let (Some(c), Some(z)) = (judgement.component, &sur.change_z)
            && c == Component::Change as usize
        {
            // So are the features whose changes the others do not explain.
            sur.contributions = shares(&z.iter().map(|v| v * v).collect::<Vec<_>>());
        }
        let score = score_of_ratio(judgement.ratio);
        let anomalous = mode == Mode::Live && sur.phase != Phase::Warmup && score >= self.config.alert.threshold;
        let was_recurring = self.recurring.is_some();
        let (mut event, suppressed) =
            self.step_incident(timestamp, anomalous, (score, judgement.ratio), &sur.contributions);
        self.track_stretch(anomalous, was_recurring, &judgement, &event);
        let event_score = self.event_score(&sur, out_of_range);
        let learn = mode == Mode::History || (!anomalous && self.incident.is_none());
        self.learn_or_pass(learn, values, &base, &judgement);
        if mode == Mode::Live && event.is_none() {
            event = self.accept_if_lasting(timestamp);
        }
        Ok(Verdict {
            timestamp,
            score,
            anomaly: anomalous,
            event_score,
            raw_error: sur.raw_error,
            expected: sur.expected,
            contributions: sur.contributions,
            model_version: self.model.as_ref().map_or(0, |m| m.version),
            phase: sur.phase,
            out_of_range,
            // The open incident, or the one this reading resolved.
            incident: match &event {
                Some(IncidentEvent::Resolved { incident, .. }) => Some(incident.id),
                _ => self.incident.as_ref().map(|i| i.id),
            },
            event,
            suppressed,
            cause: judgement.cause(),
        })
    }

    /// Whether `values` are out of range (the rule judges them against what was seen
    /// before them), then widens the range seen to hold them.
    fn widen_range(&mut self, values: &[f64]) -> bool {
        let out_of_range = self.out_of_range(values);
        for (r, &v) in self.range.iter_mut().zip(values) {
            *r = (r.0.min(v), r.1.max(v));
        }
        out_of_range
    }

    /// The event score: the likelihood of the surprise against the recent past (or
    /// the model's own), 1 out of range.
    fn event_score(&mut self, sur: &Surprise, out_of_range: bool) -> f64 {
        let (event_score, _) = self.likelihood.update(raw_of(sur.surprise, self.config.raw_scale));
        if out_of_range {
            1.0
        } else {
            event_score.max(sur.model_score)
        }
    }

    /// Learns a normal reading, or steps past one that is not learnt (noting it).
    fn learn_or_pass(&mut self, learn: bool, values: &[f64], base: &BaselineScores, judgement: &Judgement) {
        if learn {
            self.learn(values, base, judgement);
        } else {
            self.state_baselines.iter_mut().for_each(StateBaselines::skip);
            self.unlearnt.push_back(self.seen);
        }
    }

    /// Sets up per-feature state on the first reading and buffers the reading.
    fn admit(&mut self, timestamp: Micros, values: &[f64]) {
        let d = values.len();
        if self.n_features.is_none() || self.gaussians.is_empty() {
            self.n_features = Some(d);
            let b = &self.config.baseline;
            self.gaussians = (0..d).map(|_| WindowedGaussian::new(b.gaussian_window)).collect();
            self.ars = (0..d).map(|_| OnlineAr::new(b.ar_order, b.ar_forgetting)).collect();
            self.seasonals = (0..d).map(|_| Seasonal::new(b.gaussian_window)).collect();
            self.state_baselines = (0..d)
                .map(|_| StateBaselines::new(b.ar_order, b.ar_forgetting, b.gaussian_window))
                .collect();
            self.range = values.iter().map(|&v| (v, v)).collect();
        }
        self.seen += 1;
        self.last_ts = Some(timestamp);
        let cap = self.config.training.buffer.max(self.config.window) * d;
        while self.history.len() + d > cap {
            self.history.drain(..d);
        }
        self.history.extend(values.iter().copied());
        let oldest = self.seen + 1 - (self.history.len() / d) as u64;
        for rows in [&mut self.unlearnt, &mut self.filled] {
            while rows.front().is_some_and(|&n| n < oldest) {
                rows.pop_front();
            }
            if rows.is_empty() && rows.capacity() > 0 {
                *rows = VecDeque::new();
            }
        }
        let b = &self.config.baseline;
        if b.seasonal && self.seen.is_multiple_of(b.seasonal_every as u64) {
            self.estimate_periods();
        }
    }

    /// Scores the newest reading with every baseline. The event path's learn it at
    /// once; the state's only later, if it is normal.
    fn score_baselines(&mut self, values: &[f64]) -> BaselineScores {
        let d = values.len();
        let n_rows = self.history.len() / d;
        let zeros = vec![0.0; d];
        let mut s = BaselineScores {
            zg: zeros.clone(),
            za: zeros.clone(),
            zs: zeros.clone(),
            state_level: zeros.clone(),
            state_ar: zeros.clone(),
            state_seasonal: zeros.clone(),
            stuck: zeros.clone(),
            seasonal_expected: vec![None; d],
            base_z: zeros.clone(),
            base_expected: zeros,
        };
        for j in 0..d {
            let (zg, _) = self.gaussians[j].update(values[j]);
            self.state_baselines[j].stuck.observe(values[j]);
            s.stuck[j] = self.state_baselines[j].stuck.ratio();
            let (za, _) = self.ars[j].update(values[j]);
            // The same phase in earlier periods (validate() bounds their number); the
            // newest row is this reading.
            let mut past = [0.0; baseline::MAX_SEASONAL_PERIODS];
            let n_past = self.seasonal_past(j, n_rows - 1, &mut past);
            let (lo, hi) = self.range[j];
            let floor = 5e-3 * (hi - lo);
            let (zs, seasonal_expected) = self.seasonals[j].update(values[j], &mut past[..n_past], floor);
            s.seasonal_expected[j] = (n_past > 0).then_some(seasonal_expected);
            (s.zg[j], s.za[j], s.zs[j]) = (zg, za, zs);
            (s.state_level[j], s.state_ar[j], s.state_seasonal[j]) =
                self.state_baselines[j].score(values[j], s.seasonal_expected[j], floor);
            if !self.state_baselines[j].seasonal_explains() {
                s.state_seasonal[j] = 0.0;
            }
            s.base_z[j] = match self.config.detector {
                DetectorKind::Gaussian => zg,
                DetectorKind::Ar => za,
                DetectorKind::Seasonal => zs,
                DetectorKind::Autoencoder | DetectorKind::Baselines => zg.max(za).max(zs),
            };
            // What is expected comes from the state's side, which never learnt an
            // anomalous value (the event path's baselines learn every reading).
            s.base_expected[j] = match self.config.detector {
                DetectorKind::Seasonal if n_past > 0 => seasonal_expected,
                _ => self.state_baselines[j].forecast(values[j]),
            };
        }
        s
    }

    /// Readings since the last gap too long to fill, this one included.
    fn fresh_rows(&self) -> u64 {
        (self.seen + 1).saturating_sub(self.fresh_from)
    }

    /// Feature `j`'s values at the same phase as buffered row `row`, one, two, …
    /// periods before it, from rows after the last long gap (none without a
    /// period); returns how many.
    fn seasonal_past(&self, j: usize, row: usize, past: &mut [f64; baseline::MAX_SEASONAL_PERIODS]) -> usize {
        let d = self.n_features.unwrap_or(1).max(1);
        let n_rows = self.history.len() / d;
        // Row `row` is reading number `number` (the newest row is `seen`; `row` may
        // be the one about to be filled in); how far back the fresh rows reach.
        let number = (self.seen + 1 + row as u64).saturating_sub(n_rows as u64);
        let reach = number.saturating_sub(self.fresh_from).min(row as u64) as usize;
        let mut n = 0;
        if let Some(p) = self.seasonals[j].period() {
            // validate() bounds seasonal_periods by MAX_SEASONAL_PERIODS.
            for k in (1..=self.config.baseline.seasonal_periods).take_while(|k| k * p <= reach) {
                past[n] = self.history[(row - k * p) * d + j];
                n += 1;
            }
        }
        n
    }

    /// Fills the rows a regular stream missed before `timestamp` (see
    /// [`cadence`]) with what the state expected there: never learnt, never
    /// scored, but buffered (marked filled, so no training window holds one) and
    /// stepped past by the ARs, so that the seasonal phase, the AR's lags and the
    /// model's window count time again. At most a training buffer's worth (see
    /// [`Detector::long_gap`]).
    fn fill_gap(&mut self, timestamp: Micros) {
        let (Some(last), Some(d)) = (self.last_ts, self.n_features) else {
            return;
        };
        if self.state_baselines.len() != d || self.history.len() < d {
            return;
        }
        let missing = self.cadence.observe(timestamp.saturating_sub(last));
        let cap = self.config.training.buffer.max(self.config.window) as u64;
        if missing > cap {
            self.long_gap();
            return;
        }
        let step = self.cadence.step();
        for i in 1..=missing {
            let row = self.expected_row();
            let t = last
                .saturating_add((step * i as f64) as i64)
                .min(timestamp.saturating_sub(1));
            self.admit(t, &row);
            for (j, &x) in row.iter().enumerate() {
                self.state_baselines[j].skip_as(x);
                self.ars[j].skip_as(Some(x));
            }
            self.filled.push_back(self.seen);
            self.imputed += 1;
        }
    }

    /// A gap longer than the training buffer: filling it would only guess, and a
    /// period estimated from the buffer is not exact enough to keep the phase
    /// over it. The rows before it stop counting as a season's past and as model
    /// windows (the model scores again once a window of new readings is in, and
    /// no training window spans the gap); the ARs forget their lags and predict
    /// again once they have `p` new ones.
    fn long_gap(&mut self) {
        self.fresh_from = self.seen + 1;
        self.filled.push_back(self.seen);
        self.state_baselines.iter_mut().for_each(StateBaselines::restart_lags);
        self.ars.iter_mut().for_each(OnlineAr::restart_lags);
    }

    /// What the state expects for the next row: the seasonal expectation where the
    /// cycle explains the feature, the AR's forecast otherwise.
    fn expected_row(&self) -> Vec<f64> {
        let d = self.n_features.unwrap_or(1).max(1);
        let n_rows = self.history.len() / d;
        (0..d)
            .map(|j| {
                let last = self.history[(n_rows - 1) * d + j];
                let mut past = [0.0; baseline::MAX_SEASONAL_PERIODS];
                let n = self.seasonal_past(j, n_rows, &mut past);
                if n > 0 && self.state_baselines[j].seasonal_explains() {
                    self.seasonals[j].score(last, &mut past[..n], 0.0).1
                } else {
                    self.state_baselines[j].forecast(last)
                }
            })
            .collect()
    }

    /// The range rule: beyond everything seen so far, widened by a fraction of the
    /// range.
    fn out_of_range(&self, values: &[f64]) -> bool {
        let Some(tol) = self.config.range_tolerance else {
            return false;
        };
        if self.seen <= self.config.range_after.max(self.config.window) as u64 {
            return false;
        }
        values.iter().zip(&self.range).any(|(&v, &(lo, hi))| {
            let margin = (hi - lo) * tol;
            hi > lo && (v > hi + margin || v < lo - margin)
        })
    }

    /// The event path's surprise: the model's (with the baselines, per
    /// `model.combine`) once a model scores, the baselines' before.
    fn surprise(&mut self, base: &BaselineScores, values: &[f64]) -> Surprise {
        let d = values.len();
        let base_max = base.base_z.iter().cloned().fold(0.0, f64::max);
        let raw_scale = self.config.raw_scale;
        let raw_of = |z: f64| raw_of(z, raw_scale);
        match self.phase() {
            Phase::Model => {
                let (z, err, expected, contributions, model_z) = self.model_surprise();
                let change_z = self.change_residual();
                self.drift = 0.98 * self.drift + 0.02 * z;
                let zg_max = base.zg.iter().cloned().fold(0.0, f64::max);
                let za_max = base.za.iter().cloned().fold(0.0, f64::max);
                // While an incident is open (or a new normal awaits a retrained model)
                // the model knows only the old normal: novelty is judged by the
                // baselines, which follow every reading.
                let model_blind = self.incident.is_some() || self.recurring.is_some() || self.model_stale;
                let (surprise, model_score) = match self.config.model.combine.as_str() {
                    _ if model_blind => (base_max, 0.0),
                    // The model's own likelihood.
                    "separate" => (base_max, self.model_likelihood.update(raw_of(z)).0),
                    // Mean of the three raw scores, mapped back to a surprise.
                    "mean" => {
                        let raw = (raw_of(z) + raw_of(zg_max) + raw_of(za_max)) / 3.0;
                        (-raw_scale * (1.0 - raw).ln(), 0.0)
                    }
                    "max" => (z.max(base_max), 0.0),
                    _ => (z, 0.0),
                };
                Surprise {
                    phase: Phase::Model,
                    surprise,
                    raw_error: err,
                    expected,
                    contributions,
                    model_score,
                    model_z: Some(model_z),
                    change_z,
                }
            }
            Phase::Warmup => Surprise {
                phase: Phase::Warmup,
                surprise: 0.0,
                raw_error: 0.0,
                expected: values.to_vec(),
                contributions: vec![0.0; d],
                model_score: 0.0,
                model_z: None,
                change_z: None,
            },
            Phase::Baseline => {
                let contributions = shares(&base.base_z);
                Surprise {
                    phase: Phase::Baseline,
                    surprise: base_max,
                    raw_error: base_max,
                    expected: base.base_expected.clone(),
                    contributions,
                    model_score: 0.0,
                    model_z: None,
                    change_z: None,
                }
            }
        }
    }

    /// The change model's residual of the newest reading's change, per feature
    /// (`None` without a change model or a reading before it in the buffer).
    fn change_residual(&self) -> Option<Vec<f64>> {
        let changes = self.model.as_ref()?.changes.as_ref()?;
        let d = self.n_features?;
        let n = self.history.len();
        if n < 2 * d {
            return None;
        }
        let prev: Vec<f64> = self.history.range(n - 2 * d..n - d).copied().collect();
        let cur: Vec<f64> = self.history.range(n - d..).copied().collect();
        Some(changes.residual(&prev, &cur))
    }

    /// Judges the reading's statistics against the limits learnt from normal ones.
    fn judge(&mut self, base: &BaselineScores, sur: &Surprise) -> Judgement {
        let mut zs: [Option<&[f64]>; N_COMPONENTS] = [None; N_COMPONENTS];
        let kind = self.config.detector;
        let all = matches!(kind, DetectorKind::Autoencoder | DetectorKind::Baselines);
        let joint_level;
        // A statistic joins (and teaches its limit) only once its baseline is warm:
        // a z against the mean of three readings would set a limit no fault reaches.
        let level_warm = self
            .state_baselines
            .first()
            .is_some_and(|b| b.level.len() >= WARM_LEVEL);
        if (all || kind == DetectorKind::Gaussian) && level_warm {
            zs[Component::Level as usize] = Some(&base.state_level);
            if base.state_level.len() > 1 {
                let n = base.state_level.len() as f64;
                joint_level = [(base.state_level.iter().map(|v| v * v).sum::<f64>() / n).sqrt()];
                zs[Component::JointLevel as usize] = Some(&joint_level);
            }
        }
        if all || kind == DetectorKind::Ar {
            zs[Component::Ar as usize] = Some(&base.state_ar);
        }
        // The seasonal statistic counts only once a period is in use.
        if (all || kind == DetectorKind::Seasonal) && base.seasonal_expected.iter().any(Option::is_some) {
            zs[Component::Seasonal as usize] = Some(&base.state_seasonal);
        }
        let joint;
        if let (Some(z), Phase::Model, false) = (sur.model_z.as_deref(), sur.phase, self.model_stale) {
            zs[Component::Model as usize] = Some(z);
            if z.len() > 1 {
                joint = [(z.iter().map(|v| v * v).sum::<f64>() / z.len() as f64).sqrt()];
                zs[Component::Joint as usize] = Some(&joint);
            }
            zs[Component::Change as usize] = sur.change_z.as_deref();
        }
        let a = &self.config.alert;
        let mut j = self.state.judge(&zs, a.smoothing, a.min_normal as u32);
        let stuck = base.stuck.iter().cloned().fold(0.0, f64::max);
        if all && stuck > j.ratio {
            j.ratio = stuck;
            j.component = Some(state::STUCK);
            j.smoothed = false;
        }
        j
    }

    /// Advances the incident lifecycle by one reading. Returns the event it raised
    /// and, for an anomalous reading that opened nothing, why.
    fn step_incident(
        &mut self,
        timestamp: Micros,
        anomalous: bool,
        (score, ratio): (f64, f64),
        contributions: &[f64],
    ) -> (Option<IncidentEvent>, Option<Suppressed>) {
        if !anomalous {
            self.anomalous_run = 0;
            return (self.step_normal(), None);
        }
        self.anomalous_run += 1;
        // Kept finite: stretches are saved in snapshots (JSON has no infinity).
        let ratio = if ratio.is_finite() { ratio.min(1e12) } else { 1e12 };
        // The stretch goes on (a new one begins below).
        let begins = self.anomalous_run == 1 && self.incident.is_none() && self.recurring.is_none();
        if let Some(last) = self.stretches.back_mut()
            && !begins
        {
            last.end = self.seen;
            last.peak = last.peak.max(ratio);
        }
        if let Some(inc) = self.incident.as_mut() {
            inc.last_anomalous = timestamp;
            inc.anomalous_readings += 1;
            inc.normal_run = 0;
            if score > inc.peak_score {
                (inc.peak_score, inc.peak_at) = (score, timestamp);
            }
            for (c, &v) in inc.contributions.iter_mut().zip(contributions) {
                *c += v;
            }
            return (None, Some(Suppressed::IncidentOpen));
        }
        match self.recurring.as_mut() {
            // Still the recurring stretch (it ends as an incident would), unless it
            // outlasts the stretches it recurs, or goes far beyond them: then it
            // is a fault.
            Some(r) => {
                r.normal_run = 0;
                if self.seen > r.until || ratio > RECURRING_ESCALATION * r.peak {
                    self.recurring = None;
                }
            }
            None if begins => self.begin_stretch(ratio),
            None => {}
        }
        if self.recurring.is_some() {
            return (None, Some(Suppressed::Recurring));
        }
        if self.anomalous_run < self.config.alert.min_duration as u64 {
            return (None, Some(Suppressed::MinDuration));
        }
        self.incidents += 1;
        let inc = Incident {
            id: self.incidents,
            start: timestamp,
            last_anomalous: timestamp,
            peak_score: score,
            peak_at: timestamp,
            anomalous_readings: 1,
            normal_run: 0,
            contributions: contributions.to_vec(),
            start_reading: self.seen,
        };
        self.incident = Some(Box::new(inc.clone()));
        (Some(IncidentEvent::Opened(inc)), None)
    }

    /// A normal reading: counts towards ending the open incident (or recurring
    /// stretch) after `alert.resolve_after` of them.
    fn step_normal(&mut self) -> Option<IncidentEvent> {
        let resolve_after = self.config.alert.resolve_after as u64;
        if let Some(r) = self.recurring.as_mut() {
            r.normal_run += 1;
            if r.normal_run >= resolve_after {
                self.recurring = None;
            }
        }
        let inc = self.incident.as_mut()?;
        inc.normal_run += 1;
        if inc.normal_run < resolve_after {
            return None;
        }
        let inc = self.incident.take().expect("open");
        let end = inc.last_anomalous;
        Some(IncidentEvent::Resolved {
            incident: *inc,
            end,
            resolution: Resolution::Normal,
        })
    }

    /// An anomalous stretch begins (no incident or recurring stretch is open):
    /// notes where, and whether it recurs.
    fn begin_stretch(&mut self, ratio: f64) {
        self.recurring = self.recurs().and_then(|(longest, peak)| {
            (ratio <= RECURRING_ESCALATION * peak).then_some(Recurring {
                normal_run: 0,
                until: self.seen.saturating_add(longest.saturating_add(longest / 2)),
                peak,
            })
        });
        if self.stretches.len() >= MAX_STRETCHES {
            self.stretches.pop_front();
        }
        self.stretches.push_back(Stretch {
            start: self.seen,
            end: self.seen,
            peak: ratio,
        });
    }

    /// Whether an anomalous stretch beginning now recurs: for some feature's period
    /// p, earlier stretches began 1, 2, … `RECURRENCES` periods ago (give or take
    /// p/50 readings). Stretches are separated by normal readings, so a fault that
    /// lasts across the periods never recurs. Returns the longest of those
    /// stretches (in readings) and the largest ratio they reached.
    fn recurs(&self) -> Option<(u64, f64)> {
        let n = self.seen;
        self.seasonals.iter().filter_map(Seasonal::period).find_map(|p| {
            let (p, tol) = (p as u64, (p as u64 / 50).max(1));
            (1..=RECURRENCES as u64).try_fold((0, 0.0), |(longest, peak): (u64, f64), k| {
                let at = n.checked_sub(k.saturating_mul(p))?;
                let s = self.stretches.iter().find(|s| s.start.abs_diff(at) <= tol)?;
                Some((longest.max(s.end.saturating_sub(s.start) + 1), peak.max(s.peak)))
            })
        })
    }

    /// Learns a reading judged normal: the state's baselines and limits.
    fn learn(&mut self, values: &[f64], base: &BaselineScores, judgement: &Judgement) {
        let window = self.config.baseline.gaussian_window;
        for (j, &x) in values.iter().enumerate() {
            self.state_baselines[j].learn(x, base.seasonal_expected[j], window);
            self.state_baselines[j].stuck.learn();
        }
        self.state.learn(judgement);
    }

    /// Keeps the statistics of the current anomalous stretch; when it ends as a
    /// short incident that resolved by itself (or a blip that opened none), they
    /// join the limits: a kind of blip the stream shows again and again stops
    /// opening incidents, while a long fault teaches them nothing.
    fn track_stretch(
        &mut self,
        anomalous: bool,
        was_recurring: bool,
        judgement: &Judgement,
        event: &Option<IncidentEvent>,
    ) {
        if anomalous {
            if self.stretch.len() < SHORT_INCIDENT {
                self.stretch.push(*judgement);
            }
            return;
        }
        match event {
            Some(IncidentEvent::Resolved { incident, .. }) => {
                if incident.anomalous_readings as usize <= SHORT_INCIDENT {
                    self.end_stretch();
                } else {
                    self.stretch = Vec::new();
                }
            }
            // A blip that never became an incident (alert.min_duration); a
            // recurring stretch is not a blip and teaches the limits nothing.
            _ if self.incident.is_none() && !self.stretch.is_empty() => {
                if was_recurring {
                    self.stretch = Vec::new();
                } else {
                    self.end_stretch();
                }
            }
            _ => {}
        }
    }

    /// Teaches the limits what the last short stretch looked like (it resolved by
    /// itself, or it was accepted).
    fn end_stretch(&mut self) {
        for j in &self.stretch {
            self.state.learn(j);
        }
        self.stretch = Vec::new();
    }

    /// The `alert.accept_after` rule: an incident that has lasted that long in
    /// stream time is the new normal.
    fn accept_if_lasting(&mut self, now: Micros) -> Option<IncidentEvent> {
        let after = self.config.alert.accept_after;
        let inc = self.incident.as_ref()?;
        if after > 0.0 && (now.saturating_sub(inc.start)) as f64 / 1e6 >= after {
            self.accept().event
        } else {
            None
        }
    }

    /// Accepts the stream's recent behaviour as normal: every buffered reading that
    /// was not learnt (an open incident's, or a past false alarm's) is learnt now,
    /// in order, by the state's baselines; an open incident resolves as
    /// `accepted`; the smoothed statistics restart and a retraining job is wanted.
    pub fn accept(&mut self) -> Accepted {
        let d = self.n_features.unwrap_or(1).max(1);
        let first = self.seen + 1 - (self.history.len() / d) as u64;
        let readings = self.unlearnt.len();
        // The learnt level restarts from the accepted readings: the old level is
        // what no longer holds.
        if readings > 0 {
            self.state_baselines.iter_mut().for_each(StateBaselines::restart_level);
        }
        self.state_baselines.iter_mut().for_each(|b| b.stuck.accept());
        let window = self.config.baseline.gaussian_window;
        for n in std::mem::take(&mut self.unlearnt) {
            let row = (n - first) as usize;
            for j in 0..d {
                // The seasonal residual is not replayed: its expectation for an old
                // row is not at hand.
                self.state_baselines[j].learn(self.history[row * d + j], None, window);
            }
        }
        // Accepted (or a false alarm): what the stretch looked like is normal.
        self.end_stretch();
        self.state.restart_smoothing();
        self.anomalous_run = 0;
        if readings > 0 {
            self.retrain_requested = true;
            self.model_stale = self.model.is_some();
        }
        let event = self.incident.take().map(|incident| IncidentEvent::Resolved {
            end: self.last_ts.unwrap_or(incident.last_anomalous),
            incident: *incident,
            resolution: Resolution::Accepted,
        });
        Accepted { readings, event }
    }

    /// Asks for a training job at the next chance (after history was taught).
    pub fn request_retrain(&mut self) {
        self.retrain_requested = true;
    }

    /// Reconstructs the window ending at the newest reading with every member.
    /// Returns (z, mean squared error, expected last values, per-feature shares,
    /// per-feature residual of the newest reading in held-out residual sds).
    fn model_surprise(&mut self) -> (f64, f64, Vec<f64>, Vec<f64>, Vec<f64>) {
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
        let model_z: Vec<f64> = (0..d)
            .map(|j| ((window[(w - 1) * d + j] as f64) - last[j] / m) / model.errors.feature_scale(j))
            .collect();
        let err = sq.iter().sum::<f64>() / (m * (steps * d) as f64);
        let contributions = shares(&sq);
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
            return (z, err, expected, contributions, model_z);
        }
        if self.config.model.error_scale == "rms" {
            // Root of the error over the training windows' mean error: for one scored
            // step, |x − x̂| in residual standard deviations, like the baselines' z.
            let z = (err / (model.errors.mean + ERROR_EPS)).sqrt();
            return (z, err, expected, contributions, model_z);
        }
        (model.errors.z(err), err, expected, contributions, model_z)
    }

    /// Re-estimates each feature's period from the buffered readings.
    fn estimate_periods(&mut self) {
        let d = self.n_features.unwrap_or(1).max(1);
        let min_acf = self.config.baseline.seasonal_min_acf;
        let n_rows = self.history.len() / d;
        let searched = n_rows.min(PERIOD_SEARCH);
        if self.fresh_rows() < searched as u64 {
            // A long gap lies in the rows searched: the periods stay until it
            // has left them.
            return;
        }
        let from = (n_rows - searched) * d;
        for j in 0..d {
            let column: Vec<f64> = self.history.range(from..).skip(j).step_by(d).copied().collect();
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
        if self.retrain_requested {
            return true;
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
        let n_rows = readings.len();
        let first = self.seen + 1 - n_rows as u64;
        let mut normal = vec![true; n_rows];
        for &n in self.unlearnt.iter().chain(&self.filled) {
            if let Some(flag) = n.checked_sub(first).and_then(|i| normal.get_mut(i as usize)) {
                *flag = false;
            }
        }
        let version = self.model.as_ref().map_or(0, |m| m.version) + 1 + self.failed_jobs;
        self.last_job = Some((self.seen, self.last_ts.unwrap_or(0)));
        self.job_in_flight = true;
        self.retrain_requested = false;
        self.drift = 0.0;
        TrainJob {
            config: self.config.clone(),
            readings,
            normal,
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

    /// Installs the outcome of a job taken under `job_config`, unless the stream was
    /// reshaped since (a model of another shape would score wrongly and its snapshot
    /// would not decode). Returns whether it was installed.
    pub fn install_job(&mut self, job_config: &DetectorConfig, outcome: TrainOutcome) -> bool {
        if !self.config.same_shape(job_config) {
            return false;
        }
        self.install(outcome);
        true
    }

    /// Whether a training job is out.
    pub fn job_in_flight(&self) -> bool {
        self.job_in_flight
    }

    /// Installs a job's outcome: a trained model is swapped in whole; a diverged job
    /// keeps the old model and is counted.
    pub fn install(&mut self, outcome: TrainOutcome) {
        self.job_in_flight = false;
        match outcome {
            TrainOutcome::Trained(m) => {
                self.resid_var.clear();
                self.model_stale = false;
                // The new model's limits come from its own held-out residuals.
                let lambda = self.config.alert.smoothing;
                self.state.seed(Component::Model, &m.calibration, lambda);
                let joint: Vec<Vec<f64>> = m
                    .calibration
                    .iter()
                    .filter(|z| z.len() > 1)
                    .map(|z| vec![(z.iter().map(|v| v * v).sum::<f64>() / z.len() as f64).sqrt()])
                    .collect();
                self.state.seed(Component::Joint, &joint, lambda);
                match &m.changes {
                    Some(c) => self.state.seed(Component::Change, &c.calibration, lambda),
                    None => self.state.reset(Component::Change),
                }
                let (at, at_ts) = self.last_job.unwrap_or((self.seen, self.last_ts.unwrap_or(0)));
                self.model = Some(ActiveModel {
                    version: m.version,
                    scorers: m.members.iter().map(|a| a.compile()).collect(),
                    normaliser: m.normaliser,
                    errors: m.errors,
                    trained_at_reading: at,
                    trained_at: at_ts,
                    report: m.report,
                    changes: m.changes.map(|c| Box::new(c.model)),
                });
            }
            TrainOutcome::Diverged(_) => self.failed_jobs += 1,
            TrainOutcome::NotEnoughData => {}
        }
    }

    /// Everything needed to rebuild this detector exactly: serde state plus the model
    /// weights (which `storage` writes as safetensors).
    pub fn snapshot(&self) -> DetectorSnapshot {
        self.snapshot_with(true)
    }

    /// [`Detector::snapshot`], the weights only when `weights` (a checkpoint that
    /// already holds this model's weights needs the state alone).
    pub fn snapshot_with(&self, weights: bool) -> DetectorSnapshot {
        let model = self.model.as_ref();
        DetectorSnapshot {
            state: DetectorState {
                config: self.config.clone(),
                n_features: self.n_features,
                seen: self.seen,
                last_ts: self.last_ts,
                history: self.history.iter().copied().collect(),
                unlearnt: self.unlearnt.iter().copied().collect(),
                filled: self.filled.iter().copied().collect(),
                state: self.state.clone(),
                incident: self.incident.as_deref().cloned(),
                incidents: self.incidents,
                anomalous_run: self.anomalous_run,
                retrain_requested: self.retrain_requested,
                model_stale: self.model_stale,
                stretches: self.stretches.iter().copied().collect(),
                recurring: self.recurring,
                cadence: self.cadence,
                imputed: self.imputed,
                fresh_from: self.fresh_from,
                gaussians: self.gaussians.clone(),
                ars: self.ars.clone(),
                seasonals: self.seasonals.clone(),
                state_baselines: self.state_baselines.clone(),
                range: self.range.clone(),
                likelihood: self.likelihood.clone(),
                model_likelihood: self.model_likelihood.clone(),
                last_job: self.last_job,
                drift: self.drift,
                failed_jobs: self.failed_jobs,
                resid_var: self.resid_var.clone(),
                model: model.map(|m| ModelMeta {
                    version: m.version,
                    normaliser: m.normaliser.clone(),
                    errors: m.errors.clone(),
                    trained_at_reading: m.trained_at_reading,
                    trained_at: m.trained_at,
                    report: m.report.clone(),
                    changes: m.changes.as_ref().map(|c| c.to_meta()),
                }),
            },
            members: model
                .filter(|_| weights)
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
        s.check()
            .map_err(|e| ConfigError(format!("inconsistent snapshot: {e}")))?;
        let model = match s.model {
            Some(meta) => {
                if snapshot.members.is_empty() || snapshot.members.len() > s.config.model.ensemble {
                    return Err(ConfigError(format!(
                        "snapshot has {} model members",
                        snapshot.members.len()
                    )));
                }
                let d = s.n_features.unwrap_or(0);
                let changes = meta
                    .changes
                    .map(|c| changes::ChangeModel::from_meta(c, d).map(Box::new))
                    .transpose()
                    .map_err(|e| ConfigError(format!("inconsistent snapshot: {e}")))?;
                Some(ActiveModel {
                    version: meta.version,
                    scorers: snapshot.members.iter().map(|m| m.compile()).collect(),
                    normaliser: meta.normaliser,
                    errors: meta.errors,
                    trained_at_reading: meta.trained_at_reading,
                    trained_at: meta.trained_at,
                    report: meta.report,
                    changes,
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
        // A snapshot from before the state starts its baselines afresh.
        let state_baselines = if s.state_baselines.len() == s.gaussians.len() {
            s.state_baselines
        } else {
            let b = &s.config.baseline;
            (0..s.gaussians.len())
                .map(|_| StateBaselines::new(b.ar_order, b.ar_forgetting, b.gaussian_window))
                .collect()
        };
        Ok(Detector {
            state_baselines,
            config: s.config,
            n_features: s.n_features,
            seen: s.seen,
            last_ts: s.last_ts,
            history: s.history.into(),
            unlearnt: s.unlearnt.into(),
            filled: s.filled.into(),
            state: s.state,
            incident: s.incident.map(Box::new),
            incidents: s.incidents,
            anomalous_run: s.anomalous_run,
            retrain_requested: s.retrain_requested,
            model_stale: s.model_stale,
            stretches: s.stretches.into_iter().rev().take(MAX_STRETCHES).rev().collect(),
            recurring: s.recurring,
            cadence: s.cadence,
            imputed: s.imputed,
            fresh_from: s.fresh_from,
            gaussians: s.gaussians,
            seasonals,
            ars: s.ars,
            range: s.range,
            likelihood: s.likelihood,
            model_likelihood: s.model_likelihood,
            model,
            stretch: Vec::new(),
            last_job: s.last_job,
            job_in_flight: false,
            drift: s.drift,
            failed_jobs: s.failed_jobs,
            resid_var: s.resid_var,
        })
    }

    /// This detector under a new config of the same shape (see
    /// [`DetectorConfig::same_shape`]); the caller starts over for another shape.
    /// Alert, retrain and training settings apply from the next reading. A change
    /// of `baseline` or `likelihood` settings rebuilds the baselines, limits and
    /// likelihood under the new settings from the buffered readings that were
    /// learnt (never from a fault); the model is kept but does not judge until it
    /// is retrained against them, which is requested at once.
    ///
    /// # Errors
    /// If the config is invalid.
    pub fn reconfigure(&self, config: DetectorConfig) -> Result<Detector, ConfigError> {
        config.validate()?;
        let relearn = config.baseline != self.config.baseline || config.likelihood != self.config.likelihood;
        let mut next = if relearn { self.relearnt(&config)? } else { self.clone() };
        next.config = config;
        if let Some(d) = next.n_features {
            let cap = next.config.training.buffer.max(next.config.window) * d;
            while next.history.len() > cap {
                next.history.drain(..d);
            }
            let oldest = next.seen + 1 - (next.history.len() / d) as u64;
            next.unlearnt.retain(|&n| n >= oldest);
            next.filled.retain(|&n| n >= oldest);
        }
        Ok(next)
    }

    /// A detector under `config` that learnt this one's learnt buffered readings,
    /// with this one's identity (counters, buffer, incident, model: stale).
    fn relearnt(&self, config: &DetectorConfig) -> Result<Detector, ConfigError> {
        let mut fresh = Detector::new(config.clone())?;
        if let Some(d) = self.n_features {
            let rows = (self.history.len() / d) as u64;
            let first = self.seen + 1 - rows;
            let flat: Vec<f64> = self.history.iter().copied().collect();
            for (i, row) in flat.chunks_exact(d).enumerate() {
                let n = first + i as u64;
                if self.unlearnt.binary_search(&n).is_ok() || self.filled.binary_search(&n).is_ok() {
                    continue;
                }
                // Timestamps do not matter to what is learnt; the real ones are put back below.
                let _ = fresh.take(i as Micros, row, Mode::History);
            }
        }
        fresh.seen = self.seen;
        fresh.last_ts = self.last_ts;
        fresh.history = self.history.clone();
        fresh.unlearnt = self.unlearnt.clone();
        fresh.filled = self.filled.clone();
        fresh.cadence = self.cadence;
        fresh.imputed = self.imputed;
        fresh.fresh_from = self.fresh_from;
        fresh.incident = self.incident.clone();
        fresh.incidents = self.incidents;
        fresh.anomalous_run = self.anomalous_run;
        fresh.last_job = self.last_job;
        fresh.job_in_flight = self.job_in_flight;
        fresh.failed_jobs = self.failed_jobs;
        fresh.model = self.model.clone();
        fresh.resid_var = self.resid_var.clone();
        fresh.model_stale = self.model.is_some();
        fresh.retrain_requested = self.model.is_some() || self.retrain_requested;
        Ok(fresh)
    }

    /// Scores a reading and, when due, trains inline before returning (replay mode:
    /// deterministic, the same input gives the same scores bit for bit).
    pub fn update_sync(&mut self, timestamp: Micros, values: &[f64]) -> Result<Verdict, ReadingError> {
        let v = self.update(timestamp, values)?;
        self.train_if_due_sync();
        Ok(v)
    }

    /// Trains inline if the policy (or a request) asks for a job.
    pub fn train_if_due_sync(&mut self) {
        if self.training_due() {
            let job = self.training_job();
            let outcome = train::train(&job, &|| false);
            self.install(outcome);
        }
    }
}

/// A detector's state without its weights (see [`Detector::snapshot`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectorState {
    config: DetectorConfig,
    n_features: Option<usize>,
    seen: u64,
    last_ts: Option<Micros>,
    #[serde(with = "packed")]
    history: Vec<f64>,
    /// Buffered readings not learnt (absent in snapshots from before the state
    /// existed: all were).
    #[serde(default)]
    unlearnt: Vec<u64>,
    #[serde(default)]
    filled: Vec<u64>,
    #[serde(default)]
    state: StateCalibration,
    #[serde(default)]
    incident: Option<Incident>,
    #[serde(default)]
    incidents: u64,
    #[serde(default)]
    anomalous_run: u64,
    #[serde(default)]
    retrain_requested: bool,
    #[serde(default)]
    model_stale: bool,
    #[serde(default)]
    stretches: Vec<Stretch>,
    #[serde(default)]
    recurring: Option<Recurring>,
    #[serde(default)]
    cadence: Cadence,
    #[serde(default)]
    imputed: u64,
    #[serde(default)]
    fresh_from: u64,
    gaussians: Vec<WindowedGaussian>,
    ars: Vec<OnlineAr>,
    #[serde(default)]
    seasonals: Vec<Seasonal>,
    #[serde(default)]
    state_baselines: Vec<StateBaselines>,
    range: Vec<(f64, f64)>,
    likelihood: Likelihood,
    model_likelihood: Likelihood,
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
    /// The change model, weights included (small: 2·d·k + d + k values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    changes: Option<changes::ChangeMeta>,
}

/// A whole detector at one moment: serde state and model weights.
#[derive(Clone, Debug)]
pub struct DetectorSnapshot {
    /// Everything but the weights.
    pub state: DetectorState,
    /// Ensemble members (empty before the first model).
    pub members: Vec<Autoencoder<f32>>,
}

impl DetectorSnapshot {
    /// The same snapshot without its model (its weights were lost): the stream
    /// scores with its baselines and retrains at its next reading.
    pub fn without_model(mut self) -> Self {
        self.state.model = None;
        self.state.model_stale = false;
        self.state.retrain_requested = true;
        self.members.clear();
        self
    }
}

impl DetectorState {
    /// Whether this state is one the detector could have built: every per-feature
    /// part sized by the feature count, every component internally consistent (a
    /// file from another version, or damage the checksum missed, is refused rather
    /// than panicking later).
    fn check(&self) -> Result<(), String> {
        let d = self.n_features.unwrap_or(0);
        if d > MAX_FEATURES {
            return Err(format!("{d} features"));
        }
        let sized = |name: &str, n: usize| {
            // Per-feature parts exist once the first reading arrived.
            if n == d || n == 0 {
                Ok(())
            } else {
                Err(format!("{name} has {n} entries for {d} features"))
            }
        };
        sized("gaussians", self.gaussians.len())?;
        sized("ars", self.ars.len())?;
        sized("seasonals", self.seasonals.len())?;
        sized("state_baselines", self.state_baselines.len())?;
        sized("range", self.range.len())?;
        if d == 0 && !self.history.is_empty() || d > 0 && !self.history.len().is_multiple_of(d) {
            return Err(format!("history of {} values for {d} features", self.history.len()));
        }
        self.gaussians.iter().try_for_each(WindowedGaussian::check)?;
        self.ars.iter().try_for_each(OnlineAr::check)?;
        self.seasonals.iter().try_for_each(Seasonal::check)?;
        self.state_baselines.iter().try_for_each(StateBaselines::check)?;
        Ok(())
    }

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
