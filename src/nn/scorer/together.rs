//! Windows run through single-layer, one-way LSTM scorers together: an
//! ensemble's members on one window ([`Scorer::reconstruct_each`]) or one
//! scorer on a batch of windows ([`Scorer::reconstruct_batch`]). Up to four
//! runs step in turn ([`lstm_steps_together`](super::super::avx512::lstm_steps_together)),
//! so the core overlaps their dependency chains; each run's numbers are those
//! of [`Scorer::reconstruct`] on its window alone, to the bit.

use ndarray::{Array3, ArrayView3};

use super::super::CellKind;
use super::super::isa::{self, Isa};
use super::{ScoreWorkspace, Scorer};

impl Scorer {
    /// Reconstructs one window with each of `scorers` (an ensemble's members, one
    /// workspace each in `wss`) and hands the reconstructions to `f` in order.
    ///
    /// On the AVX-512 path, members that are single-layer, one-way LSTMs of one
    /// shape (the defaults) run their steps together, four at a time; otherwise
    /// each runs alone, as [`reconstruct`](Scorer::reconstruct). The results are
    /// the same either way.
    ///
    /// # Panics
    /// As [`reconstruct`](Scorer::reconstruct).
    pub fn reconstruct_each(
        scorers: &[Scorer],
        window: &[f32],
        wss: &mut Vec<ScoreWorkspace>,
        mut f: impl FnMut(&[f32]),
    ) {
        if wss.len() < scorers.len() {
            wss.resize_with(scorers.len(), Default::default);
        }
        let isa = isa::active().min(isa::widest());
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512
            && scorers.len() >= 2
            && steps_together(&scorers[0])
            && scorers.iter().all(|s| s.config == scorers[0].config)
        {
            let d = scorers[0].config.d_input;
            assert!(
                !window.is_empty() && window.len().is_multiple_of(d),
                "window of {} values for {d} features",
                window.len()
            );
            // `wss` may hold more workspaces than there are members.
            for (group, wss) in scorers.chunks(4).zip(wss[..scorers.len()].chunks_mut(4)) {
                // A fixed array, so scoring allocates nothing.
                let pairs: [(&Scorer, &[f32]); 4] = std::array::from_fn(|k| (&group[k.min(group.len() - 1)], window));
                // SAFETY: the CPU supports the path (`widest` detected it).
                unsafe { together_avx512(&pairs[..group.len()], wss) };
                wss.iter().for_each(|ws| f(&ws.out));
            }
            return;
        }
        for (s, ws) in scorers.iter().zip(wss.iter_mut()) {
            f(s.reconstruct_on(isa, window, ws));
        }
    }

    /// Reconstructs a batch of windows `[W, B, d_input]`. On the AVX-512 path a
    /// single-layer, one-way LSTM runs four windows at a time through
    /// [`reconstruct_each`](Scorer::reconstruct_each)'s kernel, each window's
    /// numbers those of [`reconstruct`](Scorer::reconstruct) on it alone; other
    /// models and paths take the batched (matrix-matrix) forward pass.
    ///
    /// # Panics
    /// If `x`'s last axis is not `d_input` wide.
    pub fn reconstruct_batch(&self, x: ArrayView3<f32>) -> Array3<f32> {
        let (w, b, d) = x.dim();
        assert_eq!(
            d, self.config.d_input,
            "a batch of {d} features for a model of {}",
            self.config.d_input
        );
        #[cfg(target_arch = "x86_64")]
        if isa::active().min(isa::widest()) == Isa::Avx512 && steps_together(self) && w > 0 {
            let mut out = Array3::zeros((w, b, d));
            let mut wss = vec![ScoreWorkspace::default(); 4];
            let mut windows = vec![vec![0.0f32; w * d]; 4];
            for b0 in (0..b).step_by(4) {
                let n = (b - b0).min(4);
                for (k, window) in windows.iter_mut().take(n).enumerate() {
                    for (t, row) in window.chunks_exact_mut(d).enumerate() {
                        for (j, v) in row.iter_mut().enumerate() {
                            *v = x[[t, b0 + k, j]];
                        }
                    }
                }
                let pairs: [(&Scorer, &[f32]); 4] = std::array::from_fn(|k| (self, &windows[k][..]));
                // SAFETY: the CPU supports the path (`widest` detected it).
                unsafe { together_avx512(&pairs[..n], &mut wss[..n]) };
                for (k, ws) in wss.iter().take(n).enumerate() {
                    for (t, row) in ws.out.chunks_exact(d).enumerate() {
                        for (j, &v) in row.iter().enumerate() {
                            out[[t, b0 + k, j]] = v;
                        }
                    }
                }
            }
            return out;
        }
        self.to_model().forward(x)
    }
}

/// Whether a scorer's steps can run with others': a single-layer, one-way LSTM.
fn steps_together(s: &Scorer) -> bool {
    let k = &s.config;
    k.kind == CellKind::Lstm && k.n_layers == 1 && !k.bidirectional
}

/// Reconstructs each of up to four `(scorer, window)` pairs into its workspace's
/// `out`: every pair's encoder, then every decoder, step by step in turn. The
/// scorers are of one shape and [`steps_together`]; the windows of one length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
fn together_avx512(pairs: &[(&Scorer, &[f32])], wss: &mut [ScoreWorkspace]) {
    use super::super::avx512::{LstmRun, lstm_steps_together};
    use super::{input_projection, resize};
    debug_assert!(pairs.len() <= 4 && wss.len() == pairs.len());
    let cfg = &pairs[0].0.config;
    let (d, h) = (cfg.d_input, cfg.d_hidden);
    let w = pairs[0].1.len() / d;
    for (&(s, window), ws) in pairs.iter().zip(wss.iter_mut()) {
        for (v, n) in [
            (&mut ws.xp, w * 4 * h),
            (&mut ws.ah, 4 * h),
            (&mut ws.h, h),
            (&mut ws.c, h),
        ] {
            resize(v, n);
        }
        resize(&mut ws.seq_a, w * h);
        resize(&mut ws.out, w * d);
        input_projection::<true>(&s.enc[0], window, w, &mut ws.xp);
        ws.h.fill(0.0);
        ws.c.fill(0.0);
    }
    // The runs, gathered in a fixed array (scoring allocates nothing).
    fn runs<'a>(
        pairs: &[(&'a Scorer, &[f32])],
        decoder: bool,
        wss: &'a mut [ScoreWorkspace],
    ) -> [Option<LstmRun<'a>>; 4] {
        let mut slots = [None, None, None, None];
        for (slot, (&(s, _), ws)) in slots.iter_mut().zip(pairs.iter().zip(wss.iter_mut())) {
            let cell = if decoder { &s.dec[0] } else { &s.enc[0] };
            *slot = Some(LstmRun {
                w_hh: &cell.w_hh_t.data,
                xp: &ws.xp,
                h: &mut ws.h,
                c: &mut ws.c,
                ah: &mut ws.ah,
                out: decoder.then_some((&mut ws.seq_a[..], s.config.d_hidden, 0)),
            });
        }
        slots
    }
    lstm_steps_together(&mut runs(pairs, false, wss), w, false, false);
    for (&(s, _), ws) in pairs.iter().zip(wss.iter_mut()) {
        resize(&mut ws.latent, h);
        ws.latent.copy_from_slice(&ws.h);
        input_projection::<true>(&s.dec[0], &ws.latent, 1, &mut ws.xp);
        ws.h.fill(0.0);
        ws.c.fill(0.0);
    }
    lstm_steps_together(&mut runs(pairs, true, wss), w, true, false);
    for (&(s, _), ws) in pairs.iter().zip(wss.iter_mut()) {
        s.head::<true>(&ws.seq_a, &mut ws.out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Autoencoder, AutoencoderConfig};
    use rand::SeedableRng;

    #[test]
    fn workspaces_left_by_a_larger_ensemble_score_a_smaller_one_as_fresh_ones() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let cfg = AutoencoderConfig::new(CellKind::Lstm, 1, 16);
        let members: Vec<Scorer> = (0..5)
            .map(|_| Autoencoder::<f32>::new(cfg.clone(), &mut rng).compile())
            .collect();
        let window: Vec<f32> = (0..32).map(|i| (i as f32 * 0.37).sin()).collect();
        let score = |m: &[Scorer], wss: &mut Vec<ScoreWorkspace>| {
            let mut out = Vec::new();
            Scorer::reconstruct_each(m, &window, wss, |y| out.push(y.to_vec()));
            out
        };
        let mut wss = Vec::new();
        for n in [5, 3, 2, 4, 1] {
            let fresh = score(&members[..n], &mut Vec::new());
            assert_eq!(score(&members[..n], &mut wss), fresh, "{n} members after more");
            assert_eq!(fresh.len(), n);
        }
    }
}
