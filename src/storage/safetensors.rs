//! safetensors with PyTorch's parameter names.
//!
//! An [`Rnn`] under prefix `p` is stored as `p.weight_ih_l0`, `p.weight_hh_l0`,
//! `p.bias_ih_l0`, `p.bias_hh_l0`, then `…_reverse` and the next layers, exactly as
//! `torch.nn.LSTM(...).state_dict()` would name them inside a module attribute `p`
//! (an empty prefix gives the bare names). An [`Autoencoder`] uses the prefixes
//! `encoder`, `decoder` and `head` (`head.weight`, `head.bias`).

use std::collections::HashMap;
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use super::StorageError;
use crate::nn::{Autoencoder, AutoencoderConfig, Rnn, RnnConfig, Scalar};

/// One named tensor on its way into a file: name, shape, values.
type Named<T> = (String, Vec<usize>, Vec<T>);

fn key(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

fn rnn_tensors<T: Scalar>(rnn: &Rnn<T>, prefix: &str) -> Vec<Named<T>> {
    let mut out = Vec::new();
    for (suffix, cell) in rnn.named_params() {
        let (l, rev) = suffix
            .split_once('_')
            .map(|(l, _)| (l, "_reverse"))
            .unwrap_or((suffix.as_str(), ""));
        let base = |w: &str| key(prefix, &format!("{w}_{l}{rev}"));
        out.push((
            base("weight_ih"),
            cell.w_ih.shape().to_vec(),
            cell.w_ih.iter().copied().collect(),
        ));
        out.push((
            base("weight_hh"),
            cell.w_hh.shape().to_vec(),
            cell.w_hh.iter().copied().collect(),
        ));
        out.push((base("bias_ih"), cell.b_ih.shape().to_vec(), cell.b_ih.to_vec()));
        out.push((base("bias_hh"), cell.b_hh.shape().to_vec(), cell.b_hh.to_vec()));
    }
    out
}

fn autoencoder_tensors<T: Scalar>(model: &Autoencoder<T>) -> Vec<Named<T>> {
    let mut v = rnn_tensors(&model.encoder, "encoder");
    v.extend(rnn_tensors(&model.decoder, "decoder"));
    v.push((
        "head.weight".into(),
        model.head.weight.shape().to_vec(),
        model.head.weight.iter().copied().collect(),
    ));
    v.push((
        "head.bias".into(),
        model.head.bias.shape().to_vec(),
        model.head.bias.to_vec(),
    ));
    v
}

/// Encodes as F32 when `T` is 4 bytes wide, otherwise F64.
fn encode<T: Scalar>(
    tensors: Vec<Named<T>>,
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>, StorageError> {
    let f32_wide = std::mem::size_of::<T>() == 4;
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, shape, vals)| {
            let data = if f32_wide {
                vals.iter()
                    .flat_map(|v| (v.to_f64_lossy() as f32).to_le_bytes())
                    .collect()
            } else {
                vals.iter().flat_map(|v| v.to_f64_lossy().to_le_bytes()).collect()
            };
            (name, shape, data)
        })
        .collect();
    let dtype = if f32_wide { Dtype::F32 } else { Dtype::F64 };
    let views = bytes
        .iter()
        .map(|(n, s, d)| TensorView::new(dtype, s.clone(), d).map(|v| (n.clone(), v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StorageError::Format(format!("safetensors: {e}")))?;
    safetensors::serialize(views, metadata).map_err(|e| StorageError::Format(format!("safetensors: {e}")))
}

/// Reads tensor `name` into `dst` (an owned, contiguous array), checking its shape.
fn read_into<T: Scalar, D: ndarray::Dimension>(
    st: &SafeTensors,
    name: &str,
    dst: &mut ndarray::Array<T, D>,
) -> Result<(), StorageError> {
    let a = read::<T>(st, name, dst.shape())?;
    dst.as_slice_mut()
        .expect("owned arrays are contiguous")
        .copy_from_slice(a.as_slice().expect("contiguous"));
    Ok(())
}

/// Reads tensor `name` as `T`, checking its shape.
fn read<T: Scalar>(st: &SafeTensors, name: &str, expected: &[usize]) -> Result<ArrayD<T>, StorageError> {
    let view = st.tensor(name).map_err(|_| StorageError::Missing(name.to_string()))?;
    if view.shape() != expected {
        return Err(StorageError::Shape {
            name: name.into(),
            expected: expected.to_vec(),
            found: view.shape().to_vec(),
        });
    }
    let data = view.data();
    let vals: Vec<T> = match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| T::lit(f32::from_le_bytes(c.try_into().unwrap()) as f64))
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|c| T::lit(f64::from_le_bytes(c.try_into().unwrap())))
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| T::lit(f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16) as f64))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| T::lit(f16_to_f64(u16::from_le_bytes([c[0], c[1]]))))
            .collect(),
        other => {
            return Err(StorageError::Dtype {
                name: name.into(),
                dtype: format!("{other:?}"),
            });
        }
    };
    ArrayD::from_shape_vec(IxDyn(expected), vals).map_err(|e| StorageError::Format(format!("safetensors: {e}")))
}

/// IEEE half → f64 (subnormals, infinities and NaN included).
fn f16_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((bits >> 10) & 0x1f) as i32;
    let frac = (bits & 0x3ff) as f64;
    sign * match exp {
        0 => frac * 2f64.powi(-24),
        31 => {
            if frac == 0.0 {
                f64::INFINITY
            } else {
                f64::NAN
            }
        }
        e => (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

fn parse(bytes: &[u8]) -> Result<SafeTensors<'_>, StorageError> {
    SafeTensors::deserialize(bytes).map_err(|e| StorageError::Format(format!("safetensors: {e}")))
}

fn read_rnn_into<T: Scalar>(st: &SafeTensors, rnn: &mut Rnn<T>, prefix: &str) -> Result<(), StorageError> {
    let names: Vec<String> = rnn.named_params().into_iter().map(|(s, _)| s).collect();
    for (suffix, cell) in names.iter().zip(rnn.cells.iter_mut()) {
        let (l, rev) = suffix
            .split_once('_')
            .map(|(l, _)| (l, "_reverse"))
            .unwrap_or((suffix.as_str(), ""));
        let base = |w: &str| key(prefix, &format!("{w}_{l}{rev}"));
        read_into(st, &base("weight_ih"), &mut cell.w_ih)?;
        read_into(st, &base("weight_hh"), &mut cell.w_hh)?;
        read_into(st, &base("bias_ih"), &mut cell.b_ih)?;
        read_into(st, &base("bias_hh"), &mut cell.b_hh)?;
    }
    Ok(())
}

/// Encodes a recurrent stack's parameters under `prefix` (F32 for `f32`, F64 for `f64`).
pub fn encode_rnn<T: Scalar>(rnn: &Rnn<T>, prefix: &str) -> Result<Vec<u8>, StorageError> {
    encode(rnn_tensors(rnn, prefix), None)
}

/// Decodes a recurrent stack of the given shape from safetensors bytes written by
/// anomalyd or by PyTorch (`safetensors.torch.save_file(lstm.state_dict(), ...)`).
/// Any of F32, F64, F16 and BF16 is accepted and converted.
pub fn decode_rnn<T: Scalar>(bytes: &[u8], config: RnnConfig, prefix: &str) -> Result<Rnn<T>, StorageError> {
    let st = parse(bytes)?;
    let mut rnn = Rnn::zeros(config);
    read_rnn_into(&st, &mut rnn, prefix)?;
    Ok(rnn)
}

/// Encodes an autoencoder (`encoder.*`, `decoder.*`, `head.*`), with the config in
/// the file's metadata.
pub fn encode_autoencoder<T: Scalar>(model: &Autoencoder<T>) -> Result<Vec<u8>, StorageError> {
    let c = &model.config;
    let meta = HashMap::from([
        ("format".to_string(), "anomalyd.autoencoder.v1".to_string()),
        ("cell".to_string(), c.kind.name().to_string()),
        ("d_input".to_string(), c.d_input.to_string()),
        ("d_hidden".to_string(), c.d_hidden.to_string()),
        ("n_layers".to_string(), c.n_layers.to_string()),
        ("bidirectional".to_string(), c.bidirectional.to_string()),
    ]);
    encode(autoencoder_tensors(model), Some(meta))
}

/// Decodes an autoencoder of the given shape.
pub fn decode_autoencoder<T: Scalar>(bytes: &[u8], config: AutoencoderConfig) -> Result<Autoencoder<T>, StorageError> {
    let st = parse(bytes)?;
    let mut model = Autoencoder::zeros(config);
    read_rnn_into(&st, &mut model.encoder, "encoder")?;
    read_rnn_into(&st, &mut model.decoder, "decoder")?;
    read_into(&st, "head.weight", &mut model.head.weight)?;
    read_into(&st, "head.bias", &mut model.head.bias)?;
    Ok(model)
}

/// Writes an autoencoder to `path` durably (see [`super::write_atomic`]: a crash
/// never leaves half a file under the final name).
pub fn save_autoencoder<T: Scalar>(model: &Autoencoder<T>, path: &Path) -> Result<(), StorageError> {
    super::write_atomic(path, &encode_autoencoder(model)?)
}

/// Reads an autoencoder of the given shape from `path`.
pub fn load_autoencoder<T: Scalar>(path: &Path, config: AutoencoderConfig) -> Result<Autoencoder<T>, StorageError> {
    let bytes = std::fs::read(path).map_err(|source| StorageError::Io {
        path: path.display().to_string(),
        source,
    })?;
    decode_autoencoder(&bytes, config)
}
