//! The per-feature normalisation a network is trained and scored in, frozen with
//! the network (the recurrent model's readings, the change model's changes).

use super::baseline::std_floor;

/// Per-feature affine normalisation frozen with a model: `(x − center) / scale`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normaliser {
    /// Per-feature center.
    pub center: Vec<f64>,
    /// Per-feature scale (> 0).
    pub scale: Vec<f64>,
}

impl Normaliser {
    /// Mean and standard deviation of each feature of `rows` (`[n][d]`), with the
    /// scale floored so flat features do not blow up.
    pub fn fit(rows: &[Vec<f64>]) -> Self {
        Self::fit_with_context(rows, &[])
    }

    /// [`Normaliser::fit`], with the `context[j]` features scaled to their range:
    /// standardised, a flag set once in a thousand readings would enter the
    /// network at ±30 (and one never set in the rows at the ±50 clamp), so a
    /// rare command would disturb every judged feature's reconstruction. A
    /// context feature's scale is at least half its range, and at least half a
    /// flag's (values 0 and 1 only, though the rows may show one of them).
    pub fn fit_with_context(rows: &[Vec<f64>], context: &[bool]) -> Self {
        let d = rows.first().map_or(0, Vec::len);
        let n = rows.len().max(1) as f64;
        let mut center = vec![0.0; d];
        let mut scale = vec![0.0; d];
        for j in 0..d {
            let m = rows.iter().map(|r| r[j]).sum::<f64>() / n;
            let s = (rows.iter().map(|r| (r[j] - m) * (r[j] - m)).sum::<f64>() / n).sqrt();
            center[j] = m;
            scale[j] = std_floor(m, s);
            if context.get(j).copied().unwrap_or(false) {
                scale[j] = scale[j].max(half_range(rows.iter().map(|r| r[j])));
            }
        }
        Normaliser { center, scale }
    }

    /// Normalises one value of feature `j`, clamped to ±50 scales so one wild value
    /// cannot produce non-finite activations.
    pub fn apply(&self, j: usize, x: f64) -> f32 {
        ((x - self.center[j]) / self.scale[j]).clamp(-50.0, 50.0) as f32
    }

    /// Inverse of [`Normaliser::apply`].
    pub fn invert(&self, j: usize, v: f32) -> f64 {
        v as f64 * self.scale[j] + self.center[j]
    }
}

/// Half the range of `xs`, and at least 0.5 when they are all 0 or 1 (a flag).
fn half_range(xs: impl Iterator<Item = f64>) -> f64 {
    let (lo, hi, flag) = xs.fold((f64::INFINITY, f64::NEG_INFINITY, true), |(lo, hi, flag), x| {
        (lo.min(x), hi.max(x), flag && (x == 0.0 || x == 1.0))
    });
    let half = if hi >= lo { (hi - lo) / 2.0 } else { 0.0 };
    if flag { half.max(0.5) } else { half }
}

/// Least per-feature residual scale (normalised units), so a feature the model
/// reproduces exactly does not divide by ~0.
pub const MIN_FEATURE_RMS: f64 = 0.02;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_features_are_scaled_to_their_range() {
        // A sensor, a flag set once in 1,000 rows, a flag never set, a count.
        let rows: Vec<Vec<f64>> = (0..1000)
            .map(|i| vec![(i % 7) as f64, f64::from(u8::from(i == 500)), 0.0, (i / 100) as f64])
            .collect();
        let plain = Normaliser::fit(&rows);
        let n = Normaliser::fit_with_context(&rows, &[false, true, true, true]);
        assert_eq!(n.scale[0], plain.scale[0], "a judged feature is standardised");
        assert!(plain.apply(1, 1.0) > 30.0 && plain.apply(2, 1.0) == 50.0);
        assert!((n.apply(1, 1.0) - 1.998).abs() < 1e-3, "{}", n.apply(1, 1.0));
        assert_eq!(n.apply(2, 1.0), 2.0);
        assert_eq!(n.scale[3], 4.5, "half the range beyond the sd");
        assert_eq!(n.center, plain.center);
    }
}
