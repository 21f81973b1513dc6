//! The streams as resources: create or reconfigure (`put`, merge `patch`), accept,
//! delete, list and inspect; and the lock-free views `/metrics` reads.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::log::Record;
use super::stream::{Stream, StreamMeta, StreamState, accept_into, reconfigure, reset_into};
use super::{Registry, RegistryError, lock, try_lock, validate_stream_id};
use crate::detector::{Detector, DetectorConfig};
use crate::protocol::{IncidentInfo, ModelInfo, StreamInfo};

impl Registry {
    /// Accepts a stream's recent behaviour as normal (see
    /// [`Detector::accept`]): an open incident resolves as `accepted`, readings not
    /// learnt are learnt, and the model retrains. Returns (readings learnt, the
    /// incident resolved).
    pub fn accept(&self, id: &str) -> Result<(usize, Option<u64>), RegistryError> {
        let stream = self.get(id).ok_or_else(|| self.missing(id))?;
        let mut st = lock(&stream.state);
        if st.deleted {
            return Err(self.missing(id));
        }
        st.lsn = self.log(&Record::Accept(id.to_string()).encode())?;
        let (accepted, alert) = accept_into(id, &mut st);
        let resolved = alert.as_ref().map(|a| a.incident);
        if st.detector.training_due() {
            self.submit_job(&stream, &mut st.detector);
        }
        let lsn = st.lsn;
        st.touch(lsn);
        stream.note_phase(&st);
        let alerts_lsn = self.record_events(alert.into_iter().collect());
        let lsn = st.lsn;
        drop(st);
        self.make_durable(lsn.max(alerts_lsn?))?;
        Ok((accepted, resolved))
    }

    /// Starts a stream over under its config: its model, readings, limits and
    /// recent verdicts are discarded and it warms up again; an open incident
    /// resolves as `reset`. Returns the incident resolved.
    pub fn reset(&self, id: &str) -> Result<Option<u64>, RegistryError> {
        let stream = self.get(id).ok_or_else(|| self.missing(id))?;
        let mut st = lock(&stream.state);
        if st.deleted {
            return Err(self.missing(id));
        }
        let lsn = self.log(&Record::Reset(id.to_string()).encode())?;
        let alert = reset_into(id, &mut st);
        st.lsn = lsn;
        let resolved = alert.as_ref().map(|a| a.incident);
        stream.note_phase(&st);
        {
            let mut meta = lock(&stream.meta);
            let labels = meta.labels.take();
            *meta = StreamMeta {
                labels,
                ..StreamMeta::default()
            };
        }
        let alerts_lsn = self.record_events(alert.into_iter().collect());
        drop(st);
        self.make_durable(lsn.max(alerts_lsn?))?;
        Ok(resolved)
    }

    /// Creates a stream with `config`, or reconfigures an existing one. A new shape
    /// (cell, size, window, features) starts the model over; other changes (alert
    /// threshold, retrain policy) keep it.
    pub fn put(&self, id: &str, config: DetectorConfig) -> Result<bool, RegistryError> {
        validate_stream_id(id).map_err(RegistryError::StreamId)?;
        config.validate()?;
        let record = Record::Put {
            stream: id.to_string(),
            config: Box::new(config.clone()),
        }
        .encode();
        if let Some(stream) = self.get(id) {
            let st = lock(&stream.state);
            if !st.deleted {
                self.reconfigure_logged(&stream, st, config)?;
                return Ok(false);
            }
        }
        self.owns(id)?;
        let detector = Detector::new(config)?;
        let mut map = self.streams.write().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(id) && map.len() >= self.config.max_streams {
            return Err(RegistryError::TooManyStreams(self.config.max_streams));
        }
        let lsn = self.log(&record)?;
        map.insert(id.to_string(), Stream::new(id, detector, true, lsn));
        drop(map);
        self.make_durable(lsn)?;
        Ok(true)
    }

    /// Logs and applies a new config to a locked, live stream, then waits for the
    /// log (the shared end of `put` and `patch`).
    pub(super) fn reconfigure_logged(
        &self,
        stream: &Stream,
        mut st: std::sync::MutexGuard<'_, StreamState>,
        config: DetectorConfig,
    ) -> Result<(), RegistryError> {
        let record = Record::Put {
            stream: stream.id.clone(),
            config: Box::new(config.clone()),
        };
        let lsn = self.log(&record.encode())?;
        reconfigure(&mut st, config)?;
        st.lsn = lsn;
        st.touch(lsn);
        stream.note_phase(&st);
        drop(st);
        self.make_durable(lsn)
    }

    /// Updates a stream's config by a JSON merge patch (RFC 7386: fields present
    /// are set, `null` resets a field to its default, absent fields keep their
    /// value), creating the stream from the default config if it does not exist.
    /// A change of shape (model, window, features, detector) on a stream that has
    /// readings discards its model and readings, so it needs `reset`; without it
    /// the answer is [`RegistryError::ResetRequired`] and nothing changes.
    /// Returns whether the stream was created.
    pub fn patch(&self, id: &str, patch: &serde_json::Value, reset: bool) -> Result<bool, RegistryError> {
        validate_stream_id(id).map_err(RegistryError::StreamId)?;
        let merged = |base: &DetectorConfig| -> Result<DetectorConfig, RegistryError> {
            let mut v = serde_json::to_value(base).expect("configs serialise");
            merge_patch(&mut v, patch);
            // The error names the field (`model.error_scale: unknown variant ...`).
            let c: DetectorConfig = serde_path_to_error::deserialize(v).map_err(|e| {
                let message = format!("{}: {}", e.path(), e.inner());
                RegistryError::Config(crate::detector::ConfigError(message))
            })?;
            c.validate()?;
            Ok(c)
        };
        if let Some(stream) = self.get(id) {
            let st = lock(&stream.state);
            if !st.deleted {
                let config = merged(st.detector.config())?;
                if !reset && st.detector.readings_seen() > 0 && !st.detector.config().same_shape(&config) {
                    return Err(RegistryError::ResetRequired(format!(
                        "this change of model, window, n_features or detector discards stream {id:?}'s model and its {} readings; repeat it with ?reset=true to do so",
                        st.detector.readings_seen()
                    )));
                }
                self.reconfigure_logged(&stream, st, config)?;
                return Ok(false);
            }
        }
        let config = merged(&self.config.default_detector)?;
        self.put(id, config)
    }

    /// Runs `f` while holding stream `id`'s lock (tests: a batch or a training
    /// install that holds it for long). Returns None when there is no such stream.
    #[doc(hidden)]
    pub fn with_stream_locked<R>(&self, id: &str, f: impl FnOnce() -> R) -> Option<R> {
        let stream = self.get(id)?;
        let _held = lock(&stream.state);
        Some(f())
    }

    /// Adds a stream with a ready detector (benchmarks: many streams without
    /// feeding each). Not logged: it persists at the next snapshot round.
    #[doc(hidden)]
    pub fn adopt(&self, id: &str, detector: Detector) -> Result<(), RegistryError> {
        validate_stream_id(id).map_err(RegistryError::StreamId)?;
        let mut map = self.streams.write().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(id) && map.len() >= self.config.max_streams {
            return Err(RegistryError::TooManyStreams(self.config.max_streams));
        }
        map.insert(id.to_string(), Stream::new(id, detector, true, 0));
        Ok(())
    }

    /// Removes a stream (and, at the next snapshot, its file).
    pub fn delete(&self, id: &str) -> Result<(), RegistryError> {
        self.delete_if(id, |_| true).map(|_| ())
    }

    /// Removes a stream if `still` holds for it once it is locked (no batch can
    /// slip in between); returns whether it was removed.
    pub(super) fn delete_if(&self, id: &str, still: impl Fn(&Stream) -> bool) -> Result<bool, RegistryError> {
        let removed = self.with_exclusive(id, |map, stream, st| -> Result<_, RegistryError> {
            if !still(stream) {
                return Ok(None);
            }
            let lsn = self.log(&Record::Delete(id.to_string()).encode())?;
            map.remove(id);
            st.deleted = true;
            Ok(Some((lsn, st.model_saved.take().map(|(_, file)| file))))
        });
        match removed.ok_or_else(|| self.missing(id))?? {
            None => Ok(false),
            Some((lsn, model)) => {
                lock(&self.tombstones).push((id.to_string(), model));
                self.make_durable(lsn).map(|()| true)
            }
        }
    }

    /// Runs `f` on stream `id` with the map's write lock and the stream's lock
    /// both held, once no batch holds the stream (None: no such stream). The
    /// stream's lock is waited for without the map's: holding it there would
    /// stall every request that needs the map behind one long batch; then the
    /// map's, then the stream's if free (the one nesting).
    pub(super) fn with_exclusive<R>(
        &self,
        id: &str,
        f: impl FnOnce(&mut HashMap<String, Arc<Stream>>, &Stream, &mut StreamState) -> R,
    ) -> Option<R> {
        loop {
            let stream = self.get(id)?;
            drop(lock(&stream.state));
            let mut map = self.streams.write().unwrap_or_else(|p| p.into_inner());
            if !map.get(id).is_some_and(|m| Arc::ptr_eq(m, &stream)) {
                continue;
            }
            let Some(mut st) = try_lock(&stream.state) else {
                continue;
            };
            return Some(f(&mut map, &stream, &mut st));
        }
    }

    /// Stream ids in sorted order, from after `after`, at most `limit`.
    pub fn list(&self, after: Option<&str>, limit: usize) -> Vec<String> {
        let map = self.streams.read().unwrap_or_else(|p| p.into_inner());
        let mut ids: Vec<&String> = map.keys().filter(|k| after.is_none_or(|a| k.as_str() > a)).collect();
        ids.sort_unstable();
        ids.into_iter().take(limit).cloned().collect()
    }

    /// What `GET /v1/streams/{stream}` shows.
    pub fn info(&self, id: &str) -> Result<StreamInfo, RegistryError> {
        let stream = self.get(id).ok_or_else(|| self.missing(id))?;
        let st = stream.state.lock().unwrap_or_else(|p| p.into_inner());
        let d = &st.detector;
        let c = d.config().clone();
        let model = d.model().map(|m| ModelInfo {
            cell: c.model.cell.name().to_string(),
            hidden: c.model.hidden,
            layers: c.model.layers,
            bidirectional: c.model.bidirectional,
            members: m.scorers.len(),
            parameters: m.scorers.first().map_or(0, |s| s.n_params()),
            version: m.version,
            trained_at: crate::timestamp::format_rfc3339(m.trained_at),
            train_loss: m.report.train_loss,
            val_loss: m.report.val_loss,
        });
        Ok(StreamInfo {
            stream: stream.id.clone(),
            phase: d.phase(),
            readings_needed: d.readings_needed(),
            n_features: d.n_features(),
            readings_seen: d.readings_seen(),
            model,
            threshold: c.alert.threshold,
            // From the verdicts kept with the detector: they survive a restart.
            last_score: d.recent().last().and_then(|(score, _)| score),
            anomalous: d.recent().last().is_some_and(|(_, anomaly)| anomaly),
            incident: d.incident().map(|i| IncidentInfo {
                id: i.id,
                start: crate::timestamp::format_rfc3339(i.start),
                peak_score: i.peak_score,
                anomalous_readings: i.anomalous_readings,
                top_features: i
                    .top_features()
                    .into_iter()
                    .map(|(feature, share)| crate::protocol::FeatureShare { feature, share })
                    .collect(),
            }),
            last_timestamp: d.last_timestamp().map(crate::timestamp::format_rfc3339),
            failed_training_jobs: d.failed_jobs(),
            config: c,
        })
    }

    /// A stream's series labels (remote_write streams).
    pub fn labels_of(&self, id: &str) -> Option<Arc<[(String, String)]>> {
        lock(&self.get(id)?.meta).labels.clone()
    }

    /// Every stream's exported view (id, labels, newest verdict), in id order,
    /// without taking any stream's state lock.
    pub fn exported(&self) -> Vec<(String, StreamMeta)> {
        let streams: Vec<Arc<Stream>> = self.all_streams();
        let mut out: Vec<(String, StreamMeta)> = streams
            .iter()
            .map(|s| (s.id.clone(), lock(&s.meta).clone()))
            .filter(|(_, m)| m.scored)
            .collect();
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Sets the per-phase stream gauges (called at scrape time). Takes no stream
    /// lock: a scrape never waits for scoring or training.
    pub fn update_phase_gauges(&self) {
        let mut counts = [0i64; 3];
        for s in self.streams.read().unwrap_or_else(|p| p.into_inner()).values() {
            counts[usize::from(s.phase.load(Ordering::Relaxed).min(2))] += 1;
        }
        for (phase, n) in ["warmup", "baseline", "model"].iter().zip(counts) {
            self.metrics.streams.with_label_values(&[phase]).set(n);
        }
    }
}
/// RFC 7386 JSON merge patch of `target` by `patch`.
pub fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let serde_json::Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = serde_json::Value::Object(serde_json::Map::new());
    }
    let obj = target.as_object_mut().expect("made an object above");
    for (k, v) in fields {
        if v.is_null() {
            obj.remove(k);
        } else {
            merge_patch(obj.entry(k.clone()).or_insert(serde_json::Value::Null), v);
        }
    }
}
