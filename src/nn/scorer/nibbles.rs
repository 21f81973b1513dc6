//! A scorer whose weights are held in four bits: each block of [`BLOCK`]
//! consecutive values of one array shares a power-of-two scale, so a value is
//! `q · 2^e` with `q` in −7..=7, two values a byte (value `k` of a block in the
//! low half of its byte `k`, value `16 + k` in the high half) and a byte a
//! block for `e`. A stream keeps its ensemble in about an eighth of the f32
//! bytes, and each window widens the weights, exactly, into a per-thread f32
//! [`Scorer`] that the kernels run on.
//!
//! A model whose parameters already lie on that grid
//! ([`Autoencoder::round_to_nibbles`]) goes in and out unchanged: its `NibbleScorer`
//! widens to its [`Autoencoder::compile`] bit for bit, and
//! [`NibbleScorer::to_model`] gives it back exactly.

use super::{ScoreWorkspace, Scorer};
#[cfg(target_arch = "x86_64")]
use crate::nn::isa::{self, Isa};
use crate::nn::{Autoencoder, AutoencoderConfig};

/// Values that share one scale.
pub const BLOCK: usize = 32;

/// Bytes a block's values take (two a byte).
pub const BLOCK_BYTES: usize = BLOCK / 2;

/// The largest magnitude of a block's values, in units of its scale.
const Q_MAX: f64 = 7.0;

/// The range of a block's exponent: below it a block is all zeros, above it
/// values are held at the largest one (beyond f32's finite range anyway).
const E_MIN: i32 = -126;
const E_MAX: i32 = 120;

/// An ensemble member's weights in four bits.
#[derive(Clone, Debug)]
pub struct NibbleScorer {
    /// Which weights these are: set once when they are made, kept by clones (which
    /// hold the same values), so a workspace that widened them last can skip it.
    id: u64,
    config: AutoencoderConfig,
    /// Every array a [`Scorer`] stores, in [`Scorer::for_each_array_mut`]'s
    /// order, each cut into blocks of [`BLOCK`] values (the last one of an
    /// array may be shorter), a block in [`BLOCK_BYTES`] bytes (see the
    /// module's doc; a short block's missing values are zeros).
    values: Box<[u8]>,
    /// Scalar parameters (the values held, not counting a short block's padding).
    n_params: usize,
    /// Each block's exponent `e`, in the order of its values.
    exps: Box<[i8]>,
}

impl PartialEq for NibbleScorer {
    /// The same shape and weights (whatever their ids).
    fn eq(&self, other: &Self) -> bool {
        self.config == other.config
            && self.n_params == other.n_params
            && self.values == other.values
            && self.exps == other.exps
    }
}

/// Per-thread scratch of [`NibbleScorer::reconstruct_each`]: the widened members
/// and their workspaces, reused window after window, and which members each
/// widened scorer holds now (a stream's batch of readings widens them once).
#[derive(Debug, Default)]
pub struct NibbleWorkspace {
    wide: Vec<Scorer>,
    ids: Vec<u64>,
    wss: Vec<ScoreWorkspace>,
}

/// A new [`NibbleScorer::id`].
fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The smallest exponent `e` with `max ≤ 7 · 2^e`, within `E_MIN..=E_MAX`.
fn block_exponent(max: f32) -> i32 {
    let max = f64::from(max);
    if max.is_nan() || max == 0.0 {
        return 0;
    }
    let mut e = ((max / Q_MAX).log2().ceil() as i32).clamp(E_MIN, E_MAX);
    // `log2` may be off by one at a power of two; settle it exactly.
    while e < E_MAX && max > Q_MAX * 2f64.powi(e) {
        e += 1;
    }
    while e > E_MIN && max <= Q_MAX * 2f64.powi(e - 1) {
        e -= 1;
    }
    e
}

/// Rounds `block` (at most [`BLOCK`] values) to the nearest multiples of its
/// scale `2^e`: pushes its [`BLOCK_BYTES`] bytes onto `out` and returns `e`.
fn quantise(block: &[f32], out: &mut Vec<u8>) -> i8 {
    let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
    let e = block_exponent(max);
    let scale = 2f64.powi(e);
    let q = |k: usize| {
        let r = block.get(k).map_or(0.0, |&v| (f64::from(v) / scale).round());
        // NaN rounds to 0, as it clamps to no finite value.
        if r.is_nan() { 0 } else { r.clamp(-Q_MAX, Q_MAX) as i8 }
    };
    out.extend((0..BLOCK_BYTES).map(|k| (q(k) as u8 & 0x0f) | ((q(BLOCK_BYTES + k) as u8) << 4)));
    e as i8
}

/// Value `k` of a block (`0..BLOCK`) from its bytes: the signed half.
#[inline(always)]
fn nibble(bytes: &[u8], k: usize) -> i8 {
    let b = bytes[k % BLOCK_BYTES] as i8;
    if k < BLOCK_BYTES { (b << 4) >> 4 } else { b >> 4 }
}

/// `dst` = the blocks of `src` widened (exact: `q · 2^e` is an f32).
fn widen(src: &[u8], exps: &[i8], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), exps.len() * BLOCK_BYTES);
    debug_assert_eq!(exps.len(), dst.len().div_ceil(BLOCK));
    #[cfg(target_arch = "x86_64")]
    match isa::active().min(isa::widest()) {
        // SAFETY: the CPU supports each path (`widest` detected it).
        Isa::Avx512 => return unsafe { crate::nn::avx512::widen_nibbles(src, exps, dst) },
        Isa::Avx2 => return unsafe { widen_avx2(src, exps, dst) },
        Isa::Portable => {}
    }
    widen_portable(src, exps, dst);
}

/// [`widen_portable`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn widen_avx2(src: &[u8], exps: &[i8], dst: &mut [f32]) {
    widen_portable(src, exps, dst);
}

/// `2^e`, exactly, for a block's exponent (`E_MIN..=E_MAX`, so a normal f32).
#[inline(always)]
pub(crate) fn pow2(e: i8) -> f32 {
    f32::from_bits(((i32::from(e) + 127) as u32) << 23)
}

/// One block's bytes at exponent `e` widened into `d` (its values, at most
/// [`BLOCK`]), value by value.
#[inline(always)]
pub(crate) fn widen_block(bytes: &[u8], e: i8, d: &mut [f32]) {
    let scale = pow2(e);
    for (k, d) in d.iter_mut().enumerate() {
        *d = f32::from(nibble(bytes, k)) * scale;
    }
}

#[inline(always)]
fn widen_portable(src: &[u8], exps: &[i8], dst: &mut [f32]) {
    for ((q, d), &e) in src.chunks(BLOCK_BYTES).zip(dst.chunks_mut(BLOCK)).zip(exps) {
        widen_block(q, e, d);
    }
}

impl Autoencoder<f32> {
    /// Rounds every parameter to the four-bit grid a [`NibbleScorer`] holds, so the
    /// model equals what its `NibbleScorer` scores with.
    pub fn round_to_nibbles(&mut self) {
        *self = self.compile().to_nibbles().to_model();
    }
}

impl Scorer {
    /// This scorer's weights in four bits (each block rounded to the nearest
    /// multiples of its scale; exact when the model was
    /// [rounded](Autoencoder::round_to_nibbles)).
    pub fn to_nibbles(&self) -> NibbleScorer {
        let mut values = Vec::with_capacity(self.n_params() / 2 + 8 * BLOCK_BYTES);
        let mut exps = Vec::with_capacity(self.n_params() / BLOCK + 8);
        let mut n_params = 0;
        self.clone().for_each_array_mut(&mut |a| {
            n_params += a.len();
            for block in a.chunks(BLOCK) {
                exps.push(quantise(block, &mut values));
            }
        });
        NibbleScorer {
            id: next_id(),
            config: self.config.clone(),
            values: values.into_boxed_slice(),
            n_params,
            exps: exps.into_boxed_slice(),
        }
    }

    /// Each array the scorer stores, in a fixed order: the encoder's cells, the
    /// decoder's, then the head.
    fn for_each_array_mut(&mut self, f: &mut impl FnMut(&mut [f32])) {
        for cell in self.enc.iter_mut().chain(self.dec.iter_mut()) {
            cell.for_each_array_mut(f);
        }
        f(&mut self.head_w);
        f(&mut self.head_b);
    }
}

impl NibbleScorer {
    /// The model's shape.
    pub fn config(&self) -> &AutoencoderConfig {
        &self.config
    }

    /// Scalar parameters of the model.
    pub fn n_params(&self) -> usize {
        self.n_params
    }

    /// Bytes held on the heap: half a byte a value and one a block.
    pub fn heap_bytes(&self) -> usize {
        self.values.len() + self.exps.len()
    }

    /// Writes the widened weights into `s`, rebuilding it first if its shape
    /// differs (the only allocation).
    pub fn widen_into(&self, s: &mut Scorer) {
        if s.config != self.config {
            *s = Autoencoder::<f32>::zeros(self.config.clone()).compile();
        }
        let (mut rest, mut rest_e): (&[u8], &[i8]) = (&self.values, &self.exps);
        s.for_each_array_mut(&mut |a| {
            let blocks = a.len().div_ceil(BLOCK);
            let (now, later) = rest.split_at(blocks * BLOCK_BYTES);
            let (now_e, later_e) = rest_e.split_at(blocks);
            widen(now, now_e, a);
            (rest, rest_e) = (later, later_e);
        });
        debug_assert!(
            rest.is_empty() && rest_e.is_empty(),
            "a scorer of this shape stores every value"
        );
        for cell in s.enc.iter_mut().chain(s.dec.iter_mut()) {
            cell.fuse_biases();
        }
    }

    /// The f32 scorer of these weights.
    pub fn to_scorer(&self) -> Scorer {
        let mut s = Autoencoder::<f32>::zeros(self.config.clone()).compile();
        self.widen_into(&mut s);
        s
    }

    /// The model of these weights (exactly the rounded model this came from).
    pub fn to_model(&self) -> Autoencoder<f32> {
        self.to_scorer().to_model()
    }

    /// [`Scorer::reconstruct_each`] for members held in four bits: each is
    /// widened into `ws` unless `ws` holds it widened already (allocating only
    /// when a member's shape is new to it).
    ///
    /// # Panics
    /// As [`Scorer::reconstruct`].
    pub fn reconstruct_each(members: &[NibbleScorer], window: &[f32], ws: &mut NibbleWorkspace, f: impl FnMut(&[f32])) {
        ws.ids.resize(ws.wide.len(), 0);
        for (k, m) in members.iter().enumerate() {
            match ws.wide.get_mut(k) {
                Some(_) if ws.ids[k] == m.id => {}
                Some(s) => m.widen_into(s),
                None => {
                    ws.wide.push(m.to_scorer());
                    ws.ids.push(0);
                }
            }
            ws.ids[k] = m.id;
        }
        Scorer::reconstruct_each(&ws.wide[..members.len()], window, &mut ws.wss, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_is_held_to_its_scale_and_rounding_twice_changes_nothing() {
        let mut block: Vec<f32> = vec![1.0, -0.5, 0.003, 0.25, -1.27, 0.0, 1e-9, 0.77];
        block.extend((0..12).map(|k| k as f32 * 0.1 - 0.6));
        let mut q = Vec::new();
        let e = quantise(&block, &mut q);
        // 1.27 / 7 = 0.18, so the scale is 2^-2 = 0.25 and 1.27 → 5.
        assert_eq!(e, -2);
        let held: Vec<i8> = (0..block.len()).map(|k| nibble(&q, k)).collect();
        assert_eq!(held[..8], [4, -2, 0, 1, -5, 0, 0, 3]);
        assert_eq!(held[16..], [1, 1, 2, 2], "values 16.. in the high halves");
        assert_eq!(q.len(), BLOCK_BYTES);
        let mut wide = vec![0.0; block.len()];
        widen_portable(&q, &[e], &mut wide);
        for (w, v) in wide.iter().zip(&block) {
            assert!((w - v).abs() <= 0.5 * 2f32.powi(-2), "{w} vs {v}");
        }
        let mut again = Vec::new();
        assert_eq!(quantise(&wide, &mut again), e);
        assert_eq!(again, q, "a rounded block rounds to itself");
    }

    #[test]
    fn a_block_exponent_is_the_smallest_that_holds_its_largest_value() {
        for max in [1e-30f32, 1e-3, 0.5, 1.0, 7.0, 7.5, 8.0, 14.0, 1e20, f32::MAX] {
            let e = block_exponent(max);
            assert!(f64::from(max) <= Q_MAX * 2f64.powi(e) || e == E_MAX, "{max}: {e}");
            assert!(f64::from(max) > Q_MAX * 2f64.powi(e - 1) || e == E_MIN, "{max}: {e}");
        }
        assert_eq!(block_exponent(7.0), 0);
        assert_eq!(block_exponent(7.5), 1);
        assert_eq!(block_exponent(0.0), 0);
        assert_eq!(block_exponent(f32::NAN), 0);
    }

    #[test]
    fn a_workspace_widens_each_member_once_and_never_scores_with_stale_weights() {
        use crate::nn::CellKind;
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let config = AutoencoderConfig::new(CellKind::Lstm, 1, 4);
        let make = |rng: &mut rand::rngs::StdRng| Autoencoder::<f32>::new(config.clone(), rng).compile().to_nibbles();
        let (a, b) = (vec![make(&mut rng)], vec![make(&mut rng)]);
        let window = [0.3f32, -0.1, 0.8, 0.2];
        let score = |m: &[NibbleScorer], ws: &mut NibbleWorkspace| {
            let mut out = Vec::new();
            NibbleScorer::reconstruct_each(m, &window, ws, |y| out.extend_from_slice(y));
            out
        };
        let fresh = |m: &[NibbleScorer]| score(m, &mut NibbleWorkspace::default());
        let mut ws = NibbleWorkspace::default();
        assert_eq!(score(&a, &mut ws), fresh(&a));
        assert_eq!(score(&a, &mut ws), fresh(&a), "again, from the widened weights");
        // Another member of the same shape: widened anew, not scored with a's.
        assert_ne!(fresh(&b), fresh(&a));
        assert_eq!(score(&b, &mut ws), fresh(&b));
        // A clone holds the same weights, so it is the same member.
        assert_eq!(score(&b.clone(), &mut ws), fresh(&b));
        assert_eq!(score(&a, &mut ws), fresh(&a));
    }

    #[test]
    fn every_path_widens_as_the_portable_one_does() {
        // Blocks with every byte (so every pair of halves), the extreme exponents
        // and a short last block of 21 values.
        let n = 16 * BLOCK + 21;
        let src: Vec<u8> = (0..=255u8)
            .chain([0x77, 0x99, 0x1f, 0xf1, 5, 0x80])
            .cycle()
            .take(17 * BLOCK_BYTES)
            .collect();
        let exps: Vec<i8> = (0..n.div_ceil(BLOCK))
            .map(|k| [E_MIN, -20, 0, 7, E_MAX][k % 5] as i8)
            .collect();
        let mut want = vec![0.0f32; n];
        widen_portable(&src, &exps, &mut want);
        // Block 1 (scale 2^-20) holds bytes 16..32: value 0 is 16's low half (0),
        // value 16 its high half (1); value 1 is 17's low half (1).
        assert_eq!(
            (want[BLOCK], want[BLOCK + 16], want[BLOCK + 1]),
            (0.0, 2f32.powi(-20), 2f32.powi(-20))
        );
        assert_eq!(
            want[15],
            -2f32.powi(-126),
            "byte 15's low half is -1, at the smallest scale"
        );
        for isa in crate::nn::isa::Isa::ALL.into_iter().filter(|i| i.supported()) {
            let mut got = vec![f32::NAN; n];
            crate::nn::isa::scoped(isa, || widen(&src, &exps, &mut got));
            let same = got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits());
            assert!(same, "{} widens differently", isa.name());
        }
    }
}
