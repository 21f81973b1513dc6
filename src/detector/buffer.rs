//! The reading buffer: how many rows it keeps, and the windowed Gaussians,
//! whose windows are its newest rows (they keep only their sums).

use super::{Detector, DetectorConfig};

impl DetectorConfig {
    /// Rows the reading buffer keeps: the training buffer, at least a model
    /// window, and a Gaussian's window with the newest row and the one leaving.
    pub fn buffer_rows(&self) -> usize {
        self.training
            .buffer
            .max(self.window)
            .max(self.baseline.gaussian_window + 2)
    }
}

impl Detector {
    /// Buffers a row of `d` values, dropping the oldest beyond
    /// [`DetectorConfig::buffer_rows`], and moves the Gaussians' windows along.
    pub(super) fn buffer_row(&mut self, values: &[f64]) {
        let d = values.len();
        let cap = self.config.buffer_rows() * d;
        while self.history.len() + d > cap {
            self.history.pop_row();
        }
        let rounded = self.history.push_row(values);
        let (history, rows) = (&self.history, self.history.len() / d);
        for (j, g) in self.gaussians.iter_mut().enumerate() {
            g.advance(rows, |i| history.get(i * d + j), rounded);
        }
    }

    /// Sums every Gaussian's window afresh from the buffer (after the buffer
    /// was replaced or cut, or a snapshot held no sums).
    pub(super) fn resum_gaussians(&mut self) {
        let d = self.n_features.unwrap_or(1).max(1);
        let (history, rows) = (&self.history, self.history.len() / d);
        for (j, g) in self.gaussians.iter_mut().enumerate() {
            g.resum(rows, |i| history.get(i * d + j));
        }
    }
}
