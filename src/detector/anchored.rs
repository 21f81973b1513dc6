//! Long runs of readings in about four bytes a value: rows of `width` values,
//! the newest (fewer than [`BLOCK`]) exact as `f64`, the older ones in blocks of
//! [`BLOCK`] rows, each value an `f32` offset from its block's `f64` anchor (the
//! median of that feature over the block, so one wild reading does not become
//! the reference of its neighbours). A value keeps 24 bits relative to how far
//! it lies from its block's middle: a counter at 10^12 that moves by ones keeps
//! its ones, which a plain `f32` would not. A buffer of `f64` costs twice as
//! much and buys nothing the detector reads: the model and its training see
//! `f32` windows, and the baselines' sums never needed the 29 bits more.
//!
//! A value reads back exact until its block fills, then as rounded once (the
//! same from then on); a snapshot keeps anchors, offsets and the open rows bit
//! for bit.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Rows that share an anchor.
pub const BLOCK: usize = 32;

/// A FIFO of rows of `width` values, oldest first (see the module's doc).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Anchored {
    /// Values a row.
    width: usize,
    /// Rows of the front block already dropped (`0..BLOCK`).
    skip: usize,
    /// `[blocks][width]`.
    #[serde(with = "super::packed")]
    anchors: VecDeque<f64>,
    /// `[rows in blocks][width]`.
    #[serde(with = "packed_f32")]
    offsets: VecDeque<f32>,
    /// `[newest rows][width]`, fewer than `BLOCK` rows, exact.
    #[serde(with = "super::packed")]
    open: Vec<f64>,
}

/// `x` as the nearest `f32`, beyond `f32`'s range at its largest finite value
/// and NaN as 0 (a snapshot holds finite numbers only): an offset from an
/// anchor, here and in `recent`.
pub(super) fn narrow(x: f64) -> f32 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(-f64::from(f32::MAX), f64::from(f32::MAX)) as f32
    }
}

impl Anchored {
    /// An empty buffer of rows of `width` values.
    pub fn new(width: usize) -> Self {
        Anchored {
            width: width.max(1),
            ..Anchored::default()
        }
    }

    /// A buffer holding `values` (rows of `width`, oldest first) as pushes
    /// would hold them (a snapshot from before this buffer existed).
    pub fn from_values(width: usize, values: &[f64]) -> Self {
        let mut a = Anchored::new(width);
        for row in values.chunks_exact(a.width) {
            a.push_row(row);
        }
        a
    }

    /// Values a row.
    pub fn width(&self) -> usize {
        self.width.max(1)
    }

    /// Values held (rows × width).
    pub fn len(&self) -> usize {
        self.offsets.len() + self.open.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.len() / self.width()
    }

    /// Appends a row (`width` values; an empty buffer takes the width of its
    /// first row); true when it filled a block, which rounded the block's values.
    pub fn push_row(&mut self, row: &[f64]) -> bool {
        if self.is_empty() {
            self.width = row.len().max(1);
            self.clear();
        }
        let w = self.width();
        debug_assert_eq!(row.len(), w, "a row of the buffer's width");
        if self.open.capacity() < BLOCK * w {
            self.open.reserve_exact(BLOCK * w - self.open.len());
        }
        self.open.extend_from_slice(row);
        let full = self.open.len() == BLOCK * w;
        if full {
            self.close_block();
        }
        full
    }

    /// Turns the full open block into a closed one: per feature, its median as
    /// the anchor and every value as an offset from it.
    fn close_block(&mut self) {
        let w = self.width();
        for j in 0..w {
            let mut column = [0.0; BLOCK];
            for (c, row) in column.iter_mut().zip(self.open.chunks_exact(w)) {
                *c = row[j];
            }
            column.select_nth_unstable_by(BLOCK / 2, f64::total_cmp);
            self.anchors.push_back(column[BLOCK / 2]);
        }
        let base = self.anchors.len() - w;
        for (i, &x) in self.open.iter().enumerate() {
            self.offsets.push_back(narrow(x - self.anchors[base + i % w]));
        }
        self.open.clear();
    }

    /// Drops the oldest row (nothing when empty).
    pub fn pop_row(&mut self) {
        let w = self.width();
        if self.offsets.is_empty() {
            if self.open.len() >= w {
                self.open.drain(..w);
            }
            return;
        }
        self.offsets.drain(..w);
        self.skip += 1;
        if self.skip == BLOCK || self.offsets.is_empty() {
            self.anchors.drain(..w);
            self.skip = 0;
        }
    }

    /// Drops every row.
    pub fn clear(&mut self) {
        self.anchors.clear();
        self.offsets.clear();
        self.open.clear();
        self.skip = 0;
    }

    /// Value `i` (row `i / width`, feature `i % width`) as it reads now.
    pub fn get(&self, i: usize) -> f64 {
        let closed = self.offsets.len();
        if i >= closed {
            return self.open[i - closed];
        }
        let w = self.width();
        let block = (self.skip + i / w) / BLOCK;
        self.anchors[block * w + i % w] + f64::from(self.offsets[i])
    }

    /// The first value.
    pub fn first(&self) -> Option<f64> {
        (!self.is_empty()).then(|| self.get(0))
    }

    /// The last value.
    pub fn last(&self) -> Option<f64> {
        self.len().checked_sub(1).map(|i| self.get(i))
    }

    /// Values `range` in order.
    pub fn range(&self, range: std::ops::Range<usize>) -> impl Iterator<Item = f64> + '_ {
        range.map(|i| self.get(i))
    }

    /// Every value in order.
    pub fn iter(&self) -> impl Iterator<Item = f64> + '_ {
        self.range(0..self.len())
    }

    /// Whether a deserialised buffer is one this code could have built.
    pub fn check(&self) -> Result<(), String> {
        let w = self.width();
        let closed_rows = self.offsets.len() / w;
        let ok = (1..=1 << 20).contains(&self.width)
            && self.offsets.len().is_multiple_of(w)
            && self.open.len().is_multiple_of(w)
            && self.open.len() < BLOCK * w
            && self.skip < BLOCK
            && (self.skip == 0 || !self.offsets.is_empty())
            && self.anchors.len() == (self.skip + closed_rows).div_ceil(BLOCK) * w
            && self.anchors.iter().chain(&self.open).all(|a| a.is_finite())
            && self.offsets.iter().all(|o| o.is_finite());
        ok.then_some(()).ok_or_else(|| {
            format!(
                "a buffer of {} values in rows of {w} with {} anchors from row {}",
                self.len(),
                self.anchors.len(),
                self.skip
            )
        })
    }
}

/// Serde for a `VecDeque<f32>` in snapshots: the little-endian bytes in base64.
mod packed_f32 {
    use std::collections::VecDeque;

    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(values: &VecDeque<f32>, s: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::with_capacity(values.len() * 4);
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<VecDeque<f32>, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = STANDARD.decode(text).map_err(de::Error::custom)?;
        if !bytes.len().is_multiple_of(4) {
            return Err(de::Error::custom(format!(
                "{} bytes is not a whole number of f32s",
                bytes.len()
            )));
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a block holds for `x` once closed, given its anchor.
    fn rounded(x: f64, anchor: f64) -> f64 {
        anchor + f64::from(narrow(x - anchor))
    }

    /// The upper median of feature `j` over rows `from..from + BLOCK`.
    fn median(rows: &[[f64; 2]], from: usize, j: usize) -> f64 {
        let mut c: Vec<f64> = rows[from..from + BLOCK].iter().map(|r| r[j]).collect();
        c.sort_by(f64::total_cmp);
        c[BLOCK / 2]
    }

    #[test]
    fn a_closed_block_keeps_each_value_to_its_offset_from_the_median_and_open_rows_exact() {
        let mut a = Anchored::new(2);
        let mut rows: Vec<[f64; 2]> = (0..100).map(|t| [1e12 + t as f64 * 0.25, 0.1 * t as f64]).collect();
        rows[40][1] = 1e150; // a wild reading is not its block's reference
        for r in &rows {
            a.push_row(r);
        }
        assert_eq!(a.rows(), 100);
        for (t, r) in rows.iter().enumerate() {
            for j in 0..2 {
                let want = if t < 96 {
                    rounded(r[j], median(&rows, t - t % BLOCK, j))
                } else {
                    r[j]
                };
                assert_eq!(a.get(t * 2 + j), want, "row {t} feature {j}");
            }
        }
        // A counter at 10^12 keeps its quarters (a plain f32 keeps steps of 2^16),
        // and the wild reading's neighbours keep theirs.
        assert_eq!(a.get(2 * 37) - a.get(2 * 36), 0.25);
        assert!((a.get(2 * 41 + 1) - 4.1).abs() < 1e-6, "{}", a.get(2 * 41 + 1));
        assert!(
            a.get(2 * 40 + 1) > 3e38,
            "beyond f32's reach of its median: its largest"
        );
    }

    #[test]
    fn dropping_rows_keeps_the_rest_and_frees_a_block_once_it_is_gone() {
        let values: Vec<f64> = (0..200).map(|t| (t as f64 * 0.37).sin() * 1e3 + 7.0).collect();
        let mut a = Anchored::new(1);
        for &v in &values[..100] {
            a.push_row(&[v]);
        }
        let kept: Vec<f64> = a.iter().collect();
        for _ in 0..40 {
            a.pop_row();
        }
        assert_eq!(a.iter().collect::<Vec<_>>(), kept[40..].to_vec(), "the rest unchanged");
        assert_eq!(a.anchors.len(), 2, "rows 40..96 closed in blocks 1 and 2; 96..100 open");
        a.check().unwrap();
        while !a.is_empty() {
            a.pop_row();
            a.check().unwrap();
        }
        assert!(a.anchors.is_empty() && a.skip == 0);
        // A window shorter than a block never closes one and stays exact.
        let mut short = Anchored::new(1);
        for &v in &values {
            short.push_row(&[v]);
            if short.rows() > 5 {
                short.pop_row();
            }
        }
        assert_eq!(short.iter().collect::<Vec<_>>(), values[195..].to_vec());
    }

    #[test]
    fn a_snapshot_round_trips_bit_for_bit_and_a_damaged_one_is_refused() {
        let mut a = Anchored::new(1);
        for t in 0..70 {
            a.push_row(&[(t as f64).sqrt() * 1e-3]);
        }
        a.pop_row();
        let json = serde_json::to_string(&a).unwrap();
        let back: Anchored = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
        back.check().unwrap();
        assert_eq!(
            back.iter().map(f64::to_bits).collect::<Vec<_>>(),
            a.iter().map(f64::to_bits).collect::<Vec<_>>()
        );
        let mut bad = a.clone();
        bad.anchors.pop_back();
        assert!(bad.check().is_err());
    }
}
