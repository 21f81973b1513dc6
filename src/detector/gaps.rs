//! Gaps in a regular stream: the rows a gap missed are filled with what the state
//! expected (never learnt, never scored), and a gap longer than the buffer starts
//! the seasonal past, the model's windows and the ARs' lags over.

use super::Detector;
use super::baseline::{self, OnlineAr, StateBaselines};
use crate::timestamp::Micros;

impl Detector {
    /// Fills the rows a regular stream missed before `timestamp` (see
    /// [`cadence`]) with what the state expected there: never learnt, never
    /// scored, but buffered (marked filled, so no training window holds one) and
    /// stepped past by the ARs, so that the seasonal phase, the AR's lags and the
    /// model's window count time again. At most a training buffer's worth (see
    /// [`Detector::long_gap`]).
    pub(super) fn fill_gap(&mut self, timestamp: Micros) {
        let (Some(last), Some(d)) = (self.last_ts, self.n_features) else {
            return;
        };
        if self.state_baselines.len() != d || self.history.len() < d {
            return;
        }
        let missing = self.cadence.observe(timestamp.saturating_sub(last));
        let cap = self.config.training.buffer.max(self.config.window) as u64;
        if missing > cap {
            self.long_gap();
            return;
        }
        let step = self.cadence.step();
        for i in 1..=missing {
            let row = self.expected_row();
            let t = last
                .saturating_add((step * i as f64) as i64)
                .min(timestamp.saturating_sub(1));
            self.admit(t, &row);
            for (j, &x) in row.iter().enumerate() {
                self.state_baselines[j].skip_as(x);
                self.ars[j].skip_as(Some(x));
            }
            self.filled.push_back(self.seen);
            self.imputed += 1;
        }
    }

    /// A gap longer than the training buffer: filling it would only guess, and a
    /// period estimated from the buffer is not exact enough to keep the phase
    /// over it. The rows before it stop counting as a season's past and as model
    /// windows (the model scores again once a window of new readings is in, and
    /// no training window spans the gap); the ARs forget their lags and predict
    /// again once they have `p` new ones.
    pub(super) fn long_gap(&mut self) {
        self.fresh_from = self.seen + 1;
        self.filled.push_back(self.seen);
        self.state_baselines.iter_mut().for_each(StateBaselines::restart_lags);
        self.ars.iter_mut().for_each(OnlineAr::restart_lags);
    }

    /// What the state expects for the next row: the seasonal expectation where the
    /// cycle explains the feature, the AR's forecast otherwise.
    pub(super) fn expected_row(&self) -> Vec<f64> {
        let d = self.n_features.unwrap_or(1).max(1);
        let n_rows = self.history.len() / d;
        (0..d)
            .map(|j| {
                let last = self.history.get((n_rows - 1) * d + j);
                let mut past = [0.0; baseline::MAX_SEASONAL_PERIODS];
                let n = self.seasonal_past(j, n_rows, false, &mut past);
                if n > 0 && self.state_baselines[j].seasonal_explains() {
                    self.seasonals[j].score(last, &mut past[..n], 0.0).1
                } else {
                    self.state_baselines[j].forecast(last)
                }
            })
            .collect()
    }
}
