//! One recurrent cell's parameters and kind: tanh RNN, LSTM and the two GRU forms.
//!
//! Parameters use PyTorch's names and layouts so weights move between the two
//! unchanged. Sequence-level forward and backward live in [`super::rnn`].

use ndarray::{Array1, Array2};
use rand::Rng;

use super::Scalar;

/// Which recurrent cell a layer uses.
///
/// ```text
/// RnnTanh         h' = tanh(W_ih x + b_ih + W_hh h + b_hh)
/// Lstm            i,f,o = σ(·), g = tanh(·) over W_i* x + b_i* + W_h* h + b_h*
///                 c' = f⊙c + i⊙g,   h' = o⊙tanh(c')             (gate rows i,f,g,o)
/// Gru             r,z = σ(W_i* x + b_i* + W_h* h + b_h*)
///  (reset after)  n = tanh(W_in x + b_in + r⊙(W_hn h + b_hn))    (PyTorch's form)
///                 h' = (1−z)⊙n + z⊙h                             (gate rows r,z,n)
/// GruResetBefore  as Gru but n = tanh(W_in x + b_in + W_hn (r⊙h) + b_hn)
///                 (Cho et al. 2014; Keras' reset_after=False)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CellKind {
    /// Elman RNN with tanh.
    RnnTanh,
    /// Long short-term memory.
    Lstm,
    /// Gated recurrent unit, PyTorch's "reset after" form.
    Gru,
    /// Gated recurrent unit, the "reset before" form of Cho et al. 2014.
    GruResetBefore,
}

impl CellKind {
    /// Gate blocks stacked in the weight rows (`G` in `G * d_hidden`).
    pub fn n_gates(self) -> usize {
        match self {
            CellKind::RnnTanh => 1,
            CellKind::Lstm => 4,
            CellKind::Gru | CellKind::GruResetBefore => 3,
        }
    }

    /// Whether the cell carries a memory state `c` beside `h`.
    pub fn has_cell_state(self) -> bool {
        self == CellKind::Lstm
    }

    /// The name used on the command line and in configs.
    pub fn name(self) -> &'static str {
        match self {
            CellKind::RnnTanh => "rnn",
            CellKind::Lstm => "lstm",
            CellKind::Gru => "gru",
            CellKind::GruResetBefore => "gru-reset-before",
        }
    }

    /// Parses [`CellKind::name`] (and `rnn_tanh`, PyTorch's fixture spelling).
    pub fn parse(s: &str) -> Option<CellKind> {
        match s {
            "rnn" | "rnn_tanh" => Some(CellKind::RnnTanh),
            "lstm" => Some(CellKind::Lstm),
            "gru" => Some(CellKind::Gru),
            "gru-reset-before" => Some(CellKind::GruResetBefore),
            _ => None,
        }
    }
}

/// The parameters of one cell (one layer, one direction), PyTorch layout.
///
/// # Shapes
/// `w_ih: [G * d_hidden, d_in]`, `w_hh: [G * d_hidden, d_hidden]`,
/// `b_ih, b_hh: [G * d_hidden]`. The same type holds gradients.
#[derive(Clone, Debug, PartialEq)]
pub struct CellParams<T> {
    /// Input-to-hidden weights, gate blocks stacked by rows.
    pub w_ih: Array2<T>,
    /// Hidden-to-hidden weights, gate blocks stacked by rows.
    pub w_hh: Array2<T>,
    /// Input-side bias (always added).
    pub b_ih: Array1<T>,
    /// Hidden-side bias (always added; inside the reset product for GRU's n block).
    pub b_hh: Array1<T>,
}

impl<T: Scalar> CellParams<T> {
    /// All-zero parameters (also the starting value of a gradient).
    pub fn zeros(kind: CellKind, d_in: usize, d_hidden: usize) -> Self {
        let gh = kind.n_gates() * d_hidden;
        CellParams {
            w_ih: Array2::zeros((gh, d_in)),
            w_hh: Array2::zeros((gh, d_hidden)),
            b_ih: Array1::zeros(gh),
            b_hh: Array1::zeros(gh),
        }
    }

    /// PyTorch's default initialisation: every entry ~ U(−1/√H, 1/√H).
    pub fn init_uniform<R: Rng + ?Sized>(kind: CellKind, d_in: usize, d_hidden: usize, rng: &mut R) -> Self {
        let mut p = Self::zeros(kind, d_in, d_hidden);
        let bound = 1.0 / (d_hidden as f64).sqrt();
        for t in p.tensors_mut() {
            super::init::fill_uniform(t, bound, rng);
        }
        p
    }

    /// `d_hidden` (`H`) of this cell.
    pub fn d_hidden(&self) -> usize {
        self.w_hh.ncols()
    }

    /// `d_in` of this cell.
    pub fn d_in(&self) -> usize {
        self.w_ih.ncols()
    }

    /// The four tensors as flat slices, in PyTorch's order (w_ih, w_hh, b_ih, b_hh).
    pub fn tensors(&self) -> [&[T]; 4] {
        [
            self.w_ih.as_slice().expect("owned arrays are contiguous"),
            self.w_hh.as_slice().expect("owned arrays are contiguous"),
            self.b_ih.as_slice().expect("owned arrays are contiguous"),
            self.b_hh.as_slice().expect("owned arrays are contiguous"),
        ]
    }

    /// Mutable flat slices, in the order of [`CellParams::tensors`].
    pub fn tensors_mut(&mut self) -> [&mut [T]; 4] {
        [
            self.w_ih.as_slice_mut().expect("owned arrays are contiguous"),
            self.w_hh.as_slice_mut().expect("owned arrays are contiguous"),
            self.b_ih.as_slice_mut().expect("owned arrays are contiguous"),
            self.b_hh.as_slice_mut().expect("owned arrays are contiguous"),
        ]
    }

    /// Converts every element to another scalar type.
    pub fn cast<U: Scalar>(&self) -> CellParams<U> {
        let f = |v: &T| U::lit(v.to_f64_lossy());
        CellParams {
            w_ih: self.w_ih.map(f),
            w_hh: self.w_hh.map(f),
            b_ih: self.b_ih.map(f),
            b_hh: self.b_hh.map(f),
        }
    }
}
