//! Classical per-feature baselines that score from the first readings: a windowed
//! Gaussian, an autoregressive model fitted online by recursive least squares, and a
//! seasonal residual once the stream shows a period.
//!
//! - `mod.rs`: windowed statistics, the windowed Gaussian, exponentially weighted
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

use super::anchored::Anchored;

/// Mean and standard deviation of the last `cap` values.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WindowStats {
    /// The values, about four bytes each (see [`Anchored`]); the sums are
    /// those of the values as it holds them.
    #[serde(with = "super::anchored::or_values")]
    buf: Anchored,
    cap: usize,
    sum: f64,
    sumsq: f64,
    /// Pushes since the sums were last recomputed (bounds floating-point drift).
    since_exact: usize,
}

impl WindowStats {
    /// Whether a deserialised window is one this code could have built.
    pub fn check(&self) -> Result<(), String> {
        self.buf.check()?;
        if self.cap == 0 || self.cap > 1_000_000 || self.buf.len() > self.cap || self.buf.width() != 1 {
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
            buf: Anchored::new(1),
            cap: cap.max(1),
            sum: 0.0,
            sumsq: 0.0,
            since_exact: 0,
        }
    }

    /// Adds a value, dropping the oldest when full.
    pub fn push(&mut self, x: f64) {
        if self.buf.len() == self.cap
            && let Some(old) = self.buf.first()
        {
            self.buf.pop_row();
            self.sum -= old;
            self.sumsq -= old * old;
        }
        // Filling a block rounds its values: the sums are recomputed then.
        let rounded = self.buf.push_row(&[x]);
        self.sum += x;
        self.sumsq += x * x;
        self.since_exact += 1;
        if self.since_exact >= self.cap || rounded {
            // One pass; -0.0 as `Sum` starts, so the sums are what they were.
            (self.sum, self.sumsq) = self.buf.iter().fold((-0.0, -0.0), |(s, q), v| (s + v, q + v * v));
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

#[cfg(test)]
mod tests;
