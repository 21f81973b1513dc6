//! A dense autoencoder over one row at a time:
//!
//! ```text
//! h = tanh(x W₁ᵀ + b₁)      x: [n, d], h: [n, k], k < d
//! x̂ = h W₂ᵀ + b₂
//! ```
//!
//! The recurrent autoencoder compresses a whole window into one state, so what it
//! cannot rebuild is mostly each feature's own fast motion. This one compresses
//! each row on its own through `k` units: what it cannot rebuild is the part of a
//! row the other features do not explain.

use ndarray::{Array2, ArrayView2, Zip};
use rand::Rng;

use super::optim::clipped_step;
use super::{Linear, Optimizer, Scalar, mse};

/// Weights of a dense autoencoder. The same type holds its gradients.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseAutoencoder<T> {
    /// `d → k`.
    pub encoder: Linear<T>,
    /// `k → d`.
    pub decoder: Linear<T>,
}

/// What [`DenseAutoencoder::backward`] needs from the forward pass.
#[derive(Clone, Debug)]
pub struct DenseCache<T> {
    x: Array2<T>,
    h: Array2<T>,
}

impl<T: Scalar> DenseAutoencoder<T> {
    /// PyTorch's default initialisation of both layers.
    pub fn new<R: Rng + ?Sized>(d: usize, k: usize, rng: &mut R) -> Self {
        DenseAutoencoder {
            encoder: Linear::new(d, k, rng),
            decoder: Linear::new(k, d, rng),
        }
    }

    /// All zeros (the shape of a gradient).
    pub fn zeros(d: usize, k: usize) -> Self {
        DenseAutoencoder {
            encoder: Linear::zeros(d, k),
            decoder: Linear::zeros(k, d),
        }
    }

    /// Input (and output) width `d`.
    pub fn n_features(&self) -> usize {
        self.encoder.weight.ncols()
    }

    /// Bottleneck width `k`.
    pub fn n_hidden(&self) -> usize {
        self.encoder.weight.nrows()
    }

    /// Reconstructions of the rows of `x`.
    ///
    /// # Shapes
    /// `x: [n, d]` → `[n, d]`.
    pub fn forward(&self, x: ArrayView2<T>) -> Array2<T> {
        self.forward_train(x).0
    }

    /// Reconstructions and the cache for [`DenseAutoencoder::backward`].
    pub fn forward_train(&self, x: ArrayView2<T>) -> (Array2<T>, DenseCache<T>) {
        let mut h = self.encoder.forward(x);
        T::tanh_inplace(h.as_slice_mut().expect("contiguous"));
        let y = self.decoder.forward(h.view());
        (y, DenseCache { x: x.to_owned(), h })
    }

    /// Gradients given `dy = d loss / d x̂`: returns (d weights, d x).
    ///
    /// ```text
    /// dh = dy W₂,   dz = dh ⊙ (1 − h²),   dx = dz W₁
    /// ```
    pub fn backward(&self, cache: &DenseCache<T>, dy: ArrayView2<T>) -> (DenseAutoencoder<T>, Array2<T>) {
        let (decoder, mut dz) = self.decoder.backward(cache.h.view(), dy);
        Zip::from(&mut dz)
            .and(&cache.h)
            .for_each(|g, &h| *g *= T::one() - h * h);
        let (encoder, dx) = self.encoder.backward(cache.x.view(), dz.view());
        (DenseAutoencoder { encoder, decoder }, dx)
    }

    /// Flat slices: encoder weight and bias, then decoder weight and bias.
    pub fn tensors(&self) -> Vec<&[T]> {
        let mut v = self.encoder.tensors().to_vec();
        v.extend(self.decoder.tensors());
        v
    }

    /// Mutable flat slices, in the order of [`DenseAutoencoder::tensors`].
    pub fn tensors_mut(&mut self) -> Vec<&mut [T]> {
        let mut v: Vec<&mut [T]> = self.encoder.tensors_mut().into_iter().collect();
        v.extend(self.decoder.tensors_mut());
        v
    }

    /// One optimiser step on the mean squared reconstruction error of `x`, the
    /// gradient's global norm clipped to `max_grad_norm`. Returns the loss before
    /// the step.
    pub fn train_step<O: Optimizer<T>>(&mut self, x: ArrayView2<T>, opt: &mut O, max_grad_norm: Option<T>) -> T {
        let (y, cache) = self.forward_train(x);
        let (loss, dy) = mse(y.view().into_dyn(), x.into_dyn());
        let dy = dy.into_dimensionality().expect("2-d");
        let (mut grads, _) = self.backward(&cache, dy.view());
        clipped_step(opt, &mut self.tensors_mut(), grads.tensors_mut(), max_grad_norm);
        loss
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Adam, AdamParams};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// Rows that live on a line through the origin are rebuilt through one unit;
    /// a row off that line is not.
    #[test]
    fn learns_a_shared_direction_and_leaves_the_rest_as_residual() {
        let mut rng = StdRng::seed_from_u64(3);
        let rows: Vec<f64> = (0..256)
            .flat_map(|i| {
                let t = ((i * 37) % 101) as f64 / 50.0 - 1.0;
                [t, 0.5 * t, -0.8 * t]
            })
            .collect();
        let x = Array2::from_shape_vec((256, 3), rows).unwrap();
        let mut net = DenseAutoencoder::<f64>::new(3, 1, &mut rng);
        let mut opt = Adam::new(AdamParams {
            lr: 1e-2,
            ..Default::default()
        });
        let first = net.train_step(x.view(), &mut opt, None);
        let mut last = first;
        for _ in 0..2000 {
            last = net.train_step(x.view(), &mut opt, None);
        }
        assert!(last < first * 0.01, "loss {first} -> {last}");
        let off = Array2::from_shape_vec((1, 3), vec![0.0, 0.5, 0.5]).unwrap();
        let y = net.forward(off.view());
        let err: f64 = (&y - &off).mapv(|v| v * v).sum();
        assert!(err > 0.1, "a row off the line is not rebuilt: {err}");
    }
}
