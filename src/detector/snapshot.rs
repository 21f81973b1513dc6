//! A detector's snapshot (its serde state and its weights), rebuilding a detector
//! from one, and reconfiguring a live detector (relearning its buffered normal
//! readings when the baselines' settings change).

use serde::{Deserialize, Serialize};

use super::anchored::Anchored;
use super::baseline::{OnlineAr, SavedGaussian, Seasonal, StateBaselines};
use super::cadence::Cadence;
use super::config::{Combine, Objective};
use super::context::Levels;
use super::discrete::Runs;
use super::incident::{MAX_STRETCHES, Recurring, Stretch};
use super::likelihood::Likelihood;
use super::pipeline::Mode;
use super::pruning::Pruning;
use super::state::{Incident, StateCalibration};
use super::train::{ErrorStats, Normaliser, TrainReport};
use super::{ActiveModel, ConfigError, Detector, DetectorConfig, MAX_FEATURES, changes, packed};
use crate::nn::Autoencoder;
use crate::timestamp::Micros;

impl Detector {
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
                config: DetectorConfig::clone(&self.config),
                n_features: self.n_features,
                seen: self.seen,
                last_ts: self.last_ts,
                history: Vec::new(),
                buffer: Some(self.history.clone()),
                unlearnt: self.unlearnt.iter().copied().collect(),
                filled: self.filled.iter().copied().collect(),
                state: self.state.clone(),
                incident: self.incident.as_deref().cloned(),
                incidents: self.incidents,
                anomalous_run: self.anomalous_run,
                // A job out now is lost if the process dies before its model is
                // saved: the restored stream asks for it again.
                retrain_requested: self.retrain_requested || self.job_in_flight,
                model_stale: self.model_stale,
                stretches: self.stretches.iter().copied().collect(),
                pruning: self.pruning.clone(),
                levels: self.levels.clone(),
                runs: self.runs.clone(),
                recurring: self.recurring,
                incident_strong: self.incident_strong,
                cadence: self.cadence,
                imputed: self.imputed,
                fresh_from: self.fresh_from,
                gaussians: self.gaussians.iter().cloned().map(SavedGaussian::Sums).collect(),
                ars: self.ars.clone(),
                seasonals: self.seasonals.clone(),
                state_baselines: self.state_baselines.clone(),
                range: self.range.clone(),
                likelihood: self.likelihood.clone(),
                model_likelihood: match &self.model_likelihood {
                    Some(l) => Likelihood::clone(l),
                    None => Likelihood::new(self.config.likelihood.clone()),
                },
                last_job: self.last_job,
                drift: self.drift,
                drift_streak: self.drift_streak,
                failed_jobs: self.failed_jobs,
                resid_var: self.resid_var.clone(),
                recent: self.recent.clone(),
                model: model.map(|m| ModelMeta {
                    version: m.version,
                    normaliser: m.normaliser.clone(),
                    errors: m.errors.clone(),
                    objective: m.objective,
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
        let d = s.n_features.unwrap_or(0);
        let model = s
            .model
            .map(|meta| restore_model(meta, &snapshot.members, s.config.model.ensemble, d))
            .transpose()?;
        // A snapshot from before the anchored buffer held its readings as f64s.
        let history = match s.buffer {
            Some(b) => b,
            None => Anchored::from_values(d.max(1), &s.history),
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
        // A snapshot from before the Gaussians summed the buffer gives their
        // windows' sizes only; sums that do not fit the buffer are taken again.
        let rows = history.len() / d.max(1);
        let (gaussians, resum): (Vec<_>, Vec<_>) = s.gaussians.into_iter().map(SavedGaussian::restore).unzip();
        let resum = resum.into_iter().any(|r| r) || gaussians.iter().any(|g| g.len() >= rows.max(1));
        let separate = s.config.model.combine == Combine::Separate;
        let mut restored = Detector {
            state_baselines,
            config: super::shared(s.config),
            n_features: s.n_features,
            seen: s.seen,
            last_ts: s.last_ts,
            history,
            unlearnt: s.unlearnt.into(),
            filled: s.filled.into(),
            state: s.state,
            incident: s.incident.map(Box::new),
            incidents: s.incidents,
            anomalous_run: s.anomalous_run,
            retrain_requested: s.retrain_requested,
            model_stale: s.model_stale,
            stretches: s.stretches.into_iter().rev().take(MAX_STRETCHES).rev().collect(),
            pruning: s.pruning,
            levels: s.levels,
            runs: s.runs,
            recurring: s.recurring,
            incident_strong: s.incident_strong,
            cadence: s.cadence,
            imputed: s.imputed,
            fresh_from: s.fresh_from,
            gaussians,
            seasonals,
            ars: s.ars,
            range: s.range,
            likelihood: s.likelihood,
            model_likelihood: separate.then(|| Box::new(s.model_likelihood)),
            model,
            stretch: Vec::new(),
            last_job: s.last_job,
            completion_for: None,
            job_taken_at: None,
            job_in_flight: false,
            drift: s.drift,
            drift_streak: s.drift_streak,
            failed_jobs: s.failed_jobs,
            resid_var: s.resid_var,
            recent: s.recent,
        };
        if resum {
            restored.resum_gaussians();
        }
        Ok(restored)
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
        // Once the stream's width is known, the context must fit it.
        if config.n_features.is_none() {
            config.context_fits(self.n_features)?;
        }
        let relearn = config.baseline != self.config.baseline || config.likelihood != self.config.likelihood;
        let mut next = if relearn { self.relearnt(&config)? } else { self.clone() };
        next.config = super::shared(config);
        if let Some(d) = next.n_features {
            let cap = next.config.buffer_rows() * d;
            while next.history.len() > cap {
                next.history.pop_row();
            }
            next.resum_gaussians();
            let oldest = next.seen + 1 - (next.history.len() / d) as u64;
            next.unlearnt.retain(|&n| n >= oldest);
            next.filled.retain(|&n| n >= oldest);
        }
        Ok(next)
    }

    /// A detector under `config` that learnt this one's learnt buffered readings,
    /// with this one's identity (counters, buffer, incident, model: stale).
    pub(super) fn relearnt(&self, config: &DetectorConfig) -> Result<Detector, ConfigError> {
        let mut fresh = Detector::new(config.clone())?;
        if let Some(d) = self.n_features {
            let rows = (self.history.len() / d) as u64;
            let first = self.seen + 1 - rows;
            let flat: Vec<f64> = self.history.iter().collect();
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
        // `reconfigure` sums the Gaussians over the buffer once it is cut to size.
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
        fresh.completion_for = self.completion_for;
        fresh.job_taken_at = self.job_taken_at;
        fresh.job_in_flight = self.job_in_flight;
        fresh.failed_jobs = self.failed_jobs;
        fresh.model = self.model.clone();
        fresh.resid_var = self.resid_var.clone();
        fresh.recent = self.recent.clone();
        fresh.model_stale = self.model.is_some();
        fresh.retrain_requested = self.model.is_some() || self.retrain_requested;
        Ok(fresh)
    }
}
/// A detector's state without its weights (see [`Detector::snapshot`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectorState {
    config: DetectorConfig,
    n_features: Option<usize>,
    seen: u64,
    last_ts: Option<Micros>,
    /// The buffered readings as snapshots before the anchored buffer wrote
    /// them (`f64`s, rows of `n_features`); empty since.
    #[serde(with = "packed", default, skip_serializing_if = "Vec::is_empty")]
    history: Vec<f64>,
    /// The buffered readings (absent in snapshots from before it: `history`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    buffer: Option<Anchored>,
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
    pruning: Pruning,
    #[serde(default)]
    levels: Vec<Levels>,
    #[serde(default)]
    runs: Vec<Runs>,
    #[serde(default)]
    recurring: Option<Recurring>,
    /// The open incident had a strong reading.
    #[serde(default)]
    incident_strong: bool,
    #[serde(default)]
    cadence: Cadence,
    #[serde(default)]
    imputed: u64,
    #[serde(default)]
    fresh_from: u64,
    /// The windowed Gaussians' sums (their windows in snapshots from before).
    gaussians: Vec<SavedGaussian>,
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
    #[serde(default)]
    drift_streak: u32,
    failed_jobs: u64,
    resid_var: Vec<f64>,
    /// Absent in snapshots from before charts: none kept.
    #[serde(default)]
    recent: super::recent::Recent,
    model: Option<ModelMeta>,
}

/// The model's metadata in a snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ModelMeta {
    version: u64,
    normaliser: Normaliser,
    errors: ErrorStats,
    /// Models saved before the choice existed reconstructed every step.
    #[serde(default = "Objective::legacy")]
    objective: Objective,
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
        sized("levels", self.levels.len())?;
        sized("runs", self.runs.len())?;
        self.runs.iter().try_for_each(Runs::check)?;
        if d == 0 && !self.history.is_empty() || d > 0 && !self.history.len().is_multiple_of(d) {
            return Err(format!("history of {} values for {d} features", self.history.len()));
        }
        if let Some(b) = &self.buffer {
            b.check()?;
            if !b.is_empty() && b.width() != d || !self.history.is_empty() {
                return Err(format!("a buffer of rows of {} for {d} features", b.width()));
            }
        }
        self.gaussians.iter().try_for_each(SavedGaussian::check)?;
        self.ars.iter().try_for_each(OnlineAr::check)?;
        self.seasonals.iter().try_for_each(Seasonal::check)?;
        self.state_baselines.iter().try_for_each(StateBaselines::check)?;
        self.recent.check(d)?;
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

/// The active model of a snapshot: its metadata and its `members` (1 to
/// `ensemble` of them) for `d` features.
fn restore_model(
    meta: ModelMeta,
    members: &[Autoencoder<f32>],
    ensemble: usize,
    d: usize,
) -> Result<ActiveModel, ConfigError> {
    if members.is_empty() || members.len() > ensemble {
        return Err(ConfigError(format!("snapshot has {} model members", members.len())));
    }
    let changes = meta
        .changes
        .map(|c| changes::ChangeModel::from_meta(c, d).map(Box::new))
        .transpose()
        .map_err(|e| ConfigError(format!("inconsistent snapshot: {e}")))?;
    Ok(ActiveModel {
        version: meta.version,
        scorers: members.iter().map(|m| m.compile().to_nibbles()).collect(),
        normaliser: meta.normaliser,
        errors: meta.errors,
        objective: meta.objective,
        trained_at_reading: meta.trained_at_reading,
        trained_at: meta.trained_at,
        report: meta.report,
        changes,
    })
}
