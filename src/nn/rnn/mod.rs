//! Recurrent layers over whole sequences: stacked, optionally bidirectional, with
//! variable lengths, and backpropagation through time (full or truncated).
//!
//! Layout is PyTorch's `batch_first = false`: `x: [seq_len, batch, d_input]`. States
//! are `[n_layers * n_directions, batch, d_hidden]`, index `layer * n_directions + dir`.
//! Sequence `b` is valid for `t < lengths[b]`: a padded step keeps the old state,
//! writes 0 to the output and gets a zero gradient, and the reverse direction starts at
//! each sequence's own last step — the semantics of PyTorch's packed sequences.

use ndarray::{Array3, ArrayView2, ArrayView3, Axis, s};
use rand::Rng;

use super::{CellKind, CellParams, Scalar};
use backward::direction_backward;
use forward::direction_forward;

mod backward;
mod forward;

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
    pub(super) gates: Array3<T>,
    /// State before the step `[T, B, H]`.
    pub(super) h_prev: Array3<T>,
    /// LSTM: cell state before the step.
    pub(super) c_prev: Option<Array3<T>>,
    /// LSTM: tanh of the cell state after the step.
    pub(super) tanh_c: Option<Array3<T>>,
    /// Gru: `W_hn h + b_hn`; GruResetBefore: `r ⊙ h_prev`.
    pub(super) extra: Option<Array3<T>>,
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
        let lengths = checked_lengths(lengths, batch, seq_len);
        let dirs = cfg.n_directions();
        let h = cfg.d_hidden;
        let n_states = cfg.n_layers * dirs;
        let (h0, c0) = self.initial_states(h0, c0, batch);
        let mut h_n = Array3::zeros((n_states, batch, h));
        let mut c_n = c0.as_ref().map(|_| Array3::zeros((n_states, batch, h)));
        let mut layer_caches = Vec::new();
        // Owned and in standard strides (a view's `to_owned` may keep odd strides on
        // length-1 axes, which reshaping rejects).
        let mut input = Array3::from_shape_vec(x.raw_dim(), x.iter().copied().collect()).expect("same size");
        for layer in 0..cfg.n_layers {
            let dropout_scale = if layer > 0 {
                self.drop_out(&mut input, rng.as_deref_mut())
            } else {
                None
            };
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

    /// The initial states `(h0, c0)` (zeros where not given), checked against
    /// `[n_layers * n_directions, batch, d_hidden]`; `c0` for LSTM only.
    fn initial_states(
        &self,
        h0: Option<ArrayView3<T>>,
        c0: Option<ArrayView3<T>>,
        batch: usize,
    ) -> (Array3<T>, Option<Array3<T>>) {
        let cfg = &self.config;
        let (h, n_states) = (cfg.d_hidden, cfg.n_layers * cfg.n_directions());
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
        (h0, c0)
    }

    /// Dropout between layers while training (with an `rng`): zeroes each input
    /// value with probability `dropout` and scales the rest by `1 / (1 − dropout)`;
    /// returns the scale applied (`None`: no dropout).
    fn drop_out<R: Rng + ?Sized>(&self, input: &mut Array3<T>, rng: Option<&mut R>) -> Option<Array3<T>> {
        let dropout = self.config.dropout;
        let rng = rng.filter(|_| dropout > 0.0)?;
        let keep_p = 1.0 - dropout;
        let scale = input.map(|_| {
            if rng.random::<f64>() < keep_p {
                T::lit(1.0 / keep_p)
            } else {
                T::zero()
            }
        });
        *input *= &scale;
        Some(scale)
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

/// Each sequence's length (all `seq_len` when not given).
///
/// # Panics
/// If there is not one length per sequence, or one exceeds `seq_len`.
fn checked_lengths(lengths: Option<&[usize]>, batch: usize, seq_len: usize) -> Vec<usize> {
    match lengths {
        Some(l) => {
            assert_eq!(l.len(), batch, "lengths has {} entries for batch {batch}", l.len());
            assert!(l.iter().all(|&n| n <= seq_len), "a length exceeds seq_len {seq_len}");
            l.to_vec()
        }
        None => vec![seq_len; batch],
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
