//! The training hand-off: when the retrain policy asks for a job, the job taken
//! from the buffered readings, and the outcome installed whole (or, in replay,
//! trained inline).

use std::borrow::Cow;

use super::pipeline::root_mean_square;
use super::state::Component;
use super::train::{self, JobKind, TrainJob, TrainOutcome, TrainedModel};
use super::{ActiveModel, Detector, DetectorConfig, DetectorKind, ReadingError, Verdict};
use crate::timestamp::Micros;

impl Detector {
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
        (self.completion_due() && since >= 2 * c.window as u64)
            || self.scheduled_due(at, at_ts)
            || self.drift_due(since)
    }

    /// Whether the periodic retrain is due, the last job taken at reading `at`
    /// (timestamp `at_ts`).
    fn scheduled_due(&self, at: u64, at_ts: Micros) -> bool {
        let p = &self.config.retrain;
        (p.every_readings > 0 && self.seen - at >= self.retrain_interval())
            || (p.every_seconds > 0.0
                && self
                    .last_ts
                    .is_some_and(|t| (t - at_ts) as f64 / 1e6 >= p.every_seconds))
    }

    /// Whether a stream on a model drifts enough, `since` readings after its last
    /// job, to be retrained early: two windows after a job, twice as long after
    /// each drift job in a row (a drift that retraining on the normal readings
    /// does not cure is not cured by retraining every two windows).
    fn drift_due(&self, since: u64) -> bool {
        let c = &self.config;
        c.retrain.on_drift && self.model.is_some() && since >= self.drift_gap() && self.drift > 2.0
    }

    /// Readings a drift job waits after the last job.
    fn drift_gap(&self) -> u64 {
        (2 * self.config.window as u64) << self.drift_streak.min(16)
    }

    /// Why a job taken now is asked for (`completion`: it completes a first model).
    fn job_kind(&self, completion: bool) -> JobKind {
        let drifted = |(at, at_ts)| !self.scheduled_due(at, at_ts) && self.drift_due(self.seen - at);
        if self.retrain_requested {
            JobKind::Requested
        } else if self.model.is_none() {
            JobKind::First
        } else if completion {
            JobKind::Completion
        } else if self.last_job.is_some_and(drifted) {
            JobKind::Drift
        } else {
            JobKind::Scheduled
        }
    }

    /// Readings between periodic retrains now: `every_readings`, doubled with
    /// each model after the first (a first model and the job that completes its
    /// ensemble count as one), up to `max_every_readings` (never below
    /// `every_readings`).
    pub fn retrain_interval(&self) -> u64 {
        let p = &self.config.retrain;
        let every = p.every_readings as u64;
        let c = &self.config;
        let completed = u64::from(c.training.first_model_members(c.model.ensemble) < c.model.ensemble);
        let models = self
            .model
            .as_ref()
            .map_or(1, |m| m.version.saturating_sub(completed).max(1));
        let doubled = every.saturating_mul(1u64 << (models - 1).min(32));
        doubled.min(p.max_every_readings as u64).max(every)
    }

    /// Whether the model has fewer members than the ensemble (a first model of
    /// `training.first_members`) and no job has tried to complete it yet.
    fn completion_due(&self) -> bool {
        self.model
            .as_ref()
            .is_some_and(|m| m.scorers.len() < self.config.model.ensemble && self.completion_for != Some(m.version))
    }

    /// Takes a training job from the buffered readings and marks one in flight.
    /// A job that only completes a first model's ensemble leaves the retrain
    /// schedule where the first model set it.
    pub fn training_job(&mut self) -> TrainJob {
        let d = self.n_features.unwrap_or(1).max(1);
        let since = self.last_job.map_or(u64::MAX, |(at, _)| self.seen - at);
        let completion = self.completion_due() && !self.retrain_requested && since < self.retrain_interval();
        let kind = self.job_kind(completion);
        // A drift job long after the gap it waited for starts a new streak.
        self.drift_streak = match (kind, since) {
            (JobKind::Drift, s) if s <= 2 * self.drift_gap() => self.drift_streak + 1,
            (JobKind::Drift, _) => 1,
            _ => 0,
        };
        let rows = self.history.len() / d;
        let rows = rows
            .min(self.job_rows(completion).unwrap_or(rows))
            .min(self.config.training.buffer.max(self.config.window));
        let readings: Vec<Vec<f64>> = self
            .history
            .range(self.history.len() - rows * d..self.history.len())
            .collect::<Vec<_>>()
            .chunks(d)
            .map(<[f64]>::to_vec)
            .collect();
        let first = self.seen + 1 - rows as u64;
        let mut normal = vec![true; rows];
        for &n in self.unlearnt.iter().chain(&self.filled) {
            if let Some(flag) = n.checked_sub(first).and_then(|i| normal.get_mut(i as usize)) {
                *flag = false;
            }
        }
        let version = self.model.as_ref().map_or(0, |m| m.version) + 1 + self.failed_jobs;
        let now = (self.seen, self.last_ts.unwrap_or(0));
        if completion {
            self.completion_for = self.model.as_ref().map(|m| m.version);
        } else {
            self.last_job = Some(now);
        }
        self.job_taken_at = Some(now);
        self.job_in_flight = true;
        self.retrain_requested = false;
        self.drift = 0.0;
        TrainJob {
            config: DetectorConfig::clone(&self.config),
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
            kind,
            context: self.context_mask().unwrap_or_default(),
            floors: self.resolution_floors(),
        }
    }

    /// The newest readings a job trains on when the schedule, not the buffer, sets
    /// them (`None`: the whole buffer). A stream's first job takes the readings
    /// that made it due (`retrain.first_after`), and the job completing a first
    /// model those and the `2 × window` after them, however long the stream waited
    /// for a place in the training queue (a job is cut when it is queued): a burst
    /// of new streams then costs each first model what one alone costs (the
    /// readings that came meanwhile go to the next job). Trained inline, as
    /// `replay` and the evaluations do, a job is never late and the cap takes
    /// nothing away.
    fn job_rows(&self, completion: bool) -> Option<usize> {
        let c = &self.config;
        let first = c.retrain.first_after.max(c.window + 1);
        if self.model.is_none() && self.last_job.is_none() && !self.retrain_requested {
            Some(first)
        } else if completion {
            Some(first + 2 * c.window)
        } else {
            None
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

    /// Features judged as measurements: all but the `context` ones.
    pub(super) fn measured_features(&self, context: Option<&[bool]>) -> usize {
        self.n_features.unwrap_or(1) - context.map_or(0, |m| m.iter().filter(|&&c| c).count())
    }

    /// Seeds the model's statistics from a new model's held-out residuals, judged
    /// as readings are: the context features' residuals are not statistics of the
    /// state, and the joint and change statistics need two measured features.
    fn seed_limits(&mut self, m: &TrainedModel) {
        let lambda = self.config.alert.smoothing;
        let context = self.context_mask();
        let measured = self.measured_features(context.as_deref());
        let model = zero_context(&m.calibration, context.as_deref());
        self.state.seed(Component::Model, &model, lambda);
        if measured > 1 {
            let joint: Vec<Vec<f64>> = model.iter().map(|z| vec![root_mean_square(z, measured)]).collect();
            self.state.seed(Component::Joint, &joint, lambda);
        } else {
            self.state.reset(Component::Joint);
        }
        match &m.changes {
            Some(c) if measured > 1 => self.state.seed(
                Component::Change,
                &zero_context(&c.calibration, context.as_deref()),
                lambda,
            ),
            _ => self.state.reset(Component::Change),
        }
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
                self.seed_limits(&m);
                let (at, at_ts) = self.job_taken_at.unwrap_or((self.seen, self.last_ts.unwrap_or(0)));
                self.model = Some(ActiveModel {
                    version: m.version,
                    scorers: m.members.iter().map(|a| a.compile().to_nibbles()).collect(),
                    normaliser: m.normaliser,
                    errors: m.errors,
                    objective: m.objective,
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

/// Per-feature rows with the `context` features' entries zeroed (as judging zeroes
/// them); the rows themselves when no feature is context, the common stream.
fn zero_context<'a>(rows: &'a [Vec<f64>], context: Option<&[bool]>) -> Cow<'a, [Vec<f64>]> {
    let Some(mask) = context else { return rows.into() };
    let zeroed = |z: &Vec<f64>| z.iter().zip(mask).map(|(&v, &c)| if c { 0.0 } else { v }).collect();
    rows.iter().map(zeroed).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `n` readings of a noisy wave, taking and training each job the
    /// policy asks for inline; returns the kinds of the jobs taken.
    fn feed(det: &mut Detector, n: usize, level: f64) -> Vec<JobKind> {
        let mut kinds = Vec::new();
        for _ in 0..n {
            let t = det.readings_seen() as f64;
            let v = level + (t / 5.0).sin() + 0.1 * (t * 7.3).sin();
            det.update(det.readings_seen() as i64 * 1_000_000, &[v]).unwrap();
            if det.training_due() {
                let job = det.training_job();
                kinds.push(job.kind);
                det.install(train::train(&job, &|| false));
            }
        }
        kinds
    }

    #[test]
    fn each_job_says_why_it_was_asked_for() {
        let mut c = DetectorConfig {
            window: 8,
            ..DetectorConfig::default()
        };
        c.model.hidden = 4;
        c.model.ensemble = 2;
        c.training.first_members = 1;
        c.training.epochs = 2;
        c.training.first_epochs = 2;
        c.retrain.first_after = 40;
        c.retrain.every_readings = 100;
        c.retrain.max_every_readings = 100;
        let mut det = Detector::new(c).unwrap();
        assert_eq!(feed(&mut det, 40, 0.0), [JobKind::First]);
        assert_eq!(feed(&mut det, 16, 0.0), [JobKind::Completion], "2 × window later");
        assert_eq!(
            feed(&mut det, 90, 0.0),
            [JobKind::Scheduled],
            "every_readings after the first"
        );
        det.request_retrain();
        assert_eq!(feed(&mut det, 1, 0.0), [JobKind::Requested]);
        // A level far from what the model learnt drifts it: retrained early.
        let kinds = feed(&mut det, 60, 40.0);
        assert_eq!(kinds.first(), Some(&JobKind::Drift), "{kinds:?}");
    }
}
