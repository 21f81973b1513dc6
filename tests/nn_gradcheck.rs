//! Central-difference gradient checks of every backward pass, in f64.
//!
//! Each check perturbs every parameter (and input) by ±1e-6, recomputes the loss, and
//! compares the slope with the analytic gradient. This covers what PyTorch cannot
//! (the reset-before GRU) and our own composites (autoencoder, dropout, truncation).

mod common;

use common::assert_close;
use ndarray::{Array2, Array3, s};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use anomalyd::nn::{Autoencoder, AutoencoderConfig, CellKind, DenseAutoencoder, Linear, Rnn, RnnConfig, mse};

const KINDS: [CellKind; 4] = [
    CellKind::RnnTanh,
    CellKind::Lstm,
    CellKind::Gru,
    CellKind::GruResetBefore,
];
const EPS: f64 = 1e-6;
// Central differences at eps 1e-6 carry ~1e-9 truncation and rounding error.
const RTOL: f64 = 1e-6;
const ATOL: f64 = 1e-8;

fn rand3(rng: &mut StdRng, d: (usize, usize, usize)) -> Array3<f64> {
    Array3::from_shape_fn(d, |_| rng.random::<f64>() * 2.0 - 1.0)
}

/// Numerical gradient of `f` with respect to every element of `values`.
fn numeric_grad(values: &mut [f64], mut f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    (0..values.len())
        .map(|i| {
            let orig = values[i];
            values[i] = orig + EPS;
            let up = f(values);
            values[i] = orig - EPS;
            let down = f(values);
            values[i] = orig;
            (up - down) / (2.0 * EPS)
        })
        .collect()
}

struct Case {
    cfg: RnnConfig,
    seq_len: usize,
    lengths: Option<Vec<usize>>,
}

fn check_rnn(case: &Case) {
    let name = format!("{:?}", case.cfg);
    let mut rng = StdRng::seed_from_u64(42);
    let mut rnn = Rnn::<f64>::new(case.cfg.clone(), &mut rng);
    // Larger than the default init so the nonlinearities are exercised.
    for t in rnn.tensors_mut() {
        t.iter_mut().for_each(|v| *v *= 2.0);
    }
    let batch = case.lengths.as_ref().map_or(2, |l| l.len());
    let n_states = case.cfg.n_layers * case.cfg.n_directions();
    let h = case.cfg.d_hidden;
    let x = rand3(&mut rng, (case.seq_len, batch, case.cfg.d_input));
    let h0 = rand3(&mut rng, (n_states, batch, h)) * 0.5;
    let lstm = case.cfg.kind.has_cell_state();
    let c0 = lstm.then(|| rand3(&mut rng, (n_states, batch, h)) * 0.5);
    let g = rand3(&mut rng, (case.seq_len, batch, case.cfg.d_output()));
    let gh = rand3(&mut rng, (n_states, batch, h));
    let gc = lstm.then(|| rand3(&mut rng, (n_states, batch, h)));
    let lengths = case.lengths.as_deref();

    let loss = |rnn: &Rnn<f64>, x: &Array3<f64>, h0: &Array3<f64>, c0: Option<&Array3<f64>>| {
        // A fixed dropout mask: the same seed draws the same mask every time.
        let (out, _) = rnn.forward_train(
            x.view(),
            Some(h0.view()),
            c0.map(|c| c.view()),
            lengths,
            &mut StdRng::seed_from_u64(9),
        );
        let mut l = (&out.output * &g).sum() + (&out.h_n * &gh).sum();
        if let (Some(c_n), Some(gc)) = (&out.c_n, &gc) {
            l += (c_n * gc).sum();
        }
        l
    };
    let (_, cache) = rnn.forward_train(
        x.view(),
        Some(h0.view()),
        c0.as_ref().map(|c| c.view()),
        lengths,
        &mut StdRng::seed_from_u64(9),
    );
    let grads = rnn.backward(&cache, g.view(), Some(gh.view()), gc.as_ref().map(|c| c.view()));

    let analytic: Vec<Vec<f64>> = grads
        .cells
        .iter()
        .flat_map(|c| c.tensors().map(|t| t.to_vec()))
        .collect();
    let n_tensors = analytic.len();
    for (ti, expected) in analytic.iter().enumerate().take(n_tensors) {
        let mut probe = rnn.clone();
        let mut vals = probe.tensors()[ti].to_vec();
        let num = numeric_grad(&mut vals, |v| {
            probe.tensors_mut()[ti].copy_from_slice(v);
            loss(&probe, &x, &h0, c0.as_ref())
        });
        assert_close(
            expected.iter(),
            num.iter(),
            RTOL,
            ATOL,
            &format!("{name}: param tensor {ti}"),
        );
    }
    let mut xv = x.clone();
    let num_x = numeric_grad(xv.as_slice_mut().unwrap(), |v| {
        let xx = Array3::from_shape_vec(x.dim(), v.to_vec()).unwrap();
        loss(&rnn, &xx, &h0, c0.as_ref())
    });
    assert_close(grads.x.iter(), num_x.iter(), RTOL, ATOL, &format!("{name}: x"));
    let mut hv = h0.clone();
    let num_h0 = numeric_grad(hv.as_slice_mut().unwrap(), |v| {
        let hh = Array3::from_shape_vec(h0.dim(), v.to_vec()).unwrap();
        loss(&rnn, &x, &hh, c0.as_ref())
    });
    assert_close(grads.h0.iter(), num_h0.iter(), RTOL, ATOL, &format!("{name}: h0"));
    if let Some(c0) = &c0 {
        let mut cv = c0.clone();
        let num_c0 = numeric_grad(cv.as_slice_mut().unwrap(), |v| {
            let cc = Array3::from_shape_vec(c0.dim(), v.to_vec()).unwrap();
            loss(&rnn, &x, &h0, Some(&cc))
        });
        assert_close(
            grads.c0.as_ref().unwrap().iter(),
            num_c0.iter(),
            RTOL,
            ATOL,
            &format!("{name}: c0"),
        );
    }
}

#[test]
fn every_cell_kind_single_layer() {
    for kind in KINDS {
        check_rnn(&Case {
            cfg: RnnConfig::new(kind, 3, 4, 1, false),
            seq_len: 5,
            lengths: None,
        });
    }
}

#[test]
fn every_cell_kind_stacked_bidirectional_with_padding() {
    for kind in KINDS {
        check_rnn(&Case {
            cfg: RnnConfig::new(kind, 2, 3, 2, true),
            seq_len: 4,
            lengths: Some(vec![4, 2, 1]),
        });
    }
}

#[test]
fn three_layers_with_dropout_between_them() {
    for kind in [CellKind::Lstm, CellKind::GruResetBefore] {
        let cfg = RnnConfig {
            dropout: 0.3,
            ..RnnConfig::new(kind, 2, 3, 3, false)
        };
        check_rnn(&Case {
            cfg,
            seq_len: 4,
            lengths: None,
        });
    }
}

#[test]
fn linear_layer() {
    let mut rng = StdRng::seed_from_u64(3);
    let lin = Linear::<f64>::new(4, 3, &mut rng);
    let x = Array2::from_shape_fn((5, 4), |_| rng.random::<f64>() - 0.5);
    let g = Array2::from_shape_fn((5, 3), |_| rng.random::<f64>() - 0.5);
    let loss = |l: &Linear<f64>, x: &Array2<f64>| (l.forward(x.view()) * &g).sum();
    let (grads, dx) = lin.backward(x.view(), g.view());
    for ti in 0..2 {
        let mut probe = lin.clone();
        let mut vals = probe.tensors()[ti].to_vec();
        let num = numeric_grad(&mut vals, |v| {
            probe.tensors_mut()[ti].copy_from_slice(v);
            loss(&probe, &x)
        });
        assert_close(
            grads.tensors()[ti].iter(),
            num.iter(),
            RTOL,
            ATOL,
            &format!("linear tensor {ti}"),
        );
    }
    let mut xv = x.clone();
    let num = numeric_grad(xv.as_slice_mut().unwrap(), |v| {
        loss(&lin, &Array2::from_shape_vec((5, 4), v.to_vec()).unwrap())
    });
    assert_close(dx.iter(), num.iter(), RTOL, ATOL, "linear x");
}

#[test]
fn dense_autoencoder() {
    let mut rng = StdRng::seed_from_u64(5);
    let mut net = DenseAutoencoder::<f64>::new(5, 2, &mut rng);
    // Larger than the default init so tanh's curve is exercised.
    for t in net.tensors_mut() {
        t.iter_mut().for_each(|v| *v *= 3.0);
    }
    let x = Array2::from_shape_fn((4, 5), |_| rng.random::<f64>() * 2.0 - 1.0);
    let g = Array2::from_shape_fn((4, 5), |_| rng.random::<f64>() - 0.5);
    let loss = |n: &DenseAutoencoder<f64>, x: &Array2<f64>| (n.forward(x.view()) * &g).sum();
    let (_, cache) = net.forward_train(x.view());
    let (grads, dx) = net.backward(&cache, g.view());
    for ti in 0..4 {
        let mut probe = net.clone();
        let mut vals = probe.tensors()[ti].to_vec();
        let num = numeric_grad(&mut vals, |v| {
            probe.tensors_mut()[ti].copy_from_slice(v);
            loss(&probe, &x)
        });
        assert_close(
            grads.tensors()[ti].iter(),
            num.iter(),
            RTOL,
            ATOL,
            &format!("dense tensor {ti}"),
        );
    }
    let mut xv = x.clone();
    let num = numeric_grad(xv.as_slice_mut().unwrap(), |v| {
        loss(&net, &Array2::from_shape_vec((4, 5), v.to_vec()).unwrap())
    });
    assert_close(dx.iter(), num.iter(), RTOL, ATOL, "dense x");
}

#[test]
fn mse_loss() {
    let mut rng = StdRng::seed_from_u64(4);
    let y = Array3::from_shape_fn((3, 2, 2), |_| rng.random::<f64>());
    let target = Array3::from_shape_fn((3, 2, 2), |_| rng.random::<f64>());
    let (l, grad) = mse(y.view().into_dyn(), target.view().into_dyn());
    let manual = (&y - &target).mapv(|d| d * d).mean().unwrap();
    assert!((l - manual).abs() < 1e-15);
    let mut yv = y.clone();
    let num = numeric_grad(yv.as_slice_mut().unwrap(), |v| {
        let yy = Array3::from_shape_vec(y.dim(), v.to_vec()).unwrap();
        mse(yy.view().into_dyn(), target.view().into_dyn()).0
    });
    assert_close(grad.iter(), num.iter(), RTOL, ATOL, "mse");
}

#[test]
fn autoencoder_every_kind_and_shape() {
    let shapes = [(1, false, 0.0), (2, true, 0.0), (2, false, 0.25)];
    for kind in KINDS {
        for &(n_layers, bidirectional, dropout) in &shapes {
            let cfg = AutoencoderConfig {
                kind,
                d_input: 2,
                d_hidden: 3,
                n_layers,
                bidirectional,
                dropout,
            };
            let mut rng = StdRng::seed_from_u64(5);
            let model = Autoencoder::<f64>::new(cfg.clone(), &mut rng);
            let x = rand3(&mut rng, (4, 2, 2));
            let loss = |m: &Autoencoder<f64>| {
                let (y, _) = m.forward_train(x.view(), &mut StdRng::seed_from_u64(11));
                mse(y.view().into_dyn(), x.view().into_dyn()).0
            };
            let (y, cache) = model.forward_train(x.view(), &mut StdRng::seed_from_u64(11));
            let (_, dy) = mse(y.view().into_dyn(), x.view().into_dyn());
            let grads = model.backward(&cache, dy.into_dimensionality().unwrap().view());
            let analytic: Vec<Vec<f64>> = grads.tensors().iter().map(|t| t.to_vec()).collect();
            for (ti, expected) in analytic.iter().enumerate() {
                let mut probe = model.clone();
                let mut vals = probe.tensors()[ti].to_vec();
                let num = numeric_grad(&mut vals, |v| {
                    probe.tensors_mut()[ti].copy_from_slice(v);
                    loss(&probe)
                });
                assert_close(expected.iter(), num.iter(), RTOL, ATOL, &format!("{cfg:?} tensor {ti}"));
            }
        }
    }
}

/// Truncated BPTT must equal running the chunks one after another with the carried
/// state as a constant (detached) input, and summing their gradients.
#[test]
fn truncated_bptt_equals_detached_chunks() {
    for kind in KINDS {
        let (t_len, k, batch) = (7, 3, 2);
        let full_cfg = RnnConfig::new(kind, 2, 3, 1, false);
        let mut rng = StdRng::seed_from_u64(6);
        let rnn = Rnn::<f64>::new(full_cfg.clone(), &mut rng);
        let x = rand3(&mut rng, (t_len, batch, 2));
        let g = rand3(&mut rng, (t_len, batch, 3));
        let gh = rand3(&mut rng, (1, batch, 3));
        let mut truncated = rnn.clone();
        truncated.config.tbptt = Some(k);
        let (_, cache) = truncated.forward_train(x.view(), None, None, None, &mut rng);
        let tg = truncated.backward(&cache, g.view(), Some(gh.view()), None);

        let mut sum = Rnn::<f64>::zeros(full_cfg.clone());
        let (mut h, mut c) = rnn.zero_state(batch);
        let mut start = 0;
        while start < t_len {
            let end = (start + k).min(t_len);
            let xs = x.slice(s![start..end, .., ..]);
            let (out, cache) = rnn.forward_train(xs, Some(h.view()), c.as_ref().map(|c| c.view()), None, &mut rng);
            let last = end == t_len;
            let zero = Array3::zeros(gh.dim());
            let cg = rnn.backward(
                &cache,
                g.slice(s![start..end, .., ..]),
                Some(if last { gh.view() } else { zero.view() }),
                None,
            );
            for (acc, part) in sum
                .tensors_mut()
                .into_iter()
                .zip(cg.cells.iter().flat_map(|c| c.tensors()))
            {
                acc.iter_mut().zip(part).for_each(|(a, p)| *a += p);
            }
            h = out.h_n;
            c = out.c_n;
            start = end;
        }
        let got: Vec<f64> = tg.cells.iter().flat_map(|c| c.tensors()).flatten().copied().collect();
        let want: Vec<f64> = sum.tensors().into_iter().flatten().copied().collect();
        assert_close(got.iter(), want.iter(), 1e-12, 1e-13, &format!("{kind:?} tbptt"));
        // And truncation really changes something compared with full BPTT.
        let (_, cache) = rnn.forward_train(x.view(), None, None, None, &mut rng);
        let fg = rnn.backward(&cache, g.view(), Some(gh.view()), None);
        let full: Vec<f64> = fg.cells.iter().flat_map(|c| c.tensors()).flatten().copied().collect();
        assert!(
            full.iter().zip(&got).any(|(a, b)| (a - b).abs() > 1e-6),
            "{kind:?}: truncation had no effect"
        );
    }
}
