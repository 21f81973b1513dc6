//! The change model: a dense autoencoder over each reading's change since the
//! reading before (multivariate streams only).
//!
//! The recurrent autoencoder rebuilds a window from one state, so its residual at
//! the newest step mostly holds each feature's own fast motion, and a fault that
//! only makes a few features *rougher* (a valve that sticks and jumps, a noisier
//! sensor) stays inside that. The changes of a plant's features move together
//! (one disturbance reaches many sensors within a step); this network learns how,
//! through fewer units than features, and what it cannot rebuild is the part of a
//! change the other features do not share. Its per-feature residual, in units of
//! its spread on held-out normal changes, is the state's `change` statistic,
//! judged by its running average only (a single jump is a spike, which the level
//! and AR statistics judge).

use ndarray::Array2;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::fit::{Epoch, Schedule, fit};
use super::normaliser::{MIN_FEATURE_RMS, Normaliser};
use crate::nn::{Adam, AdamParams, DenseAutoencoder};

/// Least normal changes to train on (fewer: no change model).
pub const MIN_CHANGES: usize = 64;
/// Share of the changes held out (the newest) to calibrate on.
const HOLDOUT: f64 = 0.15;
/// Least held-out changes; fewer, and the training changes calibrate.
const MIN_HELD_OUT: usize = 16;
/// Adam's step size, rows per step, epochs at most, epochs without a better
/// held-out loss before stopping.
const LEARNING_RATE: f64 = 1e-2;
const BATCH: usize = 64;
const MAX_EPOCHS: usize = 300;
const PATIENCE: usize = 20;

/// Bottleneck units for `d` features: a third of them, at most `hidden`; none for
/// a single feature (whose change nothing else explains).
pub fn units(d: usize, hidden: usize) -> usize {
    if d < 2 { 0 } else { d.div_ceil(3).min(hidden).max(1) }
}

/// A trained change model.
#[derive(Clone, Debug, PartialEq)]
pub struct ChangeModel {
    /// The network, on normalised changes.
    pub net: DenseAutoencoder<f32>,
    /// Per-feature centre and scale of the normal changes.
    pub normaliser: Normaliser,
    /// Per feature: root mean square of the held-out residual (normalised units).
    pub rms: Vec<f64>,
}

impl ChangeModel {
    /// Each feature's residual of the change `cur − prev`, in held-out residual
    /// units (signed, `Δ − Δ̂`).
    pub fn residual(&self, prev: &[f64], cur: &[f64]) -> Vec<f64> {
        let x: Vec<f32> = prev
            .iter()
            .zip(cur)
            .enumerate()
            .map(|(j, (&a, &b))| self.normaliser.apply(j, b - a))
            .collect();
        let d = x.len();
        let row = Array2::from_shape_vec((1, d), x).expect("one row");
        let y = self.net.forward(row.view());
        (0..d)
            .map(|j| (row[[0, j]] - y[[0, j]]) as f64 / self.rms[j].max(MIN_FEATURE_RMS))
            .collect()
    }
}

/// A change model in a snapshot: its weights (in [`DenseAutoencoder::tensors`]
/// order) travel with the state, being small.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChangeMeta {
    /// Bottleneck units.
    pub units: usize,
    /// Normalisation of the changes.
    pub normaliser: Normaliser,
    /// Held-out residual scale per feature.
    #[serde(with = "super::packed")]
    pub rms: Vec<f64>,
    /// Every weight, flattened.
    #[serde(with = "super::packed")]
    pub weights: Vec<f64>,
}

impl ChangeModel {
    /// Its snapshot form.
    pub fn to_meta(&self) -> ChangeMeta {
        ChangeMeta {
            units: self.net.n_hidden(),
            normaliser: self.normaliser.clone(),
            rms: self.rms.clone(),
            weights: self
                .net
                .tensors()
                .iter()
                .flat_map(|t| t.iter().map(|&v| v as f64))
                .collect(),
        }
    }

    /// Rebuilt from its snapshot form for a stream of `d` features.
    ///
    /// # Errors
    /// If any part does not fit `d` features and its units.
    pub fn from_meta(meta: ChangeMeta, d: usize) -> Result<Self, String> {
        let k = meta.units;
        if d < 2 || k == 0 || k >= d {
            return Err(format!("change model of {k} units for {d} features"));
        }
        let sized = meta.normaliser.center.len() == d
            && meta.normaliser.scale.len() == d
            && meta.normaliser.scale.iter().all(|s| s.is_finite() && *s > 0.0)
            && meta.rms.len() == d;
        let mut net = DenseAutoencoder::<f32>::zeros(d, k);
        let n: usize = net.tensors().iter().map(|t| t.len()).sum();
        if !sized || meta.weights.len() != n || !meta.weights.iter().all(|v| v.is_finite()) {
            return Err(format!(
                "change model of {} weights for {d} features",
                meta.weights.len()
            ));
        }
        let mut values = meta.weights.iter();
        for t in net.tensors_mut() {
            for (w, v) in t.iter_mut().zip(&mut values) {
                *w = *v as f32;
            }
        }
        Ok(ChangeModel {
            net,
            normaliser: meta.normaliser,
            rms: meta.rms,
        })
    }
}

/// What training returns: the model and, per held-out change in time order, each
/// feature's residual (to seed the state's limits).
#[derive(Clone, Debug)]
pub struct TrainedChanges {
    /// The model.
    pub model: ChangeModel,
    /// Held-out residuals, in the model's units.
    pub calibration: Vec<Vec<f64>>,
}

/// Trains a change model on the changes between consecutive readings that were
/// both learnt as normal (`normal` empty: all were). `None` for a single feature or
/// fewer than [`MIN_CHANGES`] changes. At least one epoch runs; `should_stop` ends
/// training between epochs. Deterministic for a seed.
pub fn train(
    readings: &[Vec<f64>],
    normal: &[bool],
    hidden: usize,
    seed: u64,
    should_stop: &dyn Fn() -> bool,
) -> Option<TrainedChanges> {
    let d = readings.first().map_or(0, Vec::len);
    let k = units(d, hidden);
    if k == 0 {
        return None;
    }
    let changes = normal_changes(readings, normal);
    if changes.len() < MIN_CHANGES {
        return None;
    }
    let normaliser = Normaliser::fit(&changes);
    let rows = |idx: &[usize]| Array2::from_shape_fn((idx.len(), d), |(r, j)| normaliser.apply(j, changes[idx[r]][j]));
    let n = changes.len();
    let n_hold = (n as f64 * HOLDOUT).round() as usize;
    let (mut train, held): (Vec<usize>, Vec<usize>) = if n_hold >= MIN_HELD_OUT {
        ((0..n - n_hold).collect(), (n - n_hold..n).collect())
    } else {
        ((0..n).collect(), (0..n).collect())
    };
    let held_x = rows(&held);
    let loss = |net: &DenseAutoencoder<f32>| {
        let y = net.forward(held_x.view());
        (&y - &held_x)
            .mapv(|v| (v as f64) * (v as f64))
            .mean()
            .unwrap_or(f64::INFINITY)
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let net = DenseAutoencoder::<f32>::new(d, k, &mut rng);
    let mut opt = Adam::new(AdamParams {
        lr: LEARNING_RATE,
        ..Default::default()
    });
    let schedule = Schedule {
        max_epochs: MAX_EPOCHS,
        patience: PATIENCE,
        non_finite_diverges: false,
        stop: should_stop,
    };
    let epoch = |net: &mut DenseAutoencoder<f32>, order: &[usize], _: &mut StdRng| {
        for chunk in order.chunks(BATCH) {
            net.train_step(rows(chunk).view(), &mut opt, Some(1.0));
        }
        Epoch::Trained(f64::NAN)
    };
    let net = fit(net, &mut train, &mut rng, &schedule, loss, epoch).ok()?.model;
    let all_x = rows(&(0..n).collect::<Vec<_>>());
    let (rms, calibration) = calibrate(&net, &all_x, held[0]);
    Some(TrainedChanges {
        model: ChangeModel { net, normaliser, rms },
        calibration,
    })
}

/// The changes between consecutive readings both learnt as normal.
fn normal_changes(readings: &[Vec<f64>], normal: &[bool]) -> Vec<Vec<f64>> {
    let is_normal = |i: usize| normal.get(i).copied().unwrap_or(true);
    (1..readings.len())
        .filter(|&i| is_normal(i) && is_normal(i - 1))
        .map(|i| readings[i].iter().zip(&readings[i - 1]).map(|(b, a)| b - a).collect())
        .collect()
}

/// Every normal change's residual (`all_x`, time order), in units of the
/// held-out residual scale (the rows from `held_from` on), and that scale. The
/// held-out ones set the scale, and all of them seed the limits (the held-out ones
/// alone are too few for a stable limit; in units of the held-out scale, the
/// training changes sit a little lower).
fn calibrate(net: &DenseAutoencoder<f32>, all_x: &Array2<f32>, held_from: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
    let all = all_x - &net.forward(all_x.view());
    let held_resid = all.slice(ndarray::s![held_from.., ..]);
    let rms: Vec<f64> = held_resid
        .columns()
        .into_iter()
        .map(|col| (col.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / col.len() as f64).sqrt())
        .collect();
    let calibration = all
        .rows()
        .into_iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(j, &v)| v as f64 / rms[j].max(MIN_FEATURE_RMS))
                .collect()
        })
        .collect();
    (rms, calibration)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three features whose changes share one driver, plus a little noise each.
    fn shared(n: usize) -> Vec<Vec<f64>> {
        let mut rng = StdRng::seed_from_u64(1);
        let mut level = 0.0;
        (0..n)
            .map(|_| {
                level += rand::Rng::random::<f64>(&mut rng) - 0.5;
                let e = |rng: &mut StdRng| 0.05 * (rand::Rng::random::<f64>(rng) - 0.5);
                vec![level + e(&mut rng), 2.0 * level + e(&mut rng), -level + e(&mut rng)]
            })
            .collect()
    }

    #[test]
    fn a_change_the_others_share_is_explained_and_one_they_do_not_is_not() {
        let rows = shared(400);
        let t = train(&rows, &[], 16, 7, &|| false).expect("trained");
        assert_eq!(t.model.net.n_hidden(), 1);
        let last = rows.last().unwrap();
        let along: Vec<f64> = last.iter().zip([0.3, 0.6, -0.3]).map(|(a, b)| a + b).collect();
        let across: Vec<f64> = last.iter().zip([0.0, 0.6, 0.0]).map(|(a, b)| a + b).collect();
        let size = |z: Vec<f64>| z.iter().map(|v| v * v).sum::<f64>().sqrt();
        let (a, b) = (
            size(t.model.residual(last, &along)),
            size(t.model.residual(last, &across)),
        );
        assert!(a < 5.0 && b > 4.0 * a, "shared change {a}, unshared {b}");
        assert_eq!(t.calibration.len(), 399, "every normal change calibrates");
    }

    #[test]
    fn no_model_for_one_feature_or_too_few_normal_changes() {
        let one: Vec<Vec<f64>> = (0..400).map(|t| vec![t as f64]).collect();
        assert!(train(&one, &[], 16, 0, &|| false).is_none());
        let rows = shared(400);
        // Every other reading not normal: no two normal readings in a row.
        let normal: Vec<bool> = (0..400).map(|i| i % 2 == 0).collect();
        assert!(train(&rows, &normal, 16, 0, &|| false).is_none());
        assert_eq!((units(1, 16), units(2, 16), units(52, 16), units(9, 2)), (0, 1, 16, 2));
    }

    #[test]
    fn a_snapshot_that_does_not_fit_is_refused() {
        let t = train(&shared(200), &[], 16, 3, &|| false).unwrap();
        let meta = t.model.to_meta();
        assert_eq!(ChangeModel::from_meta(meta.clone(), 3).unwrap(), t.model);
        assert!(ChangeModel::from_meta(meta.clone(), 4).is_err(), "other width");
        let mut short = meta.clone();
        short.weights.pop();
        assert!(ChangeModel::from_meta(short, 3).is_err());
        let mut wild = meta.clone();
        wild.weights[0] = f64::NAN;
        assert!(ChangeModel::from_meta(wild, 3).is_err());
        let mut wide = meta;
        wide.units = 3;
        assert!(ChangeModel::from_meta(wide, 3).is_err(), "no bottleneck");
    }
}
