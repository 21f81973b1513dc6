//! The forward pass of one direction of one layer, in its steps: the input
//! projections of every step at once, then per step the hidden-side
//! pre-activations, each row's gates and new state, and what the backward pass
//! needs saved.

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, s};

use super::DirCache;
use crate::nn::{CellKind, CellParams, Scalar, matmul};

/// Runs one direction of one layer over the sequence, writing its output into
/// columns `col..col + H` of `out` and returning the final `(h, c)`.
///
/// The inner loops work on contiguous row slices (no per-element n-d indexing), so
/// they vectorise; gate activations go through [`Scalar`]'s slice kernels.
#[allow(clippy::too_many_arguments)]
pub(super) fn direction_forward<T: Scalar>(
    kind: CellKind,
    p: &CellParams<T>,
    x: ArrayView3<T>,
    seq_len: usize,
    h0: ArrayView2<T>,
    c0: Option<ArrayView2<T>>,
    lengths: &[usize],
    reverse: bool,
    out: &mut Array3<T>,
    col: usize,
    mut cache: Option<&mut DirCache<T>>,
) -> (Array2<T>, Option<Array2<T>>) {
    // `x` is `[seq_len, B, d_in]`, or `[1, B, d_in]` repeated at every step.
    let (x_len, batch, _) = x.dim();
    let repeated = x_len != seq_len;
    let h = p.d_hidden();
    let gh = kind.n_gates() * h;
    let d_out = out.dim().2;
    let (xp, b_hn) = input_projections(kind, p, x);
    let xp = xp.as_slice().expect("contiguous");
    // `W_hhᵀ` laid out by rows once, so every step's product reads it row by row.
    let w_hh_t = p.w_hh.t().as_standard_layout().into_owned(); // [H, G*H]

    let mut hcur = h0.to_owned(); // [B, H]
    let mut ccur = c0.map(|c| c.to_owned()).unwrap_or_else(|| Array2::zeros((0, h)));
    let mut ah = Array2::<T>::zeros((batch, gh)); // [B, G*H] hidden-side pre-activations
    let mut gates = vec![T::zero(); batch * gh]; // post-activation gates of this step
    let mut extra = vec![T::zero(); batch * h]; // Gru: W_hn h + b_hn; GruResetBefore: r ⊙ h
    let mut tanh_c = vec![T::zero(); batch * h];

    for step in 0..seq_len {
        let t = if reverse { seq_len - 1 - step } else { step };
        if let Some(c) = cache.as_deref_mut() {
            c.h_prev.index_axis_mut(ndarray::Axis(0), t).assign(&hcur);
            if let Some(cp) = c.c_prev.as_mut() {
                cp.index_axis_mut(ndarray::Axis(0), t).assign(&ccur);
            }
        }
        let tx = if repeated { 0 } else { t };
        let xp_t = &xp[tx * batch * gh..(tx + 1) * batch * gh];
        hidden_projections(kind, w_hh_t.view(), &hcur, xp_t, &mut ah, &mut gates, &mut extra);
        let ah_s = ah.as_slice().expect("contiguous");
        let hs = hcur.as_slice_mut().expect("contiguous");
        let cs = ccur.as_slice_mut().expect("contiguous");
        let valid = |b: usize| t < lengths[b];
        if kind == CellKind::Lstm {
            let all = Rows {
                g: &mut gates,
                xr: xp_t,
                ar: ah_s,
                hr: hs,
            };
            lstm_rows(all, h, cs, &mut tanh_c, &valid);
        } else {
            for b in 0..batch {
                let rows = Rows {
                    g: &mut gates[b * gh..(b + 1) * gh],
                    xr: &xp_t[b * gh..(b + 1) * gh],
                    ar: &ah_s[b * gh..(b + 1) * gh],
                    hr: &mut hs[b * h..(b + 1) * h],
                };
                step_row(kind, rows, b, &mut extra, &b_hn, valid(b));
            }
        }
        for b in 0..batch {
            let valid = valid(b);
            // Padded rows keep their state and output 0.
            let o = &mut out.as_slice_mut().expect("contiguous")[(t * batch + b) * d_out + col..][..h];
            if valid {
                o.copy_from_slice(&hs[b * h..(b + 1) * h]);
            } else {
                o.fill(T::zero());
            }
        }
        if let Some(c) = cache.as_deref_mut() {
            save_step(c, t, &gates, &tanh_c, &extra);
        }
    }
    (hcur, c0.map(|_| ccur))
}

/// The input projections of every step in one product, `[x_len * B, G*H]`, with
/// the biases that can be folded in: all of b_hh except GRU's n block, which sits
/// inside the reset product (returned apart, empty for the other cells).
fn input_projections<T: Scalar>(kind: CellKind, p: &CellParams<T>, x: ArrayView3<T>) -> (Array2<T>, Vec<T>) {
    let (x_len, batch, d_in) = x.dim();
    let h = p.d_hidden();
    let gh = kind.n_gates() * h;
    let x2 = x
        .into_shape_with_order((x_len * batch, d_in))
        .expect("layer input is contiguous");
    let mut xp = Array2::<T>::zeros((x_len * batch, gh)); // [T*B, G*H]
    matmul(xp.view_mut(), x2, p.w_ih.t().as_standard_layout().view(), false);
    let mut bias = &p.b_ih + &p.b_hh;
    let is_gru = matches!(kind, CellKind::Gru | CellKind::GruResetBefore);
    if is_gru {
        bias.slice_mut(s![2 * h..]).assign(&p.b_ih.slice(s![2 * h..]));
    }
    xp += &bias;
    let b_hn: Vec<T> = if is_gru {
        p.b_hh.slice(s![2 * h..]).to_vec()
    } else {
        Vec::new()
    };
    (xp, b_hn)
}

/// The hidden-side pre-activations of one step, `ah = h W_hhᵀ` (`[B, G*H]`, from
/// `w_hh_t` = `W_hhᵀ`, `[H, G*H]`). For GruResetBefore the n block is
/// `(r ⊙ h) W_hnᵀ`: r and z are activated here first (into `gates`), and `r ⊙ h`
/// kept in `extra`.
fn hidden_projections<T: Scalar>(
    kind: CellKind,
    w_hh_t: ArrayView2<T>,
    hcur: &Array2<T>,
    xp_t: &[T],
    ah: &mut Array2<T>,
    gates: &mut [T],
    extra: &mut [T],
) {
    let h = hcur.ncols();
    let gh = kind.n_gates() * h;
    if kind != CellKind::GruResetBefore {
        matmul(ah.view_mut(), hcur.view(), w_hh_t, false);
        return;
    }
    let w_hh_rz_t = w_hh_t.slice(s![.., ..2 * h]);
    let w_hn_t = w_hh_t.slice(s![.., 2 * h..]);
    matmul(ah.slice_mut(s![.., ..2 * h]), hcur.view(), w_hh_rz_t, false);
    let ah_s = ah.as_slice().expect("contiguous");
    let hs = hcur.as_slice().expect("contiguous");
    // r and z for every row, then W_hn (r ⊙ h) as one product.
    for b in 0..hcur.nrows() {
        let g = &mut gates[b * gh..(b + 1) * gh];
        add_into(
            &mut g[..2 * h],
            &xp_t[b * gh..b * gh + 2 * h],
            &ah_s[b * gh..b * gh + 2 * h],
        );
        T::sigmoid_inplace(&mut g[..2 * h]);
        mul_into(&mut extra[b * h..(b + 1) * h], &g[..h], &hs[b * h..(b + 1) * h]);
    }
    let rh = ndarray::ArrayView2::from_shape((hcur.nrows(), h), &extra[..]).expect("shape");
    matmul(ah.slice_mut(s![.., 2 * h..]), rh, w_hn_t, false);
}

/// One row's slices for one step: its gates (`[G*H]`), input and hidden-side
/// pre-activations, and its state `h`.
struct Rows<'a, T> {
    g: &'a mut [T],
    xr: &'a [T],
    ar: &'a [T],
    hr: &'a mut [T],
}

/// An LSTM step of every row at once (`all` holds every row's slices, `[B, 4H]`
/// and `[B, H]`): the gates of all rows in one call of the activation kernel (one
/// dispatch a step, not four a row), then each valid row's `c` (in `cs`), `tanh c`
/// (in `tanh_c`, every row's in one call) and `h`. A padded row's state stays as
/// it was; its gates and `tanh c` are computed but never read (its backward step
/// is skipped). Each element sees the same operations in the same order as a row
/// stepped alone.
fn lstm_rows<T: Scalar>(all: Rows<'_, T>, h: usize, cs: &mut [T], tanh_c: &mut [T], valid: &dyn Fn(usize) -> bool) {
    let Rows { g, xr, ar, hr } = all;
    let batch = cs.len() / h;
    add_into(g, xr, ar);
    T::lstm_gates_inplace(g, h);
    for b in (0..batch).filter(|&b| valid(b)) {
        let gr = &g[b * 4 * h..(b + 1) * 4 * h];
        let (i, f, gg) = (&gr[..h], &gr[h..2 * h], &gr[2 * h..3 * h]);
        let cr = &mut cs[b * h..(b + 1) * h];
        for j in 0..h {
            cr[j] = f[j] * cr[j] + i[j] * gg[j];
        }
    }
    // A padded row's `c` did not change: its `tanh c` is what it was.
    tanh_c.copy_from_slice(cs);
    T::tanh_inplace(tanh_c);
    for b in (0..batch).filter(|&b| valid(b)) {
        let o = &g[b * 4 * h + 3 * h..(b + 1) * 4 * h];
        mul_into(&mut hr[b * h..(b + 1) * h], o, &tanh_c[b * h..(b + 1) * h]);
    }
}

/// Row `b`'s gates and, when `valid`, its new state `h` (GRU keeps
/// `W_hn h + b_hn` in `extra`), for every cell but the LSTM ([`lstm_rows`]).
#[inline(always)]
fn step_row<T: Scalar>(kind: CellKind, rows: Rows<'_, T>, b: usize, extra: &mut [T], b_hn: &[T], valid: bool) {
    let Rows { g, xr, ar, hr } = rows;
    let h = hr.len();
    let one = T::one();
    match kind {
        CellKind::RnnTanh => {
            add_into(g, xr, ar);
            T::tanh_inplace(g);
            if valid {
                hr.copy_from_slice(g);
            }
        }
        CellKind::Lstm => unreachable!("LSTM rows step together (lstm_rows)"),
        CellKind::Gru => {
            add_into(&mut g[..2 * h], &xr[..2 * h], &ar[..2 * h]);
            T::sigmoid_inplace(&mut g[..2 * h]);
            let (rz, n) = g.split_at_mut(2 * h);
            let hn = &mut extra[b * h..(b + 1) * h];
            add_into(hn, &ar[2 * h..], b_hn);
            let (xn, r) = (&xr[2 * h..], &rz[..h]);
            for j in 0..h {
                n[j] = xn[j] + r[j] * hn[j];
            }
            T::tanh_inplace(n);
            if valid {
                let z = &rz[h..];
                for j in 0..h {
                    hr[j] = (one - z[j]) * n[j] + z[j] * hr[j];
                }
            }
        }
        CellKind::GruResetBefore => {
            let (rz, n) = g.split_at_mut(2 * h);
            let (xn, an) = (&xr[2 * h..], &ar[2 * h..]);
            for j in 0..h {
                n[j] = xn[j] + an[j] + b_hn[j];
            }
            T::tanh_inplace(n);
            if valid {
                let z = &rz[h..];
                for j in 0..h {
                    hr[j] = (one - z[j]) * n[j] + z[j] * hr[j];
                }
            }
        }
    }
}

/// Saves step `t`'s gates (and `tanh c`, GRU's extra) for the backward pass.
fn save_step<T: Scalar>(c: &mut DirCache<T>, t: usize, gates: &[T], tanh_c: &[T], extra: &[T]) {
    let (g_len, h_len) = (gates.len(), tanh_c.len());
    let g3 = c.gates.as_slice_mut().expect("contiguous");
    g3[t * g_len..(t + 1) * g_len].copy_from_slice(gates);
    if let Some(tc) = c.tanh_c.as_mut() {
        tc.as_slice_mut().expect("contiguous")[t * h_len..(t + 1) * h_len].copy_from_slice(tanh_c);
    }
    if let Some(e) = c.extra.as_mut() {
        e.as_slice_mut().expect("contiguous")[t * h_len..(t + 1) * h_len].copy_from_slice(extra);
    }
}

/// `dst[j] = a[j] + b[j]`.
#[inline(always)]
fn add_into<T: Scalar>(dst: &mut [T], a: &[T], b: &[T]) {
    for ((d, &x), &y) in dst.iter_mut().zip(a).zip(b) {
        *d = x + y;
    }
}

/// `dst[j] = a[j] * b[j]`.
#[inline(always)]
fn mul_into<T: Scalar>(dst: &mut [T], a: &[T], b: &[T]) {
    for ((d, &x), &y) in dst.iter_mut().zip(a).zip(b) {
        *d = x * y;
    }
}
