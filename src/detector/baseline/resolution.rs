//! A feature's resolution: the step a sensor is read in, when it is read coarsely.

/// Levels over its range beyond which a feature is read finely enough that its
/// steps do not matter (a 10-bit reading has 1,024).
const FINE_LEVELS: f64 = 1000.0;
/// How close two changes must be to count as the same step (printed values are
/// rounded).
const SAME_STEP: f64 = 0.01;

/// The step a feature is read in: its smallest change between two readings in a
/// row, once that change has recurred (a sensor read in steps shows the same
/// step again and again; a smooth curve's changes each differ).
///
/// A sensor read in steps of q cannot show a change finer than q, so a one-step
/// residual is its rounding, not news. For a feature read in fewer than
/// [`FINE_LEVELS`] steps over its range, the state's AR residual scale and a
/// model's residual scale are at least q / 2 ([`SensorResolution::floor`]): without
/// it, a sensor that sat on one value (a residual scale of ~0) made each
/// one-step move a 100σ event, and SMAP's D-4 and D-11 opened incidents that
/// lasted thousands of readings (BENCHMARKS.md, nineteenth stop).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SensorResolution {
    /// The smallest change seen (0: none yet).
    step: f64,
    /// How many changes were that step.
    repeats: u32,
}

impl SensorResolution {
    /// Notes the change between two readings in a row.
    pub fn observe(&mut self, change: f64) {
        let change = change.abs();
        if !(change > 0.0 && change.is_finite()) {
            return;
        }
        if self.step == 0.0 || change < self.step * (1.0 - SAME_STEP) {
            self.step = change;
            self.repeats = 1;
        } else if change <= self.step * (1.0 + SAME_STEP) {
            self.step = self.step.min(change);
            self.repeats = self.repeats.saturating_add(1);
        }
    }

    /// The least residual scale the resolution allows for a feature whose values
    /// span `range`: half its step, once the step recurred, when the feature is
    /// read in fewer than [`FINE_LEVELS`] steps over that range (0 otherwise).
    pub fn floor(&self, range: f64) -> f64 {
        if self.repeats >= 2 && self.step * FINE_LEVELS >= range && range >= 2.0 * self.step {
            self.step / 2.0
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The resolution of a sequence of values, and their range.
    fn of(xs: &[f64]) -> (SensorResolution, f64) {
        let mut r = SensorResolution::default();
        for p in xs.windows(2) {
            r.observe(p[1] - p[0]);
        }
        let (lo, hi) = xs
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| (l.min(x), h.max(x)));
        (r, hi - lo)
    }

    #[test]
    fn a_coarse_sensor_floors_at_half_its_step_and_a_fine_one_does_not() {
        // Read in steps of 0.0018485 over [-1, -0.97]: 16 levels.
        let q = 0.001_848_5;
        let coarse: Vec<f64> = (0..500).map(|i| -1.0 + q * ((i / 3 % 16) as f64)).collect();
        let (r, range) = of(&coarse);
        assert!((r.floor(range) - q / 2.0).abs() < 1e-12, "{}", r.floor(range));
        // A smooth curve over [20, 80]: its smallest change is a millionth of it.
        let smooth: Vec<f64> = (0..4000).map(|i| (i as f64 * 0.01).sin() * 30.0 + 50.0).collect();
        let (r, range) = of(&smooth);
        assert_eq!(r.floor(range), 0.0);
        // A flat line has no step, and a step seen once is not yet one.
        assert_eq!(of(&[1.0; 100]).0.floor(0.0), 0.0);
        let (r, range) = of(&[20.0, 20.0, 68.0, 77.6, 79.5]);
        assert_eq!(r.floor(range), 0.0);
    }
}
