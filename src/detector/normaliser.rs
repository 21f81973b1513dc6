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
        let d = rows.first().map_or(0, Vec::len);
        let n = rows.len().max(1) as f64;
        let mut center = vec![0.0; d];
        let mut scale = vec![0.0; d];
        for j in 0..d {
            let m = rows.iter().map(|r| r[j]).sum::<f64>() / n;
            let s = (rows.iter().map(|r| (r[j] - m) * (r[j] - m)).sum::<f64>() / n).sqrt();
            center[j] = m;
            scale[j] = std_floor(m, s);
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

/// Least per-feature residual scale (normalised units), so a feature the model
/// reproduces exactly does not divide by ~0.
pub const MIN_FEATURE_RMS: f64 = 0.02;
