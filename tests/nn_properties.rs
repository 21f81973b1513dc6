//! Property tests over random small shapes: a sequence forward equals repeated single
//! steps, padded steps are inert, the fast single-window scorer equals the
//! generic batched forward pass, and a scorer held in half precision scores
//! exactly as its rounded model.

mod common;

use common::assert_close;
use ndarray::{Array3, s};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use anomalyd::nn::isa::Isa;
use anomalyd::nn::{
    Autoencoder, AutoencoderConfig, CellKind, NibbleScorer, NibbleWorkspace, Rnn, RnnConfig, ScoreWorkspace, Scorer,
};

fn kind_strategy() -> impl Strategy<Value = CellKind> {
    prop_oneof![
        Just(CellKind::RnnTanh),
        Just(CellKind::Lstm),
        Just(CellKind::Gru),
        Just(CellKind::GruResetBefore)
    ]
}

fn rand3(rng: &mut StdRng, d: (usize, usize, usize)) -> Array3<f64> {
    Array3::from_shape_fn(d, |_| rng.random::<f64>() * 2.0 - 1.0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn sequence_forward_equals_repeated_steps(
        kind in kind_strategy(), d_in in 1usize..4, h in 1usize..5, layers in 1usize..4,
        t_len in 1usize..7, batch in 1usize..4, seed in any::<u64>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let rnn = Rnn::<f64>::new(RnnConfig::new(kind, d_in, h, layers, false), &mut rng);
        let x = rand3(&mut rng, (t_len, batch, d_in));
        let whole = rnn.forward(x.view(), None, None, None);
        let (mut hs, mut cs) = rnn.zero_state(batch);
        for t in 0..t_len {
            let step = rnn.forward(x.slice(s![t..t + 1, .., ..]), Some(hs.view()), cs.as_ref().map(|c| c.view()), None);
            assert_close(step.output.iter(), whole.output.slice(s![t, .., ..]).iter(), 1e-12, 1e-14, "step output");
            hs = step.h_n;
            cs = step.c_n;
        }
        assert_close(hs.iter(), whole.h_n.iter(), 1e-12, 1e-14, "final h");
        if let (Some(c), Some(wc)) = (&cs, &whole.c_n) {
            assert_close(c.iter(), wc.iter(), 1e-12, 1e-14, "final c");
        }
    }

    #[test]
    fn repeated_input_equals_broadcast_sequence(
        kind in kind_strategy(), d_in in 1usize..4, h in 1usize..5, layers in 1usize..3, bi in any::<bool>(),
        t_len in 1usize..6, batch in 1usize..3, seed in any::<u64>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let rnn = Rnn::<f64>::new(RnnConfig::new(kind, d_in, h, layers, bi), &mut rng);
        let z = Array3::from_shape_fn((1, batch, d_in), |_| rng.random::<f64>() - 0.5);
        let z2 = z.index_axis(ndarray::Axis(0), 0);
        let seq = z.broadcast((t_len, batch, d_in)).unwrap().to_owned();
        let g = rand3(&mut rng, (t_len, batch, rnn.config.d_output()));
        let (a, ca) = rnn.forward_train(seq.view(), None, None, None, &mut rng);
        let (b, cb) = rnn.forward_train_repeated(z2, t_len, &mut rng);
        assert_close(b.output.iter(), a.output.iter(), 1e-12, 1e-14, "output");
        assert_close(b.h_n.iter(), a.h_n.iter(), 1e-12, 1e-14, "h_n");
        let ga = rnn.backward(&ca, g.view(), None, None);
        let gb = rnn.backward(&cb, g.view(), None, None);
        let pa: Vec<f64> = ga.cells.iter().flat_map(|c| c.tensors()).flatten().copied().collect();
        let pb: Vec<f64> = gb.cells.iter().flat_map(|c| c.tensors()).flatten().copied().collect();
        assert_close(pb.iter(), pa.iter(), 1e-11, 1e-13, "param grads");
        assert_close(gb.x.iter(), ga.x.sum_axis(ndarray::Axis(0)).iter(), 1e-11, 1e-13, "x grad is the sum over steps");
    }

    #[test]
    fn padded_steps_are_inert(
        kind in kind_strategy(), d_in in 1usize..4, h in 1usize..4, layers in 1usize..3, bi in any::<bool>(),
        lengths in prop::collection::vec(0usize..6, 1..4), seed in any::<u64>(),
    ) {
        let t_len = 6;
        let batch = lengths.len();
        let mut rng = StdRng::seed_from_u64(seed);
        let rnn = Rnn::<f64>::new(RnnConfig::new(kind, d_in, h, layers, bi), &mut rng);
        let x = rand3(&mut rng, (t_len, batch, d_in));
        let (h0, c0) = {
            let n = rnn.cells.len();
            (rand3(&mut rng, (n, batch, h)), kind.has_cell_state().then(|| rand3(&mut rng, (n, batch, h))))
        };
        let packed = rnn.forward(x.view(), Some(h0.view()), c0.as_ref().map(|c| c.view()), Some(&lengths));
        // Garbage in the padding changes nothing.
        let mut noisy = x.clone();
        for (b, &len) in lengths.iter().enumerate() {
            noisy.slice_mut(s![len.., b, ..]).mapv_inplace(|v| v * 7.0 + 3.0);
        }
        let again = rnn.forward(noisy.view(), Some(h0.view()), c0.as_ref().map(|c| c.view()), Some(&lengths));
        prop_assert_eq!(&packed.output, &again.output);
        prop_assert_eq!(&packed.h_n, &again.h_n);
        // Each sequence alone, unpadded, gives the same values.
        for (b, &len) in lengths.iter().enumerate() {
            let out = packed.output.slice(s![.., b, ..]);
            prop_assert!(out.slice(s![len.., ..]).iter().all(|v| *v == 0.0));
            let hb = h0.slice(s![.., b..b + 1, ..]);
            let cb = c0.as_ref().map(|c| c.slice(s![.., b..b + 1, ..]));
            if len == 0 {
                assert_close(packed.h_n.slice(s![.., b, ..]).iter(), hb.iter(), 0.0, 0.0, "empty sequence keeps h0");
                continue;
            }
            let alone = rnn.forward(x.slice(s![..len, b..b + 1, ..]), Some(hb), cb, None);
            assert_close(out.slice(s![..len, ..]).iter(), alone.output.iter(), 1e-12, 1e-14, "output");
            assert_close(packed.h_n.slice(s![.., b, ..]).iter(), alone.h_n.iter(), 1e-12, 1e-14, "h_n");
        }
    }

    #[test]
    fn fast_scorer_equals_generic_forward(
        kind in kind_strategy(), d_in in 1usize..4, h in 1usize..40, layers in 1usize..3, bi in any::<bool>(),
        w in 1usize..12, seed in any::<u64>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let cfg = AutoencoderConfig { kind, d_input: d_in, d_hidden: h, n_layers: layers, bidirectional: bi, dropout: 0.0 };
        let model = Autoencoder::<f32>::new(cfg, &mut rng);
        let x = Array3::from_shape_fn((w, 1, d_in), |_| rng.random::<f32>() * 4.0 - 2.0);
        let generic = model.forward(x.view());
        let scorer = model.compile();
        // The scorer keeps only packed weights, yet gives the model back exactly.
        prop_assert_eq!(&scorer.to_model(), &model);
        prop_assert_eq!(scorer.n_params(), model.n_params());
        let mut ws = ScoreWorkspace::default();
        let window: Vec<f32> = x.iter().copied().collect();
        let generic: Vec<f64> = generic.iter().map(|&v| v as f64).collect();
        let exact = model.cast::<f64>().forward(x.mapv(|v| v as f64).view());
        // Every kernel path this CPU has, each on its own.
        for isa in Isa::ALL.into_iter().filter(|i| i.supported()) {
            let fast: Vec<f64> = scorer.reconstruct_on(isa, &window, &mut ws).iter().map(|&v| v as f64).collect();
            assert_close(fast.iter(), generic.iter(), 1e-4, 1e-5, &format!("scorer ({})", isa.name()));
            // The f64 model agrees too: the f32 kernels are accurate, not just consistent.
            assert_close(fast.iter(), exact.iter(), 1e-4, 1e-5, &format!("scorer vs f64 ({})", isa.name()));
        }
    }

    #[test]
    fn an_ensemble_scored_together_equals_each_member_alone(
        kind in kind_strategy(), members in 1usize..7, d_in in 1usize..4, h in 1usize..40, layers in 1usize..3,
        w in 1usize..12, seed in any::<u64>(),
    ) {
        // The defaults' shape (one-way LSTMs of one layer) runs the members' steps
        // together on AVX-512; every other shape runs them one by one.
        let mut rng = StdRng::seed_from_u64(seed);
        let cfg = AutoencoderConfig { kind, d_input: d_in, d_hidden: h, n_layers: layers, bidirectional: false, dropout: 0.0 };
        let scorers: Vec<Scorer> = (0..members).map(|_| Autoencoder::<f32>::new(cfg.clone(), &mut rng).compile()).collect();
        let window: Vec<f32> = (0..w * d_in).map(|_| rng.random::<f32>() * 4.0 - 2.0).collect();
        let mut together = Vec::new();
        Scorer::reconstruct_each(&scorers, &window, &mut Vec::new(), |y| together.push(y.to_vec()));
        prop_assert_eq!(together.len(), members);
        let mut ws = ScoreWorkspace::default();
        for (s, y) in scorers.iter().zip(&together) {
            prop_assert_eq!(y.as_slice(), s.reconstruct(&window, &mut ws));
        }
    }

    #[test]
    fn a_batch_scores_each_window_as_the_model_does_and_on_avx512_as_it_alone(
        kind in kind_strategy(), batch in 1usize..11, d_in in 1usize..4, h in 1usize..70, layers in 1usize..3,
        bi in any::<bool>(), w in 1usize..12, seed in any::<u64>(),
    ) {
        // One-way LSTMs of one layer run four windows together on AVX-512 (with
        // hidden sizes 16-64 in registers); every other model and path runs the
        // batched forward pass.
        let mut rng = StdRng::seed_from_u64(seed);
        let cfg = AutoencoderConfig { kind, d_input: d_in, d_hidden: h, n_layers: layers, bidirectional: bi, dropout: 0.0 };
        let model = Autoencoder::<f32>::new(cfg, &mut rng);
        let x = Array3::from_shape_fn((w, batch, d_in), |_| rng.random::<f32>() * 4.0 - 2.0);
        let generic = model.forward(x.view());
        let scorer = model.compile();
        let mut ws = ScoreWorkspace::default();
        for isa in Isa::ALL.into_iter().filter(|i| i.supported()) {
            let got = anomalyd::nn::isa::scoped(isa, || scorer.reconstruct_batch(x.view()));
            prop_assert_eq!(got.dim(), generic.dim());
            let label = format!("batch ({})", isa.name());
            let (got64, want64): (Vec<f64>, Vec<f64>) = got.iter().zip(&generic).map(|(&a, &b)| (a as f64, b as f64)).unzip();
            assert_close(got64.iter(), want64.iter(), 1e-4, 1e-5, &label);
            if isa == Isa::Avx512 && kind == CellKind::Lstm && layers == 1 && !bi {
                for b in 0..batch {
                    let window: Vec<f32> = x.slice(s![.., b, ..]).iter().copied().collect();
                    let alone = scorer.reconstruct_on(isa, &window, &mut ws).to_vec();
                    let in_batch: Vec<f32> = got.slice(s![.., b, ..]).iter().copied().collect();
                    prop_assert_eq!(in_batch, alone, "window {} of {}", b, batch);
                }
            }
        }
    }

    #[test]
    fn a_four_bit_scorer_scores_exactly_as_its_rounded_model(
        kind in kind_strategy(), members in 1usize..5, d_in in 1usize..4, h in 1usize..40, layers in 1usize..3,
        bi in any::<bool>(), w in 1usize..12, seed in any::<u64>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let cfg = AutoencoderConfig { kind, d_input: d_in, d_hidden: h, n_layers: layers, bidirectional: bi, dropout: 0.0 };
        let models: Vec<Autoencoder<f32>> = (0..members).map(|_| Autoencoder::<f32>::new(cfg.clone(), &mut rng)).collect();
        let window: Vec<f32> = (0..w * d_in).map(|_| rng.random::<f32>() * 4.0 - 2.0).collect();
        let mut rounded_all = Vec::new();
        for model in &models {
            let mut rounded = model.clone();
            rounded.round_to_nibbles();
            // Rounding moves each weight by at most half its block's scale, which is
            // at most 1/7 of the block's (so of the tensor's) largest magnitude.
            for (a, b) in model.tensors().iter().zip(rounded.tensors()) {
                let max = a.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (&x, &y) in a.iter().zip(b) {
                    prop_assert!((x - y).abs() <= max / 7.0, "{} rounded to {} (largest {})", x, y, max);
                }
            }
            // Rounded once, a model goes through four bits unchanged.
            let bytes = rounded.compile().to_nibbles();
            prop_assert_eq!(&bytes.to_model(), &rounded);
            prop_assert_eq!(bytes.n_params(), rounded.n_params());
            prop_assert_eq!(&model.compile().to_nibbles(), &bytes, "the scorer rounds as the model does");
            rounded_all.push(rounded);
        }
        // Widened window by window, the members score bit for bit as f32 scorers of
        // the rounded models, through a workspace that last held another shape.
        let held: Vec<NibbleScorer> = rounded_all.iter().map(|m| m.compile().to_nibbles()).collect();
        let f32s: Vec<Scorer> = rounded_all.iter().map(|m| m.compile()).collect();
        let mut hws = NibbleWorkspace::default();
        let other = Autoencoder::<f32>::new(AutoencoderConfig::new(CellKind::Lstm, 2, 3), &mut rng).compile().to_nibbles();
        NibbleScorer::reconstruct_each(std::slice::from_ref(&other), &[0.5; 6], &mut hws, |_| {});
        let (mut from_bytes, mut from_f32) = (Vec::new(), Vec::new());
        NibbleScorer::reconstruct_each(&held, &window, &mut hws, |y| from_bytes.push(y.to_vec()));
        Scorer::reconstruct_each(&f32s, &window, &mut Vec::new(), |y| from_f32.push(y.to_vec()));
        prop_assert_eq!(from_bytes, from_f32);
    }
}

#[test]
fn training_reduces_reconstruction_error() {
    use anomalyd::nn::{Adam, AdamParams};
    // A sine window is learnable: 300 Adam steps must cut the loss by 5x or more.
    for kind in [CellKind::Lstm, CellKind::Gru, CellKind::RnnTanh] {
        let mut rng = StdRng::seed_from_u64(1);
        let mut model = Autoencoder::<f32>::new(AutoencoderConfig::new(kind, 1, 16), &mut rng);
        let x = Array3::from_shape_fn((16, 8, 1), |(t, b, _)| ((t as f32 + b as f32 * 2.0) * 0.4).sin());
        let mut opt = Adam::new(AdamParams {
            lr: 1e-2,
            ..Default::default()
        });
        let first = model.train_step(x.view(), &mut opt, Some(1.0), &mut rng);
        let mut last = first;
        for _ in 0..300 {
            last = model.train_step(x.view(), &mut opt, Some(1.0), &mut rng);
        }
        assert!(last < first / 5.0, "{kind:?}: loss {first} -> {last}");
    }
}
