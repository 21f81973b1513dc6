//! Ingest: a batch of readings validated in full, logged, then applied stream by
//! stream under the streams' locks (taken in id order), its incident events
//! journalled under those locks, and answered once the log is durable.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Instant;

use super::log::{self, Record};
use super::shards::Route;
use super::stream::{Stream, StreamState};
use super::{Alert, AlertKind, Reading, Registry, RegistryError, SeriesLabels, lock, try_lock, validate_stream_id};
use crate::detector::{Detector, ReadingError, Verdict};
use crate::timestamp::Micros;

/// How a batch's readings are taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// Scored (client API).
    Live,
    /// Learnt as known-normal history.
    History,
    /// Scored; resent samples skipped (Prometheus remote_write).
    Remote,
}

/// A batch's streams in id order, and those the batch created.
pub(super) type Resolved = (Vec<Arc<Stream>>, Vec<Arc<Stream>>);

/// The batch's stream ids, sorted (the lock order), and which readings go to each.
#[allow(clippy::type_complexity)]
pub(super) fn group_by_stream(readings: &[Reading]) -> Result<(Vec<&str>, HashMap<&str, Vec<usize>>), RegistryError> {
    let mut per_stream: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, r) in readings.iter().enumerate() {
        validate_stream_id(&r.stream).map_err(RegistryError::StreamId)?;
        per_stream.entry(&r.stream).or_default().push(i);
    }
    let mut ids: Vec<&str> = per_stream.keys().copied().collect();
    ids.sort_unstable();
    Ok((ids, per_stream))
}

/// A batch being taken: its readings, its stream ids in lock order, which
/// readings go to each, and how they are taken.
struct Batch<'a> {
    readings: &'a [Reading],
    ids: &'a [&'a str],
    per_stream: &'a HashMap<&'a str, Vec<usize>>,
    mode: Mode,
}

/// Drops resent samples (at or before their stream's newest) from `per_stream`,
/// under the streams' locks, so a retry racing its original is taken once.
fn drop_resent<'a>(
    readings: &[Reading],
    ids: &[&'a str],
    per_stream: &mut HashMap<&'a str, Vec<usize>>,
    guards: &[MutexGuard<'_, StreamState>],
) {
    for (id, g) in ids.iter().zip(guards) {
        let mut last = g.detector.last_timestamp();
        per_stream.get_mut(id).expect("grouped").retain(|&i| {
            let fresh = last.is_none_or(|l| readings[i].timestamp > l);
            if fresh {
                last = Some(readings[i].timestamp);
            }
            fresh
        });
    }
}

/// What a remote_write batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteTaken {
    /// Samples scored.
    pub scored: usize,
    /// Samples skipped as resent (at or before their stream's newest).
    pub resent: usize,
    /// Samples of new series left out at the stream limit.
    pub refused: usize,
    /// Samples of new series of shards this node does not own, left out.
    pub not_owned: usize,
}

impl Registry {
    /// Scores a batch of readings, in order. The batch is validated first (stream
    /// ids, widths, finiteness, timestamp order, the stream limit); if anything is
    /// wrong nothing is applied. New streams are created with the default config.
    /// Blocking: call it off the async runtime.
    pub fn ingest(&self, readings: &[Reading]) -> Result<Vec<(String, Verdict)>, RegistryError> {
        self.take(readings, Mode::Live, None)
    }

    /// Scores Prometheus remote_write samples: like [`Registry::ingest`], but a
    /// sample at or before its stream's newest timestamp is a resend (Prometheus
    /// retries whole requests) and is skipped, not scored again nor refused.
    /// `labels` gives each stream's series labels (for `/metrics/scores`).
    /// Returns (samples scored, samples skipped as resent).
    pub fn ingest_remote(&self, readings: &[Reading], labels: &SeriesLabels) -> Result<RemoteTaken, RegistryError> {
        for _ in 0..3 {
            let (kept, refused, not_owned) = self.within_stream_limit(readings, labels);
            match self.take(&kept, Mode::Remote, Some(labels)) {
                // Another batch took the room meanwhile: count again.
                Err(RegistryError::TooManyStreams(_)) => continue,
                Err(e) => return Err(e),
                Ok(results) => {
                    return Ok(RemoteTaken {
                        scored: results.len(),
                        resent: kept.len() - results.len(),
                        refused,
                        not_owned,
                    });
                }
            }
        }
        Err(RegistryError::Contended)
    }

    /// The readings of a batch this node takes: every existing stream's, and new
    /// streams' of its own shards up to the limit (the first ids in order); and
    /// how many were left out at the limit, and as another node's.
    fn within_stream_limit<'a>(
        &self,
        readings: &'a [Reading],
        series: &'a SeriesLabels,
    ) -> (Cow<'a, [Reading]>, usize, usize) {
        // One look-up a series (the batch's series are its labels' keys), not a reading.
        let map = self.streams.read().unwrap_or_else(|p| p.into_inner());
        let mut new: Vec<&str> = series
            .keys()
            .map(String::as_str)
            .filter(|id| !map.contains_key(*id))
            .collect();
        new.sort_unstable();
        let free = self.config.max_streams.saturating_sub(map.len());
        drop(map);
        let (mine, foreign): (Vec<&str>, Vec<&str>) = new.into_iter().partition(|id| self.owns(id).is_ok());
        if mine.len() <= free && foreign.is_empty() {
            return (Cow::Borrowed(readings), 0, 0);
        }
        let over: std::collections::HashSet<&str> = mine.iter().skip(free).copied().collect();
        let foreign: std::collections::HashSet<&str> = foreign.into_iter().collect();
        let (mut at_limit, mut not_owned) = (0, 0);
        let kept: Vec<Reading> = readings
            .iter()
            .filter(|r| {
                let id = r.stream.as_str();
                at_limit += usize::from(over.contains(id));
                not_owned += usize::from(foreign.contains(id));
                !over.contains(id) && !foreign.contains(id)
            })
            .cloned()
            .collect();
        (Cow::Owned(kept), at_limit, not_owned)
    }

    /// Whether this node may hold stream `id` (its shard is one it owns).
    pub(super) fn owns(&self, id: &str) -> Result<(), RegistryError> {
        let stream = id.to_string();
        match self.route(id) {
            Route::Here => Ok(()),
            Route::Moving(shard) => Err(RegistryError::Moving { stream, shard }),
            Route::Moved(shard, _) | Route::Elsewhere(shard) => Err(RegistryError::NotOwned { stream, shard }),
        }
    }

    /// Teaches streams readings known to be normal (their history), validated and
    /// applied like [`Registry::ingest`]: they are learnt, never anomalous, raise
    /// no incident, and each stream then queues a training job. Blocking.
    pub fn history(&self, readings: &[Reading]) -> Result<Vec<(String, Verdict)>, RegistryError> {
        self.take(readings, Mode::History, None)
    }

    /// Takes a batch in `mode`: resolve (and create) its streams, lock them in id
    /// order, validate and log the batch, apply it, journal its events, and wait
    /// for the log. A stream deleted between resolving and locking it is resolved
    /// again (three times at most).
    pub(super) fn take(
        &self,
        readings: &[Reading],
        mode: Mode,
        labels: Option<&SeriesLabels>,
    ) -> Result<Vec<(String, Verdict)>, RegistryError> {
        let (ids, mut per_stream) = group_by_stream(readings)?;
        for _ in 0..3 {
            let (streams, created) = self.resolve(&ids, readings.len())?;
            // One global lock order: stream id. The map lock is never taken while a
            // stream lock is held.
            let mut guards: Vec<_> = streams.iter().map(|s| lock(&s.state)).collect();
            if guards.iter().any(|g| g.deleted) {
                drop(guards);
                self.remove_unused(&created);
                continue;
            }
            if mode == Mode::Remote {
                drop_resent(readings, &ids, &mut per_stream, &guards);
            }
            let batch = Batch {
                readings,
                ids: &ids,
                per_stream: &per_stream,
                mode,
            };
            let lsn = match self.check_and_log(&batch, &guards) {
                Ok(lsn) => lsn,
                Err(e) => {
                    drop(guards);
                    self.remove_unused(&created);
                    return Err(e);
                }
            };
            let (results, alerts) = self.apply_all(&batch, &streams, &mut guards, lsn, labels);
            // Still under the stream locks: one stream's events keep their order.
            let alerts_lsn = self.record_events(alerts);
            drop(guards);
            self.metrics.readings_ingested.inc_by(results.len() as u64);
            self.make_durable(lsn.max(alerts_lsn?))?;
            return Ok(results);
        }
        Err(RegistryError::Contended)
    }

    /// Validates every stream's readings of the batch under its lock, then logs the
    /// batch (before anything is applied: a batch the log refuses changes nothing).
    fn check_and_log(&self, batch: &Batch<'_>, guards: &[MutexGuard<'_, StreamState>]) -> Result<u64, RegistryError> {
        let readings = batch.readings;
        batch.ids.iter().zip(guards).try_for_each(|(id, g)| {
            let (width, last) = (g.detector.n_features(), g.detector.last_timestamp());
            let config = g.detector.config();
            self.validate_stream(readings, &batch.per_stream[id], id, (width, config), last)
        })?;
        if batch.mode == Mode::Remote {
            // Only the readings kept (resends dropped), without copying them.
            let kept = batch
                .ids
                .iter()
                .flat_map(|id| batch.per_stream[id].iter().map(|&i| &readings[i]));
            self.log(&log::encode_readings(false, kept))
        } else {
            self.log(&log::encode_readings(batch.mode == Mode::History, readings))
        }
    }

    /// Applies the logged batch (at `lsn`) stream by stream; returns the verdicts in
    /// the batch's order and the alerts raised.
    fn apply_all(
        &self,
        batch: &Batch<'_>,
        streams: &[Arc<Stream>],
        guards: &mut [MutexGuard<'_, StreamState>],
        lsn: u64,
        labels: Option<&SeriesLabels>,
    ) -> (Vec<(String, Verdict)>, Vec<Alert>) {
        let mut results: Vec<Option<(String, Verdict)>> = vec![None; batch.readings.len()];
        let mut alerts = Vec::new();
        let history = batch.mode == Mode::History;
        for ((id, stream), g) in batch.ids.iter().zip(streams).zip(guards.iter_mut()) {
            g.lsn = lsn;
            let indices = &batch.per_stream[id];
            self.apply(
                batch.readings,
                indices,
                id,
                stream,
                g,
                history,
                &mut results,
                &mut alerts,
            );
            if let Some(l) = labels.and_then(|l| l.get(*id)) {
                let mut meta = lock(&stream.meta);
                if meta.labels.as_deref() != Some(&l[..]) {
                    meta.labels = Some(l.clone());
                }
            }
        }
        (results.into_iter().flatten().collect(), alerts)
    }

    /// Appends a record to the write-ahead log; its LSN (0 without a log).
    pub(super) fn log(&self, record: &[u8]) -> Result<u64, RegistryError> {
        let Some(wal) = &self.wal else { return Ok(0) };
        wal.append(record).map_err(|e| {
            self.metrics.storage_errors.with_label_values(&["wal_append"]).inc();
            tracing::error!(error = %e, "write-ahead log append failed");
            RegistryError::Storage(e.to_string())
        })
    }

    /// Waits until the log is durable up to `lsn` (group commit: one sync serves
    /// every request waiting), then broadcasts the alerts it holds.
    pub(super) fn make_durable(&self, lsn: u64) -> Result<(), RegistryError> {
        if let Some(wal) = &self.wal {
            wal.sync_to(lsn).map_err(|e| {
                self.metrics.storage_errors.with_label_values(&["wal_sync"]).inc();
                tracing::error!(error = %e, "write-ahead log sync failed");
                RegistryError::Storage(e.to_string())
            })?;
        }
        self.journal.publish(lsn);
        Ok(())
    }

    /// The streams of `ids` (sorted), creating the missing ones with the default
    /// config; the stream limit is checked under the lock that inserts them.
    /// Returns them in `ids` order, and the ones this call created.
    pub(super) fn resolve(&self, ids: &[&str], n_readings: usize) -> Result<Resolved, RegistryError> {
        let found: Vec<Option<Arc<Stream>>> = ids.iter().map(|id| self.get(id)).collect();
        if found.iter().all(Option::is_some) {
            return Ok((found.into_iter().flatten().collect(), Vec::new()));
        }
        // A node never creates a stream of a shard it does not own.
        for (id, _) in ids.iter().zip(&found).filter(|(_, f)| f.is_none()) {
            if let Err(e) = self.owns(id) {
                let reason = match e {
                    RegistryError::Moving { .. } => "shard_moving",
                    _ => "not_owned",
                };
                self.metrics
                    .readings_rejected
                    .with_label_values(&[reason])
                    .inc_by(n_readings as u64);
                return Err(e);
            }
        }
        let mut fresh: Vec<Arc<Stream>> = Vec::new();
        for (id, f) in ids.iter().zip(&found) {
            if f.is_none() {
                fresh.push(Stream::new(
                    id,
                    Detector::new(self.config.default_detector.clone())?,
                    true,
                    0,
                ));
            }
        }
        let mut map = self.streams.write().unwrap_or_else(|p| p.into_inner());
        let need = ids.iter().filter(|id| !map.contains_key(**id)).count();
        if map.len() + need > self.config.max_streams {
            self.metrics
                .readings_rejected
                .with_label_values(&["stream_limit"])
                .inc_by(n_readings as u64);
            return Err(RegistryError::TooManyStreams(self.config.max_streams));
        }
        let mut created = Vec::new();
        let mut fresh = fresh.into_iter();
        let streams = ids
            .iter()
            .zip(found)
            .map(|(id, f)| match f {
                Some(s) => s,
                None => {
                    let stream = fresh.next().expect("one fresh stream per missing id");
                    let entry = map.entry(id.to_string()).or_insert_with(|| stream.clone());
                    if Arc::ptr_eq(entry, &stream) {
                        tracing::info!(stream = %id, "stream created by its first reading");
                        created.push(stream);
                    }
                    entry.clone()
                }
            })
            .collect();
        Ok((streams, created))
    }

    /// Removes streams this call created that took no reading (a failed batch
    /// leaves nothing behind). Map lock, then stream lock: the only nesting.
    pub(super) fn remove_unused(&self, created: &[Arc<Stream>]) {
        if created.is_empty() {
            return;
        }
        let mut map = self.streams.write().unwrap_or_else(|p| p.into_inner());
        for s in created {
            // A stream another batch holds is about to take its readings (or that
            // batch's own failure leaves an empty stream): never wait for it here,
            // under the map's lock.
            let Some(mut st) = try_lock(&s.state) else { continue };
            if st.detector.readings_seen() == 0 && map.get(&s.id).is_some_and(|m| Arc::ptr_eq(m, s)) {
                map.remove(&s.id);
                // A batch that resolved it meanwhile sees this and resolves again.
                st.deleted = true;
            }
        }
    }

    /// Scores one stream's readings of a batch, in order, under its lock.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn apply(
        &self,
        readings: &[Reading],
        indices: &[usize],
        id: &str,
        stream: &Arc<Stream>,
        st: &mut StreamState,
        history: bool,
        results: &mut [Option<(String, Verdict)>],
        alerts: &mut Vec<Alert>,
    ) {
        for &i in indices {
            let r = &readings[i];
            let start = Instant::now();
            // Validated above under this lock, so this cannot fail; if it ever did,
            // the reading is skipped rather than taking the server down.
            let taken = if history {
                st.detector.update_history(r.timestamp, &r.values)
            } else {
                st.detector.update(r.timestamp, &r.values)
            };
            let v = match taken {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(stream = id, error = %e, "validated reading refused");
                    continue;
                }
            };
            self.metrics.scoring_latency.observe(start.elapsed().as_secs_f64());
            if let Some(event) = &v.event {
                alerts.push(Alert::of_event(id, event, &v, &r.values));
            }
            if st.detector.training_due() {
                // When the queue is full the job is dropped; the policy asks again later.
                self.submit_job(stream, &mut st.detector);
            }
            st.last_verdict = Some(v.clone());
            results[i] = Some((id.to_string(), v));
        }
        if let (Some(&i), Some(v)) = (indices.last(), &st.last_verdict) {
            let mut meta = lock(&stream.meta);
            meta.values.clone_from(&readings[i].values);
            meta.score = v.judged_score();
            meta.readings_needed = v.readings_needed;
            meta.anomaly = v.anomaly;
            meta.expected.clone_from(&v.expected);
            meta.scored = true;
        }
        if history {
            st.detector.request_retrain();
            if st.detector.training_due() {
                self.submit_job(stream, &mut st.detector);
            }
        }
        let lsn = st.lsn;
        st.touch(lsn);
        stream.note_phase(st);
        stream.last_seen.store(super::stream::unix_now(), Ordering::Relaxed);
        stream.stale_since.store(0, Ordering::Relaxed);
    }

    /// Journals incident events (their sequence numbers assigned and logged
    /// together) and logs them; they are broadcast once durable. Returns the log
    /// record's LSN (0 when there were none).
    pub(super) fn record_events(&self, alerts: Vec<Alert>) -> Result<u64, RegistryError> {
        if alerts.is_empty() {
            return Ok(0);
        }
        for alert in &alerts {
            match alert.kind {
                AlertKind::Opened => {
                    self.metrics.alerts.inc();
                    tracing::info!(stream = %alert.stream, incident = alert.incident, score = alert.score, "incident opened");
                }
                AlertKind::Resolved => {
                    tracing::info!(stream = %alert.stream, incident = alert.incident, resolution = ?alert.resolution, "incident resolved");
                }
            }
        }
        self.journal
            .push_logged(alerts, |a| self.log(&Record::Alerts(a.to_vec()).encode()))
            .map(|(lsn, _)| lsn)
    }

    /// Checks one stream's readings of a batch, in order, against its width and last
    /// timestamp; counts and reports the first bad one.
    pub(super) fn validate_stream(
        &self,
        readings: &[Reading],
        indices: &[usize],
        id: &str,
        (mut width, config): (Option<usize>, &crate::detector::DetectorConfig),
        mut last: Option<Micros>,
    ) -> Result<(), RegistryError> {
        for &i in indices {
            let r = &readings[i];
            if let Err(source) = crate::detector::check_stream_reading(config, width, last, r.timestamp, &r.values) {
                let reason = match source {
                    ReadingError::WrongWidth { .. } | ReadingError::Empty | ReadingError::TooWide { .. } => {
                        "wrong_width"
                    }
                    ReadingError::NotFinite { .. } => "not_finite",
                    ReadingError::OutOfOrder { .. } => "out_of_order",
                    ReadingError::ContextDoesNotFit { .. } => "context",
                };
                self.metrics
                    .readings_rejected
                    .with_label_values(&[reason])
                    .inc_by(readings.len() as u64);
                return Err(RegistryError::Reading {
                    index: i,
                    stream: id.to_string(),
                    source,
                });
            }
            width = Some(r.values.len());
            last = Some(r.timestamp);
        }
        Ok(())
    }
}
