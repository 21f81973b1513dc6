//! The only place that turns model state into bytes and back.
//!
//! [`safetensors`] reads and writes parameters in the safetensors format under
//! PyTorch's names, so weights move both ways between anomalyd and
//! `torch.nn.LSTM` / `GRU` / `RNN` / `Linear` unchanged.

pub mod archive;
pub mod bytes;
pub mod safetensors;
pub mod snapshot;
pub mod wal;

use std::io::Write;
use std::path::Path;

pub use self::safetensors::{
    decode_autoencoder, decode_rnn, encode_autoencoder, encode_rnn, load_autoencoder, save_autoencoder,
};

/// 64-bit FNV-1a of `bytes` from `seed` (stable names for ids that cannot be
/// file names or stream ids themselves).
pub fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    bytes
        .iter()
        .fold(seed, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// FNV-1a's standard offset basis.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Why model state could not be stored or loaded.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Reading or writing the file failed.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The bytes are not a valid file of the format read (safetensors, a
    /// snapshot, a model file, a shard archive): the message says which.
    #[error("invalid file: {0}")]
    Format(String),
    /// A tensor the model needs is absent.
    #[error("tensor {0:?} is missing")]
    Missing(String),
    /// A tensor has another shape than the model's.
    #[error("tensor {name:?} has shape {found:?}, the model expects {expected:?}")]
    Shape {
        /// Tensor name.
        name: String,
        /// The model's shape.
        expected: Vec<usize>,
        /// The file's shape.
        found: Vec<usize>,
    },
    /// A tensor's element type cannot be loaded.
    #[error("tensor {name:?} has dtype {dtype}, expected F32, F64, F16 or BF16")]
    Dtype {
        /// Tensor name.
        name: String,
        /// The file's dtype.
        dtype: String,
    },
}

impl From<bytes::CutShort> for StorageError {
    fn from(_: bytes::CutShort) -> Self {
        StorageError::Format("truncated".into())
    }
}

/// Writes `bytes` to `path` atomically and durably: a temporary file in the same
/// directory, flushed to disk, renamed over the target, and the directory synced.
/// The one writer of whole files in anomalyd (a snapshot round stages many files
/// and makes them durable at once: [`snapshot::commit`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let io = |source| StorageError::Io {
        path: path.display().to_string(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
