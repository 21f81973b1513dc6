//! The streams of a running service: each stream's detector behind its own lock, the
//! bounded pool that retrains models off the async runtime, the alert journal, and
//! persistence to the data directory. The only module that spawns threads for work.
//!
//! Invariants: per-stream order is the order of calls into `ingest` (the stream's
//! lock is held for a whole batch); a batch is validated in full before any reading
//! is applied, so a rejected batch changes nothing; training runs on the pool's own
//! threads and swaps models in whole under the stream's lock.

pub mod journal;
pub mod log;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

pub use journal::{Alert, AlertJournal, AlertKind};

use crate::detector::{ConfigError, Detector, DetectorConfig, Phase, ReadingError, TrainJob, TrainOutcome, Verdict};
use crate::metrics::Metrics;
use crate::storage::wal::{SyncPolicy, Wal};
use crate::storage::{StorageError, snapshot};
use crate::timestamp::Micros;
use log::Record;

/// Largest stream id in bytes.
pub const MAX_STREAM_ID_BYTES: usize = 256;

/// Checks a stream id: 1–256 bytes of UTF-8 without control characters.
pub fn validate_stream_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_STREAM_ID_BYTES {
        return Err(format!(
            "stream id must be 1 to {MAX_STREAM_ID_BYTES} bytes, got {}",
            id.len()
        ));
    }
    if id.chars().any(char::is_control) {
        return Err("stream id must not contain control characters".into());
    }
    Ok(())
}

/// A series' labels (sorted, `__name__` included), by stream id.
pub type SeriesLabels = HashMap<String, Arc<[(String, String)]>>;

/// How a batch's readings are taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Scored (client API).
    Live,
    /// Learnt as known-normal history.
    History,
    /// Scored; resent samples skipped (Prometheus remote_write).
    Remote,
}

/// A batch's streams in id order, and those the batch created.
type Resolved = (Vec<Arc<Stream>>, Vec<Arc<Stream>>);

/// The batch's stream ids, sorted (the lock order), and which readings go to each.
#[allow(clippy::type_complexity)]
fn group_by_stream(readings: &[Reading]) -> Result<(Vec<&str>, HashMap<&str, Vec<usize>>), RegistryError> {
    let mut per_stream: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, r) in readings.iter().enumerate() {
        validate_stream_id(&r.stream).map_err(RegistryError::StreamId)?;
        per_stream.entry(&r.stream).or_default().push(i);
    }
    let mut ids: Vec<&str> = per_stream.keys().copied().collect();
    ids.sort_unstable();
    Ok((ids, per_stream))
}

/// Settings of the registry.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Config of streams created by their first reading.
    pub default_detector: DetectorConfig,
    /// Most streams at once.
    pub max_streams: usize,
    /// Threads that retrain models.
    pub training_threads: usize,
    /// Jobs that may wait for a training thread; more are dropped (and retried by
    /// the stream's policy later).
    pub training_queue: usize,
    /// Wall-time budget of one training job.
    pub training_budget: Duration,
    /// Alerts kept in the journal.
    pub journal_capacity: usize,
    /// Alerts a WebSocket subscriber may fall behind before it is told it lagged.
    pub subscriber_buffer: usize,
    /// Where snapshots and the write-ahead log live (`None`: nothing persists).
    pub data_dir: Option<PathBuf>,
    /// When the write-ahead log is synced.
    pub wal_sync: SyncPolicy,
    /// Most streams one snapshot round writes (those changed longest ago first);
    /// the log keeps what the rest need until a later round.
    pub checkpoint_max_streams: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            default_detector: DetectorConfig::default(),
            max_streams: 100_000,
            training_threads: 1,
            training_queue: 1024,
            training_budget: Duration::from_secs(30),
            journal_capacity: 10_000,
            subscriber_buffer: 1024,
            data_dir: None,
            wal_sync: SyncPolicy::Always,
            checkpoint_max_streams: 10_000,
        }
    }
}

/// One reading addressed to a stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    /// Target stream.
    pub stream: String,
    /// When it was observed.
    pub timestamp: Micros,
    /// Its values.
    pub values: Vec<f64>,
}

/// Why a request to the registry failed. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A reading is invalid.
    #[error("reading {index} (stream {stream:?}): {source}")]
    Reading {
        /// Position in the request.
        index: usize,
        /// Its stream.
        stream: String,
        /// What is wrong.
        source: ReadingError,
    },
    /// A stream id is invalid.
    #[error("{0}")]
    StreamId(String),
    /// Creating the stream would exceed the limit.
    #[error("stream limit reached ({0} streams)")]
    TooManyStreams(usize),
    /// No such stream.
    #[error("stream {0:?} not found")]
    NotFound(String),
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The stream has too few readings to train on.
    #[error("stream {0:?} has too few readings to train on")]
    NotEnoughData(String),
    /// The training queue is full.
    #[error("training queue is full")]
    TrainingBusy,
    /// The batch's streams kept being deleted under it; retry.
    #[error("streams of this batch were deleted while it ran; retry")]
    Contended,
    /// The change would discard the stream's model and readings.
    #[error("{0}")]
    ResetRequired(String),
    /// The write-ahead log cannot be written (e.g. the disk is full). If this
    /// comes after the log record was written, the change was applied but may
    /// not survive a crash.
    #[error("storage unavailable: {0}")]
    Storage(String),
}

/// A stream: its id and its detector behind one lock.
#[derive(Debug)]
pub struct Stream {
    id: String,
    state: Mutex<StreamState>,
    /// The detector's phase as of its last change, readable without the lock
    /// (`/metrics` counts phases without locking every stream).
    phase: std::sync::atomic::AtomicU8,
    /// What `/metrics/scores` shows, behind its own short lock (taken after the
    /// state's, never the other way round).
    meta: Mutex<StreamMeta>,
}

/// A stream's exported view: its Prometheus labels and its newest verdict.
#[derive(Clone, Debug, Default)]
pub struct StreamMeta {
    /// The series' labels (remote_write streams), `__name__` included, sorted.
    pub labels: Option<Arc<[(String, String)]>>,
    /// The newest reading's values.
    pub values: Vec<f64>,
    /// The newest verdict (score, state, expected values).
    pub score: f64,
    /// The anomaly state.
    pub anomaly: bool,
    /// What the detector expected, per feature.
    pub expected: Vec<f64>,
    /// Whether any reading was scored yet.
    pub scored: bool,
}

impl Stream {
    /// A stream around `detector`; `dirty` when it has no snapshot yet; `lsn` is
    /// the last log record its state includes.
    fn new(id: &str, detector: Detector, dirty: bool, lsn: u64) -> Arc<Stream> {
        // Not yet on disk: anything logged from `lsn` on may be needed to rebuild it.
        let dirty = dirty.then_some(lsn);
        let phase = std::sync::atomic::AtomicU8::new(phase_index(detector.phase()));
        Arc::new(Stream {
            id: id.to_string(),
            phase,
            meta: Mutex::new(StreamMeta::default()),
            state: Mutex::new(StreamState {
                detector,
                dirty,
                lsn,
                deleted: false,
                last_verdict: None,
                model_saved: None,
            }),
        })
    }
}

/// A staged file: (temporary, target).
type StagedFile = (std::path::PathBuf, std::path::PathBuf);

/// A stream whose snapshot is staged: the change it covers from `since`, and the
/// model file (version, path) its state names.
struct Taken {
    stream: Arc<Stream>,
    since: u64,
    model: Option<(u64, std::path::PathBuf)>,
}

/// Stages a stream's files for a checkpoint: its model's weights first when the
/// snapshot carries them (to `model`, a new file), then its state, which names
/// `model`. Returns the (temporary, target) pairs, in that order:
/// [`snapshot::commit`] renames them in order, so a state never names a model
/// file that is not in place.
fn stage_stream(
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

fn phase_index(p: Phase) -> u8 {
    match p {
        Phase::Warmup => 0,
        Phase::Baseline => 1,
        Phase::Model => 2,
    }
}

impl Stream {
    /// Records the detector's phase for lock-free readers.
    fn note_phase(&self, st: &StreamState) {
        self.phase.store(phase_index(st.detector.phase()), Ordering::Relaxed);
    }
}

impl StreamState {
    /// Marks a change logged at `lsn` (or not logged: `u64::MAX`) as not yet
    /// in the snapshot.
    fn touch(&mut self, lsn: u64) {
        self.dirty = Some(self.dirty.map_or(lsn, |d| d.min(lsn)));
    }
}

#[derive(Debug)]
struct StreamState {
    detector: Detector,
    /// Changed since the last snapshot: the LSN of the oldest change not in it
    /// (`u64::MAX` for changes the log does not hold, such as a new model). The
    /// log is kept from the oldest of these on.
    dirty: Option<u64>,
    /// The last write-ahead log record applied to this state: replay skips this
    /// stream's records up to it (they are in its snapshot).
    lsn: u64,
    /// Removed from the registry (late training results are discarded).
    deleted: bool,
    last_verdict: Option<Verdict>,
    /// The model version whose weights are on disk, and the file they are in (the
    /// one the state on disk names): a checkpoint writes the weights again only
    /// when the version changed.
    model_saved: Option<(u64, std::path::PathBuf)>,
}

/// What `GET /v1/streams/{stream}` shows.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StreamInfo {
    /// Id.
    pub stream: String,
    /// Config.
    pub config: DetectorConfig,
    /// `warmup`, `baseline` or `model`.
    pub phase: Phase,
    /// Features per reading (once known).
    pub n_features: Option<usize>,
    /// Readings scored.
    pub readings_seen: u64,
    /// The model, once one exists.
    pub model: Option<ModelInfo>,
    /// Score at or above which a reading is anomalous.
    pub threshold: f64,
    /// The newest verdict's score.
    pub last_score: Option<f64>,
    /// The newest verdict's anomaly state.
    pub anomalous: bool,
    /// The open incident, if any.
    pub incident: Option<IncidentInfo>,
    /// Timestamp of the newest reading (RFC 3339).
    pub last_timestamp: Option<String>,
    /// Training jobs that diverged.
    pub failed_training_jobs: u64,
}

/// The open incident in [`StreamInfo`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct IncidentInfo {
    /// Id within the stream.
    pub id: u64,
    /// Its first anomalous reading (RFC 3339).
    pub start: String,
    /// Highest score so far.
    pub peak_score: f64,
    /// Anomalous readings so far.
    pub anomalous_readings: u64,
    /// Features that contributed most, `{feature, share}`, largest first.
    pub top_features: Vec<crate::protocol::FeatureShare>,
}

/// The model part of [`StreamInfo`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelInfo {
    /// Cell kind.
    pub cell: String,
    /// Hidden units.
    pub hidden: usize,
    /// Layers.
    pub layers: usize,
    /// Bidirectional encoder.
    pub bidirectional: bool,
    /// Ensemble members.
    pub members: usize,
    /// Parameters per member.
    pub parameters: usize,
    /// Version.
    pub version: u64,
    /// Timestamp of the newest reading in its training data (RFC 3339).
    pub trained_at: String,
    /// Training loss of the last epoch.
    pub train_loss: f64,
    /// Held-out loss.
    pub val_loss: f64,
}

/// All streams of the service.
#[derive(Debug)]
pub struct Registry {
    config: RegistryConfig,
    streams: RwLock<HashMap<String, Arc<Stream>>>,
    journal: AlertJournal,
    metrics: Arc<Metrics>,
    trainer: SyncSender<(Weak<Stream>, TrainJob)>,
    /// Deleted streams whose snapshot files are still to be removed.
    /// Deleted streams whose files go at the next round: id, and the model file
    /// their state named.
    tombstones: Mutex<Vec<(String, Option<std::path::PathBuf>)>>,
    /// The write-ahead log (with a data directory).
    wal: Option<Wal>,
    /// Held for a whole snapshot round: rounds never overlap.
    round: Mutex<()>,
    /// The last snapshot round wrote everything it had to.
    rounds_ok: AtomicBool,
}

impl Registry {
    /// Creates the registry, loads the data directory's snapshots (damaged files are
    /// moved aside and counted, never loaded) and starts the training threads.
    ///
    /// # Errors
    /// If the default detector config is invalid or the data directory is unusable.
    pub fn open(config: RegistryConfig, metrics: Arc<Metrics>) -> Result<Arc<Self>, String> {
        config.default_detector.validate().map_err(|e| e.to_string())?;
        let (tx, rx) = sync_channel::<(Weak<Stream>, TrainJob)>(config.training_queue.max(1));
        let registry = Arc::new(Registry {
            journal: AlertJournal::new(config.journal_capacity, config.subscriber_buffer),
            streams: RwLock::new(HashMap::new()),
            metrics,
            trainer: tx,
            tombstones: Mutex::new(Vec::new()),
            wal: None,
            round: Mutex::new(()),
            rounds_ok: AtomicBool::new(true),
            config,
        });
        let mut registry = registry;
        Arc::get_mut(&mut registry).expect("not shared yet").load()?;
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..registry.config.training_threads.max(1) {
            let rx = rx.clone();
            let weak = Arc::downgrade(&registry);
            std::thread::Builder::new()
                .name(format!("anomalyd-train-{i}"))
                .spawn(move || {
                    loop {
                        let next = rx.lock().expect("trainer queue").recv();
                        let Ok((stream, job)) = next else { break };
                        let Some(reg) = weak.upgrade() else { break };
                        reg.run_job(stream, job);
                    }
                })
                .map_err(|e| format!("cannot start training thread: {e}"))?;
        }
        Ok(registry)
    }

    /// Runs one job and installs its outcome. A panic inside training is caught
    /// and counted (`outcome="panicked"`): the thread goes on serving the queue and
    /// the stream may ask again.
    fn run_job(&self, stream: Weak<Stream>, job: TrainJob) {
        self.metrics.retrain_queue_depth.dec();
        let start = Instant::now();
        let budget = self.config.training_budget;
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::detector::train::train(&job, &|| start.elapsed() > budget)
        }));
        self.metrics.retrain_duration.observe(start.elapsed().as_secs_f64());
        let (outcome, label) = match caught {
            Ok(outcome) => {
                let label = match &outcome {
                    TrainOutcome::Trained(m) => {
                        tracing::info!(
                            version = m.version,
                            val_loss = m.report.val_loss,
                            seconds = start.elapsed().as_secs_f64(),
                            "model trained"
                        );
                        "completed"
                    }
                    TrainOutcome::Diverged(_) => "diverged",
                    TrainOutcome::NotEnoughData => "skipped",
                };
                (outcome, label)
            }
            Err(_) => {
                tracing::error!(version = job.version, "training job panicked");
                (TrainOutcome::NotEnoughData, "panicked")
            }
        };
        self.metrics.retrain_jobs.with_label_values(&[label]).inc();
        if let Some(stream) = stream.upgrade() {
            let mut st = stream.state.lock().unwrap_or_else(|p| p.into_inner());
            if !st.deleted {
                if st.detector.install_job(&job.config, outcome) {
                    st.touch(u64::MAX);
                    stream.note_phase(&st);
                    let trained = st.detector.model().is_some_and(|m| m.version == job.version);
                    drop(st);
                    if trained {
                        self.save_now(&stream);
                    }
                } else {
                    self.metrics.retrain_jobs.with_label_values(&["stale"]).inc();
                }
            }
        }
    }

    /// The alert journal.
    pub fn journal(&self) -> &AlertJournal {
        &self.journal
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The registry's settings.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// Every stream, at one moment (the map's lock is released at once).
    fn all_streams(&self) -> Vec<Arc<Stream>> {
        self.streams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn get(&self, id: &str) -> Option<Arc<Stream>> {
        self.streams.read().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    /// Number of streams.
    pub fn len(&self) -> usize {
        self.streams.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether there are no streams.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

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
    pub fn ingest_remote(&self, readings: &[Reading], labels: &SeriesLabels) -> Result<(usize, usize), RegistryError> {
        let scored = self.take(readings, Mode::Remote, Some(labels))?.len();
        Ok((scored, readings.len() - scored))
    }

    /// Teaches streams readings known to be normal (their history), validated and
    /// applied like [`Registry::ingest`]: they are learnt, never anomalous, raise
    /// no incident, and each stream then queues a training job. Blocking.
    pub fn history(&self, readings: &[Reading]) -> Result<Vec<(String, Verdict)>, RegistryError> {
        self.take(readings, Mode::History, None)
    }

    fn take(
        &self,
        readings: &[Reading],
        mode: Mode,
        labels: Option<&SeriesLabels>,
    ) -> Result<Vec<(String, Verdict)>, RegistryError> {
        let history = mode == Mode::History;
        let (ids, mut per_stream) = group_by_stream(readings)?;
        // A stream deleted between resolving and locking it is resolved again.
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
                // Resent samples (at or before the stream's newest) are dropped here,
                // under the lock, so a retry racing its original is taken once.
                for (id, g) in ids.iter().zip(&guards) {
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
            let checked = ids.iter().zip(&guards).try_for_each(|(id, g)| {
                let (width, last) = (g.detector.n_features(), g.detector.last_timestamp());
                self.validate_stream(readings, &per_stream[id], id, width, last)
            });
            // Logged before anything is applied: a batch the log refuses changes nothing.
            let lsn = checked.and_then(|()| {
                if mode == Mode::Remote {
                    // Only the readings kept (resends dropped), without copying them.
                    let kept = ids.iter().flat_map(|id| per_stream[id].iter().map(|&i| &readings[i]));
                    self.log(&log::encode_readings(false, kept))
                } else {
                    self.log(&log::encode_readings(history, readings))
                }
            });
            let lsn = match lsn {
                Ok(lsn) => lsn,
                Err(e) => {
                    drop(guards);
                    self.remove_unused(&created);
                    return Err(e);
                }
            };
            let mut results: Vec<Option<(String, Verdict)>> = vec![None; readings.len()];
            let mut alerts = Vec::new();
            for ((id, stream), g) in ids.iter().zip(&streams).zip(guards.iter_mut()) {
                g.lsn = lsn;
                self.apply(
                    readings,
                    &per_stream[id],
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
            // Still under the stream locks: one stream's events keep their order.
            let alerts_lsn = self.record_events(alerts);
            drop(guards);
            let taken = results.iter().flatten().count();
            self.metrics.readings_ingested.inc_by(taken as u64);
            self.make_durable(lsn.max(alerts_lsn?))?;
            return Ok(results.into_iter().flatten().collect());
        }
        Err(RegistryError::Contended)
    }

    /// Appends a record to the write-ahead log; its LSN (0 without a log).
    fn log(&self, record: &[u8]) -> Result<u64, RegistryError> {
        let Some(wal) = &self.wal else { return Ok(0) };
        wal.append(record).map_err(|e| {
            self.metrics.storage_errors.with_label_values(&["wal_append"]).inc();
            tracing::error!(error = %e, "write-ahead log append failed");
            RegistryError::Storage(e.to_string())
        })
    }

    /// Waits until the log is durable up to `lsn` (group commit: one sync serves
    /// every request waiting), then broadcasts the alerts it holds.
    fn make_durable(&self, lsn: u64) -> Result<(), RegistryError> {
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
    fn resolve(&self, ids: &[&str], n_readings: usize) -> Result<Resolved, RegistryError> {
        let found: Vec<Option<Arc<Stream>>> = ids.iter().map(|id| self.get(id)).collect();
        if found.iter().all(Option::is_some) {
            return Ok((found.into_iter().flatten().collect(), Vec::new()));
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
    fn remove_unused(&self, created: &[Arc<Stream>]) {
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
    fn apply(
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
            meta.score = v.score;
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
    }

    /// Journals incident events (their sequence numbers assigned and logged
    /// together) and logs them; they are broadcast once durable. Returns the log
    /// record's LSN (0 when there were none).
    fn record_events(&self, alerts: Vec<Alert>) -> Result<u64, RegistryError> {
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

    /// Accepts a stream's recent behaviour as normal (see
    /// [`Detector::accept`]): an open incident resolves as `accepted`, readings not
    /// learnt are learnt, and the model retrains. Returns (readings learnt, the
    /// incident resolved).
    pub fn accept(&self, id: &str) -> Result<(usize, Option<u64>), RegistryError> {
        let stream = self.get(id).ok_or_else(|| RegistryError::NotFound(id.into()))?;
        let mut st = lock(&stream.state);
        if st.deleted {
            return Err(RegistryError::NotFound(id.into()));
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

    /// Checks one stream's readings of a batch, in order, against its width and last
    /// timestamp; counts and reports the first bad one.
    fn validate_stream(
        &self,
        readings: &[Reading],
        indices: &[usize],
        id: &str,
        mut width: Option<usize>,
        mut last: Option<Micros>,
    ) -> Result<(), RegistryError> {
        for &i in indices {
            let r = &readings[i];
            if let Err(source) = crate::detector::check_reading(width, last, r.timestamp, &r.values) {
                let reason = match source {
                    ReadingError::WrongWidth { .. } | ReadingError::Empty | ReadingError::TooWide { .. } => {
                        "wrong_width"
                    }
                    ReadingError::NotFinite { .. } => "not_finite",
                    ReadingError::OutOfOrder { .. } => "out_of_order",
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
    fn reconfigure_logged(
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
            let c: DetectorConfig = serde_json::from_value(v)
                .map_err(|e| RegistryError::Config(crate::detector::ConfigError(e.to_string())))?;
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
        loop {
            let stream = self.get(id).ok_or_else(|| RegistryError::NotFound(id.into()))?;
            // Wait for a busy stream without the map's lock: holding it here would
            // stall every request that needs the map behind one long batch.
            drop(lock(&stream.state));
            let mut map = self.streams.write().unwrap_or_else(|p| p.into_inner());
            if !map.get(id).is_some_and(|m| Arc::ptr_eq(m, &stream)) {
                continue;
            }
            // Map lock, then stream lock (the one nesting), taken only if free.
            let Some(mut st) = try_lock(&stream.state) else {
                continue;
            };
            let lsn = self.log(&Record::Delete(id.to_string()).encode())?;
            map.remove(id);
            st.deleted = true;
            let model = st.model_saved.take().map(|(_, file)| file);
            drop(st);
            drop(map);
            lock(&self.tombstones).push((id.to_string(), model));
            return self.make_durable(lsn);
        }
    }

    /// Queues a retraining job for a stream now.
    pub fn retrain(&self, id: &str) -> Result<(), RegistryError> {
        let stream = self.get(id).ok_or_else(|| RegistryError::NotFound(id.into()))?;
        let mut st = stream.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.detector.readings_seen() <= st.detector.config().window as u64 {
            return Err(RegistryError::NotEnoughData(id.into()));
        }
        // One job per stream: a second request while one is out queues nothing more.
        if st.detector.job_in_flight() {
            return Ok(());
        }
        if self.submit_job(&stream, &mut st.detector) {
            Ok(())
        } else {
            Err(RegistryError::TrainingBusy)
        }
    }

    /// Takes a job from `detector` and queues it; a full queue drops it (the detector
    /// is told, so it can ask again later). Returns whether it was queued.
    fn submit_job(&self, stream: &Arc<Stream>, detector: &mut Detector) -> bool {
        let job = detector.training_job();
        match self.trainer.try_send((Arc::downgrade(stream), job)) {
            Ok(()) => {
                self.metrics.retrain_queue_depth.inc();
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                detector.install(TrainOutcome::NotEnoughData);
                self.metrics.retrain_jobs.with_label_values(&["dropped"]).inc();
                false
            }
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
        let stream = self.get(id).ok_or_else(|| RegistryError::NotFound(id.into()))?;
        let st = stream.state.lock().unwrap_or_else(|p| p.into_inner());
        let d = &st.detector;
        let c = d.config().clone();
        let model = d.model().map(|m| ModelInfo {
            cell: c.model.cell.clone(),
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
            n_features: d.n_features(),
            readings_seen: d.readings_seen(),
            model,
            threshold: c.alert.threshold,
            last_score: st.last_verdict.as_ref().map(|v| v.score),
            anomalous: st.last_verdict.as_ref().is_some_and(|v| v.anomaly),
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

    fn streams_dir(&self) -> Option<PathBuf> {
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
    fn checkpoint(&self, dir: &std::path::Path) -> Result<(usize, usize), StorageError> {
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
        snapshot::write_atomic(&dir.with_file_name("alerts.json.crc"), &framed)?;
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
    fn stage_dirty(&self, dir: &std::path::Path, s: &Arc<Stream>) -> Result<Option<(Vec<StagedFile>, Taken)>, ()> {
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
    fn commit_taken(
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
    fn save_now(&self, s: &Arc<Stream>) {
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

    /// Loads the snapshots, then replays the write-ahead log over them and opens
    /// it for appending.
    fn load(&mut self) -> Result<(), String> {
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
        let (wal, torn) = Wal::open(&wal_dir, self.config.wal_sync, 0, |lsn, payload| {
            match Record::decode(payload) {
                Ok(record) => {
                    self.replay(lsn, record);
                    replayed += 1;
                }
                Err(e) => tracing::error!(lsn, error = %e, "unreadable log record skipped"),
            }
        })
        .map_err(|e| e.to_string())?;
        if torn > 0 {
            self.metrics.corrupt_snapshots.inc();
        }
        tracing::info!(records = replayed, torn_bytes = torn, "write-ahead log replayed");
        for s in self.streams.read().unwrap_or_else(|p| p.into_inner()).values() {
            s.note_phase(&lock(&s.state));
        }
        self.wal = Some(wal);
        Ok(())
    }

    fn load_journal(&self, dir: &std::path::Path) {
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

    fn load_snapshots(&self, dir: &std::path::Path) -> Result<(), String> {
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
    fn replay(&self, lsn: u64, record: Record) {
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

/// Locks a mutex if it is free (a poisoned one counts as free, as in [`lock`]).
fn try_lock<T>(m: &Mutex<T>) -> Option<std::sync::MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// Locks a mutex; a panic elsewhere while it was held does not take every later
/// request down with it (the data it guards is valid between statements).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Applies one logged reading at start-up (a reading the stream would refuse is
/// skipped: the log only holds validated ones, but a snapshot may be newer).
fn replay_reading(st: &mut StreamState, r: &Reading, history: bool, lsn: u64) {
    let d = &mut st.detector;
    if crate::detector::check_reading(d.n_features(), d.last_timestamp(), r.timestamp, &r.values).is_err() {
        return;
    }
    let taken = if history {
        d.update_history(r.timestamp, &r.values)
    } else {
        d.update(r.timestamp, &r.values)
    };
    if let Ok(v) = taken {
        st.last_verdict = Some(v);
    }
    st.lsn = lsn;
    st.touch(lsn);
}

/// Applies a new config to a stream: the same shape keeps its state and model,
/// another shape starts it over.
fn reconfigure(st: &mut StreamState, config: DetectorConfig) -> Result<(), RegistryError> {
    let same_shape = st.detector.config().same_shape(&config);
    if same_shape {
        st.detector = st.detector.reconfigure(config)?;
    } else {
        st.detector = Detector::new(config)?;
    }
    // A new detector numbers its models from 1 again: whatever model file is on
    // disk may hold another model under the same version.
    st.model_saved = None;
    st.touch(u64::MAX);
    Ok(())
}

/// Accepts a stream's recent behaviour (see [`Detector::accept`]); returns the
/// readings learnt and the alert of the incident it resolved.
fn accept_into(id: &str, st: &mut StreamState) -> (usize, Option<Alert>) {
    let accepted = st.detector.accept();
    let alert = match &accepted.event {
        Some(crate::detector::IncidentEvent::Resolved {
            incident,
            end,
            resolution,
        }) => {
            let at = st.detector.last_timestamp().unwrap_or(*end);
            let version = st.detector.model().map_or(0, |m| m.version);
            Some(Alert::resolved(id, incident, *end, *resolution, at, version))
        }
        _ => None,
    };
    (accepted.readings, alert)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hardening finding 7: a scrape never waits for a stream's lock (a batch or
    /// a training install may hold it for long).
    #[test]
    fn phase_gauges_take_no_stream_lock() {
        let reg = Registry::open(RegistryConfig::default(), Arc::new(Metrics::new())).unwrap();
        let r = Reading {
            stream: "a".into(),
            timestamp: 1,
            values: vec![1.0],
        };
        reg.ingest(&[r]).unwrap();
        let stream = reg.get("a").unwrap();
        let held = lock(&stream.state);
        let (tx, rx) = std::sync::mpsc::channel();
        let reg2 = reg.clone();
        std::thread::spawn(move || {
            reg2.update_phase_gauges();
            let _ = tx.send(());
        });
        let done = rx.recv_timeout(Duration::from_secs(10));
        drop(held);
        assert!(done.is_ok(), "the scrape waited for a stream's lock");
        assert_eq!(reg.metrics().streams.with_label_values(&["warmup"]).get(), 1);
    }

    /// Hardening finding 9: one stream that cannot be written does not end the
    /// round: the others are written, the service says it is not ready, the log
    /// keeps its records, and the next round that succeeds makes it ready again.
    #[test]
    fn a_failing_stream_does_not_end_the_snapshot_round() {
        let dir = std::env::temp_dir().join(format!("anomalyd-round-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = RegistryConfig {
            data_dir: Some(dir.clone()),
            ..Default::default()
        };
        let reg = Registry::open(config.clone(), Arc::new(Metrics::new())).unwrap();
        let readings: Vec<Reading> = ["a", "b", "c"]
            .iter()
            .map(|s| Reading {
                stream: s.to_string(),
                timestamp: 1,
                values: vec![1.0],
            })
            .collect();
        reg.ingest(&readings).unwrap();
        let streams = dir.join("streams");
        let file = |s: &str| snapshot::stream_file(&streams, s);
        // A directory where b's temporary file would go: staging b fails.
        let mut blocked = file("b").into_os_string();
        blocked.push(".tmp");
        std::fs::create_dir_all(&blocked).unwrap();
        assert!(reg.snapshot().is_err());
        assert!(file("a").exists() && file("c").exists(), "the round went on past b");
        assert!(!file("b").exists());
        assert!(reg.storage_ready().is_err(), "not ready after a failed round");
        std::fs::remove_dir(&blocked).unwrap();
        assert_eq!(reg.snapshot().unwrap(), 1, "b stayed dirty and is written now");
        assert!(reg.storage_ready().is_ok());
        drop(reg);
        // Leftovers of an unfinished round are cleaned at start.
        let mut stale = file("a").into_os_string();
        stale.push(".tmp");
        std::fs::write(&stale, b"half").unwrap();
        let back = Registry::open(config, Arc::new(Metrics::new())).unwrap();
        assert_eq!(back.len(), 3);
        assert!(!std::path::Path::new(&stale).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Issue 9, checkpoints: a round writes at most `checkpoint_max_streams`
    /// streams (the oldest changes first) and keeps the log the others need, so a
    /// crash between rounds loses nothing; rounds converge to a clean state.
    #[test]
    fn bounded_rounds_keep_the_log_the_unwritten_streams_need() {
        let dir = std::env::temp_dir().join(format!("anomalyd-bounded-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = RegistryConfig {
            data_dir: Some(dir.clone()),
            checkpoint_max_streams: 2,
            ..Default::default()
        };
        let reading = |s: usize, t: i64| Reading {
            stream: format!("s{s}"),
            timestamp: t,
            values: vec![t as f64],
        };
        let reg = Registry::open(config.clone(), Arc::new(Metrics::new())).unwrap();
        for t in 0..3 {
            let batch: Vec<Reading> = (0..5).map(|s| reading(s, t)).collect();
            reg.ingest(&batch).unwrap();
        }
        assert_eq!(reg.snapshot().unwrap(), 2);
        assert_eq!(reg.dirty_streams(), 3);
        // More readings for a written stream, then a crash (no further round).
        reg.ingest(&[reading(0, 3)]).unwrap();
        drop(reg);
        let back = Registry::open(config.clone(), Arc::new(Metrics::new())).unwrap();
        for s in 0..5 {
            let want = if s == 0 { 4 } else { 3 };
            assert_eq!(back.info(&format!("s{s}")).unwrap().readings_seen, want, "stream s{s}");
        }
        // Rounds converge: everything written, the log down to its current segment.
        let mut rounds = 0;
        while back.dirty_streams() > 0 {
            back.snapshot().unwrap();
            rounds += 1;
            assert!(rounds <= 3, "at most 2 streams a round");
        }
        back.snapshot().unwrap();
        let segments = std::fs::read_dir(dir.join("wal")).unwrap().count();
        assert_eq!(segments, 1, "the covered segments were removed");
        drop(back);
        let again = Registry::open(config, Arc::new(Metrics::new())).unwrap();
        assert_eq!(again.info("s0").unwrap().readings_seen, 4);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A registry on a fresh data directory named after `name`, holding stream
    /// `m` with a trained model (version 1, no retraining after it), checkpointed
    /// once. Returns the directory, the config and the registry.
    fn checkpointed_stream(name: &str) -> (std::path::PathBuf, RegistryConfig, Arc<Registry>) {
        let dir = std::env::temp_dir().join(format!("anomalyd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = RegistryConfig {
            data_dir: Some(dir.clone()),
            ..Default::default()
        };
        let mut c = DetectorConfig::default();
        c.model.ensemble = 1;
        c.retrain.first_after = 100;
        c.retrain.every_readings = 0;
        c.retrain.on_drift = false;
        let mut d = Detector::new(c).unwrap();
        for t in 0..160 {
            d.update_sync(t, &[(t as f64 / 5.0).sin()]).unwrap();
        }
        assert_eq!(d.model().map(|m| m.version), Some(1));
        let reg = Registry::open(config.clone(), Arc::new(Metrics::new())).unwrap();
        reg.adopt("m", d).unwrap();
        reg.snapshot().unwrap();
        (dir, config, reg)
    }

    /// The model files under `streams`, sorted.
    fn model_files(streams: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(streams)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "model"))
            .collect();
        v.sort();
        v
    }

    /// Issue 9, checkpoints: a stream's weights are written once per model
    /// version, its state at every round that finds it changed; a restart
    /// restores the model from its model file, and model files no state names
    /// (after a reset) are removed at start.
    #[test]
    fn checkpoints_write_the_weights_once_per_model_version() {
        use std::os::unix::fs::MetadataExt;
        let (dir, config, reg) = checkpointed_stream("weights");
        let streams = dir.join("streams");
        let models = || model_files(&streams);
        let state = snapshot::stream_file(&streams, "m");
        let [model] = <[std::path::PathBuf; 1]>::try_from(models()).expect("one model file");
        let ino = |p: &std::path::Path| std::fs::metadata(p).unwrap().ino();
        let (state_ino, model_ino) = (ino(&state), ino(&model));
        reg.ingest(&[Reading {
            stream: "m".into(),
            timestamp: 160,
            values: vec![0.5],
        }])
        .unwrap();
        assert_eq!(reg.snapshot().unwrap(), 1);
        assert_ne!(ino(&state), state_ino, "the state was rewritten");
        assert_eq!(ino(&model), model_ino, "the weights were not");
        drop(reg);
        let back = Registry::open(config.clone(), Arc::new(Metrics::new())).unwrap();
        let info = back.info("m").unwrap();
        assert_eq!(info.readings_seen, 161);
        assert_eq!(
            info.model.map(|m| m.version),
            Some(1),
            "the model came back from its file"
        );
        // A reset discards the model: the state no longer names the file, and the
        // next start removes it.
        back.patch("m", &serde_json::json!({"window": 8}), true).unwrap();
        back.snapshot().unwrap();
        assert!(model.exists(), "removed only once no state can need it");
        drop(back);
        let again = Registry::open(config, Arc::new(Metrics::new())).unwrap();
        assert!(again.info("m").unwrap().model.is_none());
        assert!(!model.exists(), "an orphan model file is removed at start");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A model is on disk as soon as it is installed, not at the next round: a
    /// crash (here: the registry dropped, no round ever run) keeps it, and a
    /// restart scores with it instead of training it again.
    #[test]
    fn an_installed_model_survives_a_crash_before_the_next_round() {
        let dir = std::env::temp_dir().join(format!("anomalyd-install-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = RegistryConfig {
            data_dir: Some(dir.clone()),
            ..Default::default()
        };
        let reg = Registry::open(config.clone(), Arc::new(Metrics::new())).unwrap();
        let readings: Vec<Reading> = (0..400)
            .map(|t| Reading {
                stream: "w".into(),
                timestamp: t * 60_000_000,
                values: vec![50.0 + 10.0 * (t as f64 / 8.0).sin()],
            })
            .collect();
        reg.ingest(&readings).unwrap(); // the first job is queued at 384
        let streams = dir.join("streams");
        let saved = || streams.exists() && !model_files(&streams).is_empty();
        for _ in 0..1500 {
            if saved() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(saved(), "the weights were written when the model was installed");
        let version = reg.info("w").unwrap().model.map(|m| m.version);
        assert_eq!(version, Some(1));
        drop(reg);
        let back = Registry::open(config, Arc::new(Metrics::new())).unwrap();
        let info = back.info("w").unwrap();
        assert_eq!(info.readings_seen, 400, "the log replays every reading");
        assert_eq!(info.model.map(|m| m.version), version, "the model came back");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_lost_model_file_costs_the_model_not_the_stream() {
        let (dir, config, reg) = checkpointed_stream("lost-model");
        drop(reg);
        let streams = dir.join("streams");
        let [model] = <[std::path::PathBuf; 1]>::try_from(model_files(&streams)).expect("one model file");
        // Damaged: cut in half.
        let bytes = std::fs::read(&model).unwrap();
        std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
        let state = snapshot::stream_file(&streams, "m");
        let loaded = snapshot::read(&state).unwrap();
        assert!(loaded.model_lost.is_some());
        let detector = Detector::restore(loaded.snapshot).unwrap();
        assert!(detector.model().is_none() && detector.training_due(), "it retrains");

        let back = Registry::open(config.clone(), Arc::new(Metrics::new())).unwrap();
        let info = back.info("m").expect("the stream is loaded");
        assert_eq!(info.readings_seen, 160);
        assert!(info.model.is_none());
        assert!(state.exists(), "the state was not moved aside");
        assert!(model.with_extension("corrupt").exists(), "the damaged weights were");
        // The next checkpoint rewrites the state without the lost file's name;
        // then a missing file is no longer named at all.
        assert_eq!(back.snapshot().unwrap(), 1);
        drop(back);
        assert!(snapshot::read(&state).unwrap().model_lost.is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
