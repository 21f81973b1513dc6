//! The element type of every tensor in `nn`, and the few kernels whose speed decides
//! everything: matrix products and the gate nonlinearities.
//!
//! `f64` is the parity path: exact `std` functions, checked against PyTorch at
//! rtol 1e-9. `f32` is the production path: a branch-free polynomial `exp` that LLVM
//! vectorises, compiled again for AVX2+FMA (fused) and written in AVX-512
//! intrinsics (`avx512.rs`), picked at run time, so one binary runs everywhere and
//! is fast where the CPU allows. The portable path is unfused, so it needs no FMA.

use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

use ndarray::{ArrayView2, ArrayViewMut2};

use super::isa::{self, Isa};

/// A floating-point element type usable in every `nn` layer.
pub trait Scalar:
    num_traits::Float
    + ndarray::LinalgScalar
    + ndarray::ScalarOperand
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Sum
    + Debug
    + Display
    + Default
    + Send
    + Sync
    + 'static
{
    /// `xs[i] = 1 / (1 + exp(-xs[i]))`, in place.
    fn sigmoid_inplace(xs: &mut [Self]);
    /// `xs[i] = tanh(xs[i])`, in place.
    fn tanh_inplace(xs: &mut [Self]);
    /// The LSTM gates of every row of `gates` (rows of `[i f g o]`, each `[h]`),
    /// in place: σ of i, f and o, tanh of g.
    fn lstm_gates_inplace(gates: &mut [Self], h: usize) {
        for row in gates.chunks_exact_mut(4 * h) {
            Self::sigmoid_inplace(&mut row[..2 * h]);
            Self::tanh_inplace(&mut row[2 * h..3 * h]);
            Self::sigmoid_inplace(&mut row[3 * h..]);
        }
    }
    /// `c = a · b` (or `c += a · b`) on this type's own small-product kernel, when
    /// it has one for this path and these layouts; `false` leaves `c` untouched and
    /// [`matmul`] uses `gemm`.
    fn matmul_small(
        _c: &mut ArrayViewMut2<Self>,
        _a: &ArrayView2<Self>,
        _b: &ArrayView2<Self>,
        _accumulate: bool,
    ) -> bool {
        false
    }
    /// Converts an `f64` constant (exact for f64, rounded for f32).
    fn lit(v: f64) -> Self;
    /// Widens to `f64` (for reporting losses and norms).
    fn to_f64_lossy(self) -> f64;
}

impl Scalar for f64 {
    fn sigmoid_inplace(xs: &mut [f64]) {
        for x in xs {
            *x = 1.0 / (1.0 + (-*x).exp());
        }
    }
    fn tanh_inplace(xs: &mut [f64]) {
        for x in xs {
            *x = x.tanh();
        }
    }
    #[inline(always)]
    fn lit(v: f64) -> f64 {
        v
    }
    #[inline(always)]
    fn to_f64_lossy(self) -> f64 {
        self
    }
}

impl Scalar for f32 {
    fn sigmoid_inplace(xs: &mut [f32]) {
        match isa::active().min(isa::widest()) {
            // SAFETY: the CPU supports the path (`widest` detected it).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { super::avx512::sigmoid_slice(xs) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { on_avx2(xs, |xs| each(xs, sigmoid_f32_on::<true>)) },
            _ => each(xs, sigmoid_f32),
        }
    }
    fn tanh_inplace(xs: &mut [f32]) {
        match isa::active().min(isa::widest()) {
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { super::avx512::tanh_slice(xs) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { on_avx2(xs, |xs| each(xs, tanh_f32_on::<true>)) },
            _ => each(xs, tanh_f32),
        }
    }
    fn lstm_gates_inplace(gates: &mut [f32], h: usize) {
        match isa::active().min(isa::widest()) {
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { super::avx512::lstm_gates(gates, h) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { on_avx2(gates, |g| each_gate(g, h, sigmoid_f32_on::<true>, tanh_f32_on::<true>)) },
            _ => each_gate(gates, h, sigmoid_f32, tanh_f32),
        }
    }
    fn matmul_small(c: &mut ArrayViewMut2<f32>, a: &ArrayView2<f32>, b: &ArrayView2<f32>, accumulate: bool) -> bool {
        #[cfg(target_arch = "x86_64")]
        if isa::active().min(isa::widest()) == Isa::Avx512 && small_enough(a.dim(), b.dim().1) {
            let (Some(ldb), Some(lda), Some(ldc)) = (row_stride(b), forward_strides(a), row_stride(&c.view())) else {
                return false;
            };
            let ((m, k), n) = (a.dim(), b.ncols());
            let (a, b, c) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
            #[rustfmt::skip]
            let product = super::avx512::Product { m, k, n, a, lda, b, ldb, c, ldc, accumulate };
            // SAFETY: the CPU supports AVX-512 (`widest`); the shapes were checked by
            // `matmul`, and each row stride describes its live view's rows, whose
            // elements are adjacent; `c` is a unique borrow, apart from `a` and `b`.
            unsafe { super::avx512::matmul_rows(product) };
            return true;
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (c, a, b, accumulate);
        false
    }
    #[inline(always)]
    fn lit(v: f64) -> f32 {
        v as f32
    }
    #[inline(always)]
    fn to_f64_lossy(self) -> f64 {
        self as f64
    }
}

/// Whether a product `[m, k] · [k, n]` is one the small-product kernel does
/// faster than `gemm`: a training batch's few rows (`m ≤ 64`), with `b`'s panel
/// small enough to stay in the first-level cache while it is read once per few
/// rows of `a`. Batch scoring's 256 rows are `gemm`'s (measured slower here:
/// 22.2k against 24.1k windows/s at the M size).
#[cfg(target_arch = "x86_64")]
fn small_enough((m, k): (usize, usize), n: usize) -> bool {
    m <= 64 && n <= 256 && (k <= 128 || n <= 64)
}

/// A view's strides when neither is negative.
#[cfg(target_arch = "x86_64")]
fn forward_strides<T>(v: &ArrayView2<T>) -> Option<(usize, usize)> {
    let s = v.strides();
    Some((usize::try_from(s[0]).ok()?, usize::try_from(s[1]).ok()?))
}

/// The distance between a view's rows, when the elements within a row are
/// adjacent and the rows lie forward in memory (one row: its length).
#[cfg(target_arch = "x86_64")]
fn row_stride<T>(v: &ArrayView2<T>) -> Option<usize> {
    let (rows, cols) = v.dim();
    let (rs, cs) = (v.strides()[0], v.strides()[1]);
    if cols > 1 && cs != 1 {
        return None;
    }
    if rows <= 1 {
        return Some(cols);
    }
    usize::try_from(rs).ok().filter(|&rs| rs >= cols)
}

/// `x = f(x)` for every element; `f` (a function item, so statically known) is
/// inlined, and a branch-free `f` vectorises at the width the caller is compiled
/// for.
#[inline(always)]
fn each<F: Fn(f32) -> f32>(xs: &mut [f32], f: F) {
    for x in xs {
        *x = f(*x);
    }
}

/// [`each`] for every row `[i f g o]` (each `[h]`) of `gates`: `sigmoid` on i, f
/// and o, `tanh` on g.
#[inline(always)]
fn each_gate<S: Fn(f32) -> f32 + Copy, T: Fn(f32) -> f32 + Copy>(gates: &mut [f32], h: usize, sigmoid: S, tanh: T) {
    for row in gates.chunks_exact_mut(4 * h) {
        each(&mut row[..2 * h], sigmoid);
        each(&mut row[2 * h..3 * h], tanh);
        each(&mut row[3 * h..], sigmoid);
    }
}

/// Runs `body` on `xs` compiled for AVX2 with FMA (`body` is inlined into it).
///
/// # Safety
/// The CPU supports AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn on_avx2<F: Fn(&mut [f32])>(xs: &mut [f32], body: F) {
    body(xs)
}

/// `exp(x)` for f32 without branches or library calls, so loops over it vectorise.
///
/// Cody–Waite range reduction `x = n ln2 + r`, |r| ≤ ln2/2, then Cephes' degree-6
/// polynomial for `e^r` and `2^n` built in the exponent bits. Relative error ≤ 2e-7
/// over the clamped range [-87.3, 88.3] (outside it the result saturates).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    exp_f32_on::<false>(x)
}

/// `a · b + c`, fused into one rounding when `FUSED` (only where the CPU has
/// FMA: elsewhere `mul_add` is a library call).
#[inline(always)]
pub fn madd<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED { a.mul_add(b, c) } else { a * b + c }
}

/// [`exp_f32`], its reduction and polynomial in fused multiply-adds when `FUSED`
/// (the scorer's FMA paths); unfused, exactly [`exp_f32`].
#[inline(always)]
pub fn exp_f32_on<const FUSED: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer without `round`,
    // which has no SSE2 instruction and would become a library call.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let shifted = madd::<FUSED>(x, LOG2E, ROUND);
    let n = shifted - ROUND;
    let r = madd::<FUSED>(n, -LN2_LO, madd::<FUSED>(n, -LN2_HI, x));
    let mut p = 1.987_569_1e-4_f32;
    // Cephes writes the last 5.0000001e-1, which is 0.5 in f32.
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
        p = madd::<FUSED>(p, r, c);
    }
    let er = if FUSED {
        (p * r).mul_add(r, r + 1.0)
    } else {
        p * r * r + r + 1.0
    };
    // `shifted`'s low mantissa bits hold n itself: integer arithmetic on the bits gives
    // 2^n without a float→int cast (Rust's saturating `as` does not vectorise).
    let n_int = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_int.wrapping_add(127) << 23);
    er * scale
}

/// `1 / (1 + exp(-x))` for f32, branch-free (see [`exp_f32`]).
#[inline(always)]
pub fn sigmoid_f32(x: f32) -> f32 {
    sigmoid_f32_on::<false>(x)
}

/// [`sigmoid_f32`] on [`exp_f32_on`].
#[inline(always)]
pub fn sigmoid_f32_on<const FUSED: bool>(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32_on::<FUSED>(-x))
}

/// `tanh(x)` for f32 as `1 - 2 / (exp(2x) + 1)`, branch-free. Absolute error ≤ 2e-7;
/// |x| ≥ 10 gives ±1 exactly, as f32 rounds tanh there.
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    tanh_f32_on::<false>(x)
}

/// [`tanh_f32`] on [`exp_f32_on`].
#[inline(always)]
pub fn tanh_f32_on<const FUSED: bool>(x: f32) -> f32 {
    let x = x.clamp(-10.0, 10.0);
    1.0 - 2.0 / (exp_f32_on::<FUSED>(2.0 * x) + 1.0)
}

/// `c = a · b` (or `c += a · b` when `accumulate`), for any strides.
///
/// ```text
/// c[i, j] (+)= Σ_k a[i, k] b[k, j]
/// ```
///
/// # Shapes
/// `a: [m, k]`, `b: [k, n]`, `c: [m, n]`. Transposes are free: pass `w.t()`.
///
/// # Panics
/// If the shapes do not agree.
pub fn matmul<T: Scalar>(mut c: ArrayViewMut2<T>, a: ArrayView2<T>, b: ArrayView2<T>, accumulate: bool) {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    assert_eq!(k, k2, "matmul: a is {m}x{k}, b is {k2}x{n}");
    assert_eq!(c.dim(), (m, n), "matmul: c has the wrong shape");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(T::zero());
        }
        return;
    }
    if T::matmul_small(&mut c, &a, &b, accumulate) {
        return;
    }
    let (c_rs, c_cs) = (c.strides()[0], c.strides()[1]);
    let (a_rs, a_cs) = (a.strides()[0], a.strides()[1]);
    let (b_rs, b_cs) = (b.strides()[0], b.strides()[1]);
    // SAFETY: the pointers and strides come from live ndarray views whose shapes were
    // checked above; `c` is a unique borrow, so it aliases neither `a` nor `b`. `gemm`
    // supports exactly f32 and f64 among our `Scalar` types.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            c_cs,
            c_rs,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            T::one(),
            T::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn fast_f32_functions_match_std() {
        let mut worst = (0.0f64, 0.0f64, 0.0f64);
        let mut x = -30.0f32;
        while x < 30.0 {
            let e = (exp_f32(x) as f64 - (x as f64).exp()).abs() / (x as f64).exp();
            let s = (sigmoid_f32(x) as f64 - 1.0 / (1.0 + (-(x as f64)).exp())).abs();
            let t = (tanh_f32(x) as f64 - (x as f64).tanh()).abs();
            worst = (worst.0.max(e), worst.1.max(s), worst.2.max(t));
            x += 0.001;
        }
        assert!(worst.0 < 3e-7, "exp rel err {}", worst.0);
        assert!(worst.1 < 2e-7, "sigmoid abs err {}", worst.1);
        assert!(worst.2 < 3e-7, "tanh abs err {}", worst.2);
        assert_eq!(tanh_f32(50.0), 1.0);
        assert_eq!(tanh_f32(-50.0), -1.0);
        assert!(sigmoid_f32(-200.0) >= 0.0 && sigmoid_f32(-200.0) < 1e-30);
        assert_eq!(sigmoid_f32(200.0), 1.0);
    }

    #[test]
    fn slice_kernels_agree_with_scalar_ones() {
        let xs: Vec<f32> = (0..37).map(|i| i as f32 * 0.37 - 6.0).collect();
        let mut s = xs.clone();
        f32::sigmoid_inplace(&mut s);
        let mut t = xs.clone();
        f32::tanh_inplace(&mut t);
        for i in 0..xs.len() {
            assert!((s[i] - sigmoid_f32(xs[i])).abs() <= 1e-7);
            assert!((t[i] - tanh_f32(xs[i])).abs() <= 1e-7);
        }
    }

    #[test]
    fn matmul_handles_transposed_views_and_accumulation() {
        let a = array![[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]];
        let w = array![[1.0, 0.0, -1.0], [2.0, 1.0, 0.5]]; // [n=2, k=3]
        let mut c = array![[10.0, 20.0], [30.0, 40.0]];
        matmul(c.view_mut(), a.view(), w.t(), true);
        // a · wᵀ = [[-2, 5.5], [-2, 16]]
        assert_eq!(c, array![[8.0, 25.5], [28.0, 56.0]]);
        matmul(c.view_mut(), a.view(), w.t(), false);
        assert_eq!(c, array![[-2.0, 5.5], [-2.0, 16.0]]);
    }
}
