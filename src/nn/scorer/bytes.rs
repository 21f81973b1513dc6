//! A scorer whose weights are held in eight bits: each block of [`BLOCK`]
//! consecutive values of one array shares a power-of-two scale, so a value is
//! `q · 2^e` with `q` in −127..=127. A stream keeps its ensemble in a quarter of
//! the f32 bytes, and each window widens the weights, exactly, into a
//! per-thread f32 [`Scorer`] that the kernels run on.
//!
//! A model whose parameters already lie on that grid
//! ([`Autoencoder::round_to_bytes`]) goes in and out unchanged: its `ByteScorer`
//! widens to its [`Autoencoder::compile`] bit for bit, and
//! [`ByteScorer::to_model`] gives it back exactly.

use super::{ScoreWorkspace, Scorer};
#[cfg(target_arch = "x86_64")]
use crate::nn::isa::{self, Isa};
use crate::nn::{Autoencoder, AutoencoderConfig};

/// Values that share one scale.
pub const BLOCK: usize = 32;

/// The largest magnitude of a block's values, in units of its scale.
const Q_MAX: f64 = 127.0;

/// The range of a block's exponent: below it a block is all zeros, above it
/// values are held at the largest one (beyond f32's finite range anyway).
const E_MIN: i32 = -126;
const E_MAX: i32 = 120;

/// An ensemble member's weights in eight bits.
#[derive(Clone, Debug)]
pub struct ByteScorer {
    /// Which weights these are: set once when they are made, kept by clones (which
    /// hold the same values), so a workspace that widened them last can skip it.
    id: u64,
    config: AutoencoderConfig,
    /// Every array a [`Scorer`] stores, in [`Scorer::for_each_array_mut`]'s
    /// order, each cut into blocks of [`BLOCK`] (the last one of an array may be
    /// shorter).
    values: Box<[i8]>,
    /// Each block's exponent `e`, in the order of its values.
    exps: Box<[i8]>,
}

impl PartialEq for ByteScorer {
    /// The same shape and weights (whatever their ids).
    fn eq(&self, other: &Self) -> bool {
        self.config == other.config && self.values == other.values && self.exps == other.exps
    }
}

/// Per-thread scratch of [`ByteScorer::reconstruct_each`]: the widened members
/// and their workspaces, reused window after window, and which members each
/// widened scorer holds now (a stream's batch of readings widens them once).
#[derive(Debug, Default)]
pub struct ByteWorkspace {
    wide: Vec<Scorer>,
    ids: Vec<u64>,
    wss: Vec<ScoreWorkspace>,
}

/// A new [`ByteScorer::id`].
fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The smallest exponent `e` with `max ≤ 127 · 2^e`, within `E_MIN..=E_MAX`.
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

/// Rounds `block` to the nearest multiples of its scale `2^e`: pushes each
/// value's `q` onto `q` and returns the block's `e`.
fn quantise(block: &[f32], q: &mut Vec<i8>) -> i8 {
    let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
    let e = block_exponent(max);
    let scale = 2f64.powi(e);
    q.extend(block.iter().map(|&v| {
        let r = (f64::from(v) / scale).round();
        // NaN rounds to 0, as it clamps to no finite value.
        if r.is_nan() { 0 } else { r.clamp(-Q_MAX, Q_MAX) as i8 }
    }));
    e as i8
}

/// `dst` = the blocks of `src` widened (exact: `q · 2^e` is an f32).
fn widen(src: &[i8], exps: &[i8], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dst.len());
    debug_assert_eq!(exps.len(), src.len().div_ceil(BLOCK));
    #[cfg(target_arch = "x86_64")]
    match isa::active().min(isa::widest()) {
        // SAFETY: the CPU supports each path (`widest` detected it).
        Isa::Avx512 => return unsafe { crate::nn::avx512::widen_bytes(src, exps, dst) },
        Isa::Avx2 => return unsafe { widen_avx2(src, exps, dst) },
        Isa::Portable => {}
    }
    widen_portable(src, exps, dst);
}

/// [`widen_portable`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn widen_avx2(src: &[i8], exps: &[i8], dst: &mut [f32]) {
    widen_portable(src, exps, dst);
}

/// `2^e`, exactly, for a block's exponent (`E_MIN..=E_MAX`, so a normal f32).
#[inline(always)]
pub(crate) fn pow2(e: i8) -> f32 {
    f32::from_bits(((i32::from(e) + 127) as u32) << 23)
}

/// One block `q` at exponent `e` widened into `d`, value by value.
#[inline(always)]
pub(crate) fn widen_block(q: &[i8], e: i8, d: &mut [f32]) {
    let scale = pow2(e);
    for (d, &q) in d.iter_mut().zip(q) {
        *d = f32::from(q) * scale;
    }
}

#[inline(always)]
fn widen_portable(src: &[i8], exps: &[i8], dst: &mut [f32]) {
    for ((q, d), &e) in src.chunks(BLOCK).zip(dst.chunks_mut(BLOCK)).zip(exps) {
        widen_block(q, e, d);
    }
}

impl Autoencoder<f32> {
    /// Rounds every parameter to the eight-bit grid a [`ByteScorer`] holds, so the
    /// model equals what its `ByteScorer` scores with.
    pub fn round_to_bytes(&mut self) {
        *self = self.compile().to_bytes().to_model();
    }
}

impl Scorer {
    /// This scorer's weights in eight bits (each block rounded to the nearest
    /// multiples of its scale; exact when the model was
    /// [rounded](Autoencoder::round_to_bytes)).
    pub fn to_bytes(&self) -> ByteScorer {
        let mut values = Vec::with_capacity(self.n_params());
        let mut exps = Vec::with_capacity(self.n_params() / BLOCK + 8);
        self.clone().for_each_array_mut(&mut |a| {
            for block in a.chunks(BLOCK) {
                exps.push(quantise(block, &mut values));
            }
        });
        ByteScorer {
            id: next_id(),
            config: self.config.clone(),
            values: values.into_boxed_slice(),
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

impl ByteScorer {
    /// The model's shape.
    pub fn config(&self) -> &AutoencoderConfig {
        &self.config
    }

    /// Scalar parameters of the model.
    pub fn n_params(&self) -> usize {
        self.values.len()
    }

    /// Bytes held on the heap: a byte a value and one a block.
    pub fn heap_bytes(&self) -> usize {
        self.values.len() + self.exps.len()
    }

    /// Writes the widened weights into `s`, rebuilding it first if its shape
    /// differs (the only allocation).
    pub fn widen_into(&self, s: &mut Scorer) {
        if s.config != self.config {
            *s = Autoencoder::<f32>::zeros(self.config.clone()).compile();
        }
        let (mut rest, mut rest_e): (&[i8], &[i8]) = (&self.values, &self.exps);
        s.for_each_array_mut(&mut |a| {
            let (now, later) = rest.split_at(a.len());
            let (now_e, later_e) = rest_e.split_at(a.len().div_ceil(BLOCK));
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

    /// [`Scorer::reconstruct_each`] for members held in eight bits: each is
    /// widened into `ws` unless `ws` holds it widened already (allocating only
    /// when a member's shape is new to it).
    ///
    /// # Panics
    /// As [`Scorer::reconstruct`].
    pub fn reconstruct_each(members: &[ByteScorer], window: &[f32], ws: &mut ByteWorkspace, f: impl FnMut(&[f32])) {
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
        let block: Vec<f32> = vec![1.0, -0.5, 0.003, 0.25, -1.27, 0.0, 1e-9, 0.77];
        let mut q = Vec::new();
        let e = quantise(&block, &mut q);
        // 1.27 / 127 = 0.01, so the scale is 2^-6 = 0.015625 and 1.27 → 81.
        assert_eq!(e, -6);
        assert_eq!(q, vec![64, -32, 0, 16, -81, 0, 0, 49]);
        let mut wide = vec![0.0; block.len()];
        widen_portable(&q, &[e], &mut wide);
        for (w, v) in wide.iter().zip(&block) {
            assert!((w - v).abs() <= 0.5 * 2f32.powi(-6), "{w} vs {v}");
        }
        let mut again = Vec::new();
        assert_eq!(quantise(&wide, &mut again), e);
        assert_eq!(again, q, "a rounded block rounds to itself");
    }

    #[test]
    fn a_block_exponent_is_the_smallest_that_holds_its_largest_value() {
        for max in [1e-30f32, 1e-3, 0.5, 1.0, 127.0, 127.5, 128.0, 254.0, 1e20, f32::MAX] {
            let e = block_exponent(max);
            assert!(f64::from(max) <= Q_MAX * 2f64.powi(e) || e == E_MAX, "{max}: {e}");
            assert!(f64::from(max) > Q_MAX * 2f64.powi(e - 1) || e == E_MIN, "{max}: {e}");
        }
        assert_eq!(block_exponent(127.0), 0);
        assert_eq!(block_exponent(127.5), 1);
        assert_eq!(block_exponent(0.0), 0);
        assert_eq!(block_exponent(f32::NAN), 0);
    }

    #[test]
    fn a_workspace_widens_each_member_once_and_never_scores_with_stale_weights() {
        use crate::nn::CellKind;
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let config = AutoencoderConfig::new(CellKind::Lstm, 1, 4);
        let make = |rng: &mut rand::rngs::StdRng| Autoencoder::<f32>::new(config.clone(), rng).compile().to_bytes();
        let (a, b) = (vec![make(&mut rng)], vec![make(&mut rng)]);
        let window = [0.3f32, -0.1, 0.8, 0.2];
        let score = |m: &[ByteScorer], ws: &mut ByteWorkspace| {
            let mut out = Vec::new();
            ByteScorer::reconstruct_each(m, &window, ws, |y| out.extend_from_slice(y));
            out
        };
        let fresh = |m: &[ByteScorer]| score(m, &mut ByteWorkspace::default());
        let mut ws = ByteWorkspace::default();
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
        // Blocks with every byte, the extreme exponents and a short last block.
        let src: Vec<i8> = (0..=255u8).map(|b| b as i8).chain([127, -127, 1, -1, 5]).collect();
        let exps: Vec<i8> = (0..src.len().div_ceil(BLOCK))
            .map(|k| [E_MIN, -20, 0, 7, E_MAX][k % 5] as i8)
            .collect();
        let mut want = vec![0.0f32; src.len()];
        widen_portable(&src, &exps, &mut want);
        assert_eq!(want[BLOCK], 2f32.powi(-15), "q 32 at scale 2^-20");
        assert_eq!(want[1], 2f32.powi(-126), "q 1 at the smallest scale");
        for isa in crate::nn::isa::Isa::ALL.into_iter().filter(|i| i.supported()) {
            let mut got = vec![f32::NAN; src.len()];
            crate::nn::isa::scoped(isa, || widen(&src, &exps, &mut got));
            let same = got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits());
            assert!(same, "{} widens differently", isa.name());
        }
    }
}
