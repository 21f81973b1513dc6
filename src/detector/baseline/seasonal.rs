//! The seasonal residual: a period found from the autocorrelation of the buffered
//! readings, and each reading against the same phase in earlier periods.

use super::EwStats;

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

/// A longer period made of whole cycles of `p` (a week of days), if the stream
/// has one: the multiple `m·p` (refined to the best lag within ±m, at most
/// `xs.len() / 2`) whose mean squared difference between readings that far apart
/// is least, if it is at most three quarters of the same at lag `p`. A day that
/// differs by weekday leaves much between readings a day apart and little
/// between readings a week apart; a plain daily cycle leaves the same at both
/// (the day is kept), and a stream that also wanders leaves more at longer lags.
pub fn longer_period(xs: &[f64], p: usize) -> Option<usize> {
    let n = xs.len();
    let max_lag = n / 2;
    let vario = |k: usize| xs[k..].iter().zip(xs).map(|(a, b)| (a - b) * (a - b)).sum::<f64>() / (n - k) as f64;
    if p == 0 || 2 * p > max_lag {
        return None;
    }
    let at_p = vario(p);
    if !(at_p > 0.0 && at_p.is_finite()) {
        // Nothing is left between days: no longer period can leave less.
        return None;
    }
    // The best whole multiple, then the best lag near it (p is known to ±1, so
    // m·p to ±m): O(n·max_lag / p) like the period search, not O(n·max_lag).
    let least = |ks: &mut dyn Iterator<Item = usize>| ks.map(|k| (k, vario(k))).min_by(|a, b| a.1.total_cmp(&b.1));
    let (k, _) = least(&mut (2..=max_lag / p).map(|m| m * p))?;
    let m = k / p;
    let best = least(&mut ((k - m).max(p + 1)..=(k + m).min(max_lag)));
    best.filter(|&(_, v)| v.is_finite() && v <= 0.75 * at_p).map(|(k, _)| k)
}

/// The median of `xs` (sorted in place; not empty).
pub fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        0.5 * (xs[n / 2 - 1] + xs[n / 2])
    }
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
        let expected = median(past);
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
