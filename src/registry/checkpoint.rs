//! Checkpoints: a round stages every changed stream's files (weights once per
//! model version, then the state that names them), makes them durable with one
//! sync, renames them in order, and only then lets the log segments they cover go.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::stream::Stream;
use super::{Registry, lock};
use crate::storage::wal::Wal;
use crate::storage::{StorageError, snapshot};

/// A staged file: (temporary, target).
pub(super) type StagedFile = (std::path::PathBuf, std::path::PathBuf);

/// A stream whose snapshot is staged: the change it covers from `since`, and the
/// model file (version, path) its state names.
pub(super) struct Taken {
    stream: Arc<Stream>,
    since: u64,
    model: Option<(u64, std::path::PathBuf)>,
}

/// Stages a stream's files for a checkpoint: its model's weights first when the
/// snapshot carries them (to `model`, a new file), then its state, which names
/// `model`. Returns the (temporary, target) pairs, in that order:
/// [`snapshot::commit`] renames them in order, so a state never names a model
/// file that is not in place.
pub(super) fn stage_stream(
    dir: &std::path::Path,
    id: &str,
    lsn: u64,
    model: Option<&std::path::Path>,
    snap: &crate::detector::DetectorSnapshot,
) -> Result<Vec<(std::path::PathBuf, std::path::PathBuf)>, StorageError> {
    let mut files = Vec::with_capacity(2);
    if let Some(path) = model
        && !snap.members.is_empty()
    {
        let tmp = snapshot::stage(path, &snapshot::encode_model(&snap.members)?)?;
        files.push((tmp, path.to_path_buf()));
    }
    let name = model.and_then(|p| p.file_name()).and_then(|n| n.to_str());
    let target = snapshot::stream_file(dir, id);
    match snapshot::encode(id, lsn, snap, name).and_then(|b| snapshot::stage(&target, &b)) {
        Ok(tmp) => files.push((tmp, target)),
        Err(e) => {
            for (tmp, _) in &files {
                let _ = std::fs::remove_file(tmp);
            }
            return Err(e);
        }
    }
    Ok(files)
}

impl Registry {
    /// Snapshots every `interval` on the blocking pool until the returned handle is
    /// aborted. Errors are logged and counted; the next round retries.
    pub fn spawn_snapshotter(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let registry = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                let r = registry.clone();
                match tokio::task::spawn_blocking(move || r.snapshot()).await {
                    Ok(Ok(n)) if n > 0 => tracing::info!(streams = n, "snapshot round written"),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "snapshot failed"),
                    Err(e) => tracing::error!(error = %e, "snapshot task failed"),
                }
            }
        })
    }

    pub(super) fn streams_dir(&self) -> Option<PathBuf> {
        self.config.data_dir.as_ref().map(|d| d.join("streams"))
    }

    /// Whether the service can keep its promises: the log takes writes and the
    /// last snapshot round wrote everything (what `/readyz` reports).
    pub fn storage_ready(&self) -> Result<(), &'static str> {
        if self.wal.as_ref().is_some_and(Wal::failing) {
            return Err("the write-ahead log cannot be written");
        }
        if !self.rounds_ok.load(Ordering::Relaxed) {
            return Err("the last snapshot round failed");
        }
        Ok(())
    }

    /// A checkpoint: writes a snapshot of every changed stream (and the journal),
    /// removes the files of deleted streams, and once all of that is on disk drops
    /// the log segments it covers. A stream that cannot be written stays dirty
    /// and the round goes on with the others; the log then keeps its records.
    /// Returns the number of streams written. Blocking.
    pub fn snapshot(&self) -> Result<usize, StorageError> {
        let Some(dir) = self.streams_dir() else { return Ok(0) };
        let _round = lock(&self.round);
        let start = Instant::now();
        let result = self.checkpoint(&dir);
        let ok = result.as_ref().is_ok_and(|(_, failed)| *failed == 0);
        self.rounds_ok.store(ok, Ordering::Relaxed);
        self.metrics.snapshot_duration.observe(start.elapsed().as_secs_f64());
        if ok {
            self.metrics.snapshot_last_success.set(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64()),
            );
        }
        let (written, failed) = result?;
        if failed > 0 {
            return Err(StorageError::Io {
                path: dir.display().to_string(),
                source: std::io::Error::other(format!("{failed} stream snapshots could not be written")),
            });
        }
        Ok(written)
    }

    /// One round's work; returns (streams written, streams that failed).
    pub(super) fn checkpoint(&self, dir: &std::path::Path) -> Result<(usize, usize), StorageError> {
        std::fs::create_dir_all(dir).map_err(|source| StorageError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        // Everything logged up to `cut` is already in memory: the snapshots taken
        // below include it.
        let cut = self.wal.as_ref().map(Wal::rotate).transpose()?;
        let streams: Vec<Arc<Stream>> = self.all_streams();
        // The streams whose oldest unsaved change is oldest go first, at most
        // `checkpoint_max_streams` of them: a round's work is bounded however many
        // streams changed, and the log keeps what the others still need.
        let mut dirty: Vec<(u64, Arc<Stream>)> = streams
            .iter()
            .filter_map(|s| {
                let st = lock(&s.state);
                st.dirty.filter(|_| !st.deleted).map(|d| (d, s.clone()))
            })
            .collect();
        dirty.sort_unstable_by_key(|(d, _)| *d);
        dirty.truncate(self.config.checkpoint_max_streams.max(1));
        let (mut staged, mut taken, mut failed) = (Vec::new(), Vec::new(), 0);
        for (_, s) in dirty {
            match self.stage_dirty(dir, &s) {
                Ok(Some((files, t))) => {
                    staged.extend(files);
                    taken.push(t);
                }
                Ok(None) => {}
                Err(()) => failed += 1,
            }
        }
        self.commit_taken(dir, &staged, &mut taken)?;
        let tombstones = std::mem::take(&mut *lock(&self.tombstones));
        for (id, model) in tombstones {
            if self.get(&id).is_none() {
                let _ = std::fs::remove_file(snapshot::stream_file(dir, &id));
                if let Some(file) = model {
                    let _ = std::fs::remove_file(file);
                }
            }
        }
        let journal = self.journal.to_json();
        let mut framed = journal.clone();
        framed.extend_from_slice(&crc32fast::hash(&journal).to_le_bytes());
        crate::storage::write_atomic(&dir.with_file_name("alerts.json.crc"), &framed)?;
        if let (Some(wal), Some(cut)) = (&self.wal, cut) {
            // The log is needed from the oldest change still not on disk.
            let oldest = self
                .streams
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .filter_map(|s| lock(&s.state).dirty)
                .min();
            let upto = oldest.map_or(cut, |o| cut.min(o.saturating_sub(1)));
            wal.truncate(upto)?;
        }
        Ok((taken.len(), failed))
    }

    /// Stages one stream's snapshot if it has unsaved changes (`None`: it has
    /// none, or was deleted). On failure the stream stays dirty for a later round.
    pub(super) fn stage_dirty(
        &self,
        dir: &std::path::Path,
        s: &Arc<Stream>,
    ) -> Result<Option<(Vec<StagedFile>, Taken)>, ()> {
        let (lsn, since, model, snap) = {
            let mut st = lock(&s.state);
            let Some(since) = st.dirty.take() else { return Ok(None) };
            if st.deleted {
                return Ok(None);
            }
            // The weights only when this model's are not on disk yet (then to a
            // new file); otherwise the state names the file they are in.
            let model = st.detector.model().map(|m| match &st.model_saved {
                Some((v, file)) if *v == m.version => (m.version, file.clone(), false),
                _ => (m.version, snapshot::new_model_file(dir, &s.id, m.version), true),
            });
            let weights = model.as_ref().is_some_and(|m| m.2);
            (st.lsn, since, model, st.detector.snapshot_with(weights))
        };
        match stage_stream(dir, &s.id, lsn, model.as_ref().map(|m| m.1.as_path()), &snap) {
            Ok(files) => Ok(Some((
                files,
                Taken {
                    stream: s.clone(),
                    since,
                    model: model.map(|(v, file, _)| (v, file)),
                },
            ))),
            Err(e) => {
                tracing::error!(stream = %s.id, error = %e, "stream snapshot failed");
                lock(&s.state).touch(since);
                self.metrics.snapshots.with_label_values(&["error"]).inc();
                Err(())
            }
        }
    }

    /// Puts staged snapshots in place. On failure every stream in `taken` is
    /// dirty again; on success each state notes the model file it now names, and
    /// the file it named before goes.
    pub(super) fn commit_taken(
        &self,
        dir: &std::path::Path,
        staged: &[StagedFile],
        taken: &mut [Taken],
    ) -> Result<(), StorageError> {
        if let Err(e) = snapshot::commit(dir, staged) {
            for t in taken.iter() {
                lock(&t.stream.state).touch(t.since);
            }
            for (tmp, _) in staged {
                let _ = std::fs::remove_file(tmp);
            }
            self.metrics
                .snapshots
                .with_label_values(&["error"])
                .inc_by(taken.len() as u64);
            return Err(e);
        }
        self.metrics
            .snapshots
            .with_label_values(&["ok"])
            .inc_by(taken.len() as u64);
        // (Any older model file, left by a crash, goes at the next start.)
        for t in taken.iter_mut() {
            let mut st = lock(&t.stream.state);
            if st.model_saved != t.model {
                if let Some((_, old)) = st.model_saved.take() {
                    let _ = std::fs::remove_file(old);
                }
                st.model_saved = t.model.take();
            }
        }
        Ok(())
    }

    /// Writes one stream's snapshot now, outside the rounds: after a model is
    /// installed, so that a crash before the next round does not cost the model
    /// (the log holds readings, not models). A failure is logged and the stream
    /// stays dirty: the next round tries again.
    pub(super) fn save_now(&self, s: &Arc<Stream>) {
        let Some(dir) = self.streams_dir() else { return };
        let _round = lock(&self.round);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::error!(stream = %s.id, error = %e, "stream snapshot failed");
            return;
        }
        if let Ok(Some((files, t))) = self.stage_dirty(&dir, s)
            && let Err(e) = self.commit_taken(&dir, &files, &mut [t])
        {
            tracing::error!(stream = %s.id, error = %e, "stream snapshot failed");
        }
    }

    /// Streams with changes not yet in their snapshot.
    pub fn dirty_streams(&self) -> usize {
        self.streams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|s| lock(&s.state).dirty.is_some())
            .count()
    }
}
