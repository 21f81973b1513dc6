//! The state's baselines of one feature: level, AR and seasonal residual learnt
//! from normal readings only, and its stuck check.

use super::{EwStats, OnlineAr, SensorResolution, Stuck, std_floor};

/// One feature's baselines for the anomaly state: the level, an AR(p) and the
/// seasonal residual, learnt from normal readings only (the event path keeps its
/// own, which learn everything).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StateBaselines {
    /// Level against the learnt normal level.
    pub level: EwStats,
    /// AR residual.
    pub ar: OnlineAr,
    /// Residual against the same phase of earlier periods.
    pub seasonal: EwStats,
    /// Runs of repeated values.
    #[serde(default)]
    pub stuck: Stuck,
    /// The long-run normal level, over [`LONG_RUN`] times the level's window: a
    /// slow drift that the level follows leaves it behind.
    #[serde(default)]
    pub long: EwStats,
    /// The step the feature is read in.
    #[serde(default)]
    pub resolution: SensorResolution,
}

/// How many times longer than the level's window the long-run level remembers.
pub const LONG_RUN: usize = 16;

impl StateBaselines {
    /// Whether deserialised baselines are ones this code could have built.
    pub fn check(&self) -> Result<(), String> {
        self.ar.check()
    }

    /// Fresh baselines.
    pub fn new(ar_order: usize, ar_forgetting: f64, window: usize) -> Self {
        StateBaselines {
            level: EwStats::default(),
            ar: OnlineAr::new(ar_order, ar_forgetting).with_resid_window(window),
            seasonal: EwStats::default(),
            stuck: Stuck::default(),
            long: EwStats::default(),
            resolution: SensorResolution::default(),
        }
    }

    /// Follows the sequence with the newest value (every reading, learnt or not).
    pub fn observe(&mut self, x: f64) {
        if let Some(last) = self.stuck.last() {
            self.resolution.observe(x - last);
        }
        self.stuck.observe(x);
    }

    /// Signed `(level z, AR z, seasonal z)` of `x` (above what is expected:
    /// positive), given its seasonal expectation, if any. `floor` is the least
    /// seasonal residual scale, `step` the AR's (the feature's
    /// [`SensorResolution::floor`]).
    pub fn score(&self, x: f64, seasonal_expected: Option<f64>, floor: f64, step: f64) -> (f64, f64, f64) {
        let (zl, _) = self.level.signed_score(x);
        let (za, _) = self.ar.signed_score_floored(x, step);
        let zs = match seasonal_expected {
            Some(e) if self.seasonal.len() >= 16 => {
                let (_, m) = self.seasonal.score(x - e);
                let sd = std_floor(0.0, self.seasonal.var.sqrt()).max(floor).max(1e-12);
                ((x - e - m) / sd).clamp(-1e12, 1e12)
            }
            _ => 0.0,
        };
        (zl, za, zs)
    }

    /// The signed trend z of `x`: its distance from the long-run level in the long
    /// run's standard deviations (a stream that wanders in normal times has a wide
    /// one), once the long run knows more readings than the level's `window`
    /// (before, it is the level); `None` until then.
    pub fn trend(&self, x: f64, window: usize) -> Option<f64> {
        if self.long.len() <= window as u64 {
            return None;
        }
        let sd = std_floor(self.long.mean, self.long.var.sqrt());
        Some(((x - self.long.mean) / sd).clamp(-1e12, 1e12))
    }

    /// Whether the seasonal pattern explains this feature: its residual's spread is
    /// under half the level's (the cycle carries three quarters of the variance).
    /// A period found in data that is not seasonal (a slow wander has peaks in its
    /// autocorrelation too) explains nothing, and its residual must not judge.
    pub fn seasonal_explains(&self) -> bool {
        self.seasonal.len() >= 16 && self.level.len() >= 16 && self.seasonal.var < 0.25 * self.level.var
    }

    /// What the state expects for `x`'s reading: the AR's one-step prediction, or
    /// the learnt level before the AR has one.
    pub fn forecast(&self, x: f64) -> f64 {
        match self.ar.score(x) {
            (_, pred) if pred != x => pred,
            _ if self.level.is_empty() => x,
            _ => self.level.score(x).1,
        }
    }

    /// Starts the learnt level afresh (a new normal was accepted: its readings are
    /// learnt next).
    pub fn restart_level(&mut self) {
        self.level = EwStats::default();
        self.long = EwStats::default();
    }

    /// Moves past an `x` that is not learnt.
    pub fn skip(&mut self) {
        self.ar.skip();
    }

    /// Forgets the AR's lags (a long gap).
    pub fn restart_lags(&mut self) {
        self.ar.restart_lags();
    }

    /// Moves past a row filled in for a gap with `x`.
    pub fn skip_as(&mut self, x: f64) {
        self.ar.skip_as(Some(x));
    }

    /// Learns a normal `x`.
    pub fn learn(&mut self, x: f64, seasonal_expected: Option<f64>, window: usize) {
        self.level.learn(x, window);
        self.long.learn(x, LONG_RUN * window);
        self.ar.learn_value(x);
        if let Some(e) = seasonal_expected {
            self.seasonal.learn(x - e, window);
        }
    }
}
