//! safetensors interop: files written by the Python `safetensors` package from
//! PyTorch modules (tests/fixtures/safetensors/make_torch_weights.py) load with
//! their names unchanged, hold the known values, and give torch's outputs.

mod common;

use std::path::PathBuf;

use common::assert_close;
use ndarray::{Array3, ArrayD, IxDyn};
use rand::SeedableRng;
use rand::rngs::StdRng;
use safetensors::{Dtype, SafeTensors};

use anomalyd::nn::{Autoencoder, AutoencoderConfig, CellKind, RnnConfig, ScoreWorkspace};
use anomalyd::storage::{self, StorageError};

fn read_fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/safetensors")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A tensor of the file as f64, whatever its float dtype.
fn tensor(bytes: &[u8], name: &str) -> ArrayD<f64> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let v = st.tensor(name).unwrap();
    let data: Vec<f64> = match v.dtype() {
        Dtype::F32 => v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        Dtype::F64 => v
            .data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        d => panic!("{d:?}"),
    };
    ArrayD::from_shape_vec(IxDyn(v.shape()), data).unwrap()
}

/// The script's known values: tensor k, element i = 0.5 sin(0.37 i + k).
fn known(k: usize, n: usize) -> Vec<f64> {
    (0..n).map(|i| 0.5 * (0.37 * i as f64 + k as f64).sin()).collect()
}

#[test]
fn pytorch_lstm_loads_unchanged_and_gives_torch_outputs() {
    let bytes = read_fixture("lstm_l2_bi_f32.safetensors");
    let rnn = storage::decode_rnn::<f32>(&bytes, RnnConfig::new(CellKind::Lstm, 3, 4, 2, true), "").unwrap();
    for (k, t) in rnn.tensors().iter().enumerate() {
        let got: Vec<f64> = t.iter().map(|&v| v as f64).collect();
        assert_close(got.iter(), known(k, t.len()).iter(), 1e-6, 1e-7, &format!("tensor {k}"));
    }
    let x = tensor(&bytes, "test.x")
        .mapv(|v| v as f32)
        .into_dimensionality()
        .unwrap();
    let out = rnn.forward(x.view(), None, None, None);
    let wide = |a: &Array3<f32>| a.iter().map(|&v| v as f64).collect::<Vec<_>>();
    assert_close(
        wide(&out.output).iter(),
        tensor(&bytes, "test.output").iter(),
        1e-4,
        1e-5,
        "output",
    );
    assert_close(
        wide(&out.h_n).iter(),
        tensor(&bytes, "test.h_n").iter(),
        1e-4,
        1e-5,
        "h_n",
    );
    assert_close(
        wide(out.c_n.as_ref().unwrap()).iter(),
        tensor(&bytes, "test.c_n").iter(),
        1e-4,
        1e-5,
        "c_n",
    );
}

#[test]
fn pytorch_gru_in_f64_under_a_module_prefix() {
    let bytes = read_fixture("gru_prefixed_f64.safetensors");
    let cfg = RnnConfig::new(CellKind::Gru, 2, 3, 1, false);
    let rnn = storage::decode_rnn::<f64>(&bytes, cfg.clone(), "rnn").unwrap();
    for (k, t) in rnn.tensors().iter().enumerate() {
        assert_close(t.iter(), known(k, t.len()).iter(), 1e-15, 1e-15, &format!("tensor {k}"));
    }
    let x = tensor(&bytes, "test.x").into_dimensionality().unwrap();
    let out = rnn.forward(x.view(), None, None, None);
    assert_close(
        out.output.iter(),
        tensor(&bytes, "test.output").iter(),
        1e-9,
        1e-12,
        "output",
    );
    assert_close(out.h_n.iter(), tensor(&bytes, "test.h_n").iter(), 1e-9, 1e-12, "h_n");
    // Without the prefix the names do not match, and the error says which is missing.
    match storage::decode_rnn::<f64>(&bytes, cfg, "") {
        Err(StorageError::Missing(name)) => assert_eq!(name, "weight_ih_l0"),
        other => panic!("expected a missing tensor, got {other:?}"),
    }
}

#[test]
fn pytorch_autoencoder_matches_ours() {
    let bytes = read_fixture("autoencoder_lstm_f32.safetensors");
    let model = storage::decode_autoencoder::<f32>(&bytes, AutoencoderConfig::new(CellKind::Lstm, 2, 5)).unwrap();
    let x: Array3<f32> = tensor(&bytes, "test.x")
        .mapv(|v| v as f32)
        .into_dimensionality()
        .unwrap();
    let expected = tensor(&bytes, "test.output");
    let y = model.forward(x.view());
    let y64: Vec<f64> = y.iter().map(|&v| v as f64).collect();
    assert_close(y64.iter(), expected.iter(), 1e-4, 1e-5, "autoencoder");
    // The fast scorer, window by window.
    let scorer = model.compile();
    let mut ws = ScoreWorkspace::default();
    for b in 0..x.dim().1 {
        let window: Vec<f32> = x.slice(ndarray::s![.., b, ..]).iter().copied().collect();
        let got: Vec<f64> = scorer.reconstruct(&window, &mut ws).iter().map(|&v| v as f64).collect();
        let want: Vec<f64> = expected.slice(ndarray::s![.., b, ..]).iter().copied().collect();
        assert_close(got.iter(), want.iter(), 1e-4, 1e-5, "scorer");
    }
}

#[test]
fn round_trip_through_a_file_is_exact() {
    let dir = std::env::temp_dir().join(format!("anomalyd-st-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    for (kind, bi) in [
        (CellKind::Lstm, false),
        (CellKind::GruResetBefore, true),
        (CellKind::RnnTanh, true),
    ] {
        let cfg = AutoencoderConfig {
            n_layers: 2,
            bidirectional: bi,
            ..AutoencoderConfig::new(kind, 3, 4)
        };
        let model = Autoencoder::<f32>::new(cfg.clone(), &mut StdRng::seed_from_u64(3));
        storage::save_autoencoder(&model, &path).unwrap();
        let back = storage::load_autoencoder::<f32>(&path, cfg).unwrap();
        assert_eq!(model, back);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_files_are_reported_not_loaded() {
    let cfg = AutoencoderConfig::new(CellKind::Lstm, 2, 5);
    assert!(matches!(
        storage::decode_autoencoder::<f32>(b"not a safetensors file", cfg.clone()),
        Err(StorageError::Format(_))
    ));
    // Right file, wrong shape: hidden 6 instead of 5.
    let bytes = read_fixture("autoencoder_lstm_f32.safetensors");
    match storage::decode_autoencoder::<f32>(&bytes, AutoencoderConfig::new(CellKind::Lstm, 2, 6)) {
        Err(StorageError::Shape { name, expected, found }) => {
            assert_eq!(name, "encoder.weight_ih_l0");
            assert_eq!((expected, found), (vec![24, 2], vec![20, 2]));
        }
        other => panic!("expected a shape error, got {other:?}"),
    }
    // Truncated file.
    assert!(storage::decode_autoencoder::<f32>(&bytes[..bytes.len() / 2], cfg).is_err());
    let missing = std::env::temp_dir().join("anomalyd-no-such-file.safetensors");
    assert!(matches!(
        storage::load_autoencoder::<f32>(&missing, AutoencoderConfig::new(CellKind::Lstm, 2, 5)),
        Err(StorageError::Io { .. })
    ));
}
