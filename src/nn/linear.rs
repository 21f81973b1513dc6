//! A fully connected layer, `y = x Wᵀ + b`, with PyTorch's `nn.Linear` layout.

use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand::Rng;

use super::{Scalar, init, matmul};

/// Weights of a linear layer. The same type holds its gradients.
///
/// # Shapes
/// `weight: [d_out, d_in]`, `bias: [d_out]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear<T> {
    /// `[d_out, d_in]`.
    pub weight: Array2<T>,
    /// `[d_out]`.
    pub bias: Array1<T>,
}

impl<T: Scalar> Linear<T> {
    /// PyTorch's default initialisation: U(−1/√d_in, 1/√d_in) for weight and bias.
    pub fn new<R: Rng + ?Sized>(d_in: usize, d_out: usize, rng: &mut R) -> Self {
        let mut l = Self::zeros(d_in, d_out);
        let bound = 1.0 / (d_in as f64).sqrt();
        for t in l.tensors_mut() {
            init::fill_uniform(t, bound, rng);
        }
        l
    }

    /// All zeros (the shape of a gradient).
    pub fn zeros(d_in: usize, d_out: usize) -> Self {
        Linear {
            weight: Array2::zeros((d_out, d_in)),
            bias: Array1::zeros(d_out),
        }
    }

    /// ```text
    /// y = x Wᵀ + b
    /// ```
    /// # Shapes
    /// `x: [n, d_in]` → `[n, d_out]`.
    /// # Panics
    /// If `x` has the wrong width.
    pub fn forward(&self, x: ArrayView2<T>) -> Array2<T> {
        let mut y = Array2::zeros((x.nrows(), self.weight.nrows()));
        matmul(y.view_mut(), x, self.weight.t(), false);
        y += &self.bias;
        y
    }

    /// Gradients given the layer input `x` and `dy = d loss / d y`: returns
    /// `(d weight and d bias, d x)`.
    ///
    /// ```text
    /// dW = dyᵀ x,   db = Σ_rows dy,   dx = dy W
    /// ```
    /// # Shapes
    /// `x: [n, d_in]`, `dy: [n, d_out]`; `dx: [n, d_in]`.
    pub fn backward(&self, x: ArrayView2<T>, dy: ArrayView2<T>) -> (Linear<T>, Array2<T>) {
        let mut g = Self::zeros(self.weight.ncols(), self.weight.nrows());
        matmul(g.weight.view_mut(), dy.t(), x, false);
        g.bias = dy.sum_axis(Axis(0));
        let mut dx = Array2::zeros(x.dim());
        matmul(dx.view_mut(), dy, self.weight.view(), false);
        (g, dx)
    }

    /// Flat slices in PyTorch's order (weight, bias).
    pub fn tensors(&self) -> [&[T]; 2] {
        [
            self.weight.as_slice().expect("contiguous"),
            self.bias.as_slice().expect("contiguous"),
        ]
    }

    /// Mutable flat slices in PyTorch's order.
    pub fn tensors_mut(&mut self) -> [&mut [T]; 2] {
        [
            self.weight.as_slice_mut().expect("contiguous"),
            self.bias.as_slice_mut().expect("contiguous"),
        ]
    }
}
