//! Detector configuration: serde types with defaults, checked into a valid config
//! before use. Every field has a default, so `{}` is a complete config.

use serde::{Deserialize, Serialize};

use super::MAX_FEATURES;
use super::context::FeatureRef;
use super::likelihood::LikelihoodConfig;
use crate::nn::CellKind;

/// Defines a closed set of choices a config names by string: (de)serialised by
/// name, an unknown name refused with the field and the choices named.
macro_rules! named_choice {
    ($(#[$doc:meta])* $name:ident, $field:literal { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// Its name in configs.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                match s.as_str() {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!("{} must be one of {}, got {s:?}", $field, [$($text),+].join(", "))),
                }
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.name().into()
            }
        }
    };
}

named_choice! {
    /// How the model's surprise meets the baselines' once a model exists.
    Combine, "model.combine" {
        /// The model alone.
        Model = "model",
        /// The largest surprise.
        Max = "max",
        /// Each calibrated by its own likelihood; the larger score.
        Separate = "separate",
        /// The mean of the model's, Gaussian's and AR's raw scores.
        Mean = "mean",
    }
}

named_choice! {
    /// How a reconstruction error becomes a surprise.
    ErrorScale, "model.error_scale" {
        /// The root of the error over the training windows' mean error.
        Rms = "rms",
        /// z against the training windows' log-error distribution.
        Calibrated = "calibrated",
        /// The newest reading's residual against a running residual scale.
        Running = "running",
    }
}

named_choice! {
    /// What the model is asked for at the newest step of each window.
    Objective, "model.objective" {
        /// The newest step is hidden from the model (the step before it stands
        /// in), so its error there is a one-step forecast from the window
        /// before it; the other steps are reconstructed.
        Forecast = "forecast",
        /// Every step is reconstructed from the whole window, the newest reading
        /// included.
        Reconstruct = "reconstruct",
    }
}

impl Objective {
    /// What models saved before the choice existed did: reconstruct every step.
    pub fn legacy() -> Self {
        Objective::Reconstruct
    }

    /// The model's input for a window `[W, d]` (row-major) it scores or learns:
    /// the window itself, or with its newest step replaced by the one before.
    pub fn hide_newest(self, window: &mut [f32], d: usize) {
        let w = window.len().checked_div(d).unwrap_or(0);
        if self == Objective::Forecast && w >= 2 {
            window.copy_within((w - 2) * d..(w - 1) * d, (w - 1) * d);
        }
    }

    /// The model's input for `window` (steps of `d` values): borrowed when
    /// nothing is hidden, so a reconstructing model copies nothing.
    pub fn input<'a>(self, window: &'a [f32], d: usize) -> std::borrow::Cow<'a, [f32]> {
        match self {
            Objective::Reconstruct => std::borrow::Cow::Borrowed(window),
            Objective::Forecast => {
                let mut hidden = window.to_vec();
                self.hide_newest(&mut hidden, d);
                std::borrow::Cow::Owned(hidden)
            }
        }
    }
}

/// `model.cell` by [`CellKind::name`] (the network core has no serde).
mod cell_name {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::nn::CellKind;

    pub fn serialize<S: Serializer>(kind: &CellKind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(kind.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<CellKind, D::Error> {
        let name = String::deserialize(d)?;
        CellKind::parse(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "model.cell {name:?} is not one of rnn, lstm, gru, gru-reset-before"
            ))
        })
    }
}

/// What scores a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectorKind {
    /// Recurrent autoencoder, with the baselines covering warm-up (the default).
    Autoencoder,
    /// Online AR(p) residuals only.
    Ar,
    /// Windowed Gaussian z-score only.
    Gaussian,
    /// Seasonal residual only (silent until the stream shows a period).
    Seasonal,
    /// All three baselines, no model (the autoencoder's ablation).
    Baselines,
}

/// Shape of the per-stream model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// `rnn`, `lstm`, `gru` or `gru-reset-before`.
    #[serde(with = "cell_name")]
    pub cell: CellKind,
    /// Hidden units per direction.
    pub hidden: usize,
    /// Layers in encoder and decoder.
    pub layers: usize,
    /// Bidirectional encoder.
    pub bidirectional: bool,
    /// Dropout between stacked layers while training.
    pub dropout: f64,
    /// Independently seeded models whose errors are averaged (robustness to seeds).
    pub ensemble: usize,
    /// Steps at the end of the window whose reconstruction error scores a reading
    /// (0: the whole window). A reading's own step reacts at once; the whole window
    /// dilutes a one-reading anomaly W-fold.
    pub score_steps: usize,
    /// How the model's surprise meets the baselines' once a model exists:
    /// `model` (the model alone), `max` (the largest surprise), `separate` (each
    /// calibrated by its own likelihood, the larger score) or `mean` (the mean of the
    /// model's, Gaussian's and AR's raw scores).
    pub combine: Combine,
    /// How a reconstruction error becomes a surprise: `rms` (the root of the error
    /// over the training windows' mean error: for one scored step, the residual in
    /// standard deviations, on the baselines' scale), `calibrated` (z against the
    /// training windows' log-error distribution) or `running` (the newest reading's
    /// residual against a running residual scale, adapting to local noise).
    pub error_scale: ErrorScale,
    /// What the model is asked for at the newest step: `reconstruct` (every
    /// step from the whole window; the default) or `forecast` (the newest
    /// reading is hidden from it, so its error there is a one-step forecast
    /// error: fewer false alarms at a higher `alert.threshold`, see
    /// BENCHMARKS.md, but a fault the model can extrapolate is held less).
    pub objective: Objective,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            cell: CellKind::Lstm,
            hidden: 16,
            layers: 1,
            bidirectional: false,
            dropout: 0.0,
            ensemble: 3,
            score_steps: 1,
            combine: Combine::Max,
            error_scale: ErrorScale::Rms,
            objective: Objective::Reconstruct,
        }
    }
}

/// How a model is trained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Most recent readings kept for training.
    pub buffer: usize,
    /// Step between training windows cut from the buffer.
    pub stride: usize,
    /// Maximum epochs per job for a member that starts from the stream's
    /// previous model (every job after the first).
    pub epochs: usize,
    /// Maximum epochs for a member that starts from scratch: a stream's first
    /// model (or the first after its shape changed). Fewer than `epochs` gets a
    /// burst of new streams its first models sooner (the next job, at twice the
    /// readings, goes on from these weights); 4 was measured and is not the
    /// default: a clean daily cycle then raised a false incident.
    pub first_epochs: usize,
    /// Ensemble members a stream's first model trains (0: all of
    /// `model.ensemble`). The rest are trained `2 × window` readings later by a
    /// job that completes the ensemble, so a burst of new streams gets its first
    /// models sooner (1: five times sooner for 1,000 new streams) and is judged
    /// by a whole ensemble soon after. Not the default: NAB and SMAP lost about
    /// two points each (BENCHMARKS.md).
    pub first_members: usize,
    /// Epochs without held-out improvement before stopping.
    pub patience: usize,
    /// Windows per batch.
    pub batch: usize,
    /// Adam learning rate.
    pub learning_rate: f64,
    /// Global gradient-norm clip.
    pub max_grad_norm: f64,
    /// Fraction of windows (the most recent) held out for early stopping and calibration.
    pub holdout: f64,
    /// Seed of initialisation and shuffling.
    pub seed: u64,
}

impl TrainConfig {
    /// Members a first model trains, of an ensemble of `ensemble`.
    pub fn first_model_members(&self, ensemble: usize) -> usize {
        match self.first_members {
            0 => ensemble,
            k => k.min(ensemble),
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            buffer: 1024,
            stride: 2,
            epochs: 12,
            first_epochs: 12,
            first_members: 0,
            patience: 2,
            batch: 32,
            learning_rate: 3e-3,
            max_grad_norm: 1.0,
            holdout: 0.15,
            seed: 0,
        }
    }
}

/// When a stream's model is retrained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrainPolicy {
    /// Readings before the first model is trained.
    pub first_after: usize,
    /// Retrain after this many readings since the last job (0: never); the
    /// interval doubles with each model, up to `max_every_readings`.
    pub every_readings: usize,
    /// The longest interval the doubling reaches. Each retrain restarts the
    /// model's limits from its held-out residuals, and a tail of one in 10,000
    /// needs thousands of normal readings to read, so a model that does not
    /// drift is kept longer (a drifting one is retrained early by `on_drift`).
    pub max_every_readings: usize,
    /// Retrain after this much stream time since the last job (0: never).
    pub every_seconds: f64,
    /// Retrain early when the model's recent error drifts far above its held-out error.
    pub on_drift: bool,
}

impl Default for RetrainPolicy {
    fn default() -> Self {
        RetrainPolicy {
            first_after: 384,
            every_readings: 768,
            max_every_readings: 3072,
            every_seconds: 0.0,
            on_drift: true,
        }
    }
}

/// Classical baselines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaselineConfig {
    /// Readings in the windowed Gaussian.
    pub gaussian_window: usize,
    /// AR order.
    pub ar_order: usize,
    /// RLS forgetting factor.
    pub ar_forgetting: f64,
    /// Score values against the same phase of earlier periods once the stream shows a
    /// clear period (found from the autocorrelation of the buffered readings).
    pub seasonal: bool,
    /// Autocorrelation a period needs to be used.
    pub seasonal_min_acf: f64,
    /// Earlier periods whose median is the seasonal expectation.
    pub seasonal_periods: usize,
    /// Readings between period re-estimates.
    pub seasonal_every: usize,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig {
            gaussian_window: 512,
            ar_order: 4,
            ar_forgetting: 0.999,
            seasonal: true,
            seasonal_min_acf: 0.3,
            seasonal_periods: 3,
            seasonal_every: 256,
        }
    }
}

/// The anomaly state and incidents (see `state.rs`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertConfig {
    /// A reading is anomalous when its score is at or above this. The score is 0.5
    /// at the stream's calibrated limit, 0.9 at three times it, 0.99 at ten times.
    pub threshold: f64,
    /// Consecutive anomalous readings before an incident opens (1: at once).
    pub min_duration: usize,
    /// Consecutive normal readings after which an open incident resolves.
    pub resolve_after: usize,
    /// Stream-time seconds after which a lasting anomalous state is accepted as the
    /// new normal: the incident resolves as `accepted` and its readings are learnt
    /// (0: never; the operator accepts with `POST /v1/streams/{id}/accept`).
    pub accept_after: f64,
    /// Weight λ of the newest reading in the smoothed statistics (EWMA), which see
    /// sustained shifts too small for any single reading.
    pub smoothing: f64,
    /// Normal readings a statistic needs before its limit is used.
    pub min_normal: usize,
    /// Pruning (`pruning.rs`): an excursion beyond the limit is an anomaly only if
    /// it goes `prune_margin` beyond the largest ratio of the `prune_window`
    /// readings before it (0: off).
    pub prune_window: usize,
    /// The fraction by which an excursion must exceed the recent largest ratio
    /// (0.3; the SMAP paper's 0.13 was set on its own error scale, BENCHMARKS.md).
    pub prune_margin: f64,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            threshold: 0.5,
            min_duration: 1,
            resolve_after: 10,
            accept_after: 7.0 * 86_400.0,
            smoothing: 0.1,
            min_normal: 64,
            prune_window: 2048,
            prune_margin: 0.3,
        }
    }
}

/// Everything about one stream's detector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// What scores the stream.
    pub detector: DetectorKind,
    /// Features per reading; `None` takes it from the first reading.
    pub n_features: Option<usize>,
    /// Window length W: each reading is scored by the window of W readings ending at it.
    pub window: usize,
    /// The model's shape.
    pub model: ModelConfig,
    /// How it is trained.
    pub training: TrainConfig,
    /// When it is retrained.
    pub retrain: RetrainPolicy,
    /// Warm-up baselines.
    pub baseline: BaselineConfig,
    /// Surprise (in standard deviations) that maps to raw score 1 − 1/e before the
    /// likelihood: `raw = 1 − exp(−surprise / raw_scale)`.
    pub raw_scale: f64,
    /// Score calibration.
    pub likelihood: LikelihoodConfig,
    /// Flag values beyond the range seen so far, widened by this fraction of the range
    /// (`None`: off).
    pub range_tolerance: Option<f64>,
    /// Readings seen before the range rule applies (the range of the first few
    /// readings says little).
    pub range_after: usize,
    /// Alerting.
    pub alert: AlertConfig,
    /// The features' names, in order (optional; at a stream's width once known):
    /// `context` may list features by them.
    pub features: Vec<String>,
    /// Features (by index, or by name in `features`) the model reads but the
    /// state never judges: commands, modes, deploy markers (`context.rs`).
    pub context: Vec<FeatureRef>,
    /// Also treat evident indicators (at most two distinct values) as context, on
    /// streams of two or more features.
    pub context_auto: bool,
    /// Judge each feature that takes at most 8 distinct values by which values it
    /// takes and how long it stays on each, not by how far it moves
    /// (`discrete.rs`). On by default: on SMAP it finds the pulses held too
    /// long and the switches that stick, with and without the command flags
    /// (BENCHMARKS.md).
    pub discrete_runs: bool,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            detector: DetectorKind::Autoencoder,
            n_features: None,
            window: 32,
            model: ModelConfig::default(),
            training: TrainConfig::default(),
            retrain: RetrainPolicy::default(),
            baseline: BaselineConfig::default(),
            raw_scale: 3.0,
            likelihood: LikelihoodConfig::default(),
            range_tolerance: Some(0.05),
            range_after: 288,
            alert: AlertConfig::default(),
            features: Vec::new(),
            context: Vec::new(),
            context_auto: true,
            discrete_runs: true,
        }
    }
}

/// A config that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid detector config: {0}")]
pub struct ConfigError(pub String);

impl DetectorConfig {
    /// Checks every field; the message names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_shape()?;
        self.validate_training()?;
        self.validate_baselines()?;
        self.validate_alert()?;
        self.validate_context()
    }

    /// The context features: known positions, never every feature.
    fn validate_context(&self) -> Result<(), ConfigError> {
        self.context_fits(self.n_features)
    }

    /// Whether `context` fits a stream of `width` features (`None`: not known
    /// yet; then as many as `features` names, or at most `MAX_FEATURES`): known
    /// positions, never every feature.
    pub fn context_fits(&self, width: Option<usize>) -> Result<(), ConfigError> {
        let named = (!self.features.is_empty()).then_some(self.features.len());
        let limit = width.or(named).unwrap_or(super::MAX_FEATURES);
        super::context::check_names(&self.features, limit).map_err(ConfigError)?;
        if let Some(d) = width.filter(|&d| !self.features.is_empty() && d != self.features.len()) {
            return Err(ConfigError(format!(
                "features names {} features, but the stream has {d}",
                self.features.len()
            )));
        }
        let context = self.context_indices().map_err(ConfigError)?;
        if let Some(&j) = context.iter().find(|&&j| j >= limit) {
            return Err(ConfigError(format!(
                "context names feature {j}, but features are numbered 0..{limit}"
            )));
        }
        let mut listed = context;
        listed.sort_unstable();
        listed.dedup();
        if width.or(named).is_some_and(|d| listed.len() >= d) {
            return Err(ConfigError(
                "context names every feature: at least one must be judged".into(),
            ));
        }
        Ok(())
    }

    /// The context features' indices (names looked up in `features`).
    pub fn context_indices(&self) -> Result<Vec<usize>, String> {
        super::context::resolve(&self.context, &self.features)
    }

    /// The model, the window and the feature count.
    fn validate_shape(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError(m));
        let m = &self.model;
        if !(1..=512).contains(&m.hidden) {
            return bad(format!("model.hidden must be 1..=512, got {}", m.hidden));
        }
        if !(1..=4).contains(&m.layers) {
            return bad(format!("model.layers must be 1..=4, got {}", m.layers));
        }
        if !(1..=8).contains(&m.ensemble) {
            return bad(format!("model.ensemble must be 1..=8, got {}", m.ensemble));
        }
        if !(2..=1024).contains(&self.window) {
            return bad(format!("window must be 2..=1024, got {}", self.window));
        }
        if m.score_steps > self.window {
            return bad(format!(
                "model.score_steps must be at most window ({}), got {}",
                self.window, m.score_steps
            ));
        }
        if !(0.0..0.9).contains(&m.dropout) {
            return bad(format!("model.dropout must be in [0, 0.9), got {}", shown(m.dropout)));
        }
        if let Some(n) = self.n_features
            && !(1..=MAX_FEATURES).contains(&n)
        {
            return bad(format!("n_features must be 1..={MAX_FEATURES}, got {n}"));
        }
        Ok(())
    }

    /// Training and the retrain policy.
    fn validate_training(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError(m));
        let t = &self.training;
        if t.buffer < 2 * self.window || t.buffer > 100_000 {
            return bad(format!("training.buffer must be 2×window..=100000, got {}", t.buffer));
        }
        if !(1..=t.buffer).contains(&t.stride)
            || !(1..=1000).contains(&t.epochs)
            || !(1..=1000).contains(&t.first_epochs)
            || !(1..=4096).contains(&t.batch)
        {
            return bad("training.stride must be 1..=buffer, epochs and first_epochs 1..=1000, batch 1..=4096".into());
        }
        if t.first_members > self.model.ensemble {
            return bad(format!(
                "training.first_members must be 0 (all) or at most model.ensemble ({}), got {}",
                self.model.ensemble, t.first_members
            ));
        }
        if t.patience > 1000 {
            return bad(format!("training.patience must be at most 1000, got {}", t.patience));
        }
        if !(t.learning_rate > 0.0 && t.learning_rate < 1.0) {
            return bad(format!(
                "training.learning_rate must be in (0, 1), got {}",
                t.learning_rate
            ));
        }
        if !(t.max_grad_norm > 0.0 && t.max_grad_norm.is_finite()) {
            return bad(format!(
                "training.max_grad_norm must be positive, got {}",
                t.max_grad_norm
            ));
        }
        if !(0.0..0.9).contains(&t.holdout) {
            return bad(format!(
                "training.holdout must be in [0, 0.9), got {}",
                shown(t.holdout)
            ));
        }
        if self.retrain.first_after < self.window + 1 || self.retrain.first_after > 10_000_000 {
            return bad(format!(
                "retrain.first_after must exceed window ({}) and be at most 10000000",
                self.window
            ));
        }
        if self.retrain.every_readings > 10_000_000 || self.retrain.max_every_readings > 10_000_000 {
            return bad("retrain.every_readings and retrain.max_every_readings must be at most 10000000".into());
        }
        if !(self.retrain.every_seconds >= 0.0 && self.retrain.every_seconds <= 3.2e9) {
            return bad("retrain.every_seconds must be 0..=3.2e9".into());
        }
        Ok(())
    }

    /// The baselines, the likelihood and the event score's range rule.
    fn validate_baselines(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError(m));
        let b = &self.baseline;
        if !(2..=100_000).contains(&b.gaussian_window)
            || !(1..=64).contains(&b.ar_order)
            || !(0.9..=1.0).contains(&b.ar_forgetting)
        {
            return bad("baseline: gaussian_window 2..=100000, ar_order 1..=64, ar_forgetting in [0.9, 1]".into());
        }
        // Each period estimate costs O(n²) in the buffered readings (at most
        // PERIOD_SEARCH of them): it may run at most every 64 readings.
        if !(0.0..=1.0).contains(&b.seasonal_min_acf)
            || !(1..=super::baseline::MAX_SEASONAL_PERIODS).contains(&b.seasonal_periods)
            || !(64..=1_000_000).contains(&b.seasonal_every)
        {
            return bad(
                "baseline: seasonal_min_acf in [0, 1], seasonal_periods 1..=16, seasonal_every 64..=1000000".into(),
            );
        }
        let l = &self.likelihood;
        if !(1..=10_000).contains(&l.averaging_window)
            || !(1..=100_000).contains(&l.reestimation_period)
            || l.historic_window > 1_000_000
            || l.historic_window < l.estimation_samples.max(2)
            || l.learning_period > 1_000_000
        {
            return bad(
                "likelihood: averaging_window 1..=10000, reestimation_period 1..=100000, \
                 estimation_samples ≤ historic_window ≤ 1000000, learning_period ≤ 1000000"
                    .into(),
            );
        }
        if !(0.0..=1.0).contains(&l.min_mean) || !(0.0..=1.0).contains(&l.min_variance) {
            return bad("likelihood: min_mean and min_variance in [0, 1]".into());
        }
        if self.range_after > 10_000_000 {
            return bad("range_after must be at most 10000000".into());
        }
        if !(self.raw_scale > 0.0 && self.raw_scale <= 1e6) {
            return bad(format!("raw_scale must be positive, got {}", shown(self.raw_scale)));
        }
        if let Some(tol) = self.range_tolerance
            && !(0.0..=1e6).contains(&tol)
        {
            return bad(format!("range_tolerance must be 0..=1e6, got {tol}"));
        }
        Ok(())
    }

    /// The state's limits and the incident rules.
    fn validate_alert(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError(m));
        let a = &self.alert;
        if !(a.threshold > 0.0 && a.threshold < 1.0) {
            return bad(format!("alert.threshold must be in (0, 1), got {}", shown(a.threshold)));
        }
        if !(1..=100_000).contains(&a.min_duration) || !(1..=100_000).contains(&a.resolve_after) {
            return bad("alert.min_duration and alert.resolve_after must be 1..=100000".into());
        }
        if !(a.accept_after >= 0.0 && a.accept_after <= 3.2e9) {
            return bad(format!(
                "alert.accept_after must be 0..=3.2e9 seconds, got {}",
                a.accept_after
            ));
        }
        if !(a.smoothing > 0.0 && a.smoothing <= 1.0) {
            return bad(format!("alert.smoothing must be in (0, 1], got {}", shown(a.smoothing)));
        }
        if !(8..=100_000).contains(&a.min_normal) {
            return bad(format!("alert.min_normal must be 8..=100000, got {}", a.min_normal));
        }
        if a.prune_window > 1_000_000 {
            return bad(format!(
                "alert.prune_window must be 0..=1000000, got {}",
                a.prune_window
            ));
        }
        if !(0.0..=10.0).contains(&a.prune_margin) {
            return bad(format!(
                "alert.prune_margin must be in [0, 10], got {}",
                shown(a.prune_margin)
            ));
        }
        Ok(())
    }

    /// Whether a model trained under `other` fits this config: the same model,
    /// window, features and detector. Other fields (training, alert, baselines,
    /// likelihood, retrain policy) can change under a live model.
    pub fn same_shape(&self, other: &DetectorConfig) -> bool {
        self.model == other.model
            && self.window == other.window
            && self.n_features == other.n_features
            && self.detector == other.detector
    }

    /// The shape of this config's autoencoder for `d_input` features.
    pub fn autoencoder(&self, d_input: usize) -> crate::nn::AutoencoderConfig {
        crate::nn::AutoencoderConfig {
            kind: self.cell(),
            d_input,
            d_hidden: self.model.hidden,
            n_layers: self.model.layers,
            bidirectional: self.model.bidirectional,
            dropout: self.model.dropout,
        }
    }

    /// The cell kind.
    pub fn cell(&self) -> CellKind {
        self.model.cell
    }
}

/// A number as a config error shows it: plainly when it is of a usual size, in
/// scientific notation otherwise (1e308 is not 309 digits).
fn shown(x: f64) -> String {
    if x == 0.0 || (1e-4..1e9).contains(&x.abs()) || !x.is_finite() {
        format!("{x}")
    } else {
        format!("{x:e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_empty_toml_gives_defaults() {
        DetectorConfig::default().validate().unwrap();
        let c: DetectorConfig = toml::from_str("").unwrap();
        assert_eq!(c, DetectorConfig::default());
        let c: DetectorConfig = toml::from_str("window = 16\n[model]\ncell = \"gru\"\n").unwrap();
        assert_eq!((c.window, c.model.cell.name(), c.model.hidden), (16, "gru", 16));
    }

    #[test]
    fn bad_values_are_named() {
        for (text, field) in [
            ("[model]\ncell = \"transformer\"", "model.cell"),
            ("[model]\ncombine = \"min\"", "model.combine"),
            ("[model]\nerror_scale = \"log\"", "model.error_scale"),
            ("[model]\nobjective = \"predict\"", "model.objective"),
        ] {
            let err = toml::from_str::<DetectorConfig>(text).unwrap_err().to_string();
            assert!(err.contains(field), "{text}: {err}");
        }
        for window in [0, 1] {
            let c = DetectorConfig {
                window,
                ..Default::default()
            };
            // The window itself is named, not a field that depends on it.
            assert!(c.validate().unwrap_err().0.starts_with("window must be"));
        }
        assert!(
            toml::from_str::<DetectorConfig>("windw = 3").is_err(),
            "unknown fields are rejected"
        );
    }

    #[test]
    fn a_forecast_hides_the_newest_step_and_a_reconstruction_nothing() {
        let window = [1.0, 10.0, 2.0, 20.0, 3.0, 30.0];
        let mut f = window;
        Objective::Forecast.hide_newest(&mut f, 2);
        assert_eq!(f, [1.0, 10.0, 2.0, 20.0, 2.0, 20.0]);
        let mut r = window;
        Objective::Reconstruct.hide_newest(&mut r, 2);
        assert_eq!(r, window);
        // One step has nothing before it to stand in.
        let mut one = [5.0, 6.0];
        Objective::Forecast.hide_newest(&mut one, 2);
        assert_eq!(one, [5.0, 6.0]);
        let c: DetectorConfig = toml::from_str("[model]\nobjective = \"forecast\"").unwrap();
        assert_eq!(c.model.objective, Objective::Forecast);
    }

    #[test]
    fn an_absurd_number_is_shown_short() {
        let mut c = DetectorConfig::default();
        c.alert.prune_margin = 1e308;
        let err = c.validate().unwrap_err().0;
        assert_eq!(err, "alert.prune_margin must be in [0, 10], got 1e308");
        c.alert.prune_margin = 11.5;
        assert!(c.validate().unwrap_err().0.ends_with("got 11.5"));
    }
}
