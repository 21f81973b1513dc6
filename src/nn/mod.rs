//! The recurrent network core: cells, sequences, layers, loss, optimisers.
//!
//! A leaf module: it depends on `ndarray`, `rand` and `gemm` only, and does no I/O,
//! logging, async or serialisation (the `storage` module turns parameters into
//! files). The same seed gives the same numbers.
//!
//! Conventions follow PyTorch so weights and results can be compared and exchanged:
//! parameter names and layouts (`weight_ih_l{k}[_reverse]: [G·H, d_in]`, gate order
//! i,f,g,o for LSTM and r,z,n for GRU, two biases), time-major sequences
//! `[seq_len, batch, features]`, and `y = x Wᵀ + b` for linear layers.
//!
//! Everything is generic over [`Scalar`]: `f32` in production, `f64` for the parity
//! tests against PyTorch's float64 reference values.

mod aligned;
mod autoencoder;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod cell;
mod dense;
pub mod init;
pub mod isa;
mod linear;
mod loss;
pub mod optim;
mod rnn;
mod scalar;
mod scorer;

pub use autoencoder::{Autoencoder, AutoencoderCache, AutoencoderConfig, AutoencoderGrads};
pub use cell::{CellKind, CellParams};
pub use dense::{DenseAutoencoder, DenseCache};
pub use linear::Linear;
pub use loss::mse;
pub use optim::{Adam, AdamParams, Optimizer, Sgd, clip_grad_norm};
pub use rnn::{Rnn, RnnCache, RnnConfig, RnnGrads, RnnOutput};
pub use scalar::{Scalar, exp_f32, matmul, sigmoid_f32, tanh_f32};
pub use scorer::{NibbleScorer, NibbleWorkspace, ScoreWorkspace, Scorer};
