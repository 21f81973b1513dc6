//! Classical per-feature baselines that score from the first readings: a windowed
//! Gaussian, an autoregressive model fitted online by recursive least squares, and a
//! seasonal residual once the stream shows a period.

use std::collections::VecDeque;

/// Mean and standard deviation of the last `cap` values.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WindowStats {
    #[serde(with = "super::packed")]
    buf: VecDeque<f64>,
    cap: usize,
    sum: f64,
    sumsq: f64,
    /// Pushes since the sums were last recomputed (bounds floating-point drift).
    since_exact: usize,
}

impl WindowStats {
    /// Whether a deserialised window is one this code could have built.
    pub fn check(&self) -> Result<(), String> {
        if self.cap == 0 || self.cap > 1_000_000 || self.buf.len() > self.cap {
            return Err(format!(
                "window of {} values in a capacity of {}",
                self.buf.len(),
                self.cap
            ));
        }
        Ok(())
    }

    /// An empty window of `cap` values.
    pub fn new(cap: usize) -> Self {
        WindowStats {
            // Grows as it fills: a seasonal window stays empty while there is no period.
            buf: VecDeque::new(),
            cap: cap.max(1),
            sum: 0.0,
            sumsq: 0.0,
            since_exact: 0,
        }
    }

    /// Adds a value, dropping the oldest when full.
    pub fn push(&mut self, x: f64) {
        if self.buf.len() == self.cap
            && let Some(old) = self.buf.pop_front()
        {
            self.sum -= old;
            self.sumsq -= old * old;
        }
        self.buf.push_back(x);
        self.sum += x;
        self.sumsq += x * x;
        self.since_exact += 1;
        if self.since_exact >= self.cap {
            self.sum = self.buf.iter().sum();
            self.sumsq = self.buf.iter().map(|v| v * v).sum();
            self.since_exact = 0;
        }
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no value is held.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Mean of the values held (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.buf.is_empty() {
            0.0
        } else {
            self.sum / self.buf.len() as f64
        }
    }

    /// Population standard deviation of the values held.
    pub fn std(&self) -> f64 {
        let n = self.buf.len() as f64;
        if n < 2.0 {
            return 0.0;
        }
        let m = self.sum / n;
        (self.sumsq / n - m * m).max(0.0).sqrt()
    }
}

/// The scale below which a standard deviation is treated as noise-free: relative to
/// the values' magnitude, so flat series do not divide by zero.
pub fn std_floor(mean: f64, std: f64) -> f64 {
    std.max(1e-3 * mean.abs()).max(1e-9)
}

/// Windowed Gaussian: how many standard deviations a value lies from the mean of the
/// previous `window` values.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WindowedGaussian {
    stats: WindowStats,
}

impl WindowedGaussian {
    /// Whether a deserialised baseline is one this code could have built.
    pub fn check(&self) -> Result<(), String> {
        self.stats.check()
    }

    /// A detector over the last `window` values.
    pub fn new(window: usize) -> Self {
        WindowedGaussian {
            stats: WindowStats::new(window),
        }
    }

    /// The z-score of `x` against the window (before `x` joins it), then adds `x`.
    /// Returns `(z, mean)`; `z` is 0 until two values have been seen.
    pub fn update(&mut self, x: f64) -> (f64, f64) {
        let r = self.score(x);
        self.learn(x);
        r
    }

    /// The z-score of `x` against the window and the window's mean, learning nothing.
    pub fn score(&self, x: f64) -> (f64, f64) {
        let (m, s) = (self.stats.mean(), self.stats.std());
        let z = if self.stats.len() < 2 {
            0.0
        } else {
            (x - m).abs() / std_floor(m, s)
        };
        (z, m)
    }

    /// Adds `x` to the window.
    pub fn learn(&mut self, x: f64) {
        self.stats.push(x);
    }

    /// Forgets everything (a new normal starts).
    pub fn clear(&mut self) {
        self.stats = WindowStats::new(self.stats.cap);
    }
}

/// Exponentially weighted mean and variance: a compact "learnt normal" of one
/// statistic, updated only with the values it is given (the state's baselines give
/// it normal readings only). Weights are 1/n until `window` values, then 1/window.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EwStats {
    mean: f64,
    var: f64,
    n: u64,
}

impl EwStats {
    /// The z-score of `x` (0 until two values are known) and the mean.
    pub fn score(&self, x: f64) -> (f64, f64) {
        let (z, m) = self.signed_score(x);
        (z.abs(), m)
    }

    /// The signed z-score of `x` (above the mean: positive) and the mean.
    pub fn signed_score(&self, x: f64) -> (f64, f64) {
        if self.n < 2 {
            return (0.0, if self.n == 0 { x } else { self.mean });
        }
        ((x - self.mean) / std_floor(self.mean, self.var.sqrt()), self.mean)
    }

    /// Learns `x` with weight max(1/n, 1/window). Clamped to ±1e150 so the sums stay
    /// finite whatever finite value arrives.
    pub fn learn(&mut self, x: f64, window: usize) {
        let x = x.clamp(-1e150, 1e150);
        self.n += 1;
        let a = 1.0 / (self.n as f64).min(window.max(1) as f64);
        let d = x - self.mean;
        self.mean += a * d;
        self.var = (1.0 - a) * (self.var + a * d * d);
    }

    /// Values learnt.
    pub fn len(&self) -> u64 {
        self.n
    }

    /// Whether nothing was learnt.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

/// Least run of repeated values that can be judged stuck, whatever the normal
/// runs were: a value repeated five times over is not yet a stuck sensor.
pub const MIN_STUCK_RUN: u32 = 5;
/// Tail probability of a stuck run under the feature's own chance of repeating.
const STUCK_TAIL: f64 = 1e-4;
/// Normal readings a feature must have shown before its runs are judged.
const STUCK_WARM: u32 = 64;
/// Least share of normal readings that change value for runs to be judged: a
/// feature that often holds its value (a counter that is mostly 0, a flat line, a
/// slowly sampled analyser) has long runs by nature, and its longest one seen is a
/// poor guide to the next.
const STUCK_MOVING: f64 = 0.5;

/// Runs of exactly repeated values, for a stuck sensor or valve: a feature that
/// changes at nearly every normal reading and then repeats one value for far
/// longer than any normal run did is stuck, even inside its normal range (where
/// the level, the AR and often the model see nothing).
///
/// ```text
/// run     readings in a row equal to the one before (0 when it moved)
/// limit   max(2 · longest normal run + 2, MIN_STUCK_RUN, ln 1e-4 / ln(1 − moving))
/// ratio   run / limit, once STUCK_WARM normal readings moved at least
///         STUCK_MOVING of the time
/// ```
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stuck {
    last: Option<f64>,
    run: u32,
    /// The run that the newest reading ended (learnt with it, if it is normal).
    ended: u32,
    /// Longest run that ended on a normal reading and never reached the limit.
    longest: u32,
    /// Share of normal readings that changed value (the mean, over 512).
    moving: EwStats,
}

impl Stuck {
    /// Follows the sequence with the newest value (every reading, learnt or not).
    pub fn observe(&mut self, x: f64) {
        if self.last == Some(x) {
            self.run = self.run.saturating_add(1);
            self.ended = 0;
        } else {
            self.ended = self.run;
            self.run = 0;
        }
        self.last = Some(x);
    }

    /// The run's length that counts as stuck: twice the longest normal run, and
    /// at least as long as a run of independent readings that each repeat with
    /// the feature's own chance would reach once in 10,000 (the tail the other
    /// limits read).
    pub fn limit(&self) -> u32 {
        let repeat = (1.0 - self.moving.mean).clamp(0.0, 1.0);
        let chance = if repeat > 0.0 {
            (STUCK_TAIL.ln() / repeat.ln()).ceil().min(1e6) as u32
        } else {
            0
        };
        self.longest
            .saturating_mul(2)
            .saturating_add(2)
            .max(MIN_STUCK_RUN)
            .max(chance)
    }

    /// The current run over the limit (0 while the feature is not judged).
    pub fn ratio(&self) -> f64 {
        if self.moving.len() < u64::from(STUCK_WARM) || self.moving.mean < STUCK_MOVING {
            return 0.0;
        }
        f64::from(self.run) / f64::from(self.limit())
    }

    /// Learns the newest reading as normal: whether it moved, and the run it ended
    /// (one that reached the limit was stuck, and is never normal).
    pub fn learn(&mut self) {
        let moved = if self.run == 0 { 1.0 } else { 0.0 };
        self.moving.learn(moved, 512);
        if self.run == 0 && self.ended < self.limit() {
            self.longest = self.longest.max(self.ended);
        }
    }

    /// The current run is accepted as normal (the operator or `accept_after`).
    pub fn accept(&mut self) {
        self.longest = self.longest.max(self.run);
    }
}

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
}

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
        }
    }

    /// Signed `(level z, AR z, seasonal z)` of `x` (above what is expected:
    /// positive), given its seasonal expectation, if any. `floor` is the least
    /// seasonal residual scale.
    pub fn score(&self, x: f64, seasonal_expected: Option<f64>, floor: f64) -> (f64, f64, f64) {
        let (zl, _) = self.level.signed_score(x);
        let (za, _) = self.ar.signed_score(x);
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
        self.ar.learn_value(x);
        if let Some(e) = seasonal_expected {
            self.seasonal.learn(x - e, window);
        }
    }
}

/// AR(p) with intercept, fitted online by recursive least squares with forgetting.
///
/// ```text
/// x̂_t = θ · [1, x_{t−1}, …, x_{t−p}]
/// k = P φ / (λ + φᵀ P φ),   θ += k (x_t − x̂_t),   P = (P − k φᵀ P) / λ
/// ```
/// Values are scaled by the first readings' spread so RLS is well conditioned for
/// metrics of any magnitude; the residual's scale is an exponential moving average.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OnlineAr {
    p: usize,
    lambda: f64,
    theta: Vec<f64>,
    cov: Vec<f64>,
    lags: VecDeque<f64>,
    scale: Option<(f64, f64)>,
    warm: Vec<f64>,
    resid_var: f64,
    n_resid: usize,
    /// The newest ψ-weights (newest first) since the last learnt value, and the sum
    /// of their squares: the forecast variance in units of the residual variance.
    #[serde(default)]
    psi: VecDeque<f64>,
    #[serde(default = "one")]
    psi_sumsq: f64,
    /// Readings the residual scale averages over (its EWMA weight is the inverse).
    #[serde(default = "fifty")]
    resid_window: usize,
    /// Lag slots that may still hold an imputed value (a skipped reading's
    /// prediction, or a gap's guess): learning waits until real readings have
    /// refilled them, or the fit would learn the imputation's error as the series'.
    #[serde(default)]
    stale_lags: usize,
}

fn fifty() -> usize {
    50
}

fn one() -> f64 {
    1.0
}

impl OnlineAr {
    /// Whether a deserialised AR is one this code could have built (its vectors
    /// sized by its order).
    pub fn check(&self) -> Result<(), String> {
        let d = self.p + 1;
        if self.p == 0 || self.p > 64 || self.theta.len() != d || self.cov.len() != d * d || self.lags.len() > self.p {
            return Err(format!(
                "AR of order {} with {} coefficients, {} covariances, {} lags",
                self.p,
                self.theta.len(),
                self.cov.len(),
                self.lags.len()
            ));
        }
        if self.warm.len() > 1_000_000 || self.psi.len() > 1_000_000 {
            return Err("AR warm-up or forecast weights too long".into());
        }
        Ok(())
    }

    /// An AR(`p`) model forgetting with factor `lambda` (e.g. 0.999).
    pub fn new(p: usize, lambda: f64) -> Self {
        let d = p + 1;
        let mut cov = vec![0.0; d * d];
        for i in 0..d {
            cov[i * d + i] = 100.0;
        }
        OnlineAr {
            p,
            lambda,
            theta: vec![0.0; d],
            cov,
            lags: VecDeque::with_capacity(p),
            scale: None,
            warm: Vec::new(),
            resid_var: 0.0,
            n_resid: 0,
            psi: VecDeque::new(),
            psi_sumsq: 1.0,
            resid_window: 50,
            stale_lags: 0,
        }
    }

    /// The same, with a residual scale averaged over `window` readings (the event
    /// path's 50 follow a change of spread quickly; the state's normal is slower).
    pub fn with_resid_window(mut self, window: usize) -> Self {
        self.resid_window = window.max(1);
        self
    }

    /// Scores `x` by its one-step prediction residual, then learns from it. Returns
    /// `(|residual| / residual scale, prediction)`; 0 and `x` while warming up.
    pub fn update(&mut self, x: f64) -> (f64, f64) {
        let r = self.score(x);
        self.learn_value(x);
        r
    }

    /// Scores `x` without learning from it.
    pub fn score(&self, x: f64) -> (f64, f64) {
        let (z, pred) = self.signed_score(x);
        (z.abs(), pred)
    }

    /// As [`OnlineAr::score`], with the residual's sign (above the prediction:
    /// positive).
    pub fn signed_score(&self, x: f64) -> (f64, f64) {
        let Some((center, spread)) = self.scale else {
            return (0.0, x);
        };
        let xs = (x - center) / spread;
        match self.predict() {
            Some(pr) => {
                let r = xs - pr;
                let sd = self.resid_var.sqrt().max(1e-3) * self.psi_sumsq.sqrt();
                let z = if self.n_resid >= 8 { r / sd } else { 0.0 };
                (z, pr * spread + center)
            }
            None => (0.0, x),
        }
    }

    /// Learns from `x` (the first readings fix the scaling).
    pub fn learn_value(&mut self, x: f64) {
        let Some((center, spread)) = self.scale else {
            self.warm.push(x);
            if self.warm.len() >= 2 * self.p.max(4) {
                let n = self.warm.len() as f64;
                let m = self.warm.iter().sum::<f64>() / n;
                let s = (self.warm.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / n).sqrt();
                self.scale = Some((m, std_floor(m, s)));
                let warm = std::mem::take(&mut self.warm);
                for v in warm {
                    self.learn((v - m) / std_floor(m, s));
                }
            }
            return;
        };
        // Clamped so one absurd value cannot push the fit to infinities.
        self.learn(((x - center) / spread).clamp(-1e6, 1e6));
    }

    /// Moves past a reading that is not learnt: its lag slot takes the model's own
    /// prediction (imputed), so the next prediction says where the series would be
    /// had it stayed normal; [`OnlineAr::score`] then widens the residual scale to
    /// that many steps ahead (σ √Σψᵢ², the ψ-weights of the fit).
    pub fn skip(&mut self) {
        self.skip_as(None);
    }

    /// Forgets the lags (after a long gap they are no guide to the next reading):
    /// no prediction until `p` readings are learnt again; the fit is kept.
    pub fn restart_lags(&mut self) {
        self.lags.clear();
        self.psi = VecDeque::new();
        self.psi_sumsq = 1.0;
        self.stale_lags = 0;
    }

    /// As [`OnlineAr::skip`], with `x` in the lag slot instead of the prediction
    /// (a gap's row filled from a better guess, such as the seasonal expectation).
    pub fn skip_as(&mut self, x: Option<f64>) {
        let Some((center, spread)) = self.scale else {
            return;
        };
        let Some(pred) = self.predict() else { return };
        let pr = x.map_or(pred, |x| ((x - center) / spread).clamp(-1e6, 1e6));
        // ψ_k = Σ_j φ_j ψ_{k−j}, with ψ_0 = 1 and φ the lag coefficients (the list
        // is empty while nothing is skipped).
        if self.psi.is_empty() {
            self.psi.push_front(1.0);
        }
        let psi_k: f64 = self.psi.iter().zip(&self.theta[1..]).map(|(psi, phi)| psi * phi).sum();
        if self.psi.len() == self.p {
            self.psi.pop_back();
        }
        self.psi.push_front(psi_k);
        self.psi_sumsq = (self.psi_sumsq + psi_k * psi_k).min(1e12);
        self.push_lag(pr);
        self.stale_lags = self.p;
    }

    fn phi(&self) -> Option<Vec<f64>> {
        (self.lags.len() == self.p).then(|| std::iter::once(1.0).chain(self.lags.iter().copied()).collect())
    }

    fn predict(&self) -> Option<f64> {
        self.phi()
            .map(|phi| phi.iter().zip(&self.theta).map(|(a, b)| a * b).sum())
    }

    fn learn(&mut self, xs: f64) {
        if self.stale_lags > 0 {
            // Refills a slot; the forecast stays as uncertain as its imputed lags.
            self.stale_lags -= 1;
            self.push_lag(xs);
            return;
        }
        if !self.psi.is_empty() {
            self.psi = VecDeque::new();
            self.psi_sumsq = 1.0;
        }
        if let Some(phi) = self.phi() {
            let d = self.p + 1;
            let pphi: Vec<f64> = (0..d)
                .map(|i| (0..d).map(|j| self.cov[i * d + j] * phi[j]).sum())
                .collect();
            let denom = self.lambda + phi.iter().zip(&pphi).map(|(a, b)| a * b).sum::<f64>();
            let err = xs - phi.iter().zip(&self.theta).map(|(a, b)| a * b).sum::<f64>();
            // Residual scale, from errors made before learning from them.
            let alpha = 1.0 / (self.n_resid as f64 + 1.0).min(self.resid_window as f64);
            self.resid_var = (1.0 - alpha) * self.resid_var + alpha * err * err;
            self.n_resid += 1;
            if denom.is_finite() && denom > 0.0 {
                for i in 0..d {
                    self.theta[i] += pphi[i] / denom * err;
                }
                for i in 0..d {
                    for j in 0..d {
                        self.cov[i * d + j] = (self.cov[i * d + j] - pphi[i] * pphi[j] / denom) / self.lambda;
                    }
                }
                // Keep P bounded when the input stops exciting it (flat series).
                for i in 0..d {
                    if self.cov[i * d + i] > 1e6 || !self.cov[i * d + i].is_finite() {
                        self.cov.iter_mut().for_each(|c| *c = 0.0);
                        for k in 0..d {
                            self.cov[k * d + k] = 100.0;
                        }
                        break;
                    }
                }
            }
        }
        self.push_lag(xs);
    }

    fn push_lag(&mut self, xs: f64) {
        if self.lags.len() == self.p {
            self.lags.pop_back();
        }
        self.lags.push_front(xs);
    }
}

/// The dominant period of `xs` from its autocorrelation, if it has a clear one:
/// the highest autocorrelation peak after the function first crosses zero, at lags
/// `min_lag..=xs.len() / 2` (two periods at least), when it reaches `min_acf`.
/// Trends (no zero crossing) and noise (peaks near 0) have none. Returns
/// `(period, autocorrelation at it)`.
pub fn find_period(xs: &[f64], min_lag: usize, min_acf: f64) -> Option<(usize, f64)> {
    let n = xs.len();
    let max_lag = n / 2;
    if max_lag < min_lag.max(2) {
        return None;
    }
    let m = xs.iter().sum::<f64>() / n as f64;
    let c: Vec<f64> = xs.iter().map(|x| x - m).collect();
    let var: f64 = c.iter().map(|x| x * x).sum();
    if var <= 0.0 || !var.is_finite() {
        return None;
    }
    let acf = |k: usize| c[..n - k].iter().zip(&c[k..]).map(|(a, b)| a * b).sum::<f64>() / var;
    let mut crossed = false;
    let mut best: Option<(usize, f64)> = None;
    let (mut prev2, mut prev) = (1.0, acf(1));
    crossed |= prev < 0.0;
    for k in 2..=max_lag {
        let r = acf(k);
        // `prev` (at k − 1) is a local peak.
        if crossed && k > min_lag && prev >= prev2 && prev >= r && best.is_none_or(|(_, b)| prev > b) {
            best = Some((k - 1, prev));
        }
        crossed |= r < 0.0;
        (prev2, prev) = (prev, r);
    }
    best.filter(|&(_, r)| r >= min_acf)
}

/// Most earlier periods the seasonal expectation may take (`seasonal_periods`).
pub const MAX_SEASONAL_PERIODS: usize = 16;

/// Seasonal baseline: how far a value lies from the values at the same phase of the
/// previous periods (their median, robust to one anomalous period), in standard
/// deviations of such residuals over a recent window. Silent (z = 0) while the
/// stream has no clear period (see [`find_period`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Seasonal {
    period: Option<usize>,
    /// Mean and spread of the residuals, exponentially weighted over `window`
    /// (an EW estimate instead of a window of values: 24 bytes instead of 4 KiB
    /// per feature, the window's span all the same).
    #[serde(default)]
    residuals: EwStats,
    #[serde(default = "default_window")]
    window: usize,
}

fn default_window() -> usize {
    512
}

impl Seasonal {
    /// Whether a deserialised baseline is one this code could have built.
    pub fn check(&self) -> Result<(), String> {
        if self.period.is_some_and(|p| p == 0 || p > 1_000_000) {
            return Err(format!("seasonal period {:?}", self.period));
        }
        if self.window == 0 || self.window > 1_000_000 {
            return Err(format!("seasonal window {}", self.window));
        }
        Ok(())
    }

    /// A baseline whose residual scale is taken over `window` residuals.
    pub fn new(window: usize) -> Self {
        Seasonal {
            period: None,
            residuals: EwStats::default(),
            window,
        }
    }

    /// The period in use.
    pub fn period(&self) -> Option<usize> {
        self.period
    }

    /// Sets the period (after a re-estimate); a new period starts a new residual scale.
    pub fn set_period(&mut self, period: Option<usize>) {
        if period != self.period {
            self.period = period;
            self.residuals = EwStats::default();
        }
    }

    /// Scores `x` given the values at the same phase one, two, … periods ago (any
    /// order, sorted in place; empty when there is no period or not enough history) and the smallest
    /// residual scale that counts (so exactly periodic series do not divide by ~0).
    /// Returns `(z, expected)`.
    pub fn update(&mut self, x: f64, past: &mut [f64], floor: f64) -> (f64, f64) {
        let (z, expected) = self.score(x, past, floor);
        if !past.is_empty() {
            self.learn(x - expected);
        }
        (z, expected)
    }

    /// [`Seasonal::update`] without learning: `(z, expected)`.
    pub fn score(&self, x: f64, past: &mut [f64], floor: f64) -> (f64, f64) {
        if past.is_empty() {
            return (0.0, x);
        }
        past.sort_by(f64::total_cmp);
        let p = past;
        let expected = if p.len() % 2 == 1 {
            p[p.len() / 2]
        } else {
            0.5 * (p[p.len() / 2 - 1] + p[p.len() / 2])
        };
        let r = x - expected;
        let z = if self.residuals.len() < 16 {
            0.0
        } else {
            let sd = self.residuals.var.max(0.0).sqrt();
            (r - self.residuals.mean).abs() / sd.max(floor).max(1e-12)
        };
        (z, expected)
    }

    /// Learns a residual (value minus its seasonal expectation).
    pub fn learn(&mut self, residual: f64) {
        self.residuals.learn(residual, self.window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_stats_match_direct_computation() {
        let mut w = WindowStats::new(5);
        for i in 0..23 {
            w.push((i as f64 * 0.7).sin() * 10.0 + 1e6);
        }
        let vals: Vec<f64> = (18..23).map(|i| (i as f64 * 0.7).sin() * 10.0 + 1e6).collect();
        let m = vals.iter().sum::<f64>() / 5.0;
        let s = (vals.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / 5.0).sqrt();
        assert!(
            (w.mean() - m).abs() < 1e-6 && (w.std() - s).abs() < 1e-4,
            "{} {}",
            w.std(),
            s
        );
    }

    #[test]
    fn gaussian_flags_a_spike_not_noise() {
        let mut g = WindowedGaussian::new(100);
        let mut max_quiet: f64 = 0.0;
        for i in 0..300 {
            let (z, _) = g.update(((i * 7919) % 13) as f64 / 13.0);
            if i > 10 {
                max_quiet = max_quiet.max(z);
            }
        }
        assert!(max_quiet < 2.5, "{max_quiet}");
        assert!(g.update(5.0).0 > 10.0);
    }

    fn lcg_noise(state: &mut u64) -> f64 {
        // Deterministic roughly-Gaussian noise (sum of 4 uniforms, sd ≈ 0.58).
        (0..4)
            .map(|_| {
                *state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (*state >> 11) as f64 / (1u64 << 53) as f64
            })
            .sum::<f64>()
            - 2.0
    }

    #[test]
    fn find_period_sees_cycles_but_not_noise_or_trends() {
        let mut s = 1u64;
        let cycle: Vec<f64> = (0..1024)
            .map(|t| (2.0 * std::f64::consts::PI * t as f64 / 48.0).sin() * 3.0 + lcg_noise(&mut s))
            .collect();
        let (p, r) = find_period(&cycle, 4, 0.3).expect("a period");
        assert!((47..=49).contains(&p) && r > 0.5, "{p} {r}");
        // A square wave with period 288 (a daily on/off pattern at 5-minute readings).
        let square: Vec<f64> = (0..1024)
            .map(|t| if t % 288 < 144 { 10.0 } else { 0.0 } + lcg_noise(&mut s))
            .collect();
        assert_eq!(find_period(&square, 4, 0.3).map(|(p, _)| p), Some(288));
        let noise: Vec<f64> = (0..1024).map(|_| lcg_noise(&mut s)).collect();
        assert_eq!(find_period(&noise, 4, 0.3), None);
        let trend: Vec<f64> = (0..1024).map(|t| t as f64 * 0.1 + lcg_noise(&mut s)).collect();
        assert_eq!(find_period(&trend, 4, 0.3), None);
        assert_eq!(find_period(&[5.0; 100], 4, 0.3), None, "constant");
        assert_eq!(find_period(&cycle[..60], 4, 0.3), None, "under two periods");
    }

    #[test]
    fn seasonal_residual_uses_the_median_of_earlier_periods() {
        let mut s = Seasonal::new(64);
        s.set_period(Some(10));
        let mut st = 7u64;
        for _ in 0..100 {
            let (z, _) = s.update(lcg_noise(&mut st), &mut [0.0, 0.0, 0.0], 1e-6);
            assert!(z < 5.0, "{z}");
        }
        // One anomalous earlier period does not move the expectation.
        let (z, expected) = s.update(0.1, &mut [50.0, 0.0, 0.0], 1e-6);
        assert_eq!(expected, 0.0);
        assert!(z < 5.0, "{z}");
        let (z, expected) = s.update(10.0, &mut [0.0, 0.2, -0.2], 1e-6);
        assert_eq!(expected, 0.0);
        assert!(z > 10.0, "{z}");
        // A new period starts a new residual scale (silent until it has one).
        s.set_period(Some(20));
        assert_eq!(s.update(10.0, &mut [0.0], 1e-6).0, 0.0);
        assert_eq!(s.update(3.0, &mut [], 1e-6), (0.0, 3.0), "no history: silent");
    }

    #[test]
    fn ar_learns_a_sine_and_flags_a_break_in_it() {
        let mut ar = OnlineAr::new(4, 0.999);
        let mut late = Vec::new();
        for t in 0..600 {
            let (z, pred) = ar.update((t as f64 * 0.2).sin() * 50.0 + 1000.0);
            if t > 500 {
                late.push((z, (pred - ((t as f64 * 0.2).sin() * 50.0 + 1000.0)).abs()));
            }
        }
        assert!(late.iter().all(|(_, e)| *e < 1.0), "prediction error stays small");
        let (z, _) = ar.update(1100.0);
        assert!(z > 10.0, "a jump is many residual sds: {z}");
    }

    #[test]
    fn ar_refills_skipped_lags_before_it_learns_again() {
        let sine = |t: usize| (t as f64 * 0.2).sin() * 50.0 + 1000.0;
        let mut ar = OnlineAr::new(4, 0.999);
        for t in 0..600 {
            ar.update(sine(t));
        }
        // Ten readings stepped past (a fault), then the series as before: the first
        // four readings only refill the lags (the fit and residual scale keep what
        // they knew), and the forecast after them is as good as before the fault.
        for _ in 600..610 {
            ar.skip();
        }
        let (theta, var) = (ar.theta.clone(), ar.resid_var);
        for t in 610..614 {
            ar.learn_value(sine(t));
        }
        assert_eq!((&ar.theta, ar.resid_var), (&theta, var));
        let (z, pred) = ar.score(sine(614));
        assert!((pred - sine(614)).abs() < 1.0 && z < 4.0, "{pred} {z}");
        ar.learn_value(sine(614));
        assert_ne!(ar.theta, theta, "learning resumes once the lags are real");
    }

    /// Feeds `xs` to `stuck`, every reading learnt as normal while it is not
    /// judged stuck (as the detector does); returns the last ratio.
    fn feed(stuck: &mut Stuck, xs: impl IntoIterator<Item = f64>) -> f64 {
        let mut r = 0.0;
        for x in xs {
            stuck.observe(x);
            r = stuck.ratio();
            if r < 1.0 {
                stuck.learn();
            }
        }
        r
    }

    #[test]
    fn stuck_judges_a_run_against_the_longest_normal_one() {
        let mut s = Stuck::default();
        // A feature that moves at every reading: nothing is judged before it is warm.
        assert_eq!(feed(&mut s, (0..STUCK_WARM - 1).map(f64::from)), 0.0);
        feed(&mut s, (100..200).map(f64::from));
        assert_eq!(s.limit(), MIN_STUCK_RUN);
        // Frozen: the fifth repeat reaches the limit.
        assert_eq!(feed(&mut s, [7.0; 5]), 4.0 / 5.0);
        assert_eq!(feed(&mut s, [7.0]), 1.0);
        // Once it moves again, the stuck run taught nothing.
        feed(&mut s, (300..400).map(f64::from));
        assert_eq!(s.limit(), MIN_STUCK_RUN);

        // Normal runs of three repeats (every tenth value held) raise the limit to 8.
        let held = (0..400).flat_map(|i| {
            let n = if i % 10 == 0 { 4 } else { 1 };
            std::iter::repeat_n(f64::from(1000 + i), n)
        });
        feed(&mut s, held);
        assert_eq!(s.limit(), 8);
        assert_eq!(feed(&mut s, [5.0; 9]), 1.0);
        // Accepted: the run is normal now.
        s.accept();
        assert_eq!(s.limit(), 18);
        assert!(s.ratio() < 1.0);
    }

    #[test]
    fn stuck_needs_a_run_that_the_features_own_repeats_would_rarely_make() {
        // Three moves in five readings, runs of one repeat: twice the longest run
        // is 4, but a reading repeats with chance 0.4, and 0.4^11 < 1e-4 < 0.4^10.
        let mut s = Stuck::default();
        let pattern = (0..600).flat_map(|i| {
            let b = f64::from(3 * i);
            [b, b, b + 1.0, b + 2.0, b + 2.0]
        });
        feed(&mut s, pattern);
        assert!((s.moving.mean - 0.6).abs() < 0.01, "{}", s.moving.mean);
        assert_eq!(s.limit(), 11);
        assert!(feed(&mut s, [-1.0; 11]) < 1.0);
        assert_eq!(feed(&mut s, [-1.0]), 1.0);
    }

    #[test]
    fn stuck_never_judges_a_feature_that_mostly_holds_its_value() {
        // A slow analyser: a new value every fifth reading.
        let mut s = Stuck::default();
        let sampled = (0..1000).flat_map(|i| std::iter::repeat_n(f64::from(i), 5));
        feed(&mut s, sampled);
        assert_eq!(feed(&mut s, [1.0; 100]), 0.0);
        // A flat line.
        let mut s = Stuck::default();
        assert_eq!(feed(&mut s, [3.0; 1000]), 0.0);
    }
}
