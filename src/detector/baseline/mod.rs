//! Classical per-feature baselines that score from the first readings: a windowed
//! Gaussian, an autoregressive model fitted online by recursive least squares, and a
//! seasonal residual once the stream shows a period.
//!
//! - `mod.rs`: the windowed Gaussian (over the reading buffer), exponentially weighted
//!   statistics; `ar.rs`: AR(p) by recursive least squares; `seasonal.rs`: the
//!   period and the seasonal residual; `stuck.rs`: stuck features;
//!   `resolution.rs`: the step a sensor is read in; `state.rs`: the state's
//!   per-feature baselines, learnt from normal readings only.

mod ar;
mod resolution;
mod seasonal;
mod state;
mod stuck;

pub use ar::OnlineAr;
pub use resolution::SensorResolution;
pub use seasonal::{MAX_SEASONAL_PERIODS, Seasonal, find_period, longer_period, median};
pub use state::{LONG_RUN, StateBaselines};
pub use stuck::{MIN_STUCK_RUN, Stuck};

/// The scale below which a standard deviation is treated as noise-free: relative to
/// the values' magnitude, so flat series do not divide by zero.
pub fn std_floor(mean: f64, std: f64) -> f64 {
    std.max(1e-3 * mean.abs()).max(1e-9)
}

/// Windowed Gaussian: how many standard deviations a value lies from the mean of
/// the `window` values before it. The values are a column of the detector's
/// reading buffer, which holds them anyway; this keeps only their sums, moved
/// along as the buffer moves ([`WindowedGaussian::advance`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WindowedGaussian {
    cap: usize,
    /// Values summed: the newest `n` rows of the buffer before its newest.
    n: usize,
    sum: f64,
    sumsq: f64,
}

/// A windowed Gaussian as a snapshot holds it: its sums, or (from builds that
/// kept its values beside the buffer's) its window, summed again from the
/// buffer on restore.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum SavedGaussian {
    /// Its sums, as it holds them.
    Sums(WindowedGaussian),
    /// An earlier build's window: only its size is read.
    Window {
        /// The window, of which only the size is read.
        stats: SavedWindow,
    },
}

/// The size of an earlier build's window (its values and sums are not read).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SavedWindow {
    cap: usize,
}

impl SavedGaussian {
    /// The baseline, and whether its sums must be taken again from the buffer.
    pub fn restore(self) -> (WindowedGaussian, bool) {
        match self {
            SavedGaussian::Sums(g) => (g, false),
            SavedGaussian::Window { stats } => (WindowedGaussian::new(stats.cap), true),
        }
    }

    /// Whether it is one this code could have built.
    pub fn check(&self) -> Result<(), String> {
        match self {
            SavedGaussian::Sums(g) => g.check(),
            SavedGaussian::Window { stats } => WindowedGaussian::new(stats.cap).check(),
        }
    }
}

impl WindowedGaussian {
    /// Whether a deserialised baseline is one this code could have built.
    pub fn check(&self) -> Result<(), String> {
        if self.cap == 0 || self.cap > 1_000_000 || self.n > self.cap {
            return Err(format!("window of {} values in a capacity of {}", self.n, self.cap));
        }
        Ok(())
    }

    /// A detector over the last `window` values.
    pub fn new(window: usize) -> Self {
        WindowedGaussian {
            cap: window.max(1),
            n: 0,
            sum: 0.0,
            sumsq: 0.0,
        }
    }

    /// The z-score of `x` against the window and the window's mean, learning
    /// nothing; `z` is 0 until two values are summed.
    pub fn score(&self, x: f64) -> (f64, f64) {
        let (m, s) = (self.mean(), self.std());
        let z = if self.n < 2 {
            0.0
        } else {
            (x - m).abs() / std_floor(m, s)
        };
        (z, m)
    }

    /// Moves the window along after the buffer took a row: `rows` are buffered
    /// now, `value(i)` reads this feature's value in row `i` (oldest first).
    /// The row before the newest joins and, once `window` are summed, the
    /// oldest leaves. `rounded`: the push rounded a block of the buffer, so the
    /// sums are taken again over what it holds now (as they are when the
    /// buffer dropped a row the window still held).
    pub fn advance(&mut self, rows: usize, value: impl Fn(usize) -> f64, rounded: bool) {
        let Some(before) = rows.checked_sub(2) else {
            return self.resum(rows, value);
        };
        if rounded || self.n > before {
            return self.resum(rows, value);
        }
        let x = value(before);
        self.sum += x;
        self.sumsq += x * x;
        self.n += 1;
        if self.n > self.cap {
            let old = value(before + 1 - self.n);
            self.sum -= old;
            self.sumsq -= old * old;
            self.n -= 1;
        }
    }

    /// Sums the window afresh: the newest `window` of `rows` buffered rows
    /// before the newest (`value` as in [`WindowedGaussian::advance`]).
    pub fn resum(&mut self, rows: usize, value: impl Fn(usize) -> f64) {
        let end = rows.saturating_sub(1);
        self.n = self.cap.min(end);
        // One pass, from -0.0 as `Sum` starts.
        (self.sum, self.sumsq) = (end - self.n..end)
            .map(value)
            .fold((-0.0, -0.0), |(s, q), v| (s + v, q + v * v));
    }

    /// Values summed.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether no value is summed.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Mean of the window (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.n == 0 { 0.0 } else { self.sum / self.n as f64 }
    }

    /// Population standard deviation of the window.
    pub fn std(&self) -> f64 {
        let n = self.n as f64;
        if n < 2.0 {
            return 0.0;
        }
        let m = self.sum / n;
        (self.sumsq / n - m * m).max(0.0).sqrt()
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

#[cfg(test)]
mod tests;
