//! The decaying log-scale histogram a state limit is read from (see `state.rs`).

use serde::{Deserialize, Serialize};

use super::pruning::STRONG;

/// Bins of a [`TailHistogram`]: four per octave from `LOW` up (0.05 … ~51; larger
/// values share the top bin, smaller ones the first: limits are never under 2).
const BINS: usize = 40;
/// Lower edge of the second bin.
const LOW: f64 = 0.05;
/// A bin's largest count: when one bin reaches it, every count halves (older values
/// decay away; thousands of normal values are kept, enough for a q99).
const MAX_BIN: u16 = 4096;

/// A decaying histogram of a non-negative statistic on normal readings, on a log
/// scale, from which a tail limit is read. Allocated on its first value (streams
/// never use some components).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TailHistogram {
    /// `None` until the first value (boxed: a stream holds 24 histograms and
    /// uses about half).
    #[serde(with = "counts")]
    counts: Option<Box<[u16; BINS]>>,
    total: u32,
}

/// Serde for the counts as the list earlier builds wrote (empty: none yet).
mod counts {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::BINS;

    pub fn serialize<S: Serializer>(c: &Option<Box<[u16; BINS]>>, s: S) -> Result<S::Ok, S::Error> {
        c.as_deref().map_or(&[][..], |c| &c[..]).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<[u16; BINS]>>, D::Error> {
        let v = Vec::<u16>::deserialize(d)?;
        Ok(<[u16; BINS]>::try_from(v.as_slice()).ok().map(Box::new))
    }
}

impl TailHistogram {
    fn bin(x: f64) -> usize {
        if x.is_nan() || x <= LOW {
            return 0;
        }
        let b = (4.0 * (x / LOW).log2()).floor();
        if b.is_finite() {
            (b as usize).min(BINS - 1)
        } else {
            BINS - 1
        }
    }

    /// Upper edge of bin `b`.
    fn edge(b: usize) -> f64 {
        LOW * 2f64.powf((b + 1) as f64 / 4.0)
    }

    /// Adds one normal value.
    pub fn push(&mut self, x: f64) {
        let counts = match &mut self.counts {
            Some(c) => c,
            None => {
                self.total = 0;
                self.counts.insert(Box::new([0; BINS]))
            }
        };
        let b = Self::bin(x);
        if counts[b] == MAX_BIN {
            self.total = 0;
            for c in counts.iter_mut() {
                *c /= 2;
                self.total += u32::from(*c);
            }
        }
        counts[b] += 1;
        self.total += 1;
    }

    /// Values held.
    pub fn len(&self) -> u32 {
        self.total
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The `q` quantile (upper edge of its bin, interpolated geometrically).
    pub fn quantile(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let target = q * self.total as f64;
        let mut acc = 0.0;
        for (b, &c) in self.counts.iter().flat_map(|c| c.iter()).enumerate() {
            let next = acc + f64::from(c);
            if next >= target && c > 0 {
                let lo = if b == 0 { 0.0 } else { Self::edge(b - 1) };
                let hi = Self::edge(b);
                let f = ((target - acc) / f64::from(c)).clamp(0.0, 1.0);
                return lo + (hi - lo) * f;
            }
            acc = next;
        }
        Self::edge(BINS - 1)
    }

    /// A limit from the body of the distribution, `q50 + 3 (q90 − q50)` (about
    /// 3.8σ for a Gaussian), never below `floor`: few values move it little, and a
    /// slow rise must hold a tenth of them before it moves it at all.
    pub fn robust_limit(&self, floor: f64) -> f64 {
        let (q50, q90) = (self.quantile(0.5), self.quantile(0.9));
        (q50 + 3.0 * (q90 - q50).max(0.0)).max(floor)
    }

    /// A limit from the median alone, `6 q50` (4σ for a Gaussian, by the median
    /// absolute deviation), never below `floor`: a slow rise must hold half the
    /// values before it moves it much.
    pub fn median_limit(&self, floor: f64) -> f64 {
        (6.0 * self.quantile(0.5)).max(floor)
    }

    /// The limit: an exponential tail through q90 and q99, read at p ≈ 1e-4,
    /// never below `floor`.
    pub fn limit(&self, floor: f64) -> f64 {
        self.tail(3.0, floor)
    }

    /// The same tail read one decade further (p ≈ 1e-5), over [`Self::limit`]:
    /// at most [`STRONG`] (4/3), and close to 1 when the floor holds the limit
    /// far above the values seen.
    pub fn decade_beyond(&self, floor: f64) -> f64 {
        (self.tail(4.0, floor) / self.limit(floor)).clamp(1.0, STRONG)
    }

    /// `q90 + spreads (q99 − q90)`, never below `floor`: the exponential tail
    /// through q90 and q99, read `spreads` decades past q90.
    fn tail(&self, spreads: f64, floor: f64) -> f64 {
        let (q90, q99) = (self.quantile(0.9), self.quantile(0.99));
        (q90 + spreads * (q99 - q90).max(0.0)).max(floor)
    }
}
