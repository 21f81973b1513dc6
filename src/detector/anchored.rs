//! Long runs of readings in about two bytes a value: rows of `width` values,
//! the newest (fewer than [`BLOCK`]) exact as `f64`, the older ones in blocks of
//! [`BLOCK`] rows, each value an offset from its block's `f64` anchor (the
//! median of that feature over the block, so one wild reading does not become
//! the reference of its neighbours) in half precision, in units of a power of
//! two per block and feature. Every value keeps 11 significant bits of its
//! offset: a counter at 10^12 that moves by quarters keeps them (a plain `f32`
//! keeps steps of 2^16 there), and a sine of amplitude 20 reads back within
//! 0.01. A block whose offsets span more than 28 binary orders (a reading
//! 10^8 times further from the median than another) is held in `f32` offsets
//! instead, so a wild reading costs its neighbours nothing. The model and its
//! training see `f32` windows of normalised values, the baselines sums and
//! same-phase values; none of them reads the bits `f32` or `f64` would add
//! (NAB, SMAP and TEP measured in BENCHMARKS.md, twenty-fourth stop).
//!
//! A value reads back exact until its block fills, then as rounded once (the
//! same from then on); a snapshot keeps anchors, scales, offsets and the open
//! rows bit for bit.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Rows that share an anchor.
pub const BLOCK: usize = 32;

/// A FIFO of rows of `width` values, oldest first (see the module's doc).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Form")]
pub struct Anchored {
    /// Values a row.
    width: usize,
    /// Rows of the front block already dropped (`0..BLOCK`).
    skip: usize,
    /// `[blocks][width]`.
    #[serde(with = "super::packed")]
    anchors: VecDeque<f64>,
    /// `[blocks][width]`: the power of two a block's offsets of a feature are
    /// in units of, or [`WILD`]: they are in `wild`.
    scales: VecDeque<i16>,
    /// `[rows in blocks][width]`: each offset in half precision (its bits).
    #[serde(with = "packed_le")]
    halves: VecDeque<u16>,
    /// The `f32` offsets of the [`WILD`] blocks' features, [`BLOCK`] each (a
    /// block's dropped rows too), in the order of `scales`.
    #[serde(with = "packed_le")]
    wild: VecDeque<f32>,
    /// `[newest rows][width]`, fewer than `BLOCK` rows, exact.
    #[serde(with = "super::packed")]
    open: Vec<f64>,
}

/// The scale of a block's feature held in `f32` offsets.
const WILD: i16 = i16::MIN;
/// Orders of two a half-precision block may span (f16's normal range).
const SPAN: i32 = 28;

/// `2^e` (`e` within `f64`'s normal exponents).
fn pow2(e: i32) -> f64 {
    f64::from_bits(((e.clamp(-1022, 1023) + 1023) as u64) << 52)
}

/// `y` (zero, or `2^-14 <= |y| < 2^15`) as the nearest half-precision value
/// (ties to even), its bits.
fn to_half(y: f64) -> u16 {
    let bits = y.to_bits();
    let sign = ((bits >> 63) as u16) << 15;
    if y == 0.0 {
        return sign;
    }
    let mut exp = ((bits >> 52) & 0x7ff) as i32 - 1023;
    let (mut m, rest) = (bits >> 42 & 0x3ff, bits & ((1 << 42) - 1));
    if rest > 1 << 41 || rest == 1 << 41 && m & 1 == 1 {
        m += 1;
        if m == 1 << 10 {
            (m, exp) = (0, exp + 1);
        }
    }
    sign | (((exp + 15) as u16) << 10) | m as u16
}

/// The value of half-precision bits `h` made by [`to_half`].
fn from_half(h: u16) -> f64 {
    if h & 0x7fff == 0 {
        return if h == 0 { 0.0 } else { -0.0 };
    }
    let exp = u64::from((h >> 10) & 0x1f) + 1023 - 15;
    f64::from_bits(u64::from(h >> 15) << 63 | exp << 52 | u64::from(h & 0x3ff) << 42)
}

/// One block's offsets of a feature (`NaN` as 0): their scale and halves, or
/// [`WILD`] and nothing when they span more than [`SPAN`] orders of two.
fn encode(offsets: &[f64; BLOCK], halves: &mut [u16; BLOCK]) -> i16 {
    let magnitudes = offsets.iter().map(|o| if o.is_nan() { 0.0 } else { o.abs() });
    let max = magnitudes.clone().fold(0.0, f64::max);
    let least = magnitudes.filter(|&m| m > 0.0).fold(f64::INFINITY, f64::min);
    if max < pow2(-900) {
        *halves = [0; BLOCK];
        return 0;
    }
    if least < max * pow2(-SPAN) || !max.is_finite() {
        return WILD;
    }
    // floor(log2(max)) - 14: the largest offset is 2^14..2^15 units.
    let e = ((max.to_bits() >> 52) & 0x7ff) as i32 - 1023 - 14;
    let unit = pow2(-e);
    for (h, &o) in halves.iter_mut().zip(offsets) {
        *h = if o.is_nan() { 0 } else { to_half(o * unit) };
    }
    e as i16
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
        self.halves.len() + self.open.len()
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
        let mut halves = vec![[0u16; BLOCK]; w];
        for (j, h) in halves.iter_mut().enumerate() {
            let mut column = [0.0; BLOCK];
            for (c, row) in column.iter_mut().zip(self.open.chunks_exact(w)) {
                *c = row[j];
            }
            let mut sorted = column;
            sorted.select_nth_unstable_by(BLOCK / 2, f64::total_cmp);
            let anchor = sorted[BLOCK / 2];
            self.push_block_column(anchor, &column.map(|x| x - anchor), h);
        }
        for r in 0..BLOCK {
            self.halves.extend(halves.iter().map(|h| h[r]));
        }
        self.open.clear();
    }

    /// Appends a closed block's feature: its anchor, and its scale and halves
    /// (into `halves`) or its wild offsets.
    fn push_block_column(&mut self, anchor: f64, offsets: &[f64; BLOCK], halves: &mut [u16; BLOCK]) {
        let scale = encode(offsets, halves);
        if scale == WILD {
            self.wild.extend(offsets.iter().map(|&o| narrow(o)));
            *halves = [0; BLOCK];
        }
        self.anchors.push_back(anchor);
        self.scales.push_back(scale);
    }

    /// Drops the oldest row (nothing when empty).
    pub fn pop_row(&mut self) {
        let w = self.width();
        if self.halves.is_empty() {
            if self.open.len() >= w {
                self.open.drain(..w);
            }
            return;
        }
        self.halves.drain(..w);
        self.skip += 1;
        if self.skip == BLOCK || self.halves.is_empty() {
            let wild = self.scales.drain(..w).filter(|&s| s == WILD).count();
            self.wild.drain(..wild * BLOCK);
            self.anchors.drain(..w);
            self.skip = 0;
        }
    }

    /// Drops every row.
    pub fn clear(&mut self) {
        self.anchors.clear();
        self.scales.clear();
        self.halves.clear();
        self.wild.clear();
        self.open.clear();
        self.skip = 0;
    }

    /// Value `i` (row `i / width`, feature `i % width`) as it reads now.
    pub fn get(&self, i: usize) -> f64 {
        let closed = self.halves.len();
        if i >= closed {
            return self.open[i - closed];
        }
        let w = self.width();
        let at = self.skip + i / w;
        let k = at / BLOCK * w + i % w;
        let offset = match self.scales[k] {
            WILD => {
                let before = self.scales.range(..k).filter(|&&s| s == WILD).count();
                f64::from(self.wild[before * BLOCK + at % BLOCK])
            }
            e => from_half(self.halves[i]) * pow2(i32::from(e)),
        };
        self.anchors[k] + offset
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
        let closed_rows = self.halves.len() / w;
        let wild = self.scales.iter().filter(|&&s| s == WILD).count();
        let ok = (1..=1 << 20).contains(&self.width)
            && self.halves.len().is_multiple_of(w)
            && self.open.len().is_multiple_of(w)
            && self.open.len() < BLOCK * w
            && self.skip < BLOCK
            && (self.skip == 0 || !self.halves.is_empty())
            && self.anchors.len() == (self.skip + closed_rows).div_ceil(BLOCK) * w
            && self.scales.len() == self.anchors.len()
            && self.scales.iter().all(|&s| s == WILD || (-1100..=1100).contains(&s))
            && self.wild.len() == wild * BLOCK
            && self.anchors.iter().chain(&self.open).all(|a| a.is_finite())
            && self.halves.iter().all(|h| h & 0x7c00 != 0x7c00)
            && self.wild.iter().all(|o| o.is_finite());
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

/// An [`Anchored`] as a snapshot holds it. One from before half precision has
/// `f32` `offsets` instead of `scales`, `halves` and `wild`: they are rounded
/// as a block closing now would round them.
#[derive(Deserialize)]
struct Form {
    width: usize,
    skip: usize,
    #[serde(with = "super::packed")]
    anchors: VecDeque<f64>,
    #[serde(default)]
    scales: VecDeque<i16>,
    #[serde(default, with = "packed_le")]
    halves: VecDeque<u16>,
    #[serde(default, with = "packed_le")]
    wild: VecDeque<f32>,
    #[serde(default, with = "packed_le")]
    offsets: VecDeque<f32>,
    #[serde(with = "super::packed")]
    open: Vec<f64>,
}

impl TryFrom<Form> for Anchored {
    type Error = String;

    fn try_from(f: Form) -> Result<Anchored, String> {
        let mut a = Anchored {
            width: f.width,
            skip: f.skip,
            anchors: f.anchors,
            scales: f.scales,
            halves: f.halves,
            wild: f.wild,
            open: f.open,
        };
        if !f.offsets.is_empty() {
            a.reencode(&f.offsets)?;
        }
        Ok(a)
    }
}

impl Anchored {
    /// Takes `f32` offsets from its anchors (a snapshot from before half
    /// precision) into scales, halves and wild blocks.
    fn reencode(&mut self, offsets: &VecDeque<f32>) -> Result<(), String> {
        let w = self.width();
        let rows = offsets.len() / w;
        let blocks = (self.skip + rows).div_ceil(BLOCK);
        if !offsets.len().is_multiple_of(w) || self.skip >= BLOCK || self.anchors.len() != blocks * w {
            return Err(format!(
                "{} offsets in rows of {w} for {} anchors",
                offsets.len(),
                self.anchors.len()
            ));
        }
        let anchors = std::mem::take(&mut self.anchors);
        (self.scales, self.halves, self.wild) = Default::default();
        // Rows `at` of the blocks, from the front block's first (dropped or not).
        let skip = self.skip;
        let row = |at: usize| at.checked_sub(skip).filter(|&r| r < rows);
        for b in 0..blocks {
            let mut halves = vec![[0u16; BLOCK]; w];
            for (j, h) in halves.iter_mut().enumerate() {
                let mut o = [0.0; BLOCK];
                for (p, o) in o.iter_mut().enumerate() {
                    if let Some(r) = row(b * BLOCK + p) {
                        *o = f64::from(offsets[r * w + j]);
                    }
                }
                self.push_block_column(anchors[b * w + j], &o, h);
            }
            for p in (0..BLOCK).filter(|&p| row(b * BLOCK + p).is_some()) {
                self.halves.extend(halves.iter().map(|h| h[p]));
            }
        }
        Ok(())
    }
}

/// Serde for a `VecDeque` of `f32`s or `u16`s in snapshots: their
/// little-endian bytes in base64.
mod packed_le {
    use std::collections::VecDeque;

    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer, de};

    /// A number of `BYTES` little-endian bytes.
    pub trait Le: Copy {
        const BYTES: usize;
        fn put(self, out: &mut Vec<u8>);
        fn read(bytes: &[u8]) -> Self;
    }

    impl Le for f32 {
        const BYTES: usize = 4;
        fn put(self, out: &mut Vec<u8>) {
            out.extend_from_slice(&self.to_le_bytes());
        }
        fn read(b: &[u8]) -> Self {
            f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }
    }

    impl Le for u16 {
        const BYTES: usize = 2;
        fn put(self, out: &mut Vec<u8>) {
            out.extend_from_slice(&self.to_le_bytes());
        }
        fn read(b: &[u8]) -> Self {
            u16::from_le_bytes([b[0], b[1]])
        }
    }

    pub fn serialize<T: Le, S: Serializer>(values: &VecDeque<T>, s: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::with_capacity(values.len() * T::BYTES);
        values.iter().for_each(|v| v.put(&mut bytes));
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, T: Le, D: Deserializer<'de>>(d: D) -> Result<VecDeque<T>, D::Error> {
        let bytes = STANDARD.decode(String::deserialize(d)?).map_err(de::Error::custom)?;
        if !bytes.len().is_multiple_of(T::BYTES) {
            return Err(de::Error::custom(format!(
                "{} bytes is not a whole number of {}-byte values",
                bytes.len(),
                T::BYTES
            )));
        }
        Ok(bytes.chunks_exact(T::BYTES).map(T::read).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // Every block is in half precision but the wild reading's feature's,
        // which is in f32.
        assert_eq!(a.scales.iter().filter(|&&s| s == WILD).count(), 1);
        assert_eq!(a.scales[3], WILD);
        for (t, r) in rows.iter().enumerate() {
            for j in 0..2 {
                let got = a.get(t * 2 + j);
                if t >= 96 {
                    assert_eq!(got, r[j], "an open row is exact");
                    continue;
                }
                if (t, j) == (40, 1) {
                    continue; // beyond f32's reach: below
                }
                let anchor = median(&rows, t - t % BLOCK, j);
                let bits = if (32..64).contains(&t) && j == 1 { 24 } else { 11 };
                let within = (r[j] - anchor).abs() * 2f64.powi(-bits);
                assert!((got - r[j]).abs() <= within, "row {t} feature {j}: {got} for {}", r[j]);
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
        // Dropping rows through the wild block keeps the rest as they read,
        // and frees its f32 offsets with it.
        let before: Vec<f64> = a.iter().collect();
        for dropped in 1..=70 {
            a.pop_row();
            a.check().unwrap();
            assert_eq!(a.iter().collect::<Vec<_>>(), before[2 * dropped..].to_vec());
        }
        assert!(a.wild.is_empty() && a.scales.iter().all(|&s| s != WILD));
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

    #[test]
    fn a_half_is_the_nearest_one_and_reads_back_as_it() {
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // |y| in 2^-14..2^15, either sign.
            let y = pow2((x % 29) as i32 - 14) * (1.0 + (x >> 11) as f64 / (1u64 << 53) as f64);
            let y = if x & 1 == 0 { y } else { -y };
            let h = to_half(y);
            let got = from_half(h);
            assert!((got - y).abs() <= y.abs() * 2f64.powi(-11), "{y} read back as {got}");
            // Its neighbours are no nearer (ties to the even one).
            for n in [h.wrapping_sub(1), h + 1] {
                if n & 0x7c00 != 0 && n & 0x7c00 != 0x7c00 && n >> 15 == h >> 15 {
                    let d = ((from_half(n) - y).abs(), (got - y).abs());
                    assert!(
                        d.0 > d.1 || d.0 == d.1 && h & 1 == 0,
                        "{y}: {got} against {}",
                        from_half(n)
                    );
                }
            }
        }
        assert_eq!(
            (from_half(to_half(0.0)), from_half(to_half(-0.0)).to_bits()),
            (0.0, (-0.0f64).to_bits())
        );
        assert_eq!(
            from_half(to_half(32767.99)),
            32768.0,
            "rounding up past 2^15 still fits"
        );
    }

    #[test]
    fn a_snapshot_from_before_half_precision_reads_as_a_block_closing_now_rounds() {
        let values: Vec<f64> = (0..90).map(|t| 1e9 + (t as f64 * 0.37).sin() * 1e3).collect();
        let mut a = Anchored::new(1);
        for &v in &values {
            a.push_row(&[v]);
        }
        a.pop_row();
        // The form f4cde9f wrote: f32 offsets from the same anchors.
        let offsets: VecDeque<f32> = (0..a.halves.len())
            .map(|i| narrow(values[i + 1] - a.anchors[(a.skip + i) / BLOCK]))
            .collect();
        let mut json = serde_json::to_value(&a).unwrap();
        let form = json.as_object_mut().unwrap();
        for k in ["scales", "halves", "wild"] {
            form.remove(k);
        }
        let mut bytes = Vec::new();
        offsets.iter().for_each(|o| bytes.extend(o.to_le_bytes()));
        use base64::Engine;
        form.insert(
            "offsets".into(),
            base64::engine::general_purpose::STANDARD.encode(bytes).into(),
        );
        let old: Anchored = serde_json::from_value(json).unwrap();
        old.check().unwrap();
        assert_eq!(old, a, "the same anchors, scales and halves");
        let bad = r#"{"width":1,"skip":0,"anchors":"","offsets":"AACAPw==","open":""}"#;
        assert!(
            serde_json::from_str::<Anchored>(bad).is_err(),
            "offsets without their anchor"
        );
    }
}
