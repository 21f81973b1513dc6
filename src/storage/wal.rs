//! The write-ahead log: what the service acknowledged since the last checkpoint.
//!
//! Records are opaque byte strings with a log sequence number (LSN), appended to
//! segment files and made durable by group commit: a caller appends, then waits in
//! [`Wal::sync_to`]; one `fdatasync` covers every record appended before it, so
//! concurrent requests share it. A checkpoint [`Wal::rotate`]s to a new segment,
//! writes its snapshots, then [`Wal::truncate`]s the segments it covered.
//!
//! ```text
//! segment file  wal/<first LSN, 20 digits>.log
//! record        u32 len | u32 CRC-32 of (lsn, payload) | u64 lsn | len bytes of payload
//! ```
//! All integers little-endian. A record cut short or damaged ends its segment (a
//! crash mid-append leaves a torn tail, never a record that was acknowledged);
//! replay goes on with the next segment. New records always go to a new segment.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::StorageError;

/// Largest payload accepted (a sanity bound against a damaged length field).
pub const MAX_RECORD_BYTES: usize = 256 << 20;
const HEADER: usize = 16;

/// When an append is made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SyncPolicy {
    /// `fdatasync` before a request is answered (group commit): acknowledged means
    /// durable, through a power cut.
    Always,
    /// Written to the OS before the answer, synced at checkpoints only: survives a
    /// crash of the process (kill -9), not of the machine.
    Never,
}

struct Writer {
    file: File,
    /// The next LSN to hand out.
    next_lsn: u64,
    /// Bytes in the current segment.
    bytes: u64,
}

/// The log of one data directory.
pub struct Wal {
    dir: PathBuf,
    policy: SyncPolicy,
    writer: Mutex<Writer>,
    /// Held by the one caller that is syncing; the others wait for it, then find
    /// their records already durable.
    syncing: Mutex<()>,
    /// Every record with an LSN up to this is durable.
    durable: AtomicU64,
    /// An append or a sync failed since the last success.
    failing: AtomicBool,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("policy", &self.policy)
            .field("durable", &self.durable.load(Ordering::Relaxed))
            .finish()
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn segment_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}.log")
}

/// The segments of `dir`, by first LSN.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("log") {
            continue;
        }
        if let Some(lsn) = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()) {
            out.push((lsn, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Encodes one record.
pub fn frame(lsn: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&lsn.to_le_bytes());
    h.update(payload);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// What replaying one segment found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SegmentScan {
    /// Whole records read.
    pub records: usize,
    /// Bytes after the last whole record (a torn or damaged tail).
    pub torn_bytes: usize,
}

/// Reads the records of one segment's bytes, in order, until the end or the first
/// record that is cut short or damaged. Never panics on any input.
pub fn scan(bytes: &[u8], mut f: impl FnMut(u64, &[u8])) -> SegmentScan {
    let mut at = 0;
    let mut records = 0;
    while bytes.len() - at >= HEADER {
        let word = |i: usize| u32::from_le_bytes(bytes[at + i..at + i + 4].try_into().expect("4"));
        let len = word(0) as usize;
        let crc = word(4);
        let lsn = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().expect("8"));
        if len > MAX_RECORD_BYTES || bytes.len() - at - HEADER < len {
            break;
        }
        let payload = &bytes[at + HEADER..at + HEADER + len];
        let mut h = crc32fast::Hasher::new();
        h.update(&lsn.to_le_bytes());
        h.update(payload);
        if h.finalize() != crc {
            break;
        }
        f(lsn, payload);
        records += 1;
        at += HEADER + len;
    }
    SegmentScan {
        records,
        torn_bytes: bytes.len() - at,
    }
}

impl Wal {
    /// Opens the log in `dir` (created if missing): calls `replay` with every
    /// record of every segment, oldest first, then starts a new segment after the
    /// highest LSN seen (never below `min_lsn`). Returns the log and the number
    /// of bytes of torn or damaged tails skipped.
    ///
    /// # Errors
    /// If the directory cannot be read or the new segment cannot be created.
    pub fn open(
        dir: &Path,
        policy: SyncPolicy,
        min_lsn: u64,
        mut replay: impl FnMut(u64, &[u8]),
    ) -> Result<(Wal, usize), StorageError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut last = min_lsn;
        let mut torn = 0;
        for (first, path) in segments(dir)? {
            // A segment is named by its first LSN: the ones before it were used,
            // even when a checkpoint removed them and this segment is empty.
            last = last.max(first.saturating_sub(1));
            let mut bytes = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(io_err(&path))?;
            let scan = scan(&bytes, |lsn, payload| {
                last = last.max(lsn);
                replay(lsn, payload);
            });
            if scan.torn_bytes > 0 {
                tracing::warn!(segment = %path.display(), bytes = scan.torn_bytes, records = scan.records, "log segment ends in a torn or damaged record; the rest of it is skipped");
                torn += scan.torn_bytes;
            }
        }
        let next_lsn = last + 1;
        let file = Self::create_segment(dir, next_lsn)?;
        let wal = Wal {
            dir: dir.to_path_buf(),
            policy,
            writer: Mutex::new(Writer {
                file,
                next_lsn,
                bytes: 0,
            }),
            syncing: Mutex::new(()),
            durable: AtomicU64::new(last),
            failing: AtomicBool::new(false),
        };
        Ok((wal, torn))
    }

    fn create_segment(dir: &Path, first_lsn: u64) -> Result<File, StorageError> {
        let path = dir.join(segment_name(first_lsn));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        sync_dir(dir);
        Ok(file)
    }

    /// The newest LSN handed out (every record up to it is in the log or lost
    /// with a failed append).
    pub fn last_lsn(&self) -> u64 {
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).next_lsn - 1
    }

    /// The sync policy.
    pub fn policy(&self) -> SyncPolicy {
        self.policy
    }

    /// Whether the last append or sync failed (the service is then not ready).
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Appends a record and returns its LSN. It is durable once
    /// [`Wal::sync_to`] with that LSN returns. A failed append writes nothing
    /// that replay would read (a partial write is a torn tail, and the segment is
    /// abandoned for a new one).
    ///
    /// # Errors
    /// If the write fails (e.g. the disk is full).
    pub fn append(&self, payload: &[u8]) -> Result<u64, StorageError> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let lsn = w.next_lsn;
        let framed = frame(lsn, payload);
        if let Err(e) = w.file.write_all(&framed) {
            self.failing.store(true, Ordering::Relaxed);
            // Whatever part of the record reached the file is a torn tail; later
            // records go to a fresh segment so none follows it. The LSN is used up.
            w.next_lsn += 1;
            if let Ok(f) = Self::create_segment(&self.dir, w.next_lsn) {
                w.file = f;
                w.bytes = 0;
            }
            return Err(io_err(&self.dir)(e));
        }
        w.next_lsn += 1;
        w.bytes += framed.len() as u64;
        Ok(lsn)
    }

    /// Waits until every record up to `lsn` is durable (under
    /// [`SyncPolicy::Always`]; returns at once under `Never`). One caller syncs for
    /// all that appended before it.
    ///
    /// # Errors
    /// If `fdatasync` fails.
    pub fn sync_to(&self, lsn: u64) -> Result<(), StorageError> {
        if self.policy == SyncPolicy::Never || self.durable.load(Ordering::Acquire) >= lsn {
            return Ok(());
        }
        let _leader = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        if self.durable.load(Ordering::Acquire) >= lsn {
            return Ok(());
        }
        let (file, upto) = {
            let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            (w.file.try_clone(), w.next_lsn - 1)
        };
        let synced = file.and_then(|f| f.sync_data());
        match synced {
            Ok(()) => {
                self.durable.fetch_max(upto, Ordering::AcqRel);
                self.failing.store(false, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.failing.store(true, Ordering::Relaxed);
                Err(io_err(&self.dir)(e))
            }
        }
    }

    /// Closes the current segment (synced) and starts a new one. Returns the
    /// highest LSN in the closed segments: once a checkpoint that started after
    /// this call is on disk, [`Wal::truncate`] with it drops them.
    ///
    /// # Errors
    /// If the old segment cannot be synced or the new one created.
    pub fn rotate(&self) -> Result<u64, StorageError> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let last = w.next_lsn - 1;
        w.file.sync_data().map_err(io_err(&self.dir))?;
        self.durable.fetch_max(last, Ordering::AcqRel);
        if w.bytes > 0 {
            w.file = Self::create_segment(&self.dir, w.next_lsn)?;
            w.bytes = 0;
        }
        Ok(last)
    }

    /// Removes the segments whose records all have LSNs up to `upto` (never the
    /// one being written). Returns how many were removed.
    ///
    /// # Errors
    /// If the directory cannot be listed.
    pub fn truncate(&self, upto: u64) -> Result<usize, StorageError> {
        let current = self.writer.lock().unwrap_or_else(|p| p.into_inner()).next_lsn;
        let segs = segments(&self.dir)?;
        let mut removed = 0;
        for (i, (_, path)) in segs.iter().enumerate() {
            // A segment ends where the next one starts.
            let next_first = segs.get(i + 1).map_or(current, |(first, _)| *first);
            if next_first <= upto + 1 && next_first <= current && i + 1 < segs.len() {
                std::fs::remove_file(path).map_err(io_err(path))?;
                removed += 1;
            }
        }
        if removed > 0 {
            sync_dir(&self.dir);
        }
        Ok(removed)
    }

    /// Bytes in all segments on disk.
    pub fn disk_bytes(&self) -> u64 {
        segments(&self.dir)
            .map(|s| s.iter().filter_map(|(_, p)| p.metadata().ok()).map(|m| m.len()).sum())
            .unwrap_or(0)
    }
}

/// Flushes a directory's entries (new, renamed and removed files) to disk.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("anomalyd-wal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn records(dir: &Path) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        let _ = Wal::open(dir, SyncPolicy::Always, 0, |l, p| out.push((l, p.to_vec()))).unwrap();
        out
    }

    #[test]
    fn records_come_back_in_order_across_reopens() {
        let dir = tmp("order");
        let (wal, _) = Wal::open(&dir, SyncPolicy::Always, 0, |_, _| {}).unwrap();
        let a = wal.append(b"one").unwrap();
        let b = wal.append(b"two").unwrap();
        wal.sync_to(b).unwrap();
        assert_eq!((a, b), (1, 2));
        drop(wal);
        let (wal, _) = Wal::open(&dir, SyncPolicy::Always, 0, |_, _| {}).unwrap();
        assert_eq!(wal.append(b"three").unwrap(), 3, "LSNs go on after a restart");
        drop(wal);
        let got = records(&dir);
        let got: Vec<(u64, &[u8])> = got.iter().map(|(l, p)| (*l, p.as_slice())).collect();
        assert_eq!(got, vec![(1, &b"one"[..]), (2, b"two"), (3, b"three")]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_tail_is_skipped_and_later_records_survive() {
        let dir = tmp("torn");
        let (wal, _) = Wal::open(&dir, SyncPolicy::Always, 0, |_, _| {}).unwrap();
        wal.append(b"kept").unwrap();
        wal.append(b"torn away").unwrap();
        drop(wal);
        let (_, seg) = segments(&dir).unwrap().pop().unwrap();
        let len = std::fs::metadata(&seg).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let (wal, torn) = Wal::open(&dir, SyncPolicy::Always, 0, |_, _| {}).unwrap();
        assert_eq!(torn, HEADER + 9 - 3);
        wal.append(b"after").unwrap();
        drop(wal);
        let got: Vec<Vec<u8>> = records(&dir).into_iter().map(|(_, p)| p).collect();
        assert_eq!(got, vec![b"kept".to_vec(), b"after".to_vec()]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn truncate_drops_only_segments_a_checkpoint_covers() {
        let dir = tmp("truncate");
        let (wal, _) = Wal::open(&dir, SyncPolicy::Always, 0, |_, _| {}).unwrap();
        wal.append(b"a").unwrap();
        let cut = wal.rotate().unwrap();
        wal.append(b"b").unwrap();
        assert_eq!(wal.truncate(cut).unwrap(), 1);
        assert_eq!(wal.truncate(cut).unwrap(), 0, "the segment being written stays");
        drop(wal);
        let got: Vec<Vec<u8>> = records(&dir).into_iter().map(|(_, p)| p).collect();
        assert_eq!(got, vec![b"b".to_vec()]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn numbering_goes_on_after_a_checkpoint_emptied_the_log() {
        let dir = tmp("renumber");
        let (wal, _) = Wal::open(&dir, SyncPolicy::Always, 0, |_, _| {}).unwrap();
        wal.append(b"a").unwrap();
        let cut = wal.rotate().unwrap();
        assert_eq!(wal.truncate(cut).unwrap(), 1);
        drop(wal);
        // Only the empty segment the rotation started is left: a snapshot holds
        // record 1, so a new record numbered 1 again would be skipped on replay.
        let (wal, _) = Wal::open(&dir, SyncPolicy::Always, 0, |_, _| {}).unwrap();
        assert_eq!(wal.append(b"b").unwrap(), 2);
        drop(wal);
        let (wal, _) = Wal::open(&tmp("renumber-empty"), SyncPolicy::Always, 41, |_, _| {}).unwrap();
        assert_eq!(wal.append(b"c").unwrap(), 42, "numbered after what the snapshots hold");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn scan_never_panics_on_damage() {
        let mut bytes = frame(7, b"hello");
        bytes.extend(frame(8, b"world"));
        for cut in 0..bytes.len() {
            let n = scan(&bytes[..cut], |_, _| {}).records;
            assert!(n <= 2);
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            let n = scan(&b, |_, _| {}).records;
            assert!(n < 2, "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn concurrent_appends_share_syncs_and_all_survive() {
        let dir = tmp("group");
        let (wal, _) = Wal::open(&dir, SyncPolicy::Always, 0, |_, _| {}).unwrap();
        let wal = std::sync::Arc::new(wal);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let wal = wal.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let lsn = wal.append(format!("{t}:{i}").as_bytes()).unwrap();
                        wal.sync_to(lsn).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(wal);
        let got = records(&dir);
        assert_eq!(got.len(), 200);
        assert!(
            got.windows(2).all(|w| w[0].0 + 1 == w[1].0),
            "LSNs are dense and ordered"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
