//! Parity with PyTorch: every fixture in tests/fixtures (copied from
//! ../shared/fixtures, float64 values from PyTorch 2.15), forward values and every
//! gradient, in f64 and in f32, within the tolerances of the fixtures' README.

mod common;

use common::{assert_close, assert_close_f32, fixture, tensor};
use ndarray::{Array3, ArrayD, Ix3};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::Value;

use anomalyd::nn::isa::{self, Isa};
use anomalyd::nn::{Adam, AdamParams, CellKind, DenseAutoencoder, Optimizer, Rnn, RnnConfig, Scalar, clip_grad_norm};

const RNN_CASES: [&str; 18] = [
    "rnn_tanh_l1_uni",
    "rnn_tanh_l2_uni",
    "rnn_tanh_l1_bi",
    "rnn_tanh_l2_bi",
    "rnn_tanh_packed_l1_uni",
    "rnn_tanh_packed_l2_bi",
    "lstm_l1_uni",
    "lstm_l2_uni",
    "lstm_l1_bi",
    "lstm_l2_bi",
    "lstm_packed_l1_uni",
    "lstm_packed_l2_bi",
    "gru_l1_uni",
    "gru_l2_uni",
    "gru_l1_bi",
    "gru_l2_bi",
    "gru_packed_l1_uni",
    "gru_packed_l2_bi",
];

fn t3<T: Scalar>(a: &ArrayD<f64>) -> Array3<T> {
    a.map(|&v| T::lit(v)).into_dimensionality::<Ix3>().expect("3-d tensor")
}

/// Builds the fixture's RNN with its parameters, in `T`.
fn build<T: Scalar>(f: &Value) -> Rnn<T> {
    let c = &f["config"];
    let kind = CellKind::parse(f["cell"].as_str().unwrap()).expect("known cell");
    let cfg = RnnConfig::new(
        kind,
        c["input_size"].as_u64().unwrap() as usize,
        c["hidden_size"].as_u64().unwrap() as usize,
        c["num_layers"].as_u64().unwrap() as usize,
        c["bidirectional"].as_bool().unwrap(),
    );
    let mut rnn = Rnn::<T>::zeros(cfg);
    let names: Vec<String> = rnn.named_params().into_iter().map(|(n, _)| n).collect();
    // Every fixture parameter must be used exactly once.
    let mut used = 0;
    for (suffix, cell) in names.iter().zip(rnn.cells.iter_mut()) {
        for (w, dst) in ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
            .iter()
            .zip(cell.tensors_mut())
        {
            let (layer, rev) = suffix
                .split_once('_')
                .map(|(l, r)| (l, format!("_{r}")))
                .unwrap_or((suffix, String::new()));
            let src = tensor(&f["params"][format!("{w}_{layer}{rev}")]);
            assert_eq!(src.len(), dst.len(), "{w}_{suffix} size");
            for (d, s) in dst.iter_mut().zip(src.iter()) {
                *d = T::lit(*s);
            }
            used += 1;
        }
    }
    assert_eq!(used, f["param_names"].as_array().unwrap().len());
    rnn
}

/// Runs forward and backward in `T` and compares against the fixture.
fn check_case<T: Scalar>(name: &str, rtol: f64, atol: f64) {
    let f = fixture(&format!("rnn/{name}.json"));
    let rnn = build::<T>(&f);
    let lengths: Vec<usize> = f["config"]["lengths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let x = t3::<T>(&tensor(&f["inputs"]["x"]));
    let h0 = t3::<T>(&tensor(&f["inputs"]["h0"]));
    let c0 = f["inputs"].get("c0").map(|v| t3::<T>(&tensor(v)));
    let (out, cache) = rnn.forward_train(
        x.view(),
        Some(h0.view()),
        c0.as_ref().map(|c| c.view()),
        Some(&lengths),
        &mut StdRng::seed_from_u64(0),
    );
    let wide = |a: &Array3<T>| a.iter().map(|v| v.to_f64_lossy()).collect::<Vec<f64>>();
    let cmp = |got: &Array3<T>, key: &str, what: &str| {
        let e = tensor(key.split('.').fold(&f, |v, k| &v[k]));
        assert_eq!(got.shape(), e.shape(), "{name}: {what} shape");
        assert_close(wide(got).iter(), e.iter(), rtol, atol, &format!("{name}: {what}"));
    };
    cmp(&out.output, "outputs.output", "output");
    cmp(&out.h_n, "outputs.h_n", "h_n");
    if let Some(c_n) = &out.c_n {
        cmp(c_n, "outputs.c_n", "c_n");
    }

    // The loss as the fixture defines it, recomputed from our forward values.
    let g = t3::<T>(&tensor(&f["loss_weights"]["G"]));
    let gh = t3::<T>(&tensor(&f["loss_weights"]["Gh"]));
    let gc = f["loss_weights"].get("Gc").map(|v| t3::<T>(&tensor(v)));
    let mut loss = (&out.output * &g).sum() + (&out.h_n * &gh).sum();
    if let (Some(c_n), Some(gc)) = (&out.c_n, &gc) {
        loss += (c_n * gc).sum();
    }
    let expected_loss = f["loss"].as_f64().unwrap();
    assert_close(
        [loss.to_f64_lossy()].iter(),
        [expected_loss].iter(),
        rtol,
        atol * 10.0,
        &format!("{name}: loss"),
    );

    let grads = rnn.backward(&cache, g.view(), Some(gh.view()), gc.as_ref().map(|c| c.view()));
    for ((suffix, _), cell) in rnn.named_params().iter().zip(&grads.cells) {
        let (layer, rev) = suffix
            .split_once('_')
            .map(|(l, r)| (l, format!("_{r}")))
            .unwrap_or((suffix, String::new()));
        for (w, got) in ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
            .iter()
            .zip(cell.tensors())
        {
            let key = format!("{w}_{layer}{rev}");
            let e = tensor(&f["grads"][&key]);
            let got: Vec<f64> = got.iter().map(|v| v.to_f64_lossy()).collect();
            assert_close(got.iter(), e.iter(), rtol, atol, &format!("{name}: grad {key}"));
        }
    }
    cmp(&grads.x, "grads.x", "grad x");
    cmp(&grads.h0, "grads.h0", "grad h0");
    if let Some(gc0) = &grads.c0 {
        cmp(gc0, "grads.c0", "grad c0");
    }
    // Padded positions: exactly zero output and input gradient.
    for (b, &len) in lengths.iter().enumerate() {
        for t in len..x.dim().0 {
            assert!(
                out.output.slice(ndarray::s![t, b, ..]).iter().all(|v| *v == T::zero()),
                "{name}: padded output"
            );
            assert!(
                grads.x.slice(ndarray::s![t, b, ..]).iter().all(|v| *v == T::zero()),
                "{name}: padded grad x"
            );
        }
    }
}

#[test]
fn rnn_fixtures_match_pytorch_in_f64() {
    for name in RNN_CASES {
        check_case::<f64>(name, 1e-9, 1e-12);
    }
}

/// On every kernel path this CPU has (`nn::isa`): the f32 activations are compiled
/// once per path.
#[test]
fn rnn_fixtures_match_pytorch_in_f32() {
    for isa in Isa::ALL.into_iter().filter(|i| i.supported()) {
        isa::scoped(isa, || {
            for name in RNN_CASES {
                check_case::<f32>(name, 1e-4, 1e-5);
            }
        });
    }
}

#[test]
fn a_wrong_convention_is_caught() {
    // The check must be able to fail: swap the LSTM's g and o gate blocks and the
    // f64 comparison has to reject the result.
    let result = std::panic::catch_unwind(|| {
        let f = fixture("rnn/lstm_l1_uni.json");
        let mut rnn = build::<f64>(&f);
        let h = rnn.config.d_hidden;
        for cell in &mut rnn.cells {
            let g = cell.w_ih.slice(ndarray::s![2 * h..3 * h, ..]).to_owned();
            let o = cell.w_ih.slice(ndarray::s![3 * h.., ..]).to_owned();
            cell.w_ih.slice_mut(ndarray::s![2 * h..3 * h, ..]).assign(&o);
            cell.w_ih.slice_mut(ndarray::s![3 * h.., ..]).assign(&g);
        }
        let x = t3::<f64>(&tensor(&f["inputs"]["x"]));
        let h0 = t3::<f64>(&tensor(&f["inputs"]["h0"]));
        let c0 = t3::<f64>(&tensor(&f["inputs"]["c0"]));
        let out = rnn.forward(x.view(), Some(h0.view()), Some(c0.view()), None);
        let e = tensor(&f["outputs"]["output"]);
        assert_close(out.output.iter(), e.iter(), 1e-9, 1e-12, "swapped gates");
    });
    assert!(result.is_err(), "a gate-order mistake went unnoticed");
}

fn adam_case(file: &str) {
    let f = fixture(file);
    let hp = &f["hyper"];
    let mut opt = Adam::<f64>::new(AdamParams {
        lr: hp["lr"].as_f64().unwrap(),
        beta1: hp["beta1"].as_f64().unwrap(),
        beta2: hp["beta2"].as_f64().unwrap(),
        eps: hp["eps"].as_f64().unwrap(),
        weight_decay: hp["weight_decay"].as_f64().unwrap(),
    });
    let mut p: Vec<f64> = tensor(&f["param_initial"]).iter().copied().collect();
    for (k, g) in f["grads"].as_array().unwrap().iter().enumerate() {
        let g: Vec<f64> = tensor(g).iter().copied().collect();
        opt.step(&mut [&mut p], &[&g]);
        let e = tensor(&f["params_after_step"][k]);
        assert_close(p.iter(), e.iter(), 1e-12, 1e-15, &format!("{file} step {}", k + 1));
    }
}

#[test]
fn adam_matches_pytorch() {
    adam_case("optim/adam.json");
}

#[test]
fn adamw_matches_pytorch() {
    adam_case("optim/adamw.json");
}

#[test]
fn clip_grad_norm_matches_pytorch() {
    let f = fixture("optim/clip_grad_norm.json");
    let max_norm = f["max_norm"].as_f64().unwrap();
    let cases = f["cases"].as_array().unwrap();
    assert!(cases.len() >= 2);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let mut a: Vec<f64> = tensor(&c["grads_before"]["a"]).iter().copied().collect();
        let mut b: Vec<f64> = tensor(&c["grads_before"]["b"]).iter().copied().collect();
        let norm = clip_grad_norm(&mut [&mut a, &mut b], max_norm);
        let total = c["total_norm"].as_f64().unwrap();
        assert_close(
            [norm].iter(),
            [total].iter(),
            1e-12,
            1e-15,
            &format!("{name}: total norm"),
        );
        assert_close(
            a.iter(),
            tensor(&c["grads_after"]["a"]).iter(),
            1e-12,
            1e-15,
            &format!("{name}: a"),
        );
        assert_close(
            b.iter(),
            tensor(&c["grads_after"]["b"]).iter(),
            1e-12,
            1e-15,
            &format!("{name}: b"),
        );
    }
}

#[test]
fn f32_parity_tolerance_is_not_trivially_loose() {
    // Sanity of the f32 comparison itself: a 1e-3 perturbation must be rejected.
    let e = [0.5f64, -0.25];
    let a = [0.5f32 + 1e-3, -0.25];
    assert!(std::panic::catch_unwind(|| assert_close_f32(a.iter(), e.iter(), 1e-4, 1e-5, "perturbed")).is_err());
}

/// The change model's dense autoencoder against an independent float64 numpy
/// implementation (`tests/fixtures/dense/generate.py`), in f64 and f32.
fn dense_case<T: Scalar>(rtol: f64, atol: f64) {
    let f = fixture("dense/dense_ae.json");
    let m = |k: &str| tensor(&f[k]);
    let rows = |key: &str| f[key].as_array().expect("rows").len();
    let (k, d, n) = (rows("W1"), rows("W2"), rows("x"));
    let mut net = DenseAutoencoder::<T>::zeros(d, k);
    for (t, key) in net.tensors_mut().into_iter().zip(["W1", "b1", "W2", "b2"]) {
        for (p, v) in t.iter_mut().zip(m(key).iter()) {
            *p = T::lit(*v);
        }
    }
    let to = |a: &ndarray::ArrayD<f64>| {
        ndarray::Array2::from_shape_vec((n, d), a.iter().map(|&v| T::lit(v)).collect()).unwrap()
    };
    let (x, g) = (to(&m("x")), to(&m("g")));
    let (y, cache) = net.forward_train(x.view());
    let f64s = |a: &[T]| a.iter().map(|v| v.to_f64_lossy()).collect::<Vec<_>>();
    assert_close(f64s(y.as_slice().unwrap()).iter(), m("y").iter(), rtol, atol, "dense y");
    let (grads, dx) = net.backward(&cache, g.view());
    for (t, key) in grads.tensors().into_iter().zip(["dW1", "db1", "dW2", "db2"]) {
        assert_close(f64s(t).iter(), m(key).iter(), rtol, atol, key);
    }
    assert_close(f64s(dx.as_slice().unwrap()).iter(), m("dx").iter(), rtol, atol, "dx");
}

#[test]
fn dense_autoencoder_matches_numpy() {
    dense_case::<f64>(1e-12, 1e-12);
    dense_case::<f32>(1e-4, 1e-5);
}
