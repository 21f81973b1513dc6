//! Stream snapshots on disk: one file per stream, written atomically and checked on
//! load, so a crash leaves either the old file or the new one, and a damaged file
//! is reported, never loaded.
//!
//! ```text
//! "ANOMSNAP" | u32 format version (1)
//! u32 n | n bytes of JSON: {"stream": id, "state": DetectorState}
//! u32 members | per member: u64 n | n bytes of safetensors (encoder.*, decoder.*, head.*)
//! u32 CRC-32 of everything before it
//! ```
//! All integers little-endian.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::StorageError;
use crate::detector::{DetectorSnapshot, DetectorState};

const MAGIC: &[u8; 8] = b"ANOMSNAP";
const VERSION: u32 = 1;

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    stream: String,
    /// The last write-ahead log record this state includes (0: none).
    #[serde(default)]
    lsn: u64,
    state: DetectorState,
}

/// Encodes a stream's snapshot; `lsn` is the last log record its state includes.
pub fn encode(stream: &str, lsn: u64, snapshot: &DetectorSnapshot) -> Result<Vec<u8>, StorageError> {
    let header = Header {
        stream: stream.to_string(),
        lsn,
        state: snapshot.state.clone(),
    };
    let json = serde_json::to_vec(&header).map_err(|e| StorageError::Format(e.to_string()))?;
    let mut out = Vec::with_capacity(json.len() + 64 * 1024);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&(snapshot.members.len() as u32).to_le_bytes());
    for m in &snapshot.members {
        let bytes = super::encode_autoencoder(m)?;
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Decodes and verifies a snapshot; returns the stream id, the last log record
/// its state includes, and the snapshot.
pub fn decode(bytes: &[u8]) -> Result<(String, u64, DetectorSnapshot), StorageError> {
    let corrupt = |why: &str| StorageError::Format(why.to_string());
    if bytes.len() < MAGIC.len() + 4 + 4 + 4 + 4 || &bytes[..8] != MAGIC {
        return Err(corrupt("not an anomalyd snapshot (bad magic or too short)"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(corrupt("checksum mismatch: the file is damaged or was cut short"));
    }
    let mut at = 8;
    let mut take = |n: usize| -> Result<&[u8], StorageError> {
        let s = body.get(at..at + n).ok_or_else(|| corrupt("truncated"))?;
        at += n;
        Ok(s)
    };
    let version = u32::from_le_bytes(take(4)?.try_into().expect("4"));
    if version != VERSION {
        return Err(corrupt(&format!(
            "snapshot format version {version}, this build reads {VERSION}"
        )));
    }
    let n = u32::from_le_bytes(take(4)?.try_into().expect("4")) as usize;
    let header: Header = serde_json::from_slice(take(n)?).map_err(|e| corrupt(&format!("bad state: {e}")))?;
    let n_members = u32::from_le_bytes(take(4)?.try_into().expect("4")) as usize;
    let cfg = header.state.config();
    let d = header.state.n_features().unwrap_or(1);
    let ae = cfg.autoencoder(d);
    let mut members = Vec::with_capacity(n_members.min(16));
    for _ in 0..n_members {
        let len = u64::from_le_bytes(take(8)?.try_into().expect("8")) as usize;
        members.push(super::decode_autoencoder::<f32>(take(len)?, ae.clone())?);
    }
    Ok((
        header.stream,
        header.lsn,
        DetectorSnapshot {
            state: header.state,
            members,
        },
    ))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory,
/// flushed to disk, then renamed over the target.
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
    let fnv = |seed: u64| super::fnv1a(stream.as_bytes(), seed);
    dir.join(format!(
        "{:016x}{:016x}.snap",
        fnv(super::FNV_OFFSET),
        fnv(0x6c62_272e_07bb_0142)
    ))
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
        assert!(d.model().is_some());
        d
    }

    #[test]
    fn round_trip_restores_the_same_detector() {
        let d = trained_detector();
        let bytes = encode("cpu/host-1 ü", 42, &d.snapshot()).unwrap();
        let (stream, lsn, snap) = decode(&bytes).unwrap();
        assert_eq!((stream.as_str(), lsn), ("cpu/host-1 ü", 42));
        let mut back = Detector::restore(snap).unwrap();
        let mut orig = d.clone();
        for t in 160..200 {
            let v = [(t as f64 / 5.0).sin(), (t as f64 / 7.0).cos()];
            let (a, b) = (orig.update(t, &v).unwrap(), back.update(t, &v).unwrap());
            assert_eq!(a, b, "restored detector scores identically");
        }
    }

    #[test]
    fn damage_is_detected() {
        let bytes = encode("s", 0, &trained_detector().snapshot()).unwrap();
        for cut in [0, 7, 20, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x40;
        let err = decode(&flipped).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
    }

    #[test]
    fn file_names_are_stable_and_distinct() {
        let dir = Path::new("/x");
        assert_eq!(stream_file(dir, "a"), stream_file(dir, "a"));
        assert_ne!(stream_file(dir, "a"), stream_file(dir, "b"));
        assert!(stream_file(dir, &"é".repeat(128)).file_name().unwrap().len() < 64);
    }
}
