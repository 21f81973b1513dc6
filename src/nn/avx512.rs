//! The scorer's gate activations written with AVX-512 intrinsics.
//!
//! The portable and AVX2 paths leave vectorisation to the compiler; so does this
//! one, except where the compiler's choice is the bottleneck. A vector division
//! (`vdivps zmm`) is issued at most once every 10–16 cycles, and an LSTM step
//! makes five of them (the sigmoids of i, f, o and the tanh of g and c), so a
//! scorer step waited on the divider more than on anything else. Here the
//! reciprocal is `vrcp14ps` (14 bits) refined by one Newton step (about 28 bits,
//! beyond f32's 24): two fused multiply-adds that pipeline.
//!
//! The arithmetic otherwise follows [`super::scalar::exp_f32_on`] exactly (the
//! same reduction, polynomial and clamps), so the results differ from the other
//! FMA paths' only in the last bit or two of each activation.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

mod rounds;
use rounds::{REG_V, lstm_rounds};

/// `1 / d`, from `vrcp14ps` and one Newton step.
#[inline]
#[target_feature(enable = "avx512f")]
fn recip(d: __m512) -> __m512 {
    let r = _mm512_rcp14_ps(d);
    // r' = r (2 − d r) = r + r (1 − d r)
    let e = _mm512_fnmadd_ps(d, r, _mm512_set1_ps(1.0));
    _mm512_fmadd_ps(r, e, r)
}

/// `exp(x)` as [`super::scalar::exp_f32_on::<true>`].
#[inline]
#[target_feature(enable = "avx512f")]
fn exp(x: __m512) -> __m512 {
    const ROUND: f32 = 12_582_912.0;
    let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3)), _mm512_set1_ps(88.3));
    let round = _mm512_set1_ps(ROUND);
    let shifted = _mm512_fmadd_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E), round);
    let n = _mm512_sub_ps(shifted, round);
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-0.693_359_4), x);
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let er = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
    let n_int = _mm512_sub_epi32(_mm512_castps_si512(shifted), _mm512_castps_si512(round));
    let scale = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(n_int, _mm512_set1_epi32(127))));
    _mm512_mul_ps(er, scale)
}

#[inline]
#[target_feature(enable = "avx512f")]
fn sigmoid(x: __m512) -> __m512 {
    let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), x));
    recip(_mm512_add_ps(e, _mm512_set1_ps(1.0)))
}

#[inline]
#[target_feature(enable = "avx512f")]
fn tanh(x: __m512) -> __m512 {
    let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-10.0)), _mm512_set1_ps(10.0));
    let e = exp(_mm512_add_ps(x, x));
    let q = recip(_mm512_add_ps(e, _mm512_set1_ps(1.0)));
    _mm512_fnmadd_ps(_mm512_set1_ps(2.0), q, _mm512_set1_ps(1.0))
}

/// Applies `f` to every element of `xs`, sixteen at a time (the tail masked).
#[inline]
#[target_feature(enable = "avx512f")]
fn map(xs: &mut [f32], f: impl Fn(__m512) -> __m512) {
    let mut chunks = xs.chunks_exact_mut(16);
    for c in &mut chunks {
        // SAFETY: `c` holds exactly 16 f32.
        unsafe { _mm512_storeu_ps(c.as_mut_ptr(), f(_mm512_loadu_ps(c.as_ptr()))) };
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let m: __mmask16 = (1u16 << tail.len()) - 1;
        // SAFETY: the mask covers exactly the `tail.len()` elements of `tail`.
        unsafe {
            let v = _mm512_maskz_loadu_ps(m, tail.as_ptr());
            _mm512_mask_storeu_ps(tail.as_mut_ptr(), m, f(v));
        }
    }
}

/// `xs[i] = σ(xs[i])`.
#[inline]
#[target_feature(enable = "avx512f")]
pub fn sigmoid_slice(xs: &mut [f32]) {
    map(xs, |v| sigmoid(v))
}

/// `xs[i] = tanh(xs[i])`.
#[inline]
#[target_feature(enable = "avx512f")]
pub fn tanh_slice(xs: &mut [f32]) {
    map(xs, |v| tanh(v))
}

/// The LSTM gates of every row of `gates` (rows `[i f g o]`, each `[h]`): σ of i,
/// f and o, tanh of g; in one call, so the constants are loaded once for all rows.
#[target_feature(enable = "avx512f")]
pub fn lstm_gates(gates: &mut [f32], h: usize) {
    for row in gates.chunks_exact_mut(4 * h) {
        map(&mut row[..2 * h], |v| sigmoid(v));
        map(&mut row[2 * h..3 * h], |v| tanh(v));
        map(&mut row[3 * h..], |v| sigmoid(v));
    }
}

/// The LSTM state update from activated gates `i, f, g, o` (each `[H]`):
/// `c = f c + i g`, `h = o tanh(c)`.
#[inline]
#[target_feature(enable = "avx512f")]
fn lstm_update(gates: &[f32], c: &mut [f32], h: &mut [f32]) {
    let hd = c.len();
    assert!(gates.len() == 4 * hd && h.len() == hd);
    let mut j = 0;
    while j < hd {
        let m: __mmask16 = if hd - j >= 16 { u16::MAX } else { (1u16 << (hd - j)) - 1 };
        // SAFETY: the mask keeps every access within `j..hd` of each slice, and
        // `gates` holds four blocks of `hd`.
        unsafe {
            let g = gates.as_ptr().add(j);
            let i = _mm512_maskz_loadu_ps(m, g);
            let f = _mm512_maskz_loadu_ps(m, g.add(hd));
            let gg = _mm512_maskz_loadu_ps(m, g.add(2 * hd));
            let o = _mm512_maskz_loadu_ps(m, g.add(3 * hd));
            let cv = _mm512_maskz_loadu_ps(m, c.as_ptr().add(j));
            let cv = _mm512_fmadd_ps(f, cv, _mm512_mul_ps(i, gg));
            _mm512_mask_storeu_ps(c.as_mut_ptr().add(j), m, cv);
            _mm512_mask_storeu_ps(h.as_mut_ptr().add(j), m, _mm512_mul_ps(o, tanh(cv)));
        }
        j += 16;
    }
}

/// `y += x · M` for a matrix packed as [`super::scorer`]'s `Packed` (`[k, n]`,
/// column blocks 64, 32, 8 and 1 wide, each block's `k` rows in a row). The 64-
/// and 32-wide blocks keep two sets of accumulators, even and odd rows, so a
/// block's FMAs form two chains of `k / 2` instead of one of `k`.
#[inline]
#[target_feature(enable = "avx512f")]
pub fn gemv_acc(data: &[f32], k: usize, n: usize, y: &mut [f32], x: &[f32]) {
    assert!(data.len() == k * n && y.len() == n && x.len() == k);
    let (mut j0, mut off) = (0, 0);
    while j0 + 64 <= n {
        // SAFETY: the block `off..off + 64 k` and `y[j0..j0 + 64]` are in bounds
        // (asserted sizes and the loop condition).
        unsafe { block::<4>(data.as_ptr().add(off), k, y.as_mut_ptr().add(j0), x) };
        (j0, off) = (j0 + 64, off + 64 * k);
    }
    while j0 + 32 <= n {
        // SAFETY: as above, 32 wide.
        unsafe { block::<2>(data.as_ptr().add(off), k, y.as_mut_ptr().add(j0), x) };
        (j0, off) = (j0 + 32, off + 32 * k);
    }
    while j0 + 8 <= n {
        let acc = &mut y[j0..j0 + 8];
        for (row, &xk) in data[off..off + 8 * k].chunks_exact(8).zip(x) {
            for (a, &w) in acc.iter_mut().zip(row) {
                *a = xk.mul_add(w, *a);
            }
        }
        (j0, off) = (j0 + 8, off + 8 * k);
    }
    for j in j0..n {
        let col = &data[off..off + k];
        y[j] = col.iter().zip(x).fold(y[j], |a, (&w, &xk)| xk.mul_add(w, a));
        off += k;
    }
}

/// One block `16 V` columns wide: `y[..16 V] += x · block`.
///
/// # Safety
/// `block` points at `16 V k` readable f32, `y` at `16 V` writable ones.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn block<const V: usize>(block: *const f32, k: usize, y: *mut f32, x: &[f32]) {
    let w = 16 * V;
    // SAFETY: within the bounds the caller vouches for.
    unsafe {
        let mut even: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(y.add(16 * v)));
        let mut odd: [__m512; V] = [_mm512_setzero_ps(); V];
        let mut kk = 0;
        while kk + 2 <= k {
            let (x0, x1) = (_mm512_set1_ps(x[kk]), _mm512_set1_ps(x[kk + 1]));
            let (r0, r1) = (block.add(kk * w), block.add((kk + 1) * w));
            for v in 0..V {
                even[v] = _mm512_fmadd_ps(x0, _mm512_loadu_ps(r0.add(16 * v)), even[v]);
                odd[v] = _mm512_fmadd_ps(x1, _mm512_loadu_ps(r1.add(16 * v)), odd[v]);
            }
            kk += 2;
        }
        if kk < k {
            let (x0, r0) = (_mm512_set1_ps(x[kk]), block.add(kk * w));
            for v in 0..V {
                even[v] = _mm512_fmadd_ps(x0, _mm512_loadu_ps(r0.add(16 * v)), even[v]);
            }
        }
        for v in 0..V {
            _mm512_storeu_ps(y.add(16 * v), _mm512_add_ps(even[v], odd[v]));
        }
    }
}

/// A product `c = a · b` (or `c += a · b` when `accumulate`) for
/// [`matmul_rows`]: `a` is `[m, k]`, its element `[i, kk]` at `a + i·lda.0 +
/// kk·lda.1` (a transposed `a` is free); `b` (`[k, n]`) and `c` (`[m, n]`) are
/// row-major with row strides `ldb` and `ldc` (their elements in a row adjacent).
#[derive(Clone, Copy, Debug)]
pub struct Product {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub a: *const f32,
    pub lda: (usize, usize),
    pub b: *const f32,
    pub ldb: usize,
    pub c: *mut f32,
    pub ldc: usize,
    pub accumulate: bool,
}

/// Computes `p`: the small products of a training step (`[B, H] · [H, 4H]`,
/// `[B, 4H] · [4H, H]`, `[4H, T·B] · [T·B, H]`), where `gemm`'s packing and
/// dispatch cost more than the arithmetic. `c` is taken in panels 64 columns
/// wide (the last narrower, masked), each panel a few rows at a time with every
/// accumulator in a register; `b`'s panel rows are loaded once per row block.
///
/// # Safety
/// `p.a` addresses `m × k` readable f32 by its strides, `p.b` `k` rows of `n`
/// `ldb` apart, `p.c` `m` rows of `n` writable ones `ldc` apart, not overlapping
/// `a` or `b`.
#[target_feature(enable = "avx512f")]
pub unsafe fn matmul_rows(p: Product) {
    let mut j0 = 0;
    while j0 < p.n {
        let w = (p.n - j0).min(64);
        let last: __mmask16 = if w.is_multiple_of(16) {
            0xFFFF
        } else {
            (1u16 << (w % 16)) - 1
        };
        let panel = Panel {
            p: Product {
                b: p.b.wrapping_add(j0),
                c: p.c.wrapping_add(j0),
                ..p
            },
            last,
        };
        // SAFETY: the panel's columns `j0..j0 + w` lie within `n` (the caller's bounds).
        unsafe {
            match w.div_ceil(16) {
                4 => panel.rows::<4, 4>(),
                3 => panel.rows::<3, 4>(),
                2 => panel.rows::<2, 6>(),
                _ => panel.rows::<1, 8>(),
            }
        }
        j0 += 64;
    }
}

/// One panel of [`matmul_rows`]: `p` from the panel's first column, which is
/// `16 V` columns wide at most, the last vector masked by `last`.
struct Panel {
    p: Product,
    last: __mmask16,
}

impl Panel {
    /// The panel, `R` rows at a time, then one at a time.
    ///
    /// # Safety
    /// As [`matmul_rows`], for the panel's columns.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn rows<const V: usize, const R: usize>(&self) {
        let mut i = 0;
        // SAFETY: rows `i..i + R` (or `i`) are below `m`.
        unsafe {
            while i + R <= self.p.m {
                self.block::<V, R>(i);
                i += R;
            }
            while i < self.p.m {
                self.block::<V, 1>(i);
                i += 1;
            }
        }
    }

    /// Rows `i..i + R` of the panel, every accumulator in a register.
    ///
    /// # Safety
    /// As [`matmul_rows`]; `i + R <= m`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn block<const V: usize, const R: usize>(&self, i: usize) {
        let mask = |v: usize| if v + 1 == V { self.last } else { 0xFFFF };
        // SAFETY: every address is a row below `m` (or `k`) and a column within the
        // panel, masked beyond `n` (the caller's bounds).
        unsafe {
            let c = |r: usize, v: usize| self.p.c.add((i + r) * self.p.ldc + 16 * v);
            let mut acc: [[__m512; V]; R] = std::array::from_fn(|r| {
                std::array::from_fn(|v| {
                    if self.p.accumulate {
                        _mm512_maskz_loadu_ps(mask(v), c(r, v))
                    } else {
                        _mm512_setzero_ps()
                    }
                })
            });
            for kk in 0..self.p.k {
                let brow = self.p.b.add(kk * self.p.ldb);
                let bv: [__m512; V] = std::array::from_fn(|v| _mm512_maskz_loadu_ps(mask(v), brow.add(16 * v)));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*self.p.a.add((i + r) * self.p.lda.0 + kk * self.p.lda.1));
                    for v in 0..V {
                        acc[v] = _mm512_fmadd_ps(x, bv[v], acc[v]);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (v, &x) in acc.iter().enumerate() {
                    _mm512_mask_storeu_ps(c(r, v), mask(v), x);
                }
            }
        }
    }
}

/// One LSTM step: `ah` (`[4H]`) is the gates' scratch, `x_row` the step's input
/// projection, `w_hh` the packed `W_hhᵀ` (`[H, 4H]`); `h` and `c` are updated.
#[inline]
#[target_feature(enable = "avx512f")]
fn lstm_step(w_hh: &[f32], x_row: &[f32], h: &mut [f32], c: &mut [f32], ah: &mut [f32]) {
    let (hd, gh) = (h.len(), ah.len());
    ah.copy_from_slice(x_row);
    gemv_acc(w_hh, hd, gh, ah, h);
    map(&mut ah[..2 * hd], |v| sigmoid(v));
    map(&mut ah[2 * hd..3 * hd], |v| tanh(v));
    map(&mut ah[3 * hd..], |v| sigmoid(v));
    lstm_update(ah, c, h);
}

/// Runs an LSTM cell over `steps` steps, as the scorer's `run_cell` does, in one
/// function so every kernel above is inlined into the step loop. `w_hh` is the
/// packed `W_hhᵀ` (`[H, 4H]`); `xp` holds the input projections (one row per
/// step, or one row for every step when `const_input`); `out`, when given as
/// `(buffer, row_stride, column)`, receives `h` after each step.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
pub fn lstm_steps(
    w_hh: &[f32],
    xp: &[f32],
    steps: usize,
    const_input: bool,
    reverse: bool,
    state: (&mut [f32], &mut [f32], &mut [f32]),
    out: Option<(&mut [f32], usize, usize)>,
) {
    let (h, c, ah) = state;
    let run = LstmRun {
        w_hh,
        xp,
        h,
        c,
        ah,
        out,
    };
    lstm_steps_together(&mut [Some(run), None, None, None], steps, const_input, reverse);
}

/// One LSTM cell's run in [`lstm_steps_together`]: its weights, input
/// projections and state, and where its outputs go, if anywhere.
pub struct LstmRun<'a> {
    /// Packed `W_hhᵀ`.
    pub w_hh: &'a [f32],
    /// The input projections: one row per step, or one for every step.
    pub xp: &'a [f32],
    /// Hidden state `[H]`.
    pub h: &'a mut [f32],
    /// Cell state `[H]`.
    pub c: &'a mut [f32],
    /// Gate scratch `[4H]`.
    pub ah: &'a mut [f32],
    /// `(buffer, row_stride, column)`: step `t`'s `h` goes to
    /// `buffer[t · row_stride + column..][..H]`.
    pub out: Option<(&'a mut [f32], usize, usize)>,
}

/// Runs several independent LSTM cells (an ensemble's members on one window)
/// forward (or, with `reverse`, backward) over `steps` steps, one step of each
/// in turn. A step is a chain of dependent operations (the product, then the
/// gates, then `tanh(c)`), so one cell alone leaves the core waiting;
/// consecutive steps of different cells are independent, and the core overlaps
/// them. Cells of one hidden size `16 V` (`V ≤ 4`) keep a step in registers
/// ([`lstm_rounds`]); others go a step at a time through memory.
/// `runs` is a fixed array of slots, so a caller gathers them without allocating.
///
/// # Panics
/// If a run's slices are shorter than its hidden size asks.
#[target_feature(enable = "avx512f")]
pub fn lstm_steps_together(runs: &mut [Option<LstmRun<'_>>; 4], steps: usize, const_input: bool, reverse: bool) {
    let hd = runs.iter().flatten().next().map_or(0, |r| r.h.len());
    let n = runs.iter().flatten().count();
    let fits = |r: &LstmRun<'_>| {
        let rows = if const_input { 1 } else { steps };
        let out_fits = r
            .out
            .as_ref()
            .is_none_or(|(buf, stride, col)| steps == 0 || (steps - 1) * stride + col + hd <= buf.len());
        r.h.len() == hd
            && r.c.len() == hd
            && r.ah.len() == 4 * hd
            && r.w_hh.len() == 4 * hd * hd
            && r.xp.len() >= rows * 4 * hd
            && out_fits
    };
    if hd.is_multiple_of(16) && (1..=REG_V).contains(&(hd / 16)) && runs.iter().flatten().all(fits) {
        let mut it = runs.iter_mut().flatten();
        macro_rules! rounds {
            ($($n:literal $v:literal),*) => {
                match (n, hd / 16) {
                    $(($n, $v) => {
                        let cells: [&mut LstmRun<'_>; $n] = std::array::from_fn(|_| it.next().expect("counted"));
                        // SAFETY: every run's sizes were checked above (`fits`).
                        return unsafe { lstm_rounds::<$n, $v, { 4 * $v }>(cells, steps, const_input, reverse) };
                    })*
                    _ => {}
                }
            };
        }
        rounds!(1 1, 1 2, 1 3, 1 4, 2 1, 2 2, 2 3, 2 4, 3 1, 3 2, 3 3, 3 4, 4 1, 4 2, 4 3, 4 4);
    }
    steps_through_memory(runs, steps, const_input, reverse);
}

/// [`lstm_steps_together`] a step at a time through memory (any hidden size).
#[target_feature(enable = "avx512f")]
fn steps_through_memory(runs: &mut [Option<LstmRun<'_>>; 4], steps: usize, const_input: bool, reverse: bool) {
    for step in 0..steps {
        let t = if reverse { steps - 1 - step } else { step };
        for r in runs.iter_mut().flatten() {
            let gh = r.ah.len();
            let row = if const_input { 0 } else { t };
            lstm_step(r.w_hh, &r.xp[row * gh..(row + 1) * gh], r.h, r.c, r.ah);
            if let Some((buf, stride, col)) = r.out.as_mut() {
                let hd = r.h.len();
                buf[t * *stride + *col..t * *stride + *col + hd].copy_from_slice(r.h);
            }
        }
    }
}

/// `dst = src` widened from four-bit blocks (`q · 2^e`, exact): a block's
/// sixteen bytes sign-extended at once (`vpmovsxbd`), its low halves (values
/// 0..16) and high halves (16..32) split by shifts, converted (`vcvtdq2ps`) and
/// multiplied by the block's scale; a short last block one by one.
///
/// # Panics
/// If `src` has not sixteen bytes and `exps` one exponent for each block of
/// `dst`.
#[target_feature(enable = "avx512f")]
pub fn widen_nibbles(src: &[u8], exps: &[i8], dst: &mut [f32]) {
    use crate::nn::scorer::{BLOCK, BLOCK_BYTES, pow2, widen_block};
    assert_eq!(exps.len(), dst.len().div_ceil(BLOCK), "one exponent a block");
    assert_eq!(src.len(), exps.len() * BLOCK_BYTES, "sixteen bytes a block");
    for ((q, d), &e) in src.chunks(BLOCK_BYTES).zip(dst.chunks_mut(BLOCK)).zip(exps) {
        if d.len() < BLOCK {
            widen_block(q, e, d);
            continue;
        }
        let s = _mm512_set1_ps(pow2(e));
        // SAFETY: a whole block holds 16 bytes and 32 floats.
        unsafe {
            let x = _mm512_cvtepi8_epi32(_mm_loadu_si128(q.as_ptr().cast()));
            let low = _mm512_srai_epi32::<28>(_mm512_slli_epi32::<28>(x));
            let high = _mm512_srai_epi32::<4>(x);
            _mm512_storeu_ps(d.as_mut_ptr(), _mm512_mul_ps(_mm512_cvtepi32_ps(low), s));
            _mm512_storeu_ps(d.as_mut_ptr().add(16), _mm512_mul_ps(_mm512_cvtepi32_ps(high), s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::scalar::{sigmoid_f32, tanh_f32};

    #[test]
    fn activations_match_the_portable_ones() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let xs: Vec<f32> = (-4000..4000)
            .map(|i| i as f32 * 0.01)
            .chain([-200.0, 200.0, 0.0])
            .collect();
        let (mut s, mut t) = (xs.clone(), xs.clone());
        // SAFETY: the CPU has AVX-512 F (checked above).
        unsafe {
            sigmoid_slice(&mut s[..xs.len() - 5]);
            sigmoid_slice(&mut s[xs.len() - 5..]);
            tanh_slice(&mut t);
        }
        for (k, &x) in xs.iter().enumerate() {
            assert!((s[k] - sigmoid_f32(x)).abs() <= 2e-7, "sigmoid({x}) = {}", s[k]);
            assert!((t[k] - tanh_f32(x)).abs() <= 3e-7, "tanh({x}) = {}", t[k]);
        }
        assert_eq!(t[xs.len() - 2], 1.0);
    }

    #[test]
    fn the_gates_of_every_row_are_the_slice_kernels_on_each_block() {
        if !crate::nn::isa::Isa::Avx512.supported() {
            return;
        }
        for h in [1, 5, 16, 21, 32] {
            let xs: Vec<f32> = (0..3 * 4 * h).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.13).collect();
            let mut want = xs.clone();
            let mut got = xs.clone();
            // SAFETY: the CPU supports AVX-512 (checked above).
            unsafe {
                for row in want.chunks_exact_mut(4 * h) {
                    sigmoid_slice(&mut row[..2 * h]);
                    tanh_slice(&mut row[2 * h..3 * h]);
                    sigmoid_slice(&mut row[3 * h..]);
                }
                lstm_gates(&mut got, h);
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "h = {h}");
        }
    }

    #[test]
    fn small_products_match_a_plain_sum_for_every_shape_and_layout() {
        if !crate::nn::isa::Isa::Avx512.supported() {
            return;
        }
        let val = |i: usize| ((i * 7919 % 211) as f32 - 105.0) / 37.0;
        for (m, k, n) in [
            (1, 1, 1),
            (3, 5, 7),
            (8, 16, 64),
            (13, 64, 16),
            (32, 16, 100),
            (9, 130, 33),
            (64, 3, 130),
        ] {
            for (transposed, accumulate) in [(false, false), (true, true), (false, true)] {
                // `a` row-major with padded rows, or transposed; `b` and `c` padded.
                let (lda, ldb, ldc) = (if transposed { (1, m + 2) } else { (k + 3, 1) }, n + 5, n + 4);
                let a: Vec<f32> = (0..m.max(k) * (m.max(k) + 3)).map(val).collect();
                let b: Vec<f32> = (0..k * ldb).map(|i| val(i + 5)).collect();
                let c0: Vec<f32> = (0..m * ldc).map(|i| val(i + 11)).collect();
                let mut c = c0.clone();
                let (ap, bp, cp) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
                #[rustfmt::skip]
                let p = Product { m, k, n, a: ap, lda, b: bp, ldb, c: cp, ldc, accumulate };
                // SAFETY: the CPU has AVX-512; every index is within its vector.
                unsafe { matmul_rows(p) };
                for i in 0..m {
                    for j in 0..ldc {
                        let got = c[i * ldc + j];
                        if j >= n {
                            assert_eq!(got, c0[i * ldc + j], "padding at [{i}, {j}] was written");
                            continue;
                        }
                        let dot: f64 = (0..k)
                            .map(|kk| a[i * lda.0 + kk * lda.1] as f64 * b[kk * ldb + j] as f64)
                            .sum();
                        let want = dot + if accumulate { c0[i * ldc + j] as f64 } else { 0.0 };
                        let tol = 1e-5
                            * (1.0
                                + (0..k)
                                    .map(|kk| (a[i * lda.0 + kk * lda.1] * b[kk * ldb + j]).abs() as f64)
                                    .sum::<f64>());
                        assert!(
                            (got as f64 - want).abs() <= tol,
                            "({m}, {k}, {n}) [{i}, {j}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
