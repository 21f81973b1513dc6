//! Start-up: the journal and the snapshots are loaded (damaged files moved aside
//! and counted), then the write-ahead log is replayed over them and opened for
//! appending.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::log::Record;
use super::stream::{Stream, accept_into, backfill_before, backfill_into, reconfigure, replay_reading, reset_into};
use super::{Registry, lock};
use crate::detector::Detector;
use crate::storage::snapshot;
use crate::storage::wal::Wal;

impl Registry {
    /// Loads the snapshots, then replays the write-ahead log over them and opens
    /// it for appending.
    pub(super) fn load(&mut self) -> Result<(), String> {
        let Some(dir) = self.streams_dir() else { return Ok(()) };
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let cleaned = snapshot::clean_dir(&dir, Duration::from_secs(7 * 86_400));
        if cleaned > 0 {
            tracing::info!(files = cleaned, "removed leftovers of an unfinished snapshot round");
        }
        self.load_journal(&dir);
        self.load_snapshots(&dir)?;
        let wal_dir = dir.with_file_name("wal");
        let mut replayed = 0usize;
        // New records are numbered after every record a snapshot holds, or replay
        // would take them for records the snapshot already has.
        let held = self
            .streams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|s| lock(&s.state).lsn)
            .max()
            .unwrap_or(0);
        let (wal, torn) = Wal::open(
            &wal_dir,
            self.config.wal_sync,
            held,
            |lsn, payload| match Record::decode(payload) {
                Ok(record) => {
                    self.replay(lsn, record);
                    replayed += 1;
                }
                Err(e) => tracing::error!(lsn, error = %e, "unreadable log record skipped"),
            },
        )
        .map_err(|e| e.to_string())?;
        if torn > 0 {
            self.metrics.corrupt_snapshots.inc();
        }
        tracing::info!(records = replayed, torn_bytes = torn, "write-ahead log replayed");
        for s in self.streams.read().unwrap_or_else(|p| p.into_inner()).values() {
            s.note_phase(&lock(&s.state));
        }
        self.wal = Some(wal);
        self.settle_shards();
        Ok(())
    }

    pub(super) fn load_journal(&self, dir: &std::path::Path) {
        let journal_path = dir.with_file_name("alerts.json.crc");
        if let Ok(bytes) = std::fs::read(&journal_path) {
            let ok = bytes.len() >= 4 && {
                let (body, crc) = bytes.split_at(bytes.len() - 4);
                crc32fast::hash(body) == u32::from_le_bytes(crc.try_into().expect("4"))
                    && self.journal.load_json(body).is_ok()
            };
            if !ok {
                tracing::error!(path = %journal_path.display(), "alert journal is damaged; moved aside, starting empty");
                let _ = std::fs::rename(&journal_path, journal_path.with_extension("corrupt"));
                self.metrics.corrupt_snapshots.inc();
            }
        }
    }

    pub(super) fn load_snapshots(&self, dir: &std::path::Path) -> Result<(), String> {
        let mut map = self.streams.write().unwrap_or_else(|p| p.into_inner());
        let mut models = std::collections::HashSet::new();
        for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("snap") {
                continue;
            }
            let loaded = snapshot::read(&path).map_err(|e| e.to_string()).and_then(|l| {
                if let Some((mpath, e)) = &l.model_lost {
                    tracing::error!(path = %mpath.display(), error = %e, "model file lost: the stream loads without its model and retrains");
                    if mpath.exists() {
                        let _ = std::fs::rename(mpath, mpath.with_extension("corrupt"));
                    }
                    self.metrics.corrupt_snapshots.inc();
                }
                let lost = l.model_lost.is_some();
                Detector::restore(l.snapshot)
                    .map(|d| (l.stream, l.lsn, d, l.model, lost))
                    .map_err(|e| e.to_string())
            });
            match loaded {
                Ok((id, lsn, detector, model, lost)) => {
                    let version = detector.model().map(|m| m.version);
                    let saved = version.zip(model.clone());
                    // A format-1 file holds its weights inline: the next checkpoint
                    // writes them to a model file. A state whose model was lost is
                    // rewritten without it.
                    let dirty = lost || (model.is_none() && version.is_some());
                    let stream = Stream::new(&id, detector, dirty, lsn);
                    if let Some(m) = model {
                        models.insert(m);
                    }
                    lock(&stream.state).model_saved = saved;
                    map.insert(id, stream);
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "damaged snapshot moved aside, not loaded");
                    let _ = std::fs::rename(&path, path.with_extension("corrupt"));
                    self.metrics.corrupt_snapshots.inc();
                }
            }
        }
        // Model files no state names: a crash between a round's renames and its
        // clean-up, or the files of streams moved aside.
        let orphans = snapshot::remove_models_except(dir, &models);
        tracing::info!(streams = map.len(), orphan_models = orphans, dir = %dir.display(), "loaded snapshots");
        Ok(())
    }

    /// Applies one log record at start-up. A stream's records up to the LSN its
    /// snapshot includes are skipped; events the replay raises are not journalled
    /// again (the journal's own records bring them back with their numbers).
    pub(super) fn replay(&self, lsn: u64, record: Record) {
        let mut map = self.streams.write().unwrap_or_else(|p| p.into_inner());
        let behind = |map: &HashMap<String, Arc<Stream>>, id: &str| -> Option<Arc<Stream>> {
            let s = map.get(id).cloned()?;
            let is_behind = lock(&s.state).lsn < lsn;
            is_behind.then_some(s)
        };
        match record {
            Record::Readings { history, readings } => {
                // Which of the record's streams are behind it (decided once per stream).
                let mut todo: HashMap<String, Option<Arc<Stream>>> = HashMap::new();
                for r in readings {
                    let entry = todo
                        .entry(r.stream.clone())
                        .or_insert_with(|| match map.get(&r.stream) {
                            Some(s) => (lock(&s.state).lsn < lsn).then(|| s.clone()),
                            None => Detector::new(self.config.default_detector.clone()).ok().map(|d| {
                                let s = Stream::new(&r.stream, d, true, 0);
                                map.insert(r.stream.clone(), s.clone());
                                s
                            }),
                        });
                    let Some(stream) = entry else { continue };
                    replay_reading(&mut lock(&stream.state), &r, history, lsn);
                }
            }
            Record::Alerts(alerts) => {
                for a in alerts {
                    self.journal.restore(a);
                }
            }
            Record::Put { stream, config } => {
                if let Some(s) = behind(&map, &stream) {
                    let mut st = lock(&s.state);
                    if reconfigure(&mut st, *config).is_ok() {
                        st.lsn = lsn;
                        st.touch(lsn);
                    }
                } else if !map.contains_key(&stream)
                    && let Ok(d) = Detector::new(*config)
                {
                    map.insert(stream.clone(), Stream::new(&stream, d, true, lsn));
                }
            }
            Record::Delete(id) => {
                if let Some(s) = behind(&map, &id) {
                    map.remove(&id);
                    let model = lock(&s.state).model_saved.take().map(|(_, file)| file);
                    lock(&self.tombstones).push((id, model));
                }
            }
            Record::Accept(id) => {
                if let Some(s) = behind(&map, &id) {
                    let mut st = lock(&s.state);
                    let _ = accept_into(&id, &mut st);
                    st.lsn = lsn;
                    st.touch(lsn);
                }
            }
            Record::Backfill(past) => {
                let Some(id) = past.first().map(|r| r.stream.clone()) else {
                    return;
                };
                if let Some(s) = behind(&map, &id) {
                    let mut st = lock(&s.state);
                    if backfill_before(&st.detector).is_some() {
                        backfill_into(&mut st, &past);
                    }
                    st.lsn = lsn;
                    st.touch(lsn);
                }
            }
            Record::Adopt(state) => replay_adopt(&mut map, lsn, &state),
            Record::Reset(id) => {
                if let Some(s) = behind(&map, &id) {
                    let mut st = lock(&s.state);
                    let _ = reset_into(&id, &mut st);
                    st.lsn = lsn;
                    st.touch(lsn);
                }
            }
        }
    }
}

/// Replays a stream taken from a shard archive: it replaces an older one.
fn replay_adopt(map: &mut HashMap<String, Arc<Stream>>, lsn: u64, state: &[u8]) {
    match snapshot::decode(state).map(|d| (d.stream, Detector::restore(d.snapshot))) {
        Ok((id, Ok(detector))) => {
            if map.get(&id).is_none_or(|s| lock(&s.state).lsn < lsn) {
                map.insert(id.clone(), Stream::new(&id, detector, true, lsn));
            }
        }
        Ok((id, Err(e))) => tracing::error!(lsn, stream = %id, error = %e, "adopted stream could not be restored"),
        Err(e) => tracing::error!(lsn, error = %e, "adopted stream's state is damaged"),
    }
}
