//! LSTM steps of a few cells at once, every value of a step in registers:
//! the kernel behind [`super::lstm_steps_together`] for hidden sizes of 16, 32,
//! 48 and 64. An activation is a chain of some twenty dependent operations,
//! and a step makes five of them in turn (the gates, then `tanh(c)`); here each
//! operation of a chain is issued for every cell's vectors before the next, so
//! all of the chains are in flight at once instead of one cell's at a time.

use std::arch::x86_64::*;

use super::LstmRun;

/// The widest hidden size, in vectors of sixteen, that [`lstm_rounds`] keeps
/// in registers.
pub(super) const REG_V: usize = 4;

/// [`super::lstm_steps_together`] for `N` cells of hidden size `16 V` (`G = 4
/// V` gate vectors), a step's values in registers: each cell's product (in
/// [`super::gemv_acc`]'s order: two sets of accumulators, even and odd rows),
/// then every cell's gate activations one stage at a time across all of their
/// vectors, then every cell's state update and `tanh(c)` the same way. Each
/// operation is the one [`super::lstm_step`] makes on the same value, so the
/// results are the same to the bit (`ah` is left as it was).
///
/// # Safety
/// Each run's `h` and `c` hold `16 V` values, `w_hh` `16 V · 64 V`, `xp`
/// `steps` rows of `64 V` (one when `const_input`), and `out` room for every
/// step's row.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn lstm_rounds<const N: usize, const V: usize, const G: usize>(
    mut runs: [&mut LstmRun<'_>; N],
    steps: usize,
    const_input: bool,
    reverse: bool,
) {
    debug_assert_eq!(G, 4 * V);
    let gh = 64 * V;
    let zero = _mm512_setzero_ps();
    // SAFETY: every access is within the sizes the caller vouches for.
    unsafe {
        let mut c = [[zero; V]; N];
        for (cr, run) in c.iter_mut().zip(runs.iter()) {
            for (v, cv) in cr.iter_mut().enumerate() {
                *cv = _mm512_loadu_ps(run.c.as_ptr().add(16 * v));
            }
        }
        for step in 0..steps {
            let t = if reverse { steps - 1 - step } else { step };
            let row = if const_input { 0 } else { t };
            let mut g = [[zero; G]; N];
            // Block by block, every cell in turn: a block's weights (16 KiB at
            // H = 64) stay in L1 while cells that share them (a batch's
            // windows) use them.
            for b in 0..V {
                for (gr, run) in g.iter_mut().zip(runs.iter()) {
                    let (w, x) = (run.w_hh.as_ptr(), run.xp.as_ptr().add(row * gh));
                    block_product::<V, G>(b, w, x, run.h.as_ptr(), gr);
                }
            }
            activate_gates::<N, V, G>(&mut g);
            let mut tc = [[zero; V]; N];
            for r in 0..N {
                for v in 0..V {
                    let (i, f, gg) = (g[r][v], g[r][V + v], g[r][2 * V + v]);
                    c[r][v] = _mm512_fmadd_ps(f, c[r][v], _mm512_mul_ps(i, gg));
                    tc[r][v] = c[r][v];
                }
            }
            tanh_stages(&mut tc, V);
            for (r, run) in runs.iter_mut().enumerate() {
                for v in 0..V {
                    let hv = _mm512_mul_ps(g[r][3 * V + v], tc[r][v]);
                    _mm512_storeu_ps(run.h.as_mut_ptr().add(16 * v), hv);
                    if let Some((buf, stride, col)) = run.out.as_mut() {
                        _mm512_storeu_ps(buf.as_mut_ptr().add(t * *stride + *col + 16 * v), hv);
                    }
                }
            }
        }
        for (cr, run) in c.iter().zip(runs.iter_mut()) {
            for (v, cv) in cr.iter().enumerate() {
                _mm512_storeu_ps(run.c.as_mut_ptr().add(16 * v), *cv);
            }
        }
    }
}

/// Block `b` of `g = x + h · W` (`g[4 b..4 b + 4]`) for one cell of hidden
/// size `16 V`, `W` packed in blocks 64 wide (`V` of them, each `16 V` rows of
/// 64), summed as [`super::gemv_acc`] sums.
///
/// # Safety
/// `b < V`; `w` points at `16 V · 64 V` readable f32, `x` at `64 V`, `h` at `16 V`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn block_product<const V: usize, const G: usize>(
    b: usize,
    w: *const f32,
    x: *const f32,
    h: *const f32,
    g: &mut [__m512; G],
) {
    let hd = 16 * V;
    // SAFETY: within the bounds the caller vouches for.
    unsafe {
        let w = w.add(b * 64 * hd);
        let mut even: [__m512; 4] = std::array::from_fn(|v| _mm512_loadu_ps(x.add(64 * b + 16 * v)));
        let mut odd = [_mm512_setzero_ps(); 4];
        for kk in (0..hd).step_by(2) {
            let (x0, x1) = (_mm512_set1_ps(*h.add(kk)), _mm512_set1_ps(*h.add(kk + 1)));
            let (r0, r1) = (w.add(kk * 64), w.add((kk + 1) * 64));
            for v in 0..4 {
                even[v] = _mm512_fmadd_ps(x0, _mm512_loadu_ps(r0.add(16 * v)), even[v]);
                odd[v] = _mm512_fmadd_ps(x1, _mm512_loadu_ps(r1.add(16 * v)), odd[v]);
            }
        }
        for v in 0..4 {
            g[4 * b + v] = _mm512_add_ps(even[v], odd[v]);
        }
    }
}

/// Applies `f(x, j)` to vectors `..len` of every cell's row: one operation of
/// a chain, across every cell at once.
#[inline]
#[target_feature(enable = "avx512f")]
fn stage<const N: usize, const M: usize>(g: &mut [[__m512; M]; N], len: usize, f: impl Fn(__m512, usize) -> __m512) {
    for row in g.iter_mut() {
        for (j, x) in row[..len].iter_mut().enumerate() {
            *x = f(*x, j);
        }
    }
}

/// [`super::exp`] of vectors `..len` of every row of `x` (`&mut [[__m512; M];
/// N]`), one operation at a time across all of them. A macro, so it is inlined
/// where it is used (the compiler declined a function this large).
macro_rules! exp_stages {
    ($x:expr, $len:expr) => {{
        let (x, len) = (&mut *$x, $len);
        const ROUND: f32 = 12_582_912.0;
        let round = _mm512_set1_ps(ROUND);
        stage(x, len, |v, _| {
            _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-87.3)), _mm512_set1_ps(88.3))
        });
        let mut shifted = *x;
        stage(&mut shifted, len, |v, _| {
            _mm512_fmadd_ps(v, _mm512_set1_ps(std::f32::consts::LOG2_E), round)
        });
        let mut r = shifted;
        stage(&mut r, len, |s, _| _mm512_sub_ps(s, round));
        // r = x − n ln 2, ln 2 in two parts (`r` held n).
        for (rr, xr) in r.iter_mut().zip(x.iter()) {
            for (rv, xv) in rr[..len].iter_mut().zip(&xr[..len]) {
                let n = *rv;
                *rv = _mm512_fmadd_ps(n, _mm512_set1_ps(-0.693_359_4), *xv);
                *rv = _mm512_fmadd_ps(n, _mm512_set1_ps(2.121_944_4e-4), *rv);
            }
        }
        let mut p = r;
        stage(&mut p, len, |_, _| _mm512_set1_ps(1.987_569_1e-4));
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
            for (pr, rr) in p.iter_mut().zip(r.iter()) {
                for (pv, rv) in pr[..len].iter_mut().zip(&rr[..len]) {
                    *pv = _mm512_fmadd_ps(*pv, *rv, _mm512_set1_ps(c));
                }
            }
        }
        for (k, xr) in x.iter_mut().enumerate() {
            for (j, xv) in xr[..len].iter_mut().enumerate() {
                let (pv, rv, sv) = (p[k][j], r[k][j], shifted[k][j]);
                let er = _mm512_fmadd_ps(_mm512_mul_ps(pv, rv), rv, _mm512_add_ps(rv, _mm512_set1_ps(1.0)));
                let n_int = _mm512_sub_epi32(_mm512_castps_si512(sv), _mm512_castps_si512(round));
                let scale =
                    _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(n_int, _mm512_set1_epi32(127))));
                *xv = _mm512_mul_ps(er, scale);
            }
        }
    }};
}

/// [`super::recip`] of vectors `..len` of every row, staged.
#[inline]
#[target_feature(enable = "avx512f")]
fn recip_stages<const N: usize, const M: usize>(d: &mut [[__m512; M]; N], len: usize) {
    let mut r = *d;
    stage(&mut r, len, |v, _| _mm512_rcp14_ps(v));
    for (dr, rr) in d.iter_mut().zip(r.iter()) {
        for (dv, rv) in dr[..len].iter_mut().zip(&rr[..len]) {
            let e = _mm512_fnmadd_ps(*dv, *rv, _mm512_set1_ps(1.0));
            *dv = _mm512_fmadd_ps(*rv, e, *rv);
        }
    }
}

/// [`super::tanh`] of vectors `..len` of every row, staged.
#[inline]
#[target_feature(enable = "avx512f")]
fn tanh_stages<const N: usize, const M: usize>(x: &mut [[__m512; M]; N], len: usize) {
    stage(x, len, |v, _| {
        let v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-10.0)), _mm512_set1_ps(10.0));
        _mm512_add_ps(v, v)
    });
    exp_stages!(x, len);
    stage(x, len, |e, _| _mm512_add_ps(e, _mm512_set1_ps(1.0)));
    recip_stages(x, len);
    stage(x, len, |q, _| {
        _mm512_fnmadd_ps(_mm512_set1_ps(2.0), q, _mm512_set1_ps(1.0))
    });
}

/// The LSTM gates of `N` cells of hidden size `16 V` (each row `[i f g o]`, `V`
/// vectors each), staged: σ of i, f and o, tanh of g, as [`super::sigmoid`]
/// and [`super::tanh`] make them.
#[inline]
#[target_feature(enable = "avx512f")]
fn activate_gates<const N: usize, const V: usize, const G: usize>(g: &mut [[__m512; G]; N]) {
    let is_g = |j: usize| (2 * V..3 * V).contains(&j);
    stage(g, G, |x, j| {
        if is_g(j) {
            let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-10.0)), _mm512_set1_ps(10.0));
            _mm512_add_ps(x, x)
        } else {
            _mm512_sub_ps(_mm512_setzero_ps(), x)
        }
    });
    exp_stages!(g, G);
    stage(g, G, |e, _| _mm512_add_ps(e, _mm512_set1_ps(1.0)));
    recip_stages(g, G);
    stage(g, G, |q, j| {
        if is_g(j) {
            _mm512_fnmadd_ps(_mm512_set1_ps(2.0), q, _mm512_set1_ps(1.0))
        } else {
            q
        }
    });
}

#[cfg(test)]
mod tests {
    use super::super::{LstmRun, lstm_steps_together, steps_through_memory};

    #[test]
    fn cells_stepped_in_registers_match_cells_stepped_through_memory_to_the_bit() {
        if !crate::nn::isa::Isa::Avx512.supported() {
            return;
        }
        let val = |i: usize, scale: f32| ((i * 7919 % 211) as f32 - 105.0) / 105.0 * scale;
        let steps = 7;
        for hd in [16, 32, 48, 64, 8, 24] {
            for n in 1..=4 {
                for (const_input, reverse) in [(false, false), (true, false), (false, true)] {
                    let (stride, col) = (hd + 5, 3);
                    let w: Vec<Vec<f32>> = (0..n)
                        .map(|r| (0..4 * hd * hd).map(|i| val(i + r, 0.4)).collect())
                        .collect();
                    let xp: Vec<Vec<f32>> = (0..n)
                        .map(|r| (0..steps * 4 * hd).map(|i| val(i * 3 + r, 3.0)).collect())
                        .collect();
                    let init = |r: usize, k: usize| (0..hd).map(|i| val(i * k + r, 1.0)).collect::<Vec<f32>>();
                    let run_all = |registers: bool| {
                        let (mut h, mut c): (Vec<_>, Vec<_>) = (0..n).map(|r| (init(r, 5), init(r, 11))).unzip();
                        let mut ah = vec![vec![0.0; 4 * hd]; n];
                        let mut out = vec![vec![f32::NAN; steps * stride]; n];
                        let mut slots: [Option<LstmRun<'_>>; 4] = [None, None, None, None];
                        let states = h.iter_mut().zip(c.iter_mut()).zip(ah.iter_mut()).zip(out.iter_mut());
                        for (r, (((h, c), ah), out)) in states.enumerate() {
                            slots[r] = Some(LstmRun {
                                w_hh: &w[r],
                                xp: &xp[r],
                                h,
                                c,
                                ah,
                                out: Some((out, stride, col)),
                            });
                        }
                        // SAFETY: the CPU supports AVX-512 (checked above).
                        unsafe {
                            if registers {
                                lstm_steps_together(&mut slots, steps, const_input, reverse);
                            } else {
                                steps_through_memory(&mut slots, steps, const_input, reverse);
                            }
                        }
                        let bits = |v: &Vec<Vec<f32>>| v.iter().flatten().map(|x| x.to_bits()).collect::<Vec<_>>();
                        (bits(&h), bits(&c), bits(&out))
                    };
                    let (want, got) = (run_all(false), run_all(true));
                    let case = format!("H {hd}, {n} cells, const input {const_input}, reverse {reverse}");
                    assert_eq!(got, want, "{case}");
                    assert!(
                        want.2.iter().any(|&b| f32::from_bits(b).is_nan()),
                        "{case}: the padding stays"
                    );
                }
            }
        }
    }
}
