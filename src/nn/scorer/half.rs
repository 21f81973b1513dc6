//! A scorer whose weights are held in half precision (IEEE binary16): a stream
//! keeps its ensemble in half the bytes, and each window widens the weights,
//! exactly, into a per-thread f32 [`Scorer`] that the kernels run on.
//!
//! A model whose parameters are already half-precision values
//! ([`Autoencoder::round_to_half`]) goes in and out unchanged: its `HalfScorer`
//! widens to its [`Autoencoder::compile`] bit for bit, and
//! [`HalfScorer::to_model`] gives it back exactly.

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::{ScoreWorkspace, Scorer};
#[cfg(target_arch = "x86_64")]
use crate::nn::isa::{self, Isa};
use crate::nn::{Autoencoder, AutoencoderConfig};

/// An ensemble member's weights in half precision.
#[derive(Clone, Debug, PartialEq)]
pub struct HalfScorer {
    config: AutoencoderConfig,
    /// Every array a [`Scorer`] stores, in [`Scorer::for_each_array_mut`]'s order.
    values: Box<[f16]>,
}

/// Per-thread scratch of [`HalfScorer::reconstruct_each`]: the widened members
/// and their workspaces, reused window after window.
#[derive(Debug, Default)]
pub struct HalfWorkspace {
    wide: Vec<Scorer>,
    wss: Vec<ScoreWorkspace>,
}

/// `v` rounded to the nearest half; beyond the largest finite half it is held
/// there, not made infinite.
fn to_half(v: f32) -> f16 {
    let max = f16::MAX.to_f32();
    f16::from_f32(v.clamp(-max, max))
}

/// `dst = src` widened (exact), on the widest path the kernels may use.
fn widen(src: &[f16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa::active().min(isa::widest()) == Isa::Avx512 {
        // SAFETY: the CPU supports the path (`widest` detected it).
        unsafe { crate::nn::avx512::widen_halves(src, dst) };
        return;
    }
    src.convert_to_f32_slice(dst);
}

impl Autoencoder<f32> {
    /// Rounds every parameter to the nearest half-precision value (held at ±65504),
    /// so the model equals what a [`HalfScorer`] of it scores with.
    pub fn round_to_half(&mut self) {
        for t in self.tensors_mut() {
            for v in t {
                *v = to_half(*v).to_f32();
            }
        }
    }
}

impl Scorer {
    /// This scorer's weights in half precision (rounded to nearest; exact when
    /// the model was [rounded](Autoencoder::round_to_half)).
    pub fn to_half(&self) -> HalfScorer {
        let mut values = Vec::with_capacity(self.n_params());
        self.clone()
            .for_each_array_mut(&mut |a| values.extend(a.iter().map(|&v| to_half(v))));
        HalfScorer {
            config: self.config.clone(),
            values: values.into_boxed_slice(),
        }
    }

    /// Each array the scorer stores, in a fixed order: the encoder's cells, the
    /// decoder's, then the head.
    fn for_each_array_mut(&mut self, f: &mut impl FnMut(&mut [f32])) {
        for cell in self.enc.iter_mut().chain(self.dec.iter_mut()) {
            cell.for_each_array_mut(f);
        }
        f(&mut self.head_w);
        f(&mut self.head_b);
    }
}

impl HalfScorer {
    /// The model's shape.
    pub fn config(&self) -> &AutoencoderConfig {
        &self.config
    }

    /// Scalar parameters of the model.
    pub fn n_params(&self) -> usize {
        self.values.len()
    }

    /// Writes the widened weights into `s`, rebuilding it first if its shape
    /// differs (the only allocation).
    pub fn widen_into(&self, s: &mut Scorer) {
        if s.config != self.config {
            *s = Autoencoder::<f32>::zeros(self.config.clone()).compile();
        }
        let mut rest: &[f16] = &self.values;
        s.for_each_array_mut(&mut |a| {
            let (now, later) = rest.split_at(a.len());
            widen(now, a);
            rest = later;
        });
        debug_assert!(rest.is_empty(), "a scorer of this shape stores every value");
        for cell in s.enc.iter_mut().chain(s.dec.iter_mut()) {
            cell.fuse_biases();
        }
    }

    /// The f32 scorer of these weights.
    pub fn to_scorer(&self) -> Scorer {
        let mut s = Autoencoder::<f32>::zeros(self.config.clone()).compile();
        self.widen_into(&mut s);
        s
    }

    /// The model of these weights (exactly the rounded model this came from).
    pub fn to_model(&self) -> Autoencoder<f32> {
        self.to_scorer().to_model()
    }

    /// [`Scorer::reconstruct_each`] for members held in half precision: each is
    /// widened into `ws` (allocating only when a member's shape is new to it).
    ///
    /// # Panics
    /// As [`Scorer::reconstruct`].
    pub fn reconstruct_each(members: &[HalfScorer], window: &[f32], ws: &mut HalfWorkspace, f: impl FnMut(&[f32])) {
        for (k, m) in members.iter().enumerate() {
            match ws.wide.get_mut(k) {
                Some(s) => m.widen_into(s),
                None => ws.wide.push(m.to_scorer()),
            }
        }
        Scorer::reconstruct_each(&ws.wide[..members.len()], window, &mut ws.wss, f);
    }
}
