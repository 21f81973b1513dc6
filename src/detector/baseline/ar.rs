//! An AR(p) model of one feature, fitted online by recursive least squares.

use std::collections::VecDeque;

use super::std_floor;

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
    pub(super) theta: Vec<f64>,
    cov: Vec<f64>,
    lags: VecDeque<f64>,
    scale: Option<(f64, f64)>,
    warm: Vec<f64>,
    pub(super) resid_var: f64,
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
        self.signed_score_floored(x, 0.0)
    }

    /// [`OnlineAr::signed_score`], the residual scale at least `floor` (in the
    /// series' own units).
    pub fn signed_score_floored(&self, x: f64, floor: f64) -> (f64, f64) {
        let Some((center, spread)) = self.scale else {
            return (0.0, x);
        };
        let xs = (x - center) / spread;
        match self.predict() {
            Some(pr) => {
                let r = xs - pr;
                let sd = (self.resid_var.sqrt().max(1e-3) * self.psi_sumsq.sqrt()).max(floor / spread);
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

    /// Whether its lags hold imputed values (readings skipped, not learnt): its
    /// residual is then a forecast error several steps ahead, and successive
    /// residuals share their innovations.
    pub fn imputing(&self) -> bool {
        !self.psi.is_empty()
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
