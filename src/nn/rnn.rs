//! Recurrent layers over whole sequences: stacked, optionally bidirectional, with
//! variable lengths, and backpropagation through time (full or truncated).
//!
//! Layout is PyTorch's `batch_first = false`: `x: [seq_len, batch, d_input]`. States
//! are `[n_layers * n_directions, batch, d_hidden]`, index `layer * n_directions + dir`.
//! Sequence `b` is valid for `t < lengths[b]`: a padded step keeps the old state,
//! writes 0 to the output and gets a zero gradient, and the reverse direction starts at
//! each sequence's own last step — the semantics of PyTorch's packed sequences.

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, ArrayViewMut2, Axis, s};
use rand::Rng;

use super::{CellKind, CellParams, Scalar, matmul};

/// The shape and options of a recurrent stack.
#[derive(Clone, Debug, PartialEq)]
pub struct RnnConfig {
    /// Cell kind of every layer.
    pub kind: CellKind,
    /// Features per input step.
    pub d_input: usize,
    /// Hidden units per direction.
    pub d_hidden: usize,
    /// Stacked layers (≥ 1).
    pub n_layers: usize,
    /// Whether each layer also reads the sequence backwards.
    pub bidirectional: bool,
    /// Dropout probability on the input of layers ≥ 1, in training only.
    pub dropout: f64,
    /// Truncated BPTT: gradients cross at most this many steps of recurrence
    /// (the sequence is cut into chunks of this length, as when detaching the state
    /// every k steps). `None` is full BPTT.
    pub tbptt: Option<usize>,
}

impl RnnConfig {
    /// A config with no dropout and full BPTT.
    pub fn new(kind: CellKind, d_input: usize, d_hidden: usize, n_layers: usize, bidirectional: bool) -> Self {
        RnnConfig {
            kind,
            d_input,
            d_hidden,
            n_layers,
            bidirectional,
            dropout: 0.0,
            tbptt: None,
        }
    }

    /// 1 or 2.
    pub fn n_directions(&self) -> usize {
        if self.bidirectional { 2 } else { 1 }
    }

    /// Input width of `layer`.
    pub fn layer_d_in(&self, layer: usize) -> usize {
        if layer == 0 {
            self.d_input
        } else {
            self.n_directions() * self.d_hidden
        }
    }

    /// Width of each output step: `n_directions * d_hidden`.
    pub fn d_output(&self) -> usize {
        self.n_directions() * self.d_hidden
    }
}

/// A recurrent stack: its config and one [`CellParams`] per layer and direction.
#[derive(Clone, Debug, PartialEq)]
pub struct Rnn<T> {
    /// Shape and options.
    pub config: RnnConfig,
    /// `cells[layer * n_directions + dir]`.
    pub cells: Vec<CellParams<T>>,
}

/// Result of a forward pass.
#[derive(Clone, Debug)]
pub struct RnnOutput<T> {
    /// Top layer's output at every step: `[seq_len, batch, n_directions * d_hidden]`;
    /// exactly 0 at padded steps.
    pub output: Array3<T>,
    /// Final hidden states of every layer and direction: `[n_layers * n_dirs, batch, d_hidden]`.
    pub h_n: Array3<T>,
    /// Final cell states (LSTM only), shaped like `h_n`.
    pub c_n: Option<Array3<T>>,
}

/// Gradients of a backward pass.
#[derive(Clone, Debug)]
pub struct RnnGrads<T> {
    /// d loss / d parameters, laid out like [`Rnn::cells`].
    pub cells: Vec<CellParams<T>>,
    /// d loss / d x: `[seq_len, batch, d_input]` (0 at padded steps).
    pub x: Array3<T>,
    /// d loss / d h0.
    pub h0: Array3<T>,
    /// d loss / d c0 (LSTM only).
    pub c0: Option<Array3<T>>,
}

/// What a training forward pass keeps for the backward pass.
#[derive(Clone, Debug)]
pub struct RnnCache<T> {
    lengths: Vec<usize>,
    seq_len: usize,
    layers: Vec<LayerCache<T>>,
}

#[derive(Clone, Debug)]
struct LayerCache<T> {
    /// The layer's input after dropout: `[seq_len, batch, d_in]`.
    input: Array3<T>,
    /// Dropout multipliers applied to the input (0 or 1/(1−p)); `None` when no dropout.
    dropout_scale: Option<Array3<T>>,
    dirs: Vec<DirCache<T>>,
}

/// Per-step values of one direction, indexed by real time `t`.
#[derive(Clone, Debug)]
struct DirCache<T> {
    /// Post-activation gates `[T, B, G*H]` (for RnnTanh: the new h).
    gates: Array3<T>,
    /// State before the step `[T, B, H]`.
    h_prev: Array3<T>,
    /// LSTM: cell state before the step.
    c_prev: Option<Array3<T>>,
    /// LSTM: tanh of the cell state after the step.
    tanh_c: Option<Array3<T>>,
    /// Gru: `W_hn h + b_hn`; GruResetBefore: `r ⊙ h_prev`.
    extra: Option<Array3<T>>,
}

impl<T: Scalar> Rnn<T> {
    /// A stack with PyTorch's default initialisation U(−1/√H, 1/√H).
    ///
    /// # Panics
    /// If `n_layers`, `d_input` or `d_hidden` is 0, or dropout is outside [0, 1).
    pub fn new<R: Rng + ?Sized>(config: RnnConfig, rng: &mut R) -> Self {
        let cells = Self::layout(&config)
            .map(|(d_in, h)| CellParams::init_uniform(config.kind, d_in, h, rng))
            .collect();
        Rnn { config, cells }
    }

    /// A stack with every parameter 0 (the shape of a gradient).
    pub fn zeros(config: RnnConfig) -> Self {
        let cells = Self::layout(&config)
            .map(|(d_in, h)| CellParams::zeros(config.kind, d_in, h))
            .collect();
        Rnn { config, cells }
    }

    fn layout(config: &RnnConfig) -> impl Iterator<Item = (usize, usize)> + '_ {
        assert!(
            config.n_layers >= 1 && config.d_input >= 1 && config.d_hidden >= 1,
            "empty rnn: {config:?}"
        );
        assert!((0.0..1.0).contains(&config.dropout), "dropout must be in [0, 1)");
        assert!(config.tbptt != Some(0), "tbptt must be at least 1");
        let dirs = config.n_directions();
        (0..config.n_layers * dirs).map(move |i| (config.layer_d_in(i / dirs), config.d_hidden))
    }

    /// PyTorch's parameter names in `named_parameters()` order, with their tensors.
    pub fn named_params(&self) -> Vec<(String, &CellParams<T>)> {
        let dirs = self.config.n_directions();
        self.cells
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let suffix = if i % dirs == 1 { "_reverse" } else { "" };
                (format!("l{}{}", i / dirs, suffix), p)
            })
            .collect()
    }

    /// Every parameter as a flat slice, in PyTorch's order.
    pub fn tensors(&self) -> Vec<&[T]> {
        self.cells.iter().flat_map(|c| c.tensors()).collect()
    }

    /// Every parameter as a mutable flat slice, in PyTorch's order.
    pub fn tensors_mut(&mut self) -> Vec<&mut [T]> {
        self.cells.iter_mut().flat_map(|c| c.tensors_mut()).collect()
    }

    /// Zero initial states for a batch: `(h0, c0)`.
    pub fn zero_state(&self, batch: usize) -> (Array3<T>, Option<Array3<T>>) {
        let n = self.cells.len();
        let h0 = Array3::zeros((n, batch, self.config.d_hidden));
        let c0 = self.config.kind.has_cell_state().then(|| h0.clone());
        (h0, c0)
    }

    /// Forward pass for inference (no dropout, nothing kept for backward).
    ///
    /// # Shapes
    /// `x: [seq_len, batch, d_input]`; `h0`, `c0`: `[n_layers * n_dirs, batch, d_hidden]`
    /// (zeros when `None`; `c0` only for LSTM); `lengths: [batch]`, each ≤ seq_len.
    ///
    /// # Panics
    /// On shape mismatches or a length above `seq_len`.
    pub fn forward(
        &self,
        x: ArrayView3<T>,
        h0: Option<ArrayView3<T>>,
        c0: Option<ArrayView3<T>>,
        lengths: Option<&[usize]>,
    ) -> RnnOutput<T> {
        self.run(x, h0, c0, lengths, None, None::<&mut rand::rngs::StdRng>, false)
            .0
    }

    /// Forward pass for inference over a sequence whose every step is the same input
    /// `x: [batch, d_input]`, repeated `seq_len` times: equal to [`Rnn::forward`] on the
    /// broadcast sequence, but layer 0's input projection is computed once.
    pub fn forward_repeated(&self, x: ArrayView2<T>, seq_len: usize) -> RnnOutput<T> {
        let x3 = x.insert_axis(Axis(0));
        self.run(
            x3,
            None,
            None,
            None,
            Some(seq_len),
            None::<&mut rand::rngs::StdRng>,
            false,
        )
        .0
    }

    /// Training form of [`Rnn::forward_repeated`]; [`Rnn::backward`] then returns
    /// `x` gradients of shape `[1, batch, d_input]` (summed over the steps).
    pub fn forward_train_repeated<R: Rng + ?Sized>(
        &self,
        x: ArrayView2<T>,
        seq_len: usize,
        rng: &mut R,
    ) -> (RnnOutput<T>, RnnCache<T>) {
        let x3 = x.insert_axis(Axis(0));
        let (out, cache) = self.run(x3, None, None, None, Some(seq_len), Some(rng), true);
        (out, cache.expect("cache requested"))
    }

    /// Forward pass for training: applies dropout (with `rng`) and keeps what
    /// [`Rnn::backward`] needs. Shapes as in [`Rnn::forward`].
    pub fn forward_train<R: Rng + ?Sized>(
        &self,
        x: ArrayView3<T>,
        h0: Option<ArrayView3<T>>,
        c0: Option<ArrayView3<T>>,
        lengths: Option<&[usize]>,
        rng: &mut R,
    ) -> (RnnOutput<T>, RnnCache<T>) {
        let (out, cache) = self.run(x, h0, c0, lengths, None, Some(rng), true);
        (out, cache.expect("cache requested"))
    }

    /// `repeat = Some(seq_len)`: `x` is `[1, batch, d_input]`, the input at every step.
    #[allow(clippy::too_many_arguments)]
    fn run<R: Rng + ?Sized>(
        &self,
        x: ArrayView3<T>,
        h0: Option<ArrayView3<T>>,
        c0: Option<ArrayView3<T>>,
        lengths: Option<&[usize]>,
        repeat: Option<usize>,
        mut rng: Option<&mut R>,
        keep: bool,
    ) -> (RnnOutput<T>, Option<RnnCache<T>>) {
        let cfg = &self.config;
        let (x_len, batch, d_in) = x.dim();
        let seq_len = repeat.unwrap_or(x_len);
        debug_assert!(repeat.is_none() || x_len == 1);
        assert_eq!(
            d_in, cfg.d_input,
            "input has {d_in} features, rnn expects {}",
            cfg.d_input
        );
        let lengths: Vec<usize> = match lengths {
            Some(l) => {
                assert_eq!(l.len(), batch, "lengths has {} entries for batch {batch}", l.len());
                assert!(l.iter().all(|&n| n <= seq_len), "a length exceeds seq_len {seq_len}");
                l.to_vec()
            }
            None => vec![seq_len; batch],
        };
        let dirs = cfg.n_directions();
        let h = cfg.d_hidden;
        let n_states = cfg.n_layers * dirs;
        let (zh, zc) = self.zero_state(batch);
        let h0 = h0.map(|v| v.to_owned()).unwrap_or(zh);
        let c0 = if cfg.kind.has_cell_state() {
            Some(c0.map(|v| v.to_owned()).unwrap_or(zc.unwrap()))
        } else {
            None
        };
        assert_eq!(h0.dim(), (n_states, batch, h), "h0 has the wrong shape");
        if let Some(c0) = &c0 {
            assert_eq!(c0.dim(), (n_states, batch, h), "c0 has the wrong shape");
        }

        let mut h_n = Array3::zeros((n_states, batch, h));
        let mut c_n = c0.as_ref().map(|_| Array3::zeros((n_states, batch, h)));
        let mut layer_caches = Vec::new();
        // Owned and in standard strides (a view's `to_owned` may keep odd strides on
        // length-1 axes, which reshaping rejects).
        let mut input = Array3::from_shape_vec(x.raw_dim(), x.iter().copied().collect()).expect("same size");
        for layer in 0..cfg.n_layers {
            let mut dropout_scale = None;
            if layer > 0
                && cfg.dropout > 0.0
                && let Some(rng) = rng.as_deref_mut()
            {
                let keep_p = 1.0 - cfg.dropout;
                let scale = input.map(|_| {
                    if rng.random::<f64>() < keep_p {
                        T::lit(1.0 / keep_p)
                    } else {
                        T::zero()
                    }
                });
                input *= &scale;
                dropout_scale = Some(scale);
            }
            let mut out = Array3::zeros((seq_len, batch, dirs * h));
            let mut dir_caches = Vec::new();
            for dir in 0..dirs {
                let idx = layer * dirs + dir;
                let mut cache = keep.then(|| DirCache::new(cfg.kind, seq_len, batch, h));
                let (hn, cn) = direction_forward(
                    cfg.kind,
                    &self.cells[idx],
                    input.view(),
                    seq_len,
                    h0.index_axis(Axis(0), idx),
                    c0.as_ref().map(|c| c.index_axis(Axis(0), idx)),
                    &lengths,
                    dir == 1,
                    &mut out,
                    dir * h,
                    cache.as_mut(),
                );
                h_n.index_axis_mut(Axis(0), idx).assign(&hn);
                if let (Some(c_n), Some(cn)) = (c_n.as_mut(), cn) {
                    c_n.index_axis_mut(Axis(0), idx).assign(&cn);
                }
                dir_caches.extend(cache);
            }
            if keep {
                layer_caches.push(LayerCache {
                    input,
                    dropout_scale,
                    dirs: dir_caches,
                });
            }
            input = out;
        }
        let cache = keep.then_some(RnnCache {
            lengths,
            seq_len,
            layers: layer_caches,
        });
        (
            RnnOutput {
                output: input,
                h_n,
                c_n,
            },
            cache,
        )
    }

    /// Backpropagation through time.
    ///
    /// `d_output` is d loss / d output (`[seq_len, batch, n_dirs * d_hidden]`), `d_h_n`
    /// and `d_c_n` the gradients flowing into the final states (zeros when `None`).
    ///
    /// # Panics
    /// If the cache does not come from this stack's `forward_train`, or on shape mismatches.
    pub fn backward(
        &self,
        cache: &RnnCache<T>,
        d_output: ArrayView3<T>,
        d_h_n: Option<ArrayView3<T>>,
        d_c_n: Option<ArrayView3<T>>,
    ) -> RnnGrads<T> {
        let cfg = &self.config;
        let dirs = cfg.n_directions();
        let h = cfg.d_hidden;
        let (seq_len, batch, d_out) = d_output.dim();
        assert_eq!(d_out, dirs * h, "d_output has the wrong width");
        assert_eq!(seq_len, cache.seq_len, "d_output has the wrong length");
        assert_eq!(cache.layers.len(), cfg.n_layers, "cache is from another rnn");
        let n_states = cfg.n_layers * dirs;
        let zeros = Array3::<T>::zeros((n_states, batch, h));
        let d_h_n = d_h_n.map(|v| v.to_owned()).unwrap_or_else(|| zeros.clone());
        let d_c_n = if cfg.kind.has_cell_state() {
            Some(d_c_n.map(|v| v.to_owned()).unwrap_or_else(|| zeros.clone()))
        } else {
            None
        };

        let mut grads = Rnn::zeros(cfg.clone()).cells;
        let mut g_h0 = zeros.clone();
        let mut g_c0 = d_c_n.as_ref().map(|_| zeros.clone());
        let mut d_layer_out = d_output.to_owned();
        for layer in (0..cfg.n_layers).rev() {
            let lc = &cache.layers[layer];
            let mut d_input = Array3::zeros(lc.input.dim());
            for dir in 0..dirs {
                let idx = layer * dirs + dir;
                let r = direction_backward(
                    cfg.kind,
                    &self.cells[idx],
                    lc.input.view(),
                    seq_len,
                    &lc.dirs[dir],
                    d_layer_out.slice(s![.., .., dir * h..(dir + 1) * h]),
                    d_h_n.index_axis(Axis(0), idx),
                    d_c_n.as_ref().map(|d| d.index_axis(Axis(0), idx)),
                    &cache.lengths,
                    dir == 1,
                    cfg.tbptt,
                    &mut grads[idx],
                    &mut d_input,
                );
                g_h0.index_axis_mut(Axis(0), idx).assign(&r.0);
                if let (Some(g), Some(dc)) = (g_c0.as_mut(), r.1) {
                    g.index_axis_mut(Axis(0), idx).assign(&dc);
                }
            }
            if let Some(scale) = &lc.dropout_scale {
                d_input *= scale;
            }
            d_layer_out = d_input;
        }
        debug_assert_eq!(d_layer_out.dim().2, cfg.d_input);
        RnnGrads {
            cells: grads,
            x: d_layer_out,
            h0: g_h0,
            c0: g_c0,
        }
    }

    /// Converts every parameter to another scalar type.
    pub fn cast<U: Scalar>(&self) -> Rnn<U> {
        Rnn {
            config: self.config.clone(),
            cells: self.cells.iter().map(|c| c.cast()).collect(),
        }
    }
}

impl<T: Scalar> DirCache<T> {
    fn new(kind: CellKind, seq_len: usize, batch: usize, h: usize) -> Self {
        let z = || Array3::zeros((seq_len, batch, h));
        let lstm = kind == CellKind::Lstm;
        DirCache {
            gates: Array3::zeros((seq_len, batch, kind.n_gates() * h)),
            h_prev: z(),
            c_prev: lstm.then(z),
            tanh_c: lstm.then(z),
            extra: matches!(kind, CellKind::Gru | CellKind::GruResetBefore).then(z),
        }
    }
}

/// Runs one direction of one layer over the sequence, writing its output into
/// columns `col..col + H` of `out` and returning the final `(h, c)`.
///
/// The inner loops work on contiguous row slices (no per-element n-d indexing), so
/// they vectorise; gate activations go through [`Scalar`]'s slice kernels.
#[allow(clippy::too_many_arguments)]
fn direction_forward<T: Scalar>(
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
    let (x_len, batch, d_in) = x.dim();
    let repeated = x_len != seq_len;
    let h = p.d_hidden();
    let gh = kind.n_gates() * h;
    let d_out = out.dim().2;
    let x2 = x
        .into_shape_with_order((x_len * batch, d_in))
        .expect("layer input is contiguous");

    // Input projections for every step in one product, with the biases that can be
    // folded in: all of b_hh except GRU's n block, which sits inside the reset product.
    let mut xp = Array2::<T>::zeros((x_len * batch, gh)); // [T*B, G*H]
    matmul(xp.view_mut(), x2, p.w_ih.t(), false);
    let mut bias = &p.b_ih + &p.b_hh;
    let is_gru = matches!(kind, CellKind::Gru | CellKind::GruResetBefore);
    if is_gru {
        bias.slice_mut(s![2 * h..]).assign(&p.b_ih.slice(s![2 * h..]));
    }
    xp += &bias;
    let xp = xp.as_slice().expect("contiguous");
    let b_hn: Vec<T> = if is_gru {
        p.b_hh.slice(s![2 * h..]).to_vec()
    } else {
        Vec::new()
    };

    let mut hcur = h0.to_owned(); // [B, H]
    let mut ccur = c0.map(|c| c.to_owned()).unwrap_or_else(|| Array2::zeros((0, h)));
    let mut ah = Array2::<T>::zeros((batch, gh)); // [B, G*H] hidden-side pre-activations
    let mut gates = vec![T::zero(); batch * gh]; // post-activation gates of this step
    let mut extra = vec![T::zero(); batch * h]; // Gru: W_hn h + b_hn; GruResetBefore: r ⊙ h
    let mut tanh_c = vec![T::zero(); batch * h];
    let w_hh_rz = p.w_hh.slice(s![..(2 * h).min(gh), ..]);
    let w_hn = p.w_hh.slice(s![(2 * h).min(gh).., ..]);
    let one = T::one();

    for step in 0..seq_len {
        let t = if reverse { seq_len - 1 - step } else { step };
        if let Some(c) = cache.as_deref_mut() {
            c.h_prev.index_axis_mut(Axis(0), t).assign(&hcur);
            if let Some(cp) = c.c_prev.as_mut() {
                cp.index_axis_mut(Axis(0), t).assign(&ccur);
            }
        }
        let tx = if repeated { 0 } else { t };
        let xp_t = &xp[tx * batch * gh..(tx + 1) * batch * gh];
        match kind {
            CellKind::GruResetBefore => matmul(ah.slice_mut(s![.., ..2 * h]), hcur.view(), w_hh_rz.t(), false),
            _ => matmul(ah.view_mut(), hcur.view(), p.w_hh.t(), false),
        }
        let ah_s = ah.as_slice_mut().expect("contiguous");
        let hs = hcur.as_slice_mut().expect("contiguous");
        let cs = ccur.as_slice_mut().expect("contiguous");
        if kind == CellKind::GruResetBefore {
            // r and z for every row, then W_hn (r ⊙ h) as one product.
            for b in 0..batch {
                let g = &mut gates[b * gh..(b + 1) * gh];
                add_into(
                    &mut g[..2 * h],
                    &xp_t[b * gh..b * gh + 2 * h],
                    &ah_s[b * gh..b * gh + 2 * h],
                );
                T::sigmoid_inplace(&mut g[..2 * h]);
                mul_into(&mut extra[b * h..(b + 1) * h], &g[..h], &hs[b * h..(b + 1) * h]);
            }
            let rh = ndarray::ArrayView2::from_shape((batch, h), &extra[..]).expect("shape");
            matmul(ah.slice_mut(s![.., 2 * h..]), rh, w_hn.t(), false);
        }
        let ah_s = ah.as_slice().expect("contiguous");
        for b in 0..batch {
            let valid = t < lengths[b];
            let g = &mut gates[b * gh..(b + 1) * gh];
            let xr = &xp_t[b * gh..(b + 1) * gh];
            let ar = &ah_s[b * gh..(b + 1) * gh];
            let hr = &mut hs[b * h..(b + 1) * h];
            match kind {
                CellKind::RnnTanh => {
                    add_into(g, xr, ar);
                    T::tanh_inplace(g);
                    if valid {
                        hr.copy_from_slice(g);
                    }
                }
                CellKind::Lstm => {
                    add_into(g, xr, ar);
                    T::sigmoid_inplace(&mut g[..2 * h]);
                    T::tanh_inplace(&mut g[2 * h..3 * h]);
                    T::sigmoid_inplace(&mut g[3 * h..]);
                    if valid {
                        let (i, rest) = g.split_at(h);
                        let (f, rest) = rest.split_at(h);
                        let (gg, o) = rest.split_at(h);
                        let cr = &mut cs[b * h..(b + 1) * h];
                        let tc = &mut tanh_c[b * h..(b + 1) * h];
                        for j in 0..h {
                            cr[j] = f[j] * cr[j] + i[j] * gg[j];
                        }
                        tc.copy_from_slice(cr);
                        T::tanh_inplace(tc);
                        mul_into(hr, o, tc);
                    }
                }
                CellKind::Gru => {
                    add_into(&mut g[..2 * h], &xr[..2 * h], &ar[..2 * h]);
                    T::sigmoid_inplace(&mut g[..2 * h]);
                    let (rz, n) = g.split_at_mut(2 * h);
                    let hn = &mut extra[b * h..(b + 1) * h];
                    add_into(hn, &ar[2 * h..], &b_hn);
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
            // Padded rows keep their state and output 0.
            let o = &mut out.as_slice_mut().expect("contiguous")[(t * batch + b) * d_out + col..][..h];
            if valid {
                o.copy_from_slice(hr);
            } else {
                o.fill(T::zero());
            }
        }
        if let Some(c) = cache.as_deref_mut() {
            let g3 = c.gates.as_slice_mut().expect("contiguous");
            g3[t * batch * gh..(t + 1) * batch * gh].copy_from_slice(&gates);
            if let Some(tc) = c.tanh_c.as_mut() {
                tc.as_slice_mut().expect("contiguous")[t * batch * h..(t + 1) * batch * h].copy_from_slice(&tanh_c);
            }
            if let Some(e) = c.extra.as_mut() {
                e.as_slice_mut().expect("contiguous")[t * batch * h..(t + 1) * batch * h].copy_from_slice(&extra);
            }
        }
    }
    (hcur, c0.map(|_| ccur))
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

/// Backward through one direction of one layer. Accumulates parameter gradients into
/// `g` and input gradients into `d_input`; returns `(d h0, d c0)`.
///
/// ```text
/// LSTM   dc̃ = dc + dh⊙o⊙(1−tanh²c)   di = dc̃⊙g  df = dc̃⊙c_prev  dg = dc̃⊙i  do = dh⊙tanh c
///        (each times its activation's derivative);  dc_prev = dc̃⊙f
/// GRU    dn = dh⊙(1−z)  dz = dh⊙(h_prev − n)  dh_prev = dh⊙z + (hidden-side products)
/// ```
#[allow(clippy::too_many_arguments)]
fn direction_backward<T: Scalar>(
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
    let (x_len, batch, d_in) = x.dim();
    let h = p.d_hidden();
    let gh = kind.n_gates() * h;
    let one = T::one();
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
    let w_hh_rz = p.w_hh.slice(s![..(2 * h).min(gh), ..]);
    let w_hn = p.w_hh.slice(s![(2 * h).min(gh).., ..]);
    let gates_all = cache.gates.as_slice().expect("contiguous");
    let hp_all = cache.h_prev.as_slice().expect("contiguous");
    let tc_all = cache
        .tanh_c
        .as_ref()
        .map(|a| a.as_slice().expect("contiguous"))
        .unwrap_or(&[]);
    let cp_all = cache
        .c_prev
        .as_ref()
        .map(|a| a.as_slice().expect("contiguous"))
        .unwrap_or(&[]);
    let ex_all = cache
        .extra
        .as_ref()
        .map(|a| a.as_slice().expect("contiguous"))
        .unwrap_or(&[]);

    for step in (0..seq_len).rev() {
        let t = if reverse { seq_len - 1 - step } else { step };
        let rows = t * batch..(t + 1) * batch;
        {
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
                let r0 = (t * batch + b) * gh;
                let gr = &gates_all[r0..r0 + gh];
                let da = &mut da_s[r0..r0 + gh];
                let s0 = (t * batch + b) * h;
                match kind {
                    CellKind::RnnTanh => {
                        for j in 0..h {
                            da[j] = dhr[j] * (one - gr[j] * gr[j]);
                        }
                        dhp.fill(T::zero());
                    }
                    CellKind::Lstm => {
                        let (i, f, gg, o) = (&gr[..h], &gr[h..2 * h], &gr[2 * h..3 * h], &gr[3 * h..]);
                        let tc = &tc_all[s0..s0 + h];
                        let cp = &cp_all[s0..s0 + h];
                        let dcr = &mut dc_s[b * h..(b + 1) * h];
                        let (di, rest) = da.split_at_mut(h);
                        let (df, rest) = rest.split_at_mut(h);
                        let (dg, d_o) = rest.split_at_mut(h);
                        for j in 0..h {
                            let dct = dcr[j] + dhr[j] * o[j] * (one - tc[j] * tc[j]);
                            di[j] = dct * gg[j] * i[j] * (one - i[j]);
                            df[j] = dct * cp[j] * f[j] * (one - f[j]);
                            dg[j] = dct * i[j] * (one - gg[j] * gg[j]);
                            d_o[j] = dhr[j] * tc[j] * o[j] * (one - o[j]);
                            dcr[j] = dct * f[j];
                        }
                        dhp.fill(T::zero());
                    }
                    CellKind::Gru | CellKind::GruResetBefore => {
                        let (r, z, n) = (&gr[..h], &gr[h..2 * h], &gr[2 * h..]);
                        let hp = &hp_all[s0..s0 + h];
                        let ex = &ex_all[s0..s0 + h];
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
        }
        let dah = if is_gru {
            dah_all.slice(s![rows.clone(), ..])
        } else {
            da_all.slice(s![rows.clone(), ..])
        };
        match kind {
            CellKind::GruResetBefore => {
                // d(r⊙h) = dn_pre · W_hn, then through r and h.
                matmul(d_rh.view_mut(), dah.slice(s![.., 2 * h..]), w_hn, false);
                let da_s = da_all.as_slice_mut().expect("contiguous");
                let dah_s = dah_all.as_slice_mut().expect("contiguous");
                let drh = d_rh.as_slice().expect("contiguous");
                let dhp_s = dh_prev.as_slice_mut().expect("contiguous");
                for b in 0..batch {
                    if t >= lengths[b] {
                        continue;
                    }
                    let (r0, s0) = ((t * batch + b) * gh, (t * batch + b) * h);
                    let r = &gates_all[r0..r0 + h];
                    let hp = &hp_all[s0..s0 + h];
                    let drh = &drh[b * h..(b + 1) * h];
                    let dhp = &mut dhp_s[b * h..(b + 1) * h];
                    for j in 0..h {
                        let dr_pre = drh[j] * hp[j] * r[j] * (one - r[j]);
                        da_s[r0 + j] = dr_pre;
                        dah_s[r0 + j] = dr_pre;
                        dhp[j] += drh[j] * r[j];
                    }
                }
                let dah = dah_all.slice(s![rows, ..2 * h]);
                matmul(dh_prev.view_mut(), dah, w_hh_rz, true);
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

    // Parameter and input gradients for all steps at once.
    let dah_all = if is_gru { dah_all.view() } else { da_all.view() };
    g.b_ih += &da_all.sum_axis(Axis(0));
    g.b_hh += &dah_all.sum_axis(Axis(0));
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
        da_all.view()
    } else {
        da_sum = da_all
            .view()
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
    (dh, d_cn.map(|_| dc))
}
