//! Stream snapshots on disk, written atomically and checked on load, so a crash
//! leaves either the old file or the new one, and a damaged file is reported,
//! never loaded. A stream's state and its model's weights live apart: the state
//! (`<hash>.snap`) is rewritten at each checkpoint that finds the stream changed,
//! the weights (`<hash>.v<version>-<random>.model`) once per model version, each
//! time to a new name, so a checkpoint
//! writes weights only for the streams that retrained since the last one.
//!
//! ```text
//! state   "ANOMSNAP" | u32 format version (2)
//!         u32 n | n bytes of JSON: {"stream", "lsn", "state", "model_file"}
//!         u32 CRC-32 of everything before it
//! model   "ANOMMODL" | u32 format version (1)
//!         u32 members | per member: u64 n | n bytes of safetensors
//!         u32 CRC-32 of everything before it
//! ```
//! Format version 1 (state and weights in one `.snap`: the JSON, then the
//! members as in a model file) is still read. All integers little-endian.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::StorageError;
use super::bytes::Cursor;
use crate::detector::{DetectorSnapshot, DetectorState};
use crate::nn::Autoencoder;

const MAGIC: &[u8; 8] = b"ANOMSNAP";
const MODEL_MAGIC: &[u8; 8] = b"ANOMMODL";
/// Format written: the state alone, weights in a model file.
const VERSION: u32 = 2;
/// Format still read: state and weights in one file.
const VERSION_INLINE: u32 = 1;
const MODEL_VERSION: u32 = 1;

#[derive(serde::Deserialize)]
struct Header {
    stream: String,
    /// The last write-ahead log record this state includes (0: none).
    #[serde(default)]
    lsn: u64,
    state: DetectorState,
    /// The model file holding the weights (its name in the same directory), when
    /// the state has a model.
    #[serde(default)]
    model_file: Option<String>,
}

/// A decoded state file: the weights still to be read when `model_file` is set.
pub struct Decoded {
    /// Stream id.
    pub stream: String,
    /// The last log record its state includes.
    pub lsn: u64,
    /// The snapshot (members empty when they live in `model_file`).
    pub snapshot: DetectorSnapshot,
    /// The model file named by the state (format 2).
    pub model_file: Option<String>,
}

fn frame(
    magic: &[u8; 8],
    version: u32,
    body: impl FnOnce(&mut Vec<u8>) -> Result<(), StorageError>,
) -> Result<Vec<u8>, StorageError> {
    let mut out = Vec::with_capacity(64 * 1024);
    out.extend_from_slice(magic);
    out.extend_from_slice(&version.to_le_bytes());
    body(&mut out)?;
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

fn push_members(out: &mut Vec<u8>, members: &[Autoencoder<f32>]) -> Result<(), StorageError> {
    out.extend_from_slice(&(members.len() as u32).to_le_bytes());
    for m in members {
        let bytes = super::encode_autoencoder(m)?;
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    Ok(())
}

/// The JSON header of a state file, serialised from borrowed parts (a checkpoint
/// does not copy a stream's state to write it).
fn header_json(
    stream: &str,
    lsn: u64,
    state: &DetectorState,
    model_file: Option<&str>,
) -> Result<Vec<u8>, StorageError> {
    #[derive(serde::Serialize)]
    struct HeaderRef<'a> {
        stream: &'a str,
        lsn: u64,
        state: &'a DetectorState,
        model_file: Option<&'a str>,
    }
    let header = HeaderRef {
        stream,
        lsn,
        state,
        model_file,
    };
    let json = serde_json::to_vec(&header).map_err(|e| StorageError::Format(e.to_string()))?;
    let mut out = Vec::with_capacity(json.len() + 4);
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

/// Encodes a stream's state; `lsn` is the last log record it includes and
/// `model_file` the file that holds its model's weights (see [`encode_model`]).
/// The snapshot's members are not written.
pub fn encode(
    stream: &str,
    lsn: u64,
    snapshot: &DetectorSnapshot,
    model_file: Option<&str>,
) -> Result<Vec<u8>, StorageError> {
    let header = header_json(stream, lsn, &snapshot.state, model_file)?;
    frame(MAGIC, VERSION, |out| {
        out.extend_from_slice(&header);
        Ok(())
    })
}

/// Encodes a model's weights (its ensemble members).
pub fn encode_model(members: &[Autoencoder<f32>]) -> Result<Vec<u8>, StorageError> {
    frame(MODEL_MAGIC, MODEL_VERSION, |out| push_members(out, members))
}

/// Encodes state and weights in one file (format 1, as earlier builds wrote it).
pub fn encode_inline(stream: &str, lsn: u64, snapshot: &DetectorSnapshot) -> Result<Vec<u8>, StorageError> {
    let header = header_json(stream, lsn, &snapshot.state, None)?;
    frame(MAGIC, VERSION_INLINE, |out| {
        out.extend_from_slice(&header);
        push_members(out, &snapshot.members)
    })
}

/// Checks the magic and the checksum; returns the format version and the body
/// after it.
fn unframe<'a>(bytes: &'a [u8], magic: &[u8; 8], what: &str) -> Result<(u32, &'a [u8]), StorageError> {
    let corrupt = |why: String| StorageError::Format(why);
    if bytes.len() < magic.len() + 4 + 4 || &bytes[..8] != magic {
        return Err(corrupt(format!("not an anomalyd {what} (bad magic or too short)")));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(corrupt(
            "checksum mismatch: the file is damaged or was cut short".into(),
        ));
    }
    let version = u32::from_le_bytes(body[8..12].try_into().expect("4"));
    Ok((version, &body[12..]))
}

/// The ensemble members that follow a state: a count, then each member's
/// safetensors bytes behind their length.
fn read_members(r: &mut Cursor<'_>, state: &DetectorState) -> Result<Vec<Autoencoder<f32>>, StorageError> {
    let n_members = r.u32()? as usize;
    let ae = state.config().autoencoder(state.n_features().unwrap_or(1));
    let mut members = Vec::with_capacity(n_members.min(16));
    for _ in 0..n_members {
        let len = r.u64()? as usize;
        members.push(super::decode_autoencoder::<f32>(r.take(len)?, ae.clone())?);
    }
    Ok(members)
}

/// Decodes and verifies a state file (either format).
pub fn decode(bytes: &[u8]) -> Result<Decoded, StorageError> {
    let (version, body) = unframe(bytes, MAGIC, "snapshot")?;
    if version != VERSION && version != VERSION_INLINE {
        return Err(StorageError::Format(format!(
            "snapshot format version {version}, this build reads {VERSION_INLINE} and {VERSION}"
        )));
    }
    let mut r = Cursor::new(body);
    let n = r.u32()? as usize;
    let header: Header =
        serde_json::from_slice(r.take(n)?).map_err(|e| StorageError::Format(format!("bad state: {e}")))?;
    let members = if version == VERSION_INLINE {
        read_members(&mut r, &header.state)?
    } else {
        Vec::new()
    };
    Ok(Decoded {
        stream: header.stream,
        lsn: header.lsn,
        snapshot: DetectorSnapshot {
            state: header.state,
            members,
        },
        model_file: header.model_file.filter(|_| version == VERSION),
    })
}

/// Decodes and verifies a model file for `state`'s shape.
pub fn decode_model(bytes: &[u8], state: &DetectorState) -> Result<Vec<Autoencoder<f32>>, StorageError> {
    let (version, body) = unframe(bytes, MODEL_MAGIC, "model file")?;
    if version != MODEL_VERSION {
        return Err(StorageError::Format(format!(
            "model file format version {version}, this build reads {MODEL_VERSION}"
        )));
    }
    read_members(&mut Cursor::new(body), state)
}

/// A stream snapshot read back by [`read`].
pub struct Loaded {
    /// The stream id.
    pub stream: String,
    /// The last log record the snapshot includes.
    pub lsn: u64,
    /// The snapshot, with its weights unless they were lost.
    pub snapshot: DetectorSnapshot,
    /// The model file it uses.
    pub model: Option<PathBuf>,
    /// Why the weights the state names could not be read (the stream is loaded
    /// without its model, and retrains).
    pub model_lost: Option<(PathBuf, StorageError)>,
}

/// Reads the stream snapshot at `path` with its weights (from the model file
/// beside it, for format 2). A model file that is missing or damaged costs the
/// model, not the stream: the state loads without it.
pub fn read(path: &Path) -> Result<Loaded, StorageError> {
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |source| StorageError::Io { path, source }
    };
    let d = decode(&std::fs::read(path).map_err(io(path))?)?;
    let mut loaded = Loaded {
        stream: d.stream,
        lsn: d.lsn,
        snapshot: d.snapshot,
        model: None,
        model_lost: None,
    };
    match &d.model_file {
        Some(name) if !name.contains('/') && !name.contains('\\') && name.ends_with(".model") => {
            let mpath = path.with_file_name(name);
            let members = std::fs::read(&mpath)
                .map_err(io(&mpath))
                .and_then(|bytes| decode_model(&bytes, &loaded.snapshot.state));
            match members {
                Ok(members) => {
                    loaded.snapshot.members = members;
                    loaded.model = Some(mpath);
                }
                Err(e) => {
                    loaded.snapshot = loaded.snapshot.without_model();
                    loaded.model_lost = Some((mpath, e));
                }
            }
        }
        Some(name) => return Err(StorageError::Format(format!("bad model file name {name:?}"))),
        None => {}
    }
    Ok(loaded)
}

/// Writes `bytes` under `path`'s temporary name (`<path>.tmp`), not yet synced
/// nor renamed: [`commit`] does both for a whole round at once. Returns the
/// temporary path.
pub fn stage(path: &Path, bytes: &[u8]) -> Result<PathBuf, StorageError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let io = |source| StorageError::Io {
        path: tmp.display().to_string(),
        source,
    };
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    Ok(tmp)
}

/// Makes staged files durable, then renames each over its target and syncs
/// `dir`: a crash leaves every target either old or new, never half written.
/// On Linux one `syncfs` flushes the whole round (instead of an fsync per
/// file); elsewhere each file is synced.
pub fn commit(dir: &Path, staged: &[(PathBuf, PathBuf)]) -> Result<(), StorageError> {
    if staged.is_empty() {
        return Ok(());
    }
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| StorageError::Io { path, source }
    };
    sync_files(dir, staged).map_err(io(dir))?;
    for (tmp, target) in staged {
        std::fs::rename(tmp, target).map_err(io(target))?;
    }
    super::wal::sync_dir(dir);
    Ok(())
}

#[cfg(target_os = "linux")]
fn sync_files(dir: &Path, _staged: &[(PathBuf, PathBuf)]) -> std::io::Result<()> {
    let d = std::fs::File::open(dir)?;
    rustix::fs::syncfs(&d).map_err(std::io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn sync_files(_dir: &Path, staged: &[(PathBuf, PathBuf)]) -> std::io::Result<()> {
    for (tmp, _) in staged {
        std::fs::File::open(tmp)?.sync_all()?;
    }
    Ok(())
}

/// Removes what a crash can leave in a snapshot directory: temporary files of an
/// unfinished round, and files moved aside as damaged more than `keep_corrupt`
/// ago. Returns how many files were removed.
pub fn clean_dir(dir: &Path, keep_corrupt: std::time::Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for path in entries.flatten().map(|e| e.path()) {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let old = || {
            path.metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > keep_corrupt)
        };
        if (ext == "tmp" || (ext == "corrupt" && old())) && std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The file a stream's snapshot lives in under `dir`: a 128-bit hash of the id (ids
/// may be 256 bytes of any UTF-8, longer than file names allow); the id itself is
/// stored inside.
pub fn stream_file(dir: &Path, stream: &str) -> PathBuf {
    dir.join(format!("{}.snap", stream_hash(stream)))
}

fn stream_hash(stream: &str) -> String {
    let fnv = |seed: u64| super::fnv1a(stream.as_bytes(), seed);
    format!("{:016x}{:016x}", fnv(super::FNV_OFFSET), fnv(0x6c62_272e_07bb_0142))
}

/// A new file for the weights of a stream's model `version` under `dir`. Each
/// write gets a name of its own (a random suffix): a stream whose detector was
/// replaced numbers its models from 1 again, and overwriting the file an older
/// state still names would pair that state with weights it was not trained with.
pub fn new_model_file(dir: &Path, stream: &str, version: u64) -> PathBuf {
    dir.join(format!(
        "{}.v{version}-{:016x}.model",
        stream_hash(stream),
        rand::random::<u64>()
    ))
}

/// Removes the model files under `dir` that are not in `keep` (at start-up: the
/// files no state names, left by a crash between a round's renames and its
/// clean-up, or by streams moved aside). Returns how many were removed.
pub fn remove_models_except(dir: &Path, keep: &std::collections::HashSet<PathBuf>) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for path in entries.flatten().map(|e| e.path()) {
        let is_model = path.extension().and_then(|e| e.to_str()) == Some("model");
        if is_model && !keep.contains(&path) && std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::{Detector, DetectorConfig};

    fn trained_detector() -> Detector {
        let mut c = DetectorConfig::default();
        c.model.ensemble = 1;
        c.retrain.first_after = 100;
        let mut d = Detector::new(c).unwrap();
        for t in 0..160 {
            d.update_sync(t, &[(t as f64 / 5.0).sin(), (t as f64 / 7.0).cos()])
                .unwrap();
        }
        assert!(
            d.model().is_some_and(|m| m.changes.is_some()),
            "two features: a change model too"
        );
        d
    }

    #[test]
    fn round_trip_restores_the_same_detector() {
        let d = trained_detector();
        let snap = d.snapshot();
        let bytes = encode("cpu/host-1 ü", 42, &snap, Some("m.v1.model")).unwrap();
        let decoded = decode(&bytes).unwrap();
        assert_eq!((decoded.stream.as_str(), decoded.lsn), ("cpu/host-1 ü", 42));
        assert_eq!(decoded.model_file.as_deref(), Some("m.v1.model"));
        assert!(
            decoded.snapshot.members.is_empty(),
            "the weights live in the model file"
        );
        let mut back_snap = decoded.snapshot;
        back_snap.members = decode_model(&encode_model(&snap.members).unwrap(), &back_snap.state).unwrap();
        let mut back = Detector::restore(back_snap).unwrap();
        let mut orig = d.clone();
        for t in 160..200 {
            let v = [(t as f64 / 5.0).sin(), (t as f64 / 7.0).cos()];
            let (a, b) = (orig.update(t, &v).unwrap(), back.update(t, &v).unwrap());
            assert_eq!(a, b, "restored detector scores identically");
        }
    }

    #[test]
    fn format_1_files_still_load_with_their_weights() {
        let d = trained_detector();
        let bytes = encode_inline("s", 7, &d.snapshot()).unwrap();
        let decoded = decode(&bytes).unwrap();
        assert_eq!((decoded.lsn, decoded.model_file), (7, None));
        assert_eq!(decoded.snapshot.members.len(), 1);
        Detector::restore(decoded.snapshot).unwrap();
    }

    #[test]
    fn damage_is_detected() {
        let snap = trained_detector().snapshot();
        let bytes = encode("s", 0, &snap, None).unwrap();
        let model = encode_model(&snap.members).unwrap();
        for cut in [0, 7, 20, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for cut in [0, 7, 20, model.len() / 2, model.len() - 1] {
            assert!(decode_model(&model[..cut], &snap.state).is_err(), "model cut at {cut}");
        }
        let mut flipped = bytes.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x40;
        let err = decode(&flipped).err().unwrap().to_string();
        assert!(err.contains("checksum"), "{err}");
    }

    #[test]
    fn model_files_are_new_names_and_unreferenced_ones_are_removed() {
        let dir = std::env::temp_dir().join(format!("anomalyd-models-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a1, a1b, b1) = (
            new_model_file(&dir, "a", 1),
            new_model_file(&dir, "a", 1),
            new_model_file(&dir, "b", 1),
        );
        assert_ne!(a1, a1b, "the same version written twice gets two names");
        for p in [&a1, &a1b, &b1] {
            std::fs::write(p, b"x").unwrap();
        }
        let keep: std::collections::HashSet<PathBuf> = [a1b.clone(), b1.clone()].into();
        assert_eq!(remove_models_except(&dir, &keep), 1);
        assert!(!a1.exists() && a1b.exists() && b1.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
