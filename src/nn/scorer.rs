//! The scorer: an autoencoder compiled for one window at a time (weights packed
//! once, on 64-byte lines; AVX-512, AVX2+FMA or portable kernels chosen at run
//! time, the FMA paths with their activations' polynomials fused too), the form
//! every stream scores with.

use super::aligned::AlignedVec;
use super::isa::{self, Isa};

use super::{Autoencoder, AutoencoderConfig, CellKind, CellParams, Linear, Rnn, RnnConfig};

mod nibbles;
mod together;
pub(crate) use nibbles::{BLOCK, BLOCK_BYTES, pow2, widen_block};
pub use nibbles::{NibbleScorer, NibbleWorkspace};

/// One cell's weights rearranged for single-sequence inference: transposed so a
/// matrix-vector product is a run of contiguous AXPYs, and biases folded.
#[derive(Clone, Debug)]
struct FastCell {
    kind: CellKind,
    d_in: usize,
    h: usize,
    /// `W_ihᵀ`, `[d_in, G·H]`.
    w_ih_t: Packed,
    /// `W_hhᵀ`, `[H, G·H]` (for GruResetBefore only its r and z columns, `[H, 2H]`).
    w_hh_t: Packed,
    /// GruResetBefore: the n columns of `W_hhᵀ`, `[H, H]`, applied to `r ⊙ h`.
    w_hn_t: Packed,
    /// `b_ih + b_hh`, except GRU's n block which holds `b_in` only.
    bias: Vec<f32>,
    /// GRU: `b_hn`, applied inside (or, reset-before, after) the reset product.
    b_hn: Vec<f32>,
    /// The raw biases, so the cell's parameters can be rebuilt exactly.
    b_ih: Vec<f32>,
    /// See `b_ih`.
    b_hh: Vec<f32>,
}

impl FastCell {
    fn new(kind: CellKind, p: &CellParams<f32>) -> Self {
        let h = p.d_hidden();
        let mut cell = FastCell {
            kind,
            d_in: p.d_in(),
            h,
            w_ih_t: Packed::new(p.w_ih.t()),
            w_hh_t: if kind == CellKind::GruResetBefore {
                Packed::new(p.w_hh.slice(ndarray::s![..2 * h, ..]).t())
            } else {
                Packed::new(p.w_hh.t())
            },
            w_hn_t: if kind == CellKind::GruResetBefore {
                Packed::new(p.w_hh.slice(ndarray::s![2 * h.., ..]).t())
            } else {
                Packed::new(ndarray::ArrayView2::from_shape((0, 0), &[]).expect("empty"))
            },
            bias: Vec::new(),
            b_hn: Vec::new(),
            b_ih: p.b_ih.to_vec(),
            b_hh: p.b_hh.to_vec(),
        };
        cell.fuse_biases();
        cell
    }

    /// Sets `bias` and `b_hn` from the raw biases (`b_ih + b_hh`; GRU's n block
    /// keeps `b_in` in `bias` and `b_hn` apart). Allocates only when the sizes change.
    fn fuse_biases(&mut self) {
        let h = self.h;
        self.bias.resize(self.b_ih.len(), 0.0);
        for ((f, a), b) in self.bias.iter_mut().zip(&self.b_ih).zip(&self.b_hh) {
            *f = a + b;
        }
        if matches!(self.kind, CellKind::Gru | CellKind::GruResetBefore) {
            self.bias[2 * h..].copy_from_slice(&self.b_ih[2 * h..]);
            self.b_hn.resize(h, 0.0);
            self.b_hn.copy_from_slice(&self.b_hh[2 * h..]);
        } else {
            self.b_hn.clear();
        }
    }

    /// Each array the cell stores (the fused biases excepted), in a fixed order.
    fn for_each_array_mut(&mut self, f: &mut impl FnMut(&mut [f32])) {
        f(&mut self.w_ih_t.data);
        f(&mut self.w_hh_t.data);
        f(&mut self.w_hn_t.data);
        f(&mut self.b_ih);
        f(&mut self.b_hh);
    }

    /// The PyTorch-layout parameters this cell was built from, exactly.
    fn params(&self) -> CellParams<f32> {
        let h = self.h;
        let w_ih = self.w_ih_t.unpack().reversed_axes().as_standard_layout().to_owned();
        let w_hh = if self.kind == CellKind::GruResetBefore {
            let rz = self.w_hh_t.unpack().reversed_axes();
            let n = self.w_hn_t.unpack().reversed_axes();
            ndarray::concatenate(ndarray::Axis(0), &[rz.view(), n.view()]).expect("same width")
        } else {
            self.w_hh_t.unpack().reversed_axes().as_standard_layout().to_owned()
        };
        debug_assert_eq!(w_hh.ncols(), h);
        CellParams {
            w_ih,
            w_hh: w_hh.as_standard_layout().to_owned(),
            b_ih: ndarray::Array1::from(self.b_ih.clone()),
            b_hh: ndarray::Array1::from(self.b_hh.clone()),
        }
    }
}

/// Scratch space for [`Scorer::reconstruct`], so scoring allocates nothing.
#[derive(Clone, Debug, Default)]
pub struct ScoreWorkspace {
    seq_a: AlignedVec,
    seq_b: AlignedVec,
    xp: AlignedVec,
    ah: AlignedVec,
    h: AlignedVec,
    c: AlignedVec,
    latent: AlignedVec,
    out: AlignedVec,
}

/// An immutable, inference-only copy of an [`Autoencoder<f32>`], laid out for fast
/// single-window reconstruction. Build one whenever a model is swapped in.
#[derive(Clone, Debug)]
pub struct Scorer {
    config: AutoencoderConfig,
    /// `[layer * dirs + dir]`.
    enc: Vec<FastCell>,
    dec: Vec<FastCell>,
    /// Head weight, PyTorch layout `[d_input, H]`: each output is one dot product.
    head_w: Vec<f32>,
    head_b: Vec<f32>,
}

impl Autoencoder<f32> {
    /// The fast inference form of this model.
    pub fn compile(&self) -> Scorer {
        Scorer {
            config: self.config.clone(),
            enc: self
                .encoder
                .cells
                .iter()
                .map(|p| FastCell::new(self.config.kind, p))
                .collect(),
            dec: self
                .decoder
                .cells
                .iter()
                .map(|p| FastCell::new(self.config.kind, p))
                .collect(),
            head_w: self.head.weight.iter().copied().collect(),
            head_b: self.head.bias.to_vec(),
        }
    }
}

impl Scorer {
    /// The model's shape.
    pub fn config(&self) -> &AutoencoderConfig {
        &self.config
    }

    /// The model this scorer was compiled from, rebuilt exactly (the scorer keeps
    /// only its packed weights, so a stream holds one copy of them, not two).
    pub fn to_model(&self) -> Autoencoder<f32> {
        let cfg = &self.config;
        let enc_cfg = RnnConfig {
            dropout: cfg.dropout,
            ..RnnConfig::new(cfg.kind, cfg.d_input, cfg.d_hidden, cfg.n_layers, cfg.bidirectional)
        };
        let d_latent = enc_cfg.d_output();
        let dec_cfg = RnnConfig {
            dropout: cfg.dropout,
            ..RnnConfig::new(cfg.kind, d_latent, cfg.d_hidden, cfg.n_layers, false)
        };
        Autoencoder {
            config: cfg.clone(),
            encoder: Rnn {
                config: enc_cfg,
                cells: self.enc.iter().map(FastCell::params).collect(),
            },
            decoder: Rnn {
                config: dec_cfg,
                cells: self.dec.iter().map(FastCell::params).collect(),
            },
            head: Linear {
                weight: ndarray::Array2::from_shape_vec((cfg.d_input, cfg.d_hidden), self.head_w.clone())
                    .expect("head shape"),
                bias: ndarray::Array1::from(self.head_b.clone()),
            },
        }
    }

    /// Scalar parameters of the model.
    pub fn n_params(&self) -> usize {
        let cells: usize = self
            .enc
            .iter()
            .chain(&self.dec)
            .map(|c| c.w_ih_t.data.len() + c.w_hh_t.data.len() + c.w_hn_t.data.len() + c.b_ih.len() + c.b_hh.len())
            .sum();
        cells + self.head_w.len() + self.head_b.len()
    }

    /// Reconstructs one window. `window` is `[W, d_input]` row-major; the result (same
    /// layout) lives in `ws` until the next call.
    ///
    /// # Panics
    /// If `window.len()` is not a positive multiple of `d_input`.
    pub fn reconstruct<'w>(&self, window: &[f32], ws: &'w mut ScoreWorkspace) -> &'w [f32] {
        self.reconstruct_on(isa::active(), window, ws)
    }

    /// [`reconstruct`](Scorer::reconstruct) on the path `isa` (narrowed to what
    /// this CPU supports), for comparing the paths.
    ///
    /// # Panics
    /// As [`reconstruct`](Scorer::reconstruct).
    pub fn reconstruct_on<'w>(&self, isa: Isa, window: &[f32], ws: &'w mut ScoreWorkspace) -> &'w [f32] {
        let d = self.config.d_input;
        assert!(
            !window.is_empty() && window.len().is_multiple_of(d),
            "window of {} values for {d} features",
            window.len()
        );
        match isa.min(isa::widest()) {
            // SAFETY: the CPU supports the path (`widest` detected it).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { self.reconstruct_avx512(window, ws) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { self.reconstruct_avx2(window, ws) },
            _ => self.reconstruct_impl::<false, false>(window, ws),
        }
        &ws.out
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    unsafe fn reconstruct_avx512(&self, window: &[f32], ws: &mut ScoreWorkspace) {
        self.reconstruct_impl::<true, true>(window, ws)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn reconstruct_avx2(&self, window: &[f32], ws: &mut ScoreWorkspace) {
        self.reconstruct_impl::<true, false>(window, ws)
    }

    #[inline(always)]
    fn reconstruct_impl<const FMA: bool, const WIDE: bool>(&self, window: &[f32], ws: &mut ScoreWorkspace) {
        let cfg = &self.config;
        let (d, h) = (cfg.d_input, cfg.d_hidden);
        let w = window.len() / d;
        let dirs = if cfg.bidirectional { 2 } else { 1 };
        let gh = cfg.kind.n_gates() * h;
        resize(&mut ws.xp, w * gh);
        resize(&mut ws.ah, gh);
        resize(&mut ws.h, h);
        resize(&mut ws.c, h);
        resize(&mut ws.latent, dirs * h);
        resize(&mut ws.seq_a, w * dirs * h);
        resize(&mut ws.seq_b, w * dirs * h);

        // Encoder: layer by layer; the input of layer l ≥ 1 is layer l−1's output.
        for layer in 0..cfg.n_layers {
            let (src, dst) = if layer % 2 == 0 {
                (&ws.seq_b, &mut ws.seq_a)
            } else {
                (&ws.seq_a, &mut ws.seq_b)
            };
            let input: &[f32] = if layer == 0 { window } else { src };
            let top = layer + 1 == cfg.n_layers;
            for dir in 0..dirs {
                let cell = &self.enc[layer * dirs + dir];
                input_projection::<FMA>(cell, input, w, &mut ws.xp);
                ws.h.fill(0.0);
                ws.c.fill(0.0);
                // Only the top layer's final state is needed from the top layer.
                let out = if top {
                    None
                } else {
                    Some((&mut *dst, dirs * h, dir * h))
                };
                run_cell::<FMA, WIDE>(cell, &ws.xp, w, false, dir == 1, &mut ws.h, &mut ws.c, &mut ws.ah, out);
                if top {
                    ws.latent[dir * h..(dir + 1) * h].copy_from_slice(&ws.h);
                }
            }
        }

        // Decoder: the same input at every step, so one input projection serves all.
        for layer in 0..cfg.n_layers {
            let cell = &self.dec[layer];
            let (src, dst) = if layer % 2 == 0 {
                (&ws.seq_b, &mut ws.seq_a)
            } else {
                (&ws.seq_a, &mut ws.seq_b)
            };
            if layer == 0 {
                input_projection::<FMA>(cell, &ws.latent, 1, &mut ws.xp);
            } else {
                input_projection::<FMA>(cell, src, w, &mut ws.xp);
            }
            ws.h.fill(0.0);
            ws.c.fill(0.0);
            run_cell::<FMA, WIDE>(
                cell,
                &ws.xp,
                w,
                layer == 0,
                false,
                &mut ws.h,
                &mut ws.c,
                &mut ws.ah,
                Some((dst, h, 0)),
            );
        }
        let dec_out = if cfg.n_layers % 2 == 1 { &ws.seq_a } else { &ws.seq_b };

        resize(&mut ws.out, w * d);
        self.head::<FMA>(dec_out, &mut ws.out);
    }

    /// The head on every step: `out[t] = head(dec_out[t])`.
    #[inline(always)]
    fn head<const FMA: bool>(&self, dec_out: &[f32], out: &mut [f32]) {
        let (d, h) = (self.config.d_input, self.config.d_hidden);
        for (h_t, out_t) in dec_out.chunks_exact(h).zip(out.chunks_exact_mut(d)) {
            for (j, o) in out_t.iter_mut().enumerate() {
                *o = self.head_b[j] + dot::<FMA>(h_t, &self.head_w[j * h..(j + 1) * h]);
            }
        }
    }
}

fn resize(v: &mut AlignedVec, n: usize) {
    if v.len() != n {
        v.resize(n);
    }
}

/// `xp[t] = bias + x[t] · W_ihᵀ` for `steps` rows of `x` (`[steps, d_in]`).
#[inline(always)]
fn input_projection<const FMA: bool>(cell: &FastCell, x: &[f32], steps: usize, xp: &mut [f32]) {
    let gh = cell.bias.len();
    for t in 0..steps {
        let row = &mut xp[t * gh..(t + 1) * gh];
        row.copy_from_slice(&cell.bias);
        cell.w_ih_t.gemv_acc::<FMA>(row, &x[t * cell.d_in..(t + 1) * cell.d_in]);
    }
}

/// A `[k, n]` matrix laid out for [`Packed::gemv_acc`]: the columns are cut into
/// blocks 64, 32, 8 and 1 wide, and each block's `k` rows are stored one after another,
/// so the product streams through memory in order (weights that outgrow L1 then come
/// from L2 at full prefetch speed).
#[derive(Clone, Debug)]
struct Packed {
    k: usize,
    n: usize,
    data: AlignedVec,
}

const BLOCK_WIDTHS: [usize; 4] = [64, 32, 8, 1];

impl Packed {
    /// Packs `m: [k, n]` (any strides, e.g. a transposed weight).
    fn new(m: ndarray::ArrayView2<f32>) -> Self {
        let (k, n) = m.dim();
        let mut data = Vec::with_capacity(k * n);
        let mut j0 = 0;
        for width in BLOCK_WIDTHS {
            while j0 + width <= n {
                for kk in 0..k {
                    data.extend((j0..j0 + width).map(|j| m[[kk, j]]));
                }
                j0 += width;
            }
        }
        Packed {
            k,
            n,
            data: AlignedVec::from_slice(&data),
        }
    }

    /// The `[k, n]` matrix this was packed from.
    fn unpack(&self) -> ndarray::Array2<f32> {
        let (k, n) = (self.k, self.n);
        let mut m = ndarray::Array2::zeros((k, n));
        let (mut j0, mut off) = (0, 0);
        for width in BLOCK_WIDTHS {
            while j0 + width <= n {
                for kk in 0..k {
                    for j in 0..width {
                        m[[kk, j0 + j]] = self.data[off + kk * width + j];
                    }
                }
                off += k * width;
                j0 += width;
            }
        }
        m
    }

    /// `y += x · M`.
    ///
    /// Each block's outputs stay in registers across the whole reduction, so every
    /// weight is loaded once and every output written once; 64 columns give 8
    /// independent FMA chains per step, enough to hide FMA latency.
    #[inline(always)]
    fn gemv_acc<const FMA: bool>(&self, y: &mut [f32], x: &[f32]) {
        debug_assert_eq!((x.len(), y.len()), (self.k, self.n));
        let (mut j0, mut off) = (0, 0);
        (j0, off) = self.blocks::<FMA, 64>(y, x, j0, off);
        (j0, off) = self.blocks::<FMA, 32>(y, x, j0, off);
        (j0, off) = self.blocks::<FMA, 8>(y, x, j0, off);
        self.blocks::<FMA, 1>(y, x, j0, off);
    }

    #[inline(always)]
    fn blocks<const FMA: bool, const B: usize>(
        &self,
        y: &mut [f32],
        x: &[f32],
        mut j0: usize,
        mut off: usize,
    ) -> (usize, usize) {
        let k = self.k;
        while j0 + B <= self.n {
            let mut acc: [f32; B] = y[j0..j0 + B].try_into().unwrap();
            let block = &self.data[off..off + k * B];
            for (row, &xk) in block.chunks_exact(B).zip(x) {
                let row: &[f32; B] = row.try_into().unwrap();
                for j in 0..B {
                    acc[j] = fma::<FMA>(xk, row[j], acc[j]);
                }
            }
            y[j0..j0 + B].copy_from_slice(&acc);
            j0 += B;
            off += k * B;
        }
        (j0, off)
    }
}

/// `Σ a[i] b[i]` with eight independent partial sums (one vector register), so the
/// reduction neither serialises on one accumulator nor needs fast-math.
#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] = fma::<FMA>(x[l], y[l], acc[l]);
        }
    }
    let mut sum = acc.iter().sum::<f32>();
    for (x, y) in ar.iter().zip(br) {
        sum = fma::<FMA>(*x, *y, sum);
    }
    sum
}

/// `σ` on every element; `WIDE` (the AVX-512 path only) takes the intrinsic
/// kernels of [`super::avx512`].
#[inline(always)]
fn sigmoid_all<const FMA: bool, const WIDE: bool>(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if WIDE {
        // SAFETY: WIDE is set only on the AVX-512 path.
        return unsafe { super::avx512::sigmoid_slice(xs) };
    }
    for x in xs {
        *x = sig::<FMA>(*x);
    }
}

/// `tanh` on every element, as [`sigmoid_all`].
#[inline(always)]
fn tanh_all<const FMA: bool, const WIDE: bool>(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if WIDE {
        // SAFETY: WIDE is set only on the AVX-512 path.
        return unsafe { super::avx512::tanh_slice(xs) };
    }
    for x in xs {
        *x = th::<FMA>(*x);
    }
}

#[inline(always)]
fn fma<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    super::scalar::madd::<FMA>(a, b, c)
}

/// The activations, fused on the FMA paths.
#[inline(always)]
fn sig<const FMA: bool>(x: f32) -> f32 {
    super::scalar::sigmoid_f32_on::<FMA>(x)
}

#[inline(always)]
fn th<const FMA: bool>(x: f32) -> f32 {
    super::scalar::tanh_f32_on::<FMA>(x)
}

/// Runs one cell over `steps` steps. `xp` holds the input projections (one row per
/// step, or a single row used at every step when `const_input`). When `out` is given
/// as `(buffer, row_stride, column)`, the state after step `t` is written to
/// `buffer[t * row_stride + column ..][..H]`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn run_cell<const FMA: bool, const WIDE: bool>(
    cell: &FastCell,
    xp: &[f32],
    steps: usize,
    const_input: bool,
    reverse: bool,
    h: &mut [f32],
    c: &mut [f32],
    ah: &mut [f32],
    mut out: Option<(&mut AlignedVec, usize, usize)>,
) {
    #[cfg(target_arch = "x86_64")]
    if WIDE && cell.kind == CellKind::Lstm {
        let out = out.map(|(buf, stride, col)| (&mut buf[..], stride, col));
        // SAFETY: WIDE is set only on the AVX-512 path.
        return unsafe {
            super::avx512::lstm_steps(&cell.w_hh_t.data, xp, steps, const_input, reverse, (h, c, ah), out)
        };
    }
    let hd = cell.h;
    let gh = ah.len();
    for step in 0..steps {
        let t = if reverse { steps - 1 - step } else { step };
        let x_row = if const_input {
            &xp[..gh]
        } else {
            &xp[t * gh..(t + 1) * gh]
        };
        cell_step::<FMA, WIDE>(cell, x_row, h, c, ah);
        if let Some((buf, stride, col)) = out.as_mut() {
            buf[t * *stride + *col..t * *stride + *col + hd].copy_from_slice(h);
        }
    }
}

/// One step of one cell: `ah` (`[G*H]`) is the gates' scratch, `x_row` the step's
/// input projection; `h` (and LSTM's `c`) are updated in place.
#[inline(always)]
fn cell_step<const FMA: bool, const WIDE: bool>(
    cell: &FastCell,
    x_row: &[f32],
    h: &mut [f32],
    c: &mut [f32],
    ah: &mut [f32],
) {
    let hd = cell.h;
    // Each gate block is activated by a plain loop over one slice, and the state
    // update zips slices, so every loop here vectorises.
    match cell.kind {
        CellKind::RnnTanh => {
            ah.copy_from_slice(x_row);
            cell.w_hh_t.gemv_acc::<FMA>(ah, h);
            tanh_all::<FMA, WIDE>(ah);
            h.copy_from_slice(ah);
        }
        CellKind::Lstm => {
            ah.copy_from_slice(x_row);
            cell.w_hh_t.gemv_acc::<FMA>(ah, h);
            sigmoid_all::<FMA, WIDE>(&mut ah[..2 * hd]);
            tanh_all::<FMA, WIDE>(&mut ah[2 * hd..3 * hd]);
            sigmoid_all::<FMA, WIDE>(&mut ah[3 * hd..]);
            let (i, rest) = ah.split_at(hd);
            let (f, rest) = rest.split_at(hd);
            let (g, o) = rest.split_at(hd);
            for (((cj, &ij), &fj), &gj) in c.iter_mut().zip(i).zip(f).zip(g) {
                *cj = fj * *cj + ij * gj;
            }
            for ((hj, &cj), &oj) in h.iter_mut().zip(c.iter()).zip(o) {
                *hj = oj * th::<FMA>(cj);
            }
        }
        CellKind::Gru => {
            ah.fill(0.0);
            cell.w_hh_t.gemv_acc::<FMA>(ah, h);
            let (rz, n) = ah.split_at_mut(2 * hd);
            for (a, &xv) in rz.iter_mut().zip(&x_row[..2 * hd]) {
                *a = sig::<FMA>(xv + *a);
            }
            let (r, z) = rz.split_at(hd);
            for (((nj, &xn), &rj), &bn) in n.iter_mut().zip(&x_row[2 * hd..]).zip(r).zip(&cell.b_hn) {
                *nj = th::<FMA>(xn + rj * (*nj + bn));
            }
            for ((hj, &zj), &nj) in h.iter_mut().zip(z).zip(n.iter()) {
                *hj = (1.0 - zj) * nj + zj * *hj;
            }
        }
        CellKind::GruResetBefore => {
            // r and z first; then W_hn acts on r ⊙ h.
            let (rz, n) = ah.split_at_mut(2 * hd);
            rz.fill(0.0);
            cell.w_hh_t.gemv_acc::<FMA>(rz, h);
            for (a, &xv) in rz.iter_mut().zip(&x_row[..2 * hd]) {
                *a = sig::<FMA>(xv + *a);
            }
            let (r, z) = rz.split_at(hd);
            for ((nj, &xn), &bn) in n.iter_mut().zip(&x_row[2 * hd..]).zip(&cell.b_hn) {
                *nj = xn + bn;
            }
            // `c` is unused by GRUs: it holds r ⊙ h here.
            for ((rh, &rk), &hk) in c.iter_mut().zip(r).zip(h.iter()) {
                *rh = rk * hk;
            }
            cell.w_hn_t.gemv_acc::<FMA>(n, c);
            tanh_all::<FMA, WIDE>(n);
            for ((hj, &zj), &nj) in h.iter_mut().zip(z).zip(n.iter()) {
                *hj = (1.0 - zj) * nj + zj * *hj;
            }
        }
    }
}
