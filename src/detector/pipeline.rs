//! The scoring pipeline of one reading, in its steps: admit (buffer it, set up
//! per-feature state), score the baselines, the surprise (the model's or the
//! baselines'), judge the state against the learnt limits, and learn it when it
//! is normal. The incident step between judging and learning is `incident.rs`.

use std::collections::VecDeque;

use super::baseline::{self, OnlineAr, Seasonal, StateBaselines, WindowedGaussian};
use super::config::{Combine, ErrorScale};
use super::state::{self, Component, Judgement, N_COMPONENTS, score_of_ratio};
use super::train::{self, ERROR_EPS};
use super::{
    Detector, DetectorKind, IncidentEvent, MAX_MAGNITUDE, PERIOD_SEARCH, Phase, ReadingError, SHORT_INCIDENT, Verdict,
    context, discrete,
};
use crate::nn::{NibbleScorer, NibbleWorkspace};
use crate::timestamp::Micros;

thread_local! {
    /// Scratch space of the scorers, one per thread rather than per stream (streams
    /// are many, scoring threads few).
    static WORKSPACE: std::cell::RefCell<NibbleWorkspace> = std::cell::RefCell::new(NibbleWorkspace::default());
}

/// A surprise (in standard deviations) as a raw score in [0, 1):
/// `1 − exp(−max(z, 0) / raw_scale)`.
pub(super) fn raw_of(z: f64, raw_scale: f64) -> f64 {
    1.0 - (-z.max(0.0) / raw_scale).exp()
}

/// Normal readings the state's level needs before its z is judged.
pub(super) const WARM_LEVEL: u64 = 128;

/// How a reading is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// Scored live: state, incidents, and learnt only when normal.
    Live,
    /// Taught as known-normal history: learnt, never anomalous.
    History,
}

/// Per-feature scores of the baselines for one reading: the event path's (learnt
/// already) and the state's (not learnt yet).
pub(super) struct BaselineScores {
    zg: Vec<f64>,
    za: Vec<f64>,
    zs: Vec<f64>,
    /// The state's level, AR and seasonal z.
    state_level: Vec<f64>,
    state_ar: Vec<f64>,
    state_seasonal: Vec<f64>,
    /// The state's trend z (`None` until the long-run level knows more than the
    /// level's window).
    state_trend: Option<Vec<f64>>,
    /// Each feature's run of repeated values over its limit.
    stuck: Vec<f64>,
    /// Seasonal expectation, when the feature has a period and history for it.
    seasonal_expected: Vec<Option<f64>>,
    /// The configured baseline's z and expectation per feature.
    base_z: Vec<f64>,
    base_expected: Vec<f64>,
}

impl BaselineScores {
    /// Zeroes every statistic of the context features (`mask[j]`).
    fn mask(&mut self, mask: &[bool]) {
        for (j, _) in mask.iter().enumerate().filter(|(_, m)| **m) {
            for v in [
                &mut self.zg,
                &mut self.za,
                &mut self.zs,
                &mut self.state_level,
                &mut self.state_ar,
                &mut self.state_seasonal,
                &mut self.stuck,
                &mut self.base_z,
            ] {
                v[j] = 0.0;
            }
            if let Some(t) = &mut self.state_trend {
                t[j] = 0.0;
            }
        }
    }
}

impl Surprise {
    /// Zeroes the context features' residuals and shares (`mask[j]`); the other
    /// features' shares sum to 1 again.
    fn mask(&mut self, mask: &[bool]) {
        for (j, _) in mask.iter().enumerate().filter(|(_, m)| **m) {
            self.contributions[j] = 0.0;
            for z in [self.model_z.as_mut(), self.change_z.as_mut()].into_iter().flatten() {
                z[j] = 0.0;
            }
        }
        self.contributions = shares(&self.contributions);
    }
}

/// The root mean square of `z` over `n` features (the others' entries are zero).
pub(super) fn root_mean_square(z: &[f64], n: usize) -> f64 {
    (z.iter().map(|v| v * v).sum::<f64>() / n.max(1) as f64).sqrt()
}

/// `values`, each clamped to ±`MAX_MAGNITUDE` (borrowed when none needs it).
pub(super) fn clamp_magnitude(values: &[f64]) -> std::borrow::Cow<'_, [f64]> {
    if values.iter().any(|v| v.abs() > MAX_MAGNITUDE) {
        values.iter().map(|v| v.clamp(-MAX_MAGNITUDE, MAX_MAGNITUDE)).collect()
    } else {
        values.into()
    }
}

/// Each value's share of their sum (all 0 when the sum is not positive).
pub(super) fn shares(xs: &[f64]) -> Vec<f64> {
    let total: f64 = xs.iter().sum();
    xs.iter().map(|v| if total > 0.0 { v / total } else { 0.0 }).collect()
}

/// Lets the longest run ratio of the discrete features decide when it is the
/// largest: component `run`, anomalous at once beyond its limit (a run is one
/// statistic, not one of many tails), its features the contributions.
fn judge_runs(judgement: &mut Judgement, runs: &[Option<f64>], contributions: &mut Vec<f64>) {
    let ratios: Vec<f64> = runs.iter().map(|r| r.unwrap_or(0.0)).collect();
    let top = ratios.iter().cloned().fold(0.0, f64::max);
    if top > judgement.ratio {
        judgement.ratio = top;
        judgement.component = Some(state::RUN);
        judgement.smoothed = false;
        judgement.strong = 1.0;
        *contributions = shares(&ratios);
    }
}

/// Each feature's share of the summed squares of `z`.
fn shares_of_squares(z: &[f64]) -> Vec<f64> {
    shares(&z.iter().map(|v| v * v).collect::<Vec<_>>())
}

/// The model-or-baseline surprise of one reading.
pub(super) struct Surprise {
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

impl Detector {
    pub(super) fn take(&mut self, timestamp: Micros, values: &[f64], mode: Mode) -> Result<Verdict, ReadingError> {
        self.check(timestamp, values)?;
        let values = &clamp_magnitude(values)[..];
        self.fill_gap(timestamp);
        self.admit(timestamp, values);
        self.observe_levels(values);
        let context = self.context_mask();
        let mut base = self.score_baselines(values);
        if let Some(m) = &context {
            base.mask(m);
        }
        let out_of_range = self.widen_range(values, context.as_deref());
        let mut sur = self.surprise(&base, values);
        if let Some(m) = &context {
            sur.mask(m);
        }
        // Judged only once a statistic has a limit: before, the score means
        // "not judged yet" (phase warmup), never "normal".
        if self.readings_needed() > 0 {
            sur.phase = Phase::Warmup;
        }
        let mut judgement = self.judge_reading(values, context.as_deref(), &mut base, &mut sur);
        let live = mode == Mode::Live && sur.phase != Phase::Warmup;
        let raw_ratio = judgement.ratio;
        let one_feature = self.measured_features(context.as_deref()) == 1;
        let (excursion, anomalous) = self.prune(&mut judgement, live, sur.phase, one_feature);
        let score = score_of_ratio(judgement.ratio);
        let was_recurring = self.recurring.is_some();
        let (mut event, suppressed) =
            self.step_incident(timestamp, anomalous, (score, judgement.ratio), &sur.contributions);
        self.track_stretch(excursion, was_recurring, &judgement, &event);
        self.incident_strong = self.incident.is_some() && (self.incident_strong || raw_ratio >= judgement.strong);
        let event_score = self.event_score(&sur, out_of_range);
        let learn = mode == Mode::History || (!excursion && self.incident.is_none());
        self.learn_or_pass(learn, values, &base, &judgement);
        for (r, &x) in self.runs.iter_mut().zip(values) {
            r.step(x, learn);
        }
        if mode == Mode::Live && event.is_none() {
            event = self.accept_if_lasting(timestamp);
        }
        let verdict = Verdict {
            timestamp,
            score,
            anomaly: anomalous,
            event_score,
            raw_error: sur.raw_error,
            expected: sur.expected,
            contributions: sur.contributions,
            model_version: self.model.as_ref().map_or(0, |m| m.version),
            phase: sur.phase,
            // After this one: what the stream's own state says from now on.
            readings_needed: self.readings_needed(),
            out_of_range,
            // The open incident, or the one this reading resolved.
            incident: match &event {
                Some(IncidentEvent::Resolved { incident, .. }) => Some(incident.id),
                _ => self.incident.as_ref().map(|i| i.id),
            },
            event,
            suppressed,
            cause: judgement.cause(),
        };
        self.recent.push(&verdict, values, mode == Mode::History);
        Ok(verdict)
    }

    /// Judges a reading against the state's limits: the discrete features at a
    /// known value by their runs alone (masked from the continuous statistics),
    /// the others as measurements; the deciding features become the
    /// contributions when a stuck, change or trend statistic decides.
    fn judge_reading(
        &mut self,
        values: &[f64],
        context: Option<&[bool]>,
        base: &mut BaselineScores,
        sur: &mut Surprise,
    ) -> Judgement {
        // Discrete features at a known value are judged by their runs alone.
        let runs = self.run_ratios(values, context);
        if let Some(r) = &runs {
            let known: Vec<bool> = r.iter().map(Option::is_some).collect();
            base.mask(&known);
            sur.mask(&known);
        }
        let measured = (0..values.len())
            .filter(|&j| context.is_none_or(|m| !m[j]) && runs.as_ref().is_none_or(|r| r[j].is_none()))
            .count();
        // With no feature to judge as a measurement, the continuous statistics are
        // absent (their limits learn nothing from a reading they did not judge).
        let mut judgement = if measured > 0 {
            self.judge(base, sur, measured)
        } else {
            Judgement::default()
        };
        if let Some(r) = &runs {
            judge_runs(&mut judgement, r, &mut sur.contributions);
        }
        if judgement.component == Some(state::STUCK) {
            // The stuck features are what the incident is about.
            sur.contributions = shares(&base.stuck);
        }
        if let (Some(c), Some(z)) = (judgement.component, &sur.change_z)
            && c == Component::Change as usize
        {
            // So are the features whose changes the others do not explain.
            sur.contributions = shares_of_squares(z);
        }
        if judgement.component == Some(Component::Trend as usize) {
            // And the features that have drifted from their long-run level.
            sur.contributions = shares_of_squares(self.state.running(Component::Trend));
        }
        judgement
    }

    /// Holds the judgement's ratio to the pruning bar (`pruning.rs`). Returns
    /// whether the reading is beyond its limit (an excursion: not learnt) and
    /// whether it is anomalous (beyond the bar too); `live`: it may be either;
    /// `phase`: what scored the reading; `one_feature`: the stream has one
    /// measured feature (its normal readings count in the pruning window).
    pub(super) fn prune(
        &mut self,
        judgement: &mut Judgement,
        live: bool,
        phase: Phase,
        one_feature: bool,
    ) -> (bool, bool) {
        let a = &self.config.alert;
        let (raw, window, held) = (judgement.ratio, a.prune_window, self.incident.is_some());
        let excursion = live && score_of_ratio(raw) >= a.threshold;
        // One odd reading echoes in the model's residuals while it is in the window.
        let echo = if phase == Phase::Model { self.config.window } else { 0 };
        let sustained = SHORT_INCIDENT + echo;
        judgement.ratio /= self
            .pruning
            .bar(excursion, held, window, a.prune_margin, sustained, judgement.strong);
        let anomalous = excursion && score_of_ratio(judgement.ratio) >= a.threshold;
        // A run's limit is already a margin beyond the longest normal run: a run
        // that came near it is no normal peak to raise the bar of the next one.
        let near = one_feature && judgement.component != Some(state::RUN);
        // On one series a blip of the model's is as long as its echo; with many
        // features, a fault that comes and goes returns in episodes that long,
        // and a run or a baseline's residual does not echo (`pruning.rs`).
        let echoes = judgement.component == Some(Component::Model as usize);
        let blip = if one_feature && echoes {
            sustained
        } else {
            SHORT_INCIDENT
        };
        self.pruning.note(raw, anomalous, held, window, near, blip);
        (excursion, anomalous)
    }

    /// Each judged feature's run ratio when it is discrete and its value known
    /// (`discrete.rs`; `None`: judged as a measurement); `None` when no feature is.
    pub(super) fn run_ratios(&self, values: &[f64], context: Option<&[bool]>) -> Option<Vec<Option<f64>>> {
        if self.runs.is_empty() {
            return None;
        }
        let ratios: Vec<Option<f64>> = (values.iter().zip(&self.runs).enumerate())
            .map(|(j, (&x, r))| {
                if context.is_some_and(|m| m[j]) {
                    None
                } else {
                    r.judge(x)
                }
            })
            .collect();
        ratios.iter().any(Option::is_some).then_some(ratios)
    }

    /// Which features are context (`context.rs`), `None` when none is.
    pub(super) fn context_mask(&self) -> Option<Vec<bool>> {
        let d = self.n_features?;
        let auto = self.config.context_auto && d >= 2 && self.levels.iter().any(context::Levels::is_indicator);
        if self.config.context.is_empty() && !auto {
            // The common case, on every reading: nothing to mask, nothing allocated.
            return None;
        }
        let c = &self.config;
        let listed = c.context.iter().filter_map(|r| r.index_in(&c.features));
        context::mask(d, listed, c.context_auto, &self.levels)
    }

    /// Whether `values` (but the `context` ones) are out of range (the rule judges
    /// them against what was seen before them), then widens the range seen to hold
    /// them.
    pub(super) fn widen_range(&mut self, values: &[f64], context: Option<&[bool]>) -> bool {
        let out_of_range = self.out_of_range(values, context);
        for (r, &v) in self.range.iter_mut().zip(values) {
            *r = (r.0.min(v), r.1.max(v));
        }
        out_of_range
    }

    /// The event score: the likelihood of the surprise against the recent past (or
    /// the model's own), 1 out of range.
    pub(super) fn event_score(&mut self, sur: &Surprise, out_of_range: bool) -> f64 {
        let (event_score, _) = self.likelihood.update(raw_of(sur.surprise, self.config.raw_scale));
        if out_of_range {
            1.0
        } else {
            event_score.max(sur.model_score)
        }
    }

    /// Learns a normal reading, or steps past one that is not learnt (noting it).
    pub(super) fn learn_or_pass(&mut self, learn: bool, values: &[f64], base: &BaselineScores, judgement: &Judgement) {
        if learn {
            self.learn(values, base, judgement);
        } else {
            self.state_baselines.iter_mut().for_each(StateBaselines::skip);
            self.unlearnt.push_back(self.seen);
        }
    }

    /// Notes a received reading's values in each feature's distinct levels (what
    /// makes an indicator context). Rows filled in for a gap are the state's
    /// guesses, not values the stream showed: a flag's expectation of 0.4 must not
    /// turn it into a measurement.
    fn observe_levels(&mut self, values: &[f64]) {
        if self.levels.len() != values.len() {
            // A snapshot from before context features starts counting now.
            self.levels = vec![context::Levels::default(); values.len()];
        }
        for (l, &x) in self.levels.iter_mut().zip(values) {
            l.observe(x);
        }
    }

    /// Sets up per-feature state on the first reading and buffers the reading.
    pub(super) fn admit(&mut self, timestamp: Micros, values: &[f64]) {
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
        if !self.config.discrete_runs {
            self.runs = Vec::new();
        } else if self.runs.len() != d {
            // A snapshot from before discrete features starts learning them now.
            self.runs = vec![discrete::Runs::default(); d];
        }
        self.seen += 1;
        self.last_ts = Some(timestamp);
        self.buffer_row(values);
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
    pub(super) fn score_baselines(&mut self, values: &[f64]) -> BaselineScores {
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
            state_trend: None,
            stuck: zeros.clone(),
            seasonal_expected: vec![None; d],
            base_z: zeros.clone(),
            base_expected: zeros,
        };
        for j in 0..d {
            let (zg, _) = self.gaussians[j].score(values[j]);
            self.state_baselines[j].observe(values[j]);
            s.stuck[j] = self.state_baselines[j].stuck.ratio();
            let (za, _) = self.ars[j].update(values[j]);
            // The same phase in earlier periods (validate() bounds their number); the
            // newest row is this reading.
            let mut past = [0.0; baseline::MAX_SEASONAL_PERIODS];
            let n_past = self.seasonal_past(j, n_rows - 1, false, &mut past);
            let (lo, hi) = self.range[j];
            let floor = 5e-3 * (hi - lo);
            let (zs, seasonal_expected) = self.seasonals[j].update(values[j], &mut past[..n_past], floor);
            (s.zg[j], s.za[j], s.zs[j]) = (zg, za, zs);
            // The state expects what earlier *normal* periods did: a lasting change
            // repeats itself every period, and would become its own expectation.
            // With every buffered row learnt (the common case) those are the same
            // periods.
            s.seasonal_expected[j] = if self.unlearnt.is_empty() && self.filled.is_empty() {
                (n_past > 0).then_some(seasonal_expected)
            } else {
                let n_normal = self.seasonal_past(j, n_rows - 1, true, &mut past);
                (n_normal > 0).then(|| baseline::median(&mut past[..n_normal]))
            };
            (s.state_level[j], s.state_ar[j], s.state_seasonal[j]) =
                self.state_baselines[j].score(values[j], s.seasonal_expected[j], floor, self.resolution_floor(j));
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
        let window = self.config.baseline.gaussian_window;
        s.state_trend = (0..d)
            .map(|j| self.state_baselines[j].trend(values[j], window))
            .collect::<Option<Vec<f64>>>();
        s
    }

    /// Readings since the last gap too long to fill, this one included.
    pub(super) fn fresh_rows(&self) -> u64 {
        (self.seen + 1).saturating_sub(self.fresh_from)
    }

    /// Feature `j`'s values at the same phase as buffered row `row`, one, two, …
    /// periods before it, from rows after the last long gap (none without a
    /// period), `seasonal_periods` of them; returns how many. `normal_only`: only
    /// rows that were learnt as normal (not an incident's or an excursion's, not
    /// filled in for a gap), going as many periods back as it takes.
    pub(super) fn seasonal_past(
        &self,
        j: usize,
        row: usize,
        normal_only: bool,
        past: &mut [f64; baseline::MAX_SEASONAL_PERIODS],
    ) -> usize {
        let d = self.n_features.unwrap_or(1).max(1);
        let n_rows = self.history.len() / d;
        // Row `row` is reading number `number` (the newest row is `seen`; `row` may
        // be the one about to be filled in); how far back the fresh rows reach.
        let number = (self.seen + 1 + row as u64).saturating_sub(n_rows as u64);
        let reach = number.saturating_sub(self.fresh_from).min(row as u64) as usize;
        let Some(p) = self.seasonals[j].period() else {
            return 0;
        };
        let learnt = |n: u64| self.unlearnt.binary_search(&n).is_err() && self.filled.binary_search(&n).is_err();
        let wanted = self.config.baseline.seasonal_periods;
        let mut n = 0;
        // validate() bounds seasonal_periods by MAX_SEASONAL_PERIODS.
        for k in (1..).take_while(|k| k * p <= reach && (normal_only || *k <= wanted)) {
            if !normal_only || learnt(number - (k * p) as u64) {
                past[n] = self.history.get((row - k * p) * d + j);
                n += 1;
                if n == wanted {
                    break;
                }
            }
        }
        n
    }

    /// The range rule: beyond everything seen so far, widened by a fraction of the
    /// range.
    pub(super) fn out_of_range(&self, values: &[f64], context: Option<&[bool]>) -> bool {
        let Some(tol) = self.config.range_tolerance else {
            return false;
        };
        if self.seen <= self.config.range_after.max(self.config.window) as u64 {
            return false;
        }
        values.iter().zip(&self.range).enumerate().any(|(j, (&v, &(lo, hi)))| {
            let margin = (hi - lo) * tol;
            let judged = context.is_none_or(|m| !m[j]);
            judged && hi > lo && (v > hi + margin || v < lo - margin)
        })
    }

    /// The event path's surprise: the model's (with the baselines, per
    /// `model.combine`) once a model scores, the baselines' before.
    pub(super) fn surprise(&mut self, base: &BaselineScores, values: &[f64]) -> Surprise {
        let d = values.len();
        let base_max = base.base_z.iter().cloned().fold(0.0, f64::max);
        let raw_scale = self.config.raw_scale;
        let raw_of = |z: f64| raw_of(z, raw_scale);
        match self.scoring_phase() {
            Phase::Model => {
                let (z, err, expected, contributions, model_z) = self.model_surprise();
                let change_z = self.change_residual();
                self.drift = 0.98 * self.drift + 0.02 * z;
                let zg_max = base.zg.iter().cloned().fold(0.0, f64::max);
                let za_max = base.za.iter().cloned().fold(0.0, f64::max);
                // While an incident is open, or was as good as open (a pruned
                // excursion, until `resolve_after` normal readings), or a new normal
                // awaits a retrained model, the model knows only the old normal:
                // novelty is judged by the baselines, which follow every reading.
                let recently_beyond = self.pruning.recently_beyond(self.config.alert.resolve_after);
                let model_blind =
                    self.incident.is_some() || self.recurring.is_some() || recently_beyond || self.model_stale;
                let (surprise, model_score) = match self.config.model.combine {
                    _ if model_blind => (base_max, 0.0),
                    // The model's own likelihood.
                    Combine::Separate => (base_max, self.model_likelihood().update(raw_of(z)).0),
                    // Mean of the three raw scores, mapped back to a surprise.
                    Combine::Mean => {
                        let raw = (raw_of(z) + raw_of(zg_max) + raw_of(za_max)) / 3.0;
                        (-raw_scale * (1.0 - raw).ln(), 0.0)
                    }
                    Combine::Max => (z.max(base_max), 0.0),
                    Combine::Model => (z, 0.0),
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
    pub(super) fn change_residual(&self) -> Option<Vec<f64>> {
        let changes = self.model.as_ref()?.changes.as_ref()?;
        let d = self.n_features?;
        let n = self.history.len();
        if n < 2 * d {
            return None;
        }
        let prev: Vec<f64> = self.history.range(n - 2 * d..n - d).collect();
        let cur: Vec<f64> = self.history.range(n - d..n).collect();
        Some(changes.residual(&prev, &cur))
    }

    /// Judges the reading's statistics against the limits learnt from normal ones;
    /// `measured` features are judged as measurements (the others' statistics are
    /// zero). The joint statistics and the change model need two of them: with
    /// one, they only repeat its own statistics with other limits.
    pub(super) fn judge(&mut self, base: &BaselineScores, sur: &Surprise, measured: usize) -> Judgement {
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
            if measured > 1 {
                joint_level = [root_mean_square(&base.state_level, measured)];
                zs[Component::JointLevel as usize] = Some(&joint_level);
            }
        }
        if all || kind == DetectorKind::Gaussian {
            zs[Component::Trend as usize] = base.state_trend.as_deref();
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
            if measured > 1 {
                joint = [root_mean_square(z, measured)];
                zs[Component::Joint as usize] = Some(&joint);
                zs[Component::Change as usize] = sur.change_z.as_deref();
            }
        }
        let a = &self.config.alert;
        // An AR forecasting over imputed lags (readings not learnt) makes errors
        // several steps ahead that share their innovations: their running averages
        // do not average out as the one-step errors its limits were learnt from do.
        let imputing =
            self.incident.is_some() && !self.incident_strong && self.state_baselines.iter().any(|b| b.ar.imputing());
        let instant_only = if imputing { 1 << Component::Ar as usize } else { 0 };
        let mut j = self
            .state
            .judge_some(&zs, a.smoothing, a.min_normal as u32, instant_only);
        let stuck = base.stuck.iter().cloned().fold(0.0, f64::max);
        if all && stuck > j.ratio {
            j.ratio = stuck;
            j.component = Some(state::STUCK);
            j.smoothed = false;
        }
        j
    }

    /// Learns a reading judged normal: the state's baselines and limits.
    pub(super) fn learn(&mut self, values: &[f64], base: &BaselineScores, judgement: &Judgement) {
        let window = self.config.baseline.gaussian_window;
        for (j, &x) in values.iter().enumerate() {
            self.state_baselines[j].learn(x, base.seasonal_expected[j], window);
            self.state_baselines[j].stuck.learn();
        }
        self.state.learn(judgement);
    }

    /// Reconstructs the window ending at the newest reading with every member.
    /// Returns (z, mean squared error, expected last values, per-feature shares,
    /// per-feature residual of the newest reading in held-out residual sds).
    pub(super) fn model_surprise(&mut self) -> (f64, f64, Vec<f64>, Vec<f64>, Vec<f64>) {
        let model = self.model.as_ref().expect("model present");
        let d = self.n_features.unwrap_or(1);
        let w = self.config.window;
        let start = self.history.len() - w * d;
        let window: Vec<f32> = self
            .history
            .range(start..self.history.len())
            .enumerate()
            .map(|(i, x)| model.normaliser.apply(i % d, x))
            .collect();
        let steps = train::scored_steps(&self.config);
        let from = (w - steps) * d;
        let mut sq = vec![0.0f64; d];
        let mut last = vec![0.0f64; d];
        // A forecasting model sees the window as in training: the newest step hidden.
        let input = model.objective.input(&window, d);
        WORKSPACE.with_borrow_mut(|ws| {
            NibbleScorer::reconstruct_each(&model.scorers, &input, ws, |y| {
                for (i, (&a, &b)) in y[from..].iter().zip(&window[from..]).enumerate() {
                    sq[i % d] += ((a - b) as f64).powi(2);
                }
                for j in 0..d {
                    last[j] += y[(w - 1) * d + j] as f64;
                }
            });
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
        if self.config.model.error_scale == ErrorScale::Running {
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
        if self.config.model.error_scale == ErrorScale::Rms {
            // Root of the error over the training windows' mean error: for one scored
            // step, |x − x̂| in residual standard deviations, like the baselines' z.
            let z = (err / (model.errors.mean + ERROR_EPS)).sqrt();
            return (z, err, expected, contributions, model_z);
        }
        (model.errors.z(err), err, expected, contributions, model_z)
    }

    /// Re-estimates each feature's period from the buffered readings.
    pub(super) fn estimate_periods(&mut self) {
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
            let column: Vec<f64> = self.history.range(from + j..self.history.len()).step_by(d).collect();
            // The dominant cycle, or a longer one made of whole cycles of it (a
            // week of days) when the cycles differ in a way that repeats.
            let period = baseline::find_period(&column, 4, min_acf)
                .map(|(p, _)| baseline::longer_period(&column, p).unwrap_or(p));
            self.seasonals[j].set_period(period);
        }
    }
}
