//! Turns a stream of raw anomaly scores into a calibrated score in [0, 1]: how
//! improbable the recent (short-term averaged) raw score is under the stream's own
//! long-term distribution of such averages, after Numenta's anomaly likelihood
//! (Ahmad et al., "Unsupervised real-time anomaly detection for streaming data",
//! Neurocomputing 2017).
//!
//! ```text
//! a_t  = mean of the last `averaging_window` raw scores
//! μ, σ = mean and sd of a over the last `historic_window` readings (re-estimated
//!        every `reestimation_period`; floors keep near-constant streams sane)
//! L_t  = 1 − Q((a_t − μ)/σ)                       (one-sided Gaussian tail)
//! consecutive L_t above `red` after the first are capped at `yellow`
//! score = log(1.0000000001 − L_t) / log(1e−10)    (0 … 1, 0.5 ⇔ L = 1 − 1e−5)
//! ```

use std::collections::VecDeque;

/// Parameters of the likelihood: Numenta's defaults for 5-minute metrics, except that
/// the first estimate comes after 64 + 64 readings rather than 288 + 100, so a young
/// stream is scored sooner (anomalies in short streams fell in that blind stretch).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LikelihoodConfig {
    /// Readings before any estimate (score 0 meanwhile).
    pub learning_period: usize,
    /// Further readings collected before the first estimate.
    pub estimation_samples: usize,
    /// Readings of history the distribution is estimated from.
    pub historic_window: usize,
    /// Readings between re-estimates.
    pub reestimation_period: usize,
    /// Raw scores averaged into the short-term mean.
    pub averaging_window: usize,
    /// Floor of the long-term mean.
    pub min_mean: f64,
    /// Floor of the long-term variance.
    pub min_variance: f64,
}

impl Default for LikelihoodConfig {
    fn default() -> Self {
        LikelihoodConfig {
            learning_period: 64,
            estimation_samples: 64,
            historic_window: 8640,
            reestimation_period: 100,
            averaging_window: 10,
            min_mean: 0.03,
            min_variance: 0.0003,
        }
    }
}

/// Sum, sum of squares and count of one block of short-term averages.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Block {
    sum: f64,
    sumsq: f64,
    n: u32,
}

/// The closed blocks, oldest first: each one's sums in `f32`, and the count
/// they all share (a block closes at `reestimation_period` averages, and a
/// change of it starts the likelihood afresh), in 8 bytes a block where a
/// [`Block`] took 24. A block's sums are of 100 averages in [0, 1]: `f32`
/// keeps them to 6e-8 relative, far under what moves an estimate of their
/// mean and variance over 86 blocks. Snapshots hold them as [`Block`]s.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(from = "Vec<Block>", into = "Vec<Block>")]
struct Closed {
    sums: VecDeque<[f32; 2]>,
    n: u32,
}

impl Closed {
    fn iter(&self) -> impl Iterator<Item = Block> + '_ {
        self.sums.iter().map(|&[sum, sumsq]| Block {
            sum: f64::from(sum),
            sumsq: f64::from(sumsq),
            n: self.n,
        })
    }
}

impl From<Vec<Block>> for Closed {
    /// Blocks as snapshots hold them (of one count, as this code closes them;
    /// the first one's count stands for all).
    fn from(blocks: Vec<Block>) -> Closed {
        Closed {
            n: blocks.first().map_or(0, |b| b.n),
            sums: blocks.iter().map(|b| [b.sum as f32, b.sumsq as f32]).collect(),
        }
    }
}

impl From<Closed> for Vec<Block> {
    fn from(c: Closed) -> Vec<Block> {
        c.iter().collect()
    }
}

/// The likelihood's state for one stream.
///
/// The long-term distribution is kept as per-block sums (one block per
/// `reestimation_period` readings) rather than every average: estimates happen at
/// block boundaries, so the mean and variance are the same as over the raw
/// averages, in ~0.7 KB instead of 8,640 values per stream.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Likelihood {
    config: LikelihoodConfig,
    recent: VecDeque<f64>,
    blocks: Closed,
    current: Block,
    seen: usize,
    mean: f64,
    std: f64,
    estimated: bool,
    prev_red: bool,
}

/// L above this is "red" (tail probability 1e-5).
const RED: f64 = 1.0 - 1e-5;
/// Consecutive red values are capped here (tail probability 1e-3).
const YELLOW: f64 = 1.0 - 1e-3;

impl Likelihood {
    /// A fresh state.
    pub fn new(config: LikelihoodConfig) -> Self {
        Likelihood {
            recent: VecDeque::new(),
            blocks: Closed::default(),
            current: Block::default(),
            seen: 0,
            mean: 0.0,
            std: 1.0,
            estimated: false,
            prev_red: false,
            config,
        }
    }

    /// Takes one raw score in [0, 1] and returns `(score, likelihood)`.
    pub fn update(&mut self, raw: f64) -> (f64, f64) {
        let c = &self.config;
        let raw = if raw.is_finite() { raw.clamp(0.0, 1.0) } else { 1.0 };
        if self.recent.len() == c.averaging_window.max(1) {
            self.recent.pop_front();
        }
        self.recent.push_back(raw);
        let avg = self.recent.iter().sum::<f64>() / self.recent.len() as f64;
        self.seen += 1;
        let block_len = c.reestimation_period.max(1);
        let mut block_done = false;
        if self.seen > c.learning_period {
            self.current.sum += avg;
            self.current.sumsq += avg * avg;
            self.current.n += 1;
            if self.current.n as usize >= block_len {
                let max_blocks = c.historic_window.div_ceil(block_len).max(1);
                if self.blocks.sums.len() == max_blocks {
                    self.blocks.sums.pop_front();
                }
                let done = std::mem::take(&mut self.current);
                self.blocks.n = done.n;
                self.blocks.sums.push_back([done.sum as f32, done.sumsq as f32]);
                block_done = true;
            }
        }
        let collected = self.blocks.sums.len() * self.blocks.n as usize;
        if block_done && collected >= c.estimation_samples.max(2) {
            self.estimate();
        } else if !self.estimated
            && collected + self.current.n as usize >= c.estimation_samples.max(2)
            && self.current.n > 0
        {
            // The first estimate may come before a block is complete.
            self.estimate();
        }
        if !self.estimated {
            return (0.0, 0.5);
        }
        let z = (avg - self.mean) / self.std;
        let tail = if z <= 0.0 {
            0.5
        } else {
            0.5 * erfc(z / std::f64::consts::SQRT_2)
        };
        let mut l = 1.0 - tail;
        let red = l > RED;
        if red && self.prev_red {
            l = YELLOW;
        }
        self.prev_red = red;
        let score = ((1.000_000_000_1 - l).ln() / (1e-10f64).ln()).clamp(0.0, 1.0);
        (score, l)
    }

    fn estimate(&mut self) {
        let all = self.blocks.iter().chain(std::iter::once(self.current));
        let (sum, sumsq, n) = all.fold((0.0, 0.0, 0.0), |(s, q, n), b| (s + b.sum, q + b.sumsq, n + b.n as f64));
        let mean = sum / n;
        let var = (sumsq / n - mean * mean).max(0.0);
        self.mean = mean.max(self.config.min_mean);
        self.std = var.max(self.config.min_variance).sqrt();
        self.estimated = true;
    }
}

/// Complementary error function (W. J. Cody's rational approximations via the
/// Numerical Recipes `erfcc` form; relative error < 1.2e-7).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erfc_matches_known_values() {
        for (x, want) in [
            (0.0, 1.0),
            (0.5, 0.479_500_122),
            (1.0, 0.157_299_207),
            (2.0, 0.004_677_735),
            (-1.0, 1.842_700_793),
        ] {
            assert!(
                (erfc(x) - want).abs() < 2e-7 * want.max(1e-3),
                "erfc({x}) = {}",
                erfc(x)
            );
        }
    }

    #[test]
    fn quiet_stream_stays_low_and_a_burst_scores_high() {
        let mut l = Likelihood::new(LikelihoodConfig::default());
        let mut max_quiet: f64 = 0.0;
        for i in 0..1000 {
            let raw = 0.05 + 0.02 * ((i * 37 % 11) as f64 / 11.0);
            max_quiet = max_quiet.max(l.update(raw).0);
        }
        assert!(max_quiet < 0.3, "{max_quiet}");
        let burst: Vec<f64> = (0..10).map(|_| l.update(1.0).0).collect();
        assert!(burst.iter().cloned().fold(0.0, f64::max) >= 0.5, "{burst:?}");
    }

    #[test]
    fn a_snapshot_holds_the_blocks_as_blocks_and_goes_on_as_the_original() {
        let mut a = Likelihood::new(LikelihoodConfig::default());
        let raw = |t: usize| 0.3 + 0.2 * (t as f64 * 0.37).sin();
        for t in 0..1234 {
            a.update(raw(t));
        }
        let json = serde_json::to_value(&a).unwrap();
        let blocks = json["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), 11);
        assert_eq!(blocks[0]["n"], 100);
        let mut b: Likelihood = serde_json::from_value(json).unwrap();
        assert_eq!(b, a);
        for t in 1234..2000 {
            assert_eq!(a.update(raw(t)), b.update(raw(t)));
        }
    }
}
