//! The sequence autoencoder every stream's detector is built from, and its fast
//! single-window scorer.
//!
//! ```text
//! encoder  Rnn(d_input → H, n_layers, uni- or bidirectional) over the W steps
//! latent   z = top encoder layer's final state(s), [fwd | rev]      [B, D·H]
//! decoder  Rnn(D·H → H, n_layers, unidirectional), input z at every step, h0 = 0
//! head     Linear(H → d_input) on every decoder step → reconstruction [W, B, d_input]
//! ```
//! With `kind = Lstm`, one layer and one direction this is the reference model of
//! `anomalyd bench model` and of the PyTorch peer script in `benches/`.

use ndarray::{Array2, Array3, ArrayView3, Axis, s};
use rand::Rng;

use super::optim::clipped_step;
use super::{CellKind, Linear, Optimizer, Rnn, RnnCache, RnnConfig, Scalar, mse};

/// The shape of an autoencoder.
#[derive(Clone, Debug, PartialEq)]
pub struct AutoencoderConfig {
    /// Cell kind of encoder and decoder.
    pub kind: CellKind,
    /// Features per step (`d`).
    pub d_input: usize,
    /// Hidden units per direction (`H`).
    pub d_hidden: usize,
    /// Layers in encoder and in decoder.
    pub n_layers: usize,
    /// Whether the encoder is bidirectional (the decoder never is).
    pub bidirectional: bool,
    /// Dropout between stacked layers, training only.
    pub dropout: f64,
}

impl AutoencoderConfig {
    /// One layer, one direction, no dropout.
    pub fn new(kind: CellKind, d_input: usize, d_hidden: usize) -> Self {
        AutoencoderConfig {
            kind,
            d_input,
            d_hidden,
            n_layers: 1,
            bidirectional: false,
            dropout: 0.0,
        }
    }

    fn encoder(&self) -> RnnConfig {
        RnnConfig {
            dropout: self.dropout,
            ..RnnConfig::new(
                self.kind,
                self.d_input,
                self.d_hidden,
                self.n_layers,
                self.bidirectional,
            )
        }
    }

    fn decoder(&self) -> RnnConfig {
        let d_latent = self.encoder().d_output();
        RnnConfig {
            dropout: self.dropout,
            ..RnnConfig::new(self.kind, d_latent, self.d_hidden, self.n_layers, false)
        }
    }
}

/// Encoder, decoder and head. The same type holds gradients ([`AutoencoderGrads`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Autoencoder<T> {
    /// Shape.
    pub config: AutoencoderConfig,
    /// Reads the window.
    pub encoder: Rnn<T>,
    /// Unrolls the latent back into W steps.
    pub decoder: Rnn<T>,
    /// Maps each decoder step to the reconstructed features.
    pub head: Linear<T>,
}

/// Gradients of every parameter of an [`Autoencoder`].
pub type AutoencoderGrads<T> = Autoencoder<T>;

/// What a training forward pass keeps for the backward pass.
#[derive(Clone, Debug)]
pub struct AutoencoderCache<T> {
    enc: RnnCache<T>,
    dec: RnnCache<T>,
    /// Decoder outputs, flattened `[W·B, H]` (the head's input).
    dec_out: Array2<T>,
}

impl<T: Scalar> Autoencoder<T> {
    /// A freshly initialised model (PyTorch's default initialisation).
    pub fn new<R: Rng + ?Sized>(config: AutoencoderConfig, rng: &mut R) -> Self {
        let encoder = Rnn::new(config.encoder(), rng);
        let decoder = Rnn::new(config.decoder(), rng);
        let head = Linear::new(config.d_hidden, config.d_input, rng);
        Autoencoder {
            config,
            encoder,
            decoder,
            head,
        }
    }

    /// All zeros (the shape of a gradient).
    pub fn zeros(config: AutoencoderConfig) -> Self {
        Autoencoder {
            encoder: Rnn::zeros(config.encoder()),
            decoder: Rnn::zeros(config.decoder()),
            head: Linear::zeros(config.d_hidden, config.d_input),
            config,
        }
    }

    /// Number of scalar parameters.
    pub fn n_params(&self) -> usize {
        self.tensors().iter().map(|t| t.len()).sum()
    }

    /// Every parameter as a flat slice: encoder, decoder, head, each in PyTorch's order.
    pub fn tensors(&self) -> Vec<&[T]> {
        let mut v = self.encoder.tensors();
        v.extend(self.decoder.tensors());
        v.extend(self.head.tensors());
        v
    }

    /// Mutable flat slices in the order of [`Autoencoder::tensors`].
    pub fn tensors_mut(&mut self) -> Vec<&mut [T]> {
        let mut v = self.encoder.tensors_mut();
        v.extend(self.decoder.tensors_mut());
        v.extend(self.head.tensors_mut());
        v
    }

    /// Reconstructs a batch of windows (inference: no dropout).
    ///
    /// # Shapes
    /// `x: [W, B, d_input]` → `[W, B, d_input]`.
    pub fn forward(&self, x: ArrayView3<T>) -> Array3<T> {
        let (w, b, _) = x.dim();
        let enc = self.encoder.forward(x, None, None, None);
        let z = self.latent(&enc.h_n);
        let dec = self.decoder.forward_repeated(z.view(), w);
        let dec2 = dec
            .output
            .into_shape_with_order((w * b, self.config.d_hidden))
            .expect("contiguous");
        let y = self.head.forward(dec2.view());
        y.into_shape_with_order((w, b, self.config.d_input))
            .expect("contiguous")
    }

    /// Forward pass for training (dropout from `rng`); returns the reconstruction and
    /// the cache for [`Autoencoder::backward`]. Shapes as in [`Autoencoder::forward`].
    pub fn forward_train<R: Rng + ?Sized>(&self, x: ArrayView3<T>, rng: &mut R) -> (Array3<T>, AutoencoderCache<T>) {
        let (w, b, _) = x.dim();
        let (enc, enc_cache) = self.encoder.forward_train(x, None, None, None, rng);
        let z = self.latent(&enc.h_n);
        let (dec, dec_cache) = self.decoder.forward_train_repeated(z.view(), w, rng);
        let dec_out = dec
            .output
            .into_shape_with_order((w * b, self.config.d_hidden))
            .expect("contiguous");
        let y = self.head.forward(dec_out.view());
        let y = y
            .into_shape_with_order((w, b, self.config.d_input))
            .expect("contiguous");
        (
            y,
            AutoencoderCache {
                enc: enc_cache,
                dec: dec_cache,
                dec_out,
            },
        )
    }

    /// Gradients of every parameter given `d_recon = d loss / d reconstruction`.
    pub fn backward(&self, cache: &AutoencoderCache<T>, d_recon: ArrayView3<T>) -> AutoencoderGrads<T> {
        let (w, b, d) = d_recon.dim();
        let h = self.config.d_hidden;
        let d2 = d_recon.as_standard_layout();
        let d2 = d2.view().into_shape_with_order((w * b, d)).expect("contiguous");
        let (head, d_dec_out) = self.head.backward(cache.dec_out.view(), d2);
        let d_dec_out = d_dec_out.into_shape_with_order((w, b, h)).expect("contiguous");
        let dec = self.decoder.backward(&cache.dec, d_dec_out.view(), None, None);
        let dz = dec.x.index_axis(Axis(0), 0); // [B, D·H], already summed over the steps
        let enc_cfg = &self.encoder.config;
        let dirs = enc_cfg.n_directions();
        let mut d_h_n = Array3::zeros((enc_cfg.n_layers * dirs, b, h));
        for dir in 0..dirs {
            d_h_n
                .index_axis_mut(Axis(0), (enc_cfg.n_layers - 1) * dirs + dir)
                .assign(&dz.slice(s![.., dir * h..(dir + 1) * h]));
        }
        let d_enc_out = Array3::zeros((w, b, enc_cfg.d_output()));
        let enc = self
            .encoder
            .backward(&cache.enc, d_enc_out.view(), Some(d_h_n.view()), None);
        Autoencoder {
            config: self.config.clone(),
            encoder: Rnn {
                config: enc_cfg.clone(),
                cells: enc.cells,
            },
            decoder: Rnn {
                config: self.decoder.config.clone(),
                cells: dec.cells,
            },
            head,
        }
    }

    /// One optimisation step on a batch `x: [W, B, d_input]` with MSE loss:
    /// forward, backward, global-norm clipping (when `max_grad_norm` is given), update.
    /// Returns the loss before the update.
    pub fn train_step<R: Rng + ?Sized, O: Optimizer<T>>(
        &mut self,
        x: ArrayView3<T>,
        opt: &mut O,
        max_grad_norm: Option<T>,
        rng: &mut R,
    ) -> T {
        self.train_step_to(x, x, opt, max_grad_norm, rng)
    }

    /// As [`train_step`](Autoencoder::train_step), against `target` instead of `x`.
    pub fn train_step_to<R: Rng + ?Sized, O: Optimizer<T>>(
        &mut self,
        x: ArrayView3<T>,
        target: ArrayView3<T>,
        opt: &mut O,
        max_grad_norm: Option<T>,
        rng: &mut R,
    ) -> T {
        let (y, cache) = self.forward_train(x, rng);
        let (loss, dy) = mse(y.view().into_dyn(), target.into_dyn());
        let dy = dy.into_dimensionality().expect("3-d");
        let mut grads = self.backward(&cache, dy.view());
        clipped_step(opt, &mut self.tensors_mut(), grads.tensors_mut(), max_grad_norm);
        loss
    }

    /// The top encoder layer's final state(s), `[B, D·H]`.
    fn latent(&self, h_n: &Array3<T>) -> Array2<T> {
        let cfg = &self.encoder.config;
        let dirs = cfg.n_directions();
        let top = (cfg.n_layers - 1) * dirs;
        let parts: Vec<_> = (0..dirs).map(|d| h_n.index_axis(Axis(0), top + d)).collect();
        ndarray::concatenate(Axis(1), &parts).expect("same batch")
    }

    /// Converts every parameter to another scalar type.
    pub fn cast<U: Scalar>(&self) -> Autoencoder<U> {
        Autoencoder {
            config: self.config.clone(),
            encoder: self.encoder.cast(),
            decoder: self.decoder.cast(),
            head: Linear {
                weight: self.head.weight.map(|v| U::lit(v.to_f64_lossy())),
                bias: self.head.bias.map(|v| U::lit(v.to_f64_lossy())),
            },
        }
    }
}
