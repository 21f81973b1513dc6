//! Backpropagation through time for one direction of one layer, in its steps:
//! per step (newest first) each row's pre-activation gradients and the gradient
//! into the state before it, then the parameter and input gradients of every step
//! at once.

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, ArrayViewMut2, Axis, s};

use super::DirCache;
use crate::nn::{CellKind, CellParams, Scalar, matmul};

/// Backward through one direction of one layer. Accumulates parameter gradients into
/// `g` and input gradients into `d_input`; returns `(d h0, d c0)`.
///
/// ```text
/// LSTM   dc̃ = dc + dh⊙o⊙(1−tanh²c)   di = dc̃⊙g  df = dc̃⊙c_prev  dg = dc̃⊙i  do = dh⊙tanh c
///        (each times its activation's derivative);  dc_prev = dc̃⊙f
/// GRU    dn = dh⊙(1−z)  dz = dh⊙(h_prev − n)  dh_prev = dh⊙z + (hidden-side products)
/// ```
#[allow(clippy::too_many_arguments)]
pub(super) fn direction_backward<T: Scalar>(
    kind: CellKind,
    p: &CellParams<T>,
    x: ArrayView3<T>,
    seq_len: usize,
    cache: &DirCache<T>,
    d_out: ArrayView3<T>,
    d_hn: ArrayView2<T>,
    d_cn: Option<ArrayView2<T>>,
    lengths: &[usize],
    reverse: bool,
    tbptt: Option<usize>,
    g: &mut CellParams<T>,
    d_input: &mut Array3<T>,
) -> (Array2<T>, Option<Array2<T>>) {
    let batch = x.dim().1;
    let h = p.d_hidden();
    let gh = kind.n_gates() * h;
    let is_gru = matches!(kind, CellKind::Gru | CellKind::GruResetBefore);
    let mut dh = d_hn.to_owned();
    let mut dc = d_cn.map(|v| v.to_owned()).unwrap_or_else(|| Array2::zeros((0, h)));
    // d pre-activation, input side (`da`) and hidden side (`dah`): they differ only in
    // GRU's n block, so the hidden side is kept apart for GRU only.
    let mut da_all = Array2::<T>::zeros((seq_len * batch, gh)); // [T*B, G*H]
    let mut dah_all = if is_gru {
        Array2::<T>::zeros((seq_len * batch, gh))
    } else {
        Array2::zeros((0, gh))
    };
    let mut dh_prev = Array2::<T>::zeros((batch, h));
    let mut d_rh = Array2::<T>::zeros((batch, h));
    let saved = Saved::of(cache);

    for step in (0..seq_len).rev() {
        let t = if reverse { seq_len - 1 - step } else { step };
        let rows = t * batch..(t + 1) * batch;
        let grads = (&mut da_all, &mut dah_all, &mut dc);
        rows_backward(kind, &saved, t, lengths, d_out, &mut dh, &mut dh_prev, grads);
        let dah = if is_gru {
            dah_all.slice(s![rows.clone(), ..])
        } else {
            da_all.slice(s![rows.clone(), ..])
        };
        match kind {
            CellKind::GruResetBefore => {
                // d(r⊙h) = dn_pre · W_hn, then through r and h.
                matmul(
                    d_rh.view_mut(),
                    dah.slice(s![.., 2 * h..]),
                    p.w_hh.slice(s![2 * h.., ..]),
                    false,
                );
                let grads = (&mut da_all, &mut dah_all, &mut dh_prev);
                reset_before_backward(&saved, t, lengths, &d_rh, grads);
                let dah = dah_all.slice(s![rows, ..2 * h]);
                matmul(dh_prev.view_mut(), dah, p.w_hh.slice(s![..2 * h, ..]), true);
            }
            _ => matmul(dh_prev.view_mut(), dah, p.w_hh.view(), true),
        }
        std::mem::swap(&mut dh, &mut dh_prev);
        // `step` is the position in this direction's processing order (for the reverse
        // direction too), so both directions are cut into chunks of their own k steps.
        if tbptt.is_some_and(|k| step % k == 0 && step > 0) {
            // Chunk boundary: the state is detached here.
            dh.fill(T::zero());
            dc.fill(T::zero());
        }
    }
    let dah_all = if is_gru { dah_all.view() } else { da_all.view() };
    parameter_grads(kind, p, x, cache, da_all.view(), dah_all, g, d_input);
    (dh, d_cn.map(|_| dc))
}

/// The backward of step `t` for every row: `dh` (the gradient into each row's new
/// state) gains the step's output gradient and becomes the pre-activation
/// gradients and each row's gradient into the state before (`dh_prev`, before the
/// hidden-side products, which the caller adds).
#[allow(clippy::too_many_arguments)]
fn rows_backward<T: Scalar>(
    kind: CellKind,
    saved: &Saved<'_, T>,
    t: usize,
    lengths: &[usize],
    d_out: ArrayView3<T>,
    dh: &mut Array2<T>,
    dh_prev: &mut Array2<T>,
    (da_all, dah_all, dc): (&mut Array2<T>, &mut Array2<T>, &mut Array2<T>),
) {
    let (batch, h) = (lengths.len(), saved.h);
    let da_s = da_all.as_slice_mut().expect("contiguous");
    let dah_s = dah_all.as_slice_mut().expect("contiguous");
    let dh_s = dh.as_slice_mut().expect("contiguous");
    let dc_s = dc.as_slice_mut().expect("contiguous");
    let dhp_s = dh_prev.as_slice_mut().expect("contiguous");
    for b in 0..batch {
        let dhr = &mut dh_s[b * h..(b + 1) * h];
        let dhp = &mut dhp_s[b * h..(b + 1) * h];
        if t >= lengths[b] {
            // Padded step: the state passed through unchanged.
            dhp.copy_from_slice(dhr);
            continue;
        }
        let dout = d_out.slice(s![t, b, ..]);
        for (d, &o) in dhr.iter_mut().zip(dout.iter()) {
            *d += o;
        }
        let grads = RowGrads {
            da_s: &mut *da_s,
            dah_s: &mut *dah_s,
            dc_s: &mut *dc_s,
            dhp,
        };
        row_backward(kind, saved, t * batch + b, b, dhr, grads);
    }
}

/// The forward pass's saved values of one direction, flattened: `gates`
/// `[T*B, G*H]`, the others `[T*B, H]` (empty where the cell keeps none).
struct Saved<'a, T> {
    h: usize,
    gh: usize,
    gates: &'a [T],
    h_prev: &'a [T],
    tanh_c: &'a [T],
    c_prev: &'a [T],
    extra: &'a [T],
}

impl<'a, T: Scalar> Saved<'a, T> {
    fn of(cache: &'a DirCache<T>) -> Self {
        let flat = |a: &'a Option<Array3<T>>| a.as_ref().map(|a| a.as_slice().expect("contiguous")).unwrap_or(&[]);
        let (_, _, h) = cache.h_prev.dim();
        Saved {
            h,
            gh: cache.gates.dim().2,
            gates: cache.gates.as_slice().expect("contiguous"),
            h_prev: cache.h_prev.as_slice().expect("contiguous"),
            tanh_c: flat(&cache.tanh_c),
            c_prev: flat(&cache.c_prev),
            extra: flat(&cache.extra),
        }
    }
}

/// Where one row's backward writes: the pre-activation gradients of every row
/// (input and, for GRU, hidden side), the cell-state gradients (LSTM), and this
/// row's gradient into the state before the step.
struct RowGrads<'a, T> {
    da_s: &'a mut [T],
    dah_s: &'a mut [T],
    dc_s: &'a mut [T],
    dhp: &'a mut [T],
}

/// The backward of one step for one row (`tb = t * batch + b`), given `dhr`, the
/// gradient into its new state.
#[inline(always)]
fn row_backward<T: Scalar>(kind: CellKind, s: &Saved<'_, T>, tb: usize, b: usize, dhr: &[T], out: RowGrads<'_, T>) {
    let (h, gh, one) = (s.h, s.gh, T::one());
    let RowGrads { da_s, dah_s, dc_s, dhp } = out;
    let r0 = tb * gh;
    let gr = &s.gates[r0..r0 + gh];
    let da = &mut da_s[r0..r0 + gh];
    let s0 = tb * h;
    match kind {
        CellKind::RnnTanh => {
            for j in 0..h {
                da[j] = dhr[j] * (one - gr[j] * gr[j]);
            }
            dhp.fill(T::zero());
        }
        CellKind::Lstm => {
            let (i, f, gg, o) = (&gr[..h], &gr[h..2 * h], &gr[2 * h..3 * h], &gr[3 * h..]);
            let tc = &s.tanh_c[s0..s0 + h];
            let cp = &s.c_prev[s0..s0 + h];
            let dcr = &mut dc_s[b * h..(b + 1) * h];
            lstm_row_backward([i, f, gg, o, tc, cp, dhr], dcr, da);
            dhp.fill(T::zero());
        }
        CellKind::Gru | CellKind::GruResetBefore => {
            let (r, z, n) = (&gr[..h], &gr[h..2 * h], &gr[2 * h..]);
            let hp = &s.h_prev[s0..s0 + h];
            let ex = &s.extra[s0..s0 + h];
            let dah = &mut dah_s[r0..r0 + gh];
            for j in 0..h {
                let dn_pre = dhr[j] * (one - z[j]) * (one - n[j] * n[j]);
                let dz_pre = dhr[j] * (hp[j] - n[j]) * z[j] * (one - z[j]);
                da[h + j] = dz_pre;
                dah[h + j] = dz_pre;
                da[2 * h + j] = dn_pre;
                dhp[j] = dhr[j] * z[j];
                if kind == CellKind::Gru {
                    // ex = W_hn h + b_hn
                    let dr_pre = dn_pre * ex[j] * r[j] * (one - r[j]);
                    da[j] = dr_pre;
                    dah[j] = dr_pre;
                    dah[2 * h + j] = dn_pre * r[j];
                } else {
                    dah[2 * h + j] = dn_pre;
                }
            }
        }
    }
}

/// One row's LSTM step backward: from the gates `i f g o`, `tanh c`, `c_prev` and
/// the gradient into `h` (each `[h]`), the pre-activation gradients (`da`, `[4h]`)
/// and the gradient into `c` (`dc`, updated to the one into `c_prev`).
///
/// A function of its own so that its slices are arguments, which the compiler knows
/// do not overlap: inlined into the step loop, where they are fields of a struct,
/// it could not tell, and the loop stayed scalar.
#[inline(never)]
fn lstm_row_backward<T: Scalar>(saved: [&[T]; 7], dc: &mut [T], da: &mut [T]) {
    let one = T::one();
    let h = dc.len();
    let [i, f, gg, o, tc, cp, dh] = saved.map(|v| &v[..h]);
    let (di, rest) = da.split_at_mut(h);
    let (df, rest) = rest.split_at_mut(h);
    let (dg, d_o) = rest.split_at_mut(h);
    let d_o = &mut d_o[..h];
    for j in 0..h {
        let dct = dc[j] + dh[j] * o[j] * (one - tc[j] * tc[j]);
        di[j] = dct * gg[j] * i[j] * (one - i[j]);
        df[j] = dct * cp[j] * f[j] * (one - f[j]);
        dg[j] = dct * i[j] * (one - gg[j] * gg[j]);
        d_o[j] = dh[j] * tc[j] * o[j] * (one - o[j]);
        dc[j] = dct * f[j];
    }
}

/// GruResetBefore's reset gate at step `t`: `d_rh = d(r ⊙ h)` goes through r (its
/// pre-activation gradient, both sides) and into `h_prev`.
fn reset_before_backward<T: Scalar>(
    s: &Saved<'_, T>,
    t: usize,
    lengths: &[usize],
    d_rh: &Array2<T>,
    (da_all, dah_all, dh_prev): (&mut Array2<T>, &mut Array2<T>, &mut Array2<T>),
) {
    let (h, gh, one) = (s.h, s.gh, T::one());
    let batch = lengths.len();
    let da_s = da_all.as_slice_mut().expect("contiguous");
    let dah_s = dah_all.as_slice_mut().expect("contiguous");
    let drh = d_rh.as_slice().expect("contiguous");
    let dhp_s = dh_prev.as_slice_mut().expect("contiguous");
    for b in 0..batch {
        if t >= lengths[b] {
            continue;
        }
        let (r0, s0) = ((t * batch + b) * gh, (t * batch + b) * h);
        let r = &s.gates[r0..r0 + h];
        let hp = &s.h_prev[s0..s0 + h];
        let drh = &drh[b * h..(b + 1) * h];
        let dhp = &mut dhp_s[b * h..(b + 1) * h];
        for j in 0..h {
            let dr_pre = drh[j] * hp[j] * r[j] * (one - r[j]);
            da_s[r0 + j] = dr_pre;
            dah_s[r0 + j] = dr_pre;
            dhp[j] += drh[j] * r[j];
        }
    }
}

/// Parameter and input gradients for all steps at once, from the pre-activation
/// gradients `da_all` (input side) and `dah_all` (hidden side).
#[allow(clippy::too_many_arguments)]
fn parameter_grads<T: Scalar>(
    kind: CellKind,
    p: &CellParams<T>,
    x: ArrayView3<T>,
    cache: &DirCache<T>,
    da_all: ArrayView2<T>,
    dah_all: ArrayView2<T>,
    g: &mut CellParams<T>,
    d_input: &mut Array3<T>,
) {
    let (x_len, batch, d_in) = x.dim();
    let (seq_len, _, h) = cache.h_prev.dim();
    let gh = da_all.dim().1;
    let db = column_sums(da_all);
    g.b_ih += &db;
    // Only GRU keeps its hidden side apart; otherwise it is `da_all` again.
    if matches!(kind, CellKind::Gru | CellKind::GruResetBefore) {
        g.b_hh += &column_sums(dah_all);
    } else {
        g.b_hh += &db;
    }
    let hp2 = cache
        .h_prev
        .view()
        .into_shape_with_order((seq_len * batch, h))
        .expect("contiguous");
    if kind == CellKind::GruResetBefore {
        let rh = cache.extra.as_ref().expect("reset-before keeps r⊙h");
        let rh2 = rh
            .view()
            .into_shape_with_order((seq_len * batch, h))
            .expect("contiguous");
        matmul(
            g.w_hh.slice_mut(s![..2 * h, ..]),
            dah_all.slice(s![.., ..2 * h]).t(),
            hp2,
            true,
        );
        matmul(
            g.w_hh.slice_mut(s![2 * h.., ..]),
            dah_all.slice(s![.., 2 * h..]).t(),
            rh2,
            true,
        );
    } else {
        matmul(g.w_hh.view_mut(), dah_all.t(), hp2, true);
    }
    // A repeated input sees the sum of its steps' gradients: sum first, multiply once.
    let da_sum;
    let da_in = if x_len == seq_len {
        da_all
    } else {
        da_sum = da_all
            .into_shape_with_order((seq_len, batch, gh))
            .expect("contiguous")
            .sum_axis(Axis(0));
        da_sum.view()
    };
    let x2 = x.into_shape_with_order((x_len * batch, d_in)).expect("contiguous");
    matmul(g.w_ih.view_mut(), da_in.t(), x2, true);
    let mut dx2: ArrayViewMut2<T> = d_input
        .view_mut()
        .into_shape_with_order((x_len * batch, d_in))
        .expect("contiguous");
    matmul(dx2.view_mut(), da_in, p.w_ih.view(), true);
}

/// The sum of `a`'s rows (`[n, m]` → `[m]`), row after row (as ndarray's
/// `sum_axis(Axis(0))` adds them), as one loop over contiguous slices.
fn column_sums<T: Scalar>(a: ArrayView2<T>) -> ndarray::Array1<T> {
    let mut sums = vec![T::zero(); a.ncols()];
    for row in a.rows() {
        match row.as_slice() {
            Some(r) => sums.iter_mut().zip(r).for_each(|(s, &v)| *s += v),
            None => sums.iter_mut().zip(row.iter()).for_each(|(s, &v)| *s += v),
        }
    }
    sums.into()
}
