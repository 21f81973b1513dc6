//! Recurrent layers over whole sequences: stacked, optionally bidirectional, with
//! variable lengths, and backpropagation through time (full or truncated).
//!
//! Layout is PyTorch's `batch_first = false`: `x: [seq_len, batch, d_input]`. States
//! are `[n_layers * n_directions, batch, d_hidden]`, index `layer * n_directions + dir`.
//! Sequence `b` is valid for `t < lengths[b]`: a padded step keeps the old state,
//! writes 0 to the output and gets a zero gradient, and the reverse direction starts at
//! each sequence's own last step — the semantics of PyTorch's packed sequences.

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, ArrayViewMut2, Axis, Zip, s};
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
    pub fn new(
        kind: CellKind,
        d_input: usize,
        d_hidden: usize,
        n_layers: usize,
        bidirectional: bool,
    ) -> Self {
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
        assert!(
            (0.0..1.0).contains(&config.dropout),
            "dropout must be in [0, 1)"
        );
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
        self.cells
            .iter_mut()
            .flat_map(|c| c.tensors_mut())
            .collect()
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
        self.run(x, h0, c0, lengths, None::<&mut rand::rngs::StdRng>, false)
            .0
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
        let (out, cache) = self.run(x, h0, c0, lengths, Some(rng), true);
        (out, cache.expect("cache requested"))
    }

    fn run<R: Rng + ?Sized>(
        &self,
        x: ArrayView3<T>,
        h0: Option<ArrayView3<T>>,
        c0: Option<ArrayView3<T>>,
        lengths: Option<&[usize]>,
        mut rng: Option<&mut R>,
        keep: bool,
    ) -> (RnnOutput<T>, Option<RnnCache<T>>) {
        let cfg = &self.config;
        let (seq_len, batch, d_in) = x.dim();
        assert_eq!(
            d_in, cfg.d_input,
            "input has {d_in} features, rnn expects {}",
            cfg.d_input
        );
        let lengths: Vec<usize> = match lengths {
            Some(l) => {
                assert_eq!(
                    l.len(),
                    batch,
                    "lengths has {} entries for batch {batch}",
                    l.len()
                );
                assert!(
                    l.iter().all(|&n| n <= seq_len),
                    "a length exceeds seq_len {seq_len}"
                );
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
        let mut input = x.as_standard_layout().into_owned();
        for layer in 0..cfg.n_layers {
            let mut dropout_scale = None;
            if layer > 0 && cfg.dropout > 0.0 {
                if let Some(rng) = rng.as_deref_mut() {
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
        assert_eq!(
            cache.layers.len(),
            cfg.n_layers,
            "cache is from another rnn"
        );
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
        debug_assert_eq!(d_layer_out.dim(), (seq_len, batch, cfg.d_input));
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
#[allow(clippy::too_many_arguments)]
fn direction_forward<T: Scalar>(
    kind: CellKind,
    p: &CellParams<T>,
    x: ArrayView3<T>,
    h0: ArrayView2<T>,
    c0: Option<ArrayView2<T>>,
    lengths: &[usize],
    reverse: bool,
    out: &mut Array3<T>,
    col: usize,
    mut cache: Option<&mut DirCache<T>>,
) -> (Array2<T>, Option<Array2<T>>) {
    let (seq_len, batch, d_in) = x.dim();
    let h = p.d_hidden();
    let gh = kind.n_gates() * h;
    let x2 = x
        .into_shape_with_order((seq_len * batch, d_in))
        .expect("layer input is contiguous");

    // Input projections for every step in one product, with the biases that can be
    // folded in: all of b_hh except GRU's n block, which sits inside the reset product.
    let mut xp = Array2::<T>::zeros((seq_len * batch, gh)); // [T*B, G*H]
    matmul(xp.view_mut(), x2, p.w_ih.t(), false);
    let mut bias = &p.b_ih + &p.b_hh;
    let is_gru = matches!(kind, CellKind::Gru | CellKind::GruResetBefore);
    if is_gru {
        bias.slice_mut(s![2 * h..])
            .assign(&p.b_ih.slice(s![2 * h..]));
    }
    xp += &bias;
    let b_hn = p.b_hh.slice(s![(2 * h).min(gh)..]); // only read for GRU

    let mut hcur = h0.to_owned(); // [B, H]
    let mut ccur = c0.map(|c| c.to_owned());
    let mut ah = Array2::<T>::zeros((batch, gh)); // [B, G*H] hidden-side pre-activations
    let mut gates = Array2::<T>::zeros((batch, gh));
    let mut rh = Array2::<T>::zeros((batch, h)); // GruResetBefore: r ⊙ h
    let mut hn_buf = Array2::<T>::zeros((batch, h)); // Gru: W_hn h + b_hn
    let mut hnew = Array2::<T>::zeros((batch, h));
    let w_hh_rz = p.w_hh.slice(s![..(2 * h).min(gh), ..]);
    let w_hn = p.w_hh.slice(s![(2 * h).min(gh).., ..]);

    for step in 0..seq_len {
        let t = if reverse { seq_len - 1 - step } else { step };
        if let Some(c) = cache.as_deref_mut() {
            c.h_prev.index_axis_mut(Axis(0), t).assign(&hcur);
            if let (Some(cp), Some(cc)) = (c.c_prev.as_mut(), ccur.as_ref()) {
                cp.index_axis_mut(Axis(0), t).assign(cc);
            }
        }
        let xp_t = xp.slice(s![t * batch..(t + 1) * batch, ..]);
        match kind {
            CellKind::GruResetBefore => matmul(
                ah.slice_mut(s![.., ..2 * h]),
                hcur.view(),
                w_hh_rz.t(),
                false,
            ),
            _ => matmul(ah.view_mut(), hcur.view(), p.w_hh.t(), false),
        }
        match kind {
            CellKind::RnnTanh | CellKind::Lstm => {
                Zip::from(&mut gates)
                    .and(&xp_t)
                    .and(&ah)
                    .for_each(|g, &a, &b| *g = a + b);
                for mut row in gates.rows_mut() {
                    let row = row.as_slice_mut().expect("contiguous");
                    if kind == CellKind::RnnTanh {
                        T::tanh_inplace(row);
                    } else {
                        T::sigmoid_inplace(&mut row[..2 * h]);
                        T::tanh_inplace(&mut row[2 * h..3 * h]);
                        T::sigmoid_inplace(&mut row[3 * h..]);
                    }
                }
            }
            CellKind::Gru => {
                // r, z from the sum; n's hidden part is kept apart for the reset product.
                for b in 0..batch {
                    let (x_row, a_row) = (xp_t.row(b), ah.row(b));
                    let mut g = gates.row_mut(b);
                    let g = g.as_slice_mut().expect("contiguous");
                    for j in 0..2 * h {
                        g[j] = x_row[j] + a_row[j];
                    }
                    T::sigmoid_inplace(&mut g[..2 * h]);
                    for j in 0..h {
                        let hn = a_row[2 * h + j] + b_hn[j];
                        hn_buf[[b, j]] = hn;
                        g[2 * h + j] = x_row[2 * h + j] + g[j] * hn;
                    }
                    T::tanh_inplace(&mut g[2 * h..]);
                }
            }
            CellKind::GruResetBefore => {
                for b in 0..batch {
                    let (x_row, a_row) = (xp_t.row(b), ah.row(b));
                    let mut g = gates.row_mut(b);
                    let g = g.as_slice_mut().expect("contiguous");
                    for j in 0..2 * h {
                        g[j] = x_row[j] + a_row[j];
                    }
                    T::sigmoid_inplace(&mut g[..2 * h]);
                    for j in 0..h {
                        rh[[b, j]] = g[j] * hcur[[b, j]];
                    }
                }
                matmul(ah.slice_mut(s![.., 2 * h..]), rh.view(), w_hn.t(), false);
                for b in 0..batch {
                    for j in 0..h {
                        gates[[b, 2 * h + j]] = xp_t[[b, 2 * h + j]] + ah[[b, 2 * h + j]] + b_hn[j];
                    }
                    let mut g = gates.row_mut(b);
                    T::tanh_inplace(&mut g.as_slice_mut().expect("contiguous")[2 * h..]);
                }
            }
        }

        // State update; padded rows keep their state and output 0.
        for b in 0..batch {
            let valid = t < lengths[b];
            let g = gates.row(b);
            let mut o = out.slice_mut(s![t, b, col..col + h]);
            if !valid {
                o.fill(T::zero());
                continue;
            }
            match kind {
                CellKind::RnnTanh => hnew.row_mut(b).assign(&g),
                CellKind::Lstm => {
                    let c = ccur.as_mut().expect("lstm has c");
                    for j in 0..h {
                        let cn = g[h + j] * c[[b, j]] + g[j] * g[2 * h + j];
                        c[[b, j]] = cn;
                        hnew[[b, j]] = cn; // tanh applied below, vectorised
                    }
                    let mut row = hnew.row_mut(b);
                    let row = row.as_slice_mut().expect("contiguous");
                    T::tanh_inplace(row);
                    if let Some(tc) = cache.as_deref_mut().and_then(|c| c.tanh_c.as_mut()) {
                        tc.slice_mut(s![t, b, ..])
                            .assign(&ndarray::ArrayView1::from(&*row));
                    }
                    for j in 0..h {
                        row[j] *= g[3 * h + j];
                    }
                }
                CellKind::Gru | CellKind::GruResetBefore => {
                    for j in 0..h {
                        let z = g[h + j];
                        hnew[[b, j]] = (T::one() - z) * g[2 * h + j] + z * hcur[[b, j]];
                    }
                }
            }
            hcur.row_mut(b).assign(&hnew.row(b));
            o.assign(&hnew.row(b));
        }
        if let Some(c) = cache.as_deref_mut() {
            c.gates.index_axis_mut(Axis(0), t).assign(&gates);
            match kind {
                CellKind::Gru => c
                    .extra
                    .as_mut()
                    .unwrap()
                    .index_axis_mut(Axis(0), t)
                    .assign(&hn_buf),
                CellKind::GruResetBefore => c
                    .extra
                    .as_mut()
                    .unwrap()
                    .index_axis_mut(Axis(0), t)
                    .assign(&rh),
                _ => {}
            }
        }
    }
    (hcur, ccur)
}

/// Backward through one direction of one layer. Accumulates parameter gradients into
/// `g` and input gradients into `d_input`; returns `(d h0, d c0)`.
#[allow(clippy::too_many_arguments)]
fn direction_backward<T: Scalar>(
    kind: CellKind,
    p: &CellParams<T>,
    x: ArrayView3<T>,
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
    let (seq_len, batch, d_in) = x.dim();
    let h = p.d_hidden();
    let gh = kind.n_gates() * h;
    let one = T::one();
    let mut dh = d_hn.to_owned();
    let mut dc = d_cn.map(|v| v.to_owned());
    // d pre-activation, input side and hidden side (they differ only in GRU's n block).
    let mut da_all = Array2::<T>::zeros((seq_len * batch, gh)); // [T*B, G*H]
    let mut dah_all = Array2::<T>::zeros((seq_len * batch, gh));
    let mut dh_prev = Array2::<T>::zeros((batch, h));
    let mut d_rh = Array2::<T>::zeros((batch, h));
    let w_hh_rz = p.w_hh.slice(s![..(2 * h).min(gh), ..]);
    let w_hn = p.w_hh.slice(s![(2 * h).min(gh).., ..]);

    for step in (0..seq_len).rev() {
        let t = if reverse { seq_len - 1 - step } else { step };
        let gates = cache.gates.index_axis(Axis(0), t);
        let hp = cache.h_prev.index_axis(Axis(0), t);
        let rows = t * batch..(t + 1) * batch;
        {
            let mut da = da_all.slice_mut(s![rows.clone(), ..]);
            let mut dah = dah_all.slice_mut(s![rows.clone(), ..]);
            for b in 0..batch {
                if t >= lengths[b] {
                    // Padded step: the state passed through unchanged.
                    dh_prev.row_mut(b).assign(&dh.row(b));
                    continue;
                }
                for j in 0..h {
                    dh[[b, j]] += d_out[[t, b, j]];
                }
                let gr = gates.row(b);
                match kind {
                    CellKind::RnnTanh => {
                        for j in 0..h {
                            let y = gr[j];
                            let v = dh[[b, j]] * (one - y * y);
                            da[[b, j]] = v;
                            dah[[b, j]] = v;
                            dh_prev[[b, j]] = T::zero();
                        }
                    }
                    CellKind::Lstm => {
                        let dc = dc.as_mut().expect("lstm has dc");
                        let tc = cache.tanh_c.as_ref().unwrap();
                        let cp = cache.c_prev.as_ref().unwrap();
                        for j in 0..h {
                            let (i, f, gg, o) = (gr[j], gr[h + j], gr[2 * h + j], gr[3 * h + j]);
                            let tcj = tc[[t, b, j]];
                            let dhj = dh[[b, j]];
                            let dct = dc[[b, j]] + dhj * o * (one - tcj * tcj);
                            let vals = [
                                dct * gg * i * (one - i),
                                dct * cp[[t, b, j]] * f * (one - f),
                                dct * i * (one - gg * gg),
                                dhj * tcj * o * (one - o),
                            ];
                            for (k, v) in vals.into_iter().enumerate() {
                                da[[b, k * h + j]] = v;
                                dah[[b, k * h + j]] = v;
                            }
                            dc[[b, j]] = dct * f;
                            dh_prev[[b, j]] = T::zero();
                        }
                    }
                    CellKind::Gru | CellKind::GruResetBefore => {
                        let extra = cache.extra.as_ref().unwrap();
                        for j in 0..h {
                            let (r, z, n) = (gr[j], gr[h + j], gr[2 * h + j]);
                            let dhj = dh[[b, j]];
                            let dn_pre = dhj * (one - z) * (one - n * n);
                            let dz_pre = dhj * (hp[[b, j]] - n) * z * (one - z);
                            da[[b, h + j]] = dz_pre;
                            dah[[b, h + j]] = dz_pre;
                            da[[b, 2 * h + j]] = dn_pre;
                            dh_prev[[b, j]] = dhj * z;
                            if kind == CellKind::Gru {
                                let hn = extra[[t, b, j]];
                                let dr_pre = dn_pre * hn * r * (one - r);
                                da[[b, j]] = dr_pre;
                                dah[[b, j]] = dr_pre;
                                dah[[b, 2 * h + j]] = dn_pre * r;
                            } else {
                                dah[[b, 2 * h + j]] = dn_pre;
                            }
                        }
                    }
                }
            }
        }
        let dah = dah_all.slice(s![rows.clone(), ..]);
        match kind {
            CellKind::GruResetBefore => {
                // d(r⊙h) = dn_pre · W_hn, then through r and h.
                matmul(d_rh.view_mut(), dah.slice(s![.., 2 * h..]), w_hn, false);
                for b in 0..batch {
                    if t >= lengths[b] {
                        continue;
                    }
                    for j in 0..h {
                        let r = gates[[b, j]];
                        let dr_pre = d_rh[[b, j]] * hp[[b, j]] * r * (one - r);
                        da_all[[t * batch + b, j]] = dr_pre;
                        dah_all[[t * batch + b, j]] = dr_pre;
                        dh_prev[[b, j]] += d_rh[[b, j]] * r;
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
            if let Some(dc) = dc.as_mut() {
                dc.fill(T::zero());
            }
        }
    }

    // Parameter and input gradients for all steps at once.
    let x2 = x
        .into_shape_with_order((seq_len * batch, d_in))
        .expect("contiguous");
    matmul(g.w_ih.view_mut(), da_all.t(), x2, true);
    g.b_ih += &da_all.sum_axis(Axis(0));
    g.b_hh += &dah_all.sum_axis(Axis(0));
    let hp2 = cache
        .h_prev
        .view()
        .into_shape_with_order((seq_len * batch, h))
        .expect("contiguous");
    if kind == CellKind::GruResetBefore {
        let rh2 = cache
            .extra
            .as_ref()
            .unwrap()
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
    let mut dx2: ArrayViewMut2<T> = d_input
        .view_mut()
        .into_shape_with_order((seq_len * batch, d_in))
        .expect("contiguous");
    matmul(dx2.view_mut(), da_all.view(), p.w_ih.view(), true);
    (dh, dc)
}
