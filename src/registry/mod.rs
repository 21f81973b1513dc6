//! The streams of a running service. The only module that spawns threads for
//! the service's work (the training pool); scoring runs on the caller's thread.
//!
//! - `mod.rs`: [`Registry`], its settings and errors, opening it.
//! - `stream.rs`: one stream (its detector behind one lock, its exported view).
//! - `ingest.rs`: batches of readings: validate, log, apply, journal, make durable.
//! - `streams.rs`: create, reconfigure, accept, delete, list, inspect.
//! - `training.rs`: the bounded training queue and its threads.
//! - `checkpoint.rs`: snapshot rounds and the log segments they let go.
//! - `recovery.rs`: start-up: snapshots, then the log replayed over them.
//! - `log.rs`: what goes in the write-ahead log; `journal.rs`: the alert journal.
//! - `shards.rs`: a sharded node's shard table and moves (release, export,
//!   forget, reclaim); `adopt.rs`: importing a shard archive.
//!
//! Invariants: per-stream order is the order of calls into `ingest` (the stream's
//! lock is held for a whole batch); a batch is validated in full before any reading
//! is applied, so a rejected batch changes nothing; training runs on the pool's own
//! threads and swaps models in whole under the stream's lock.

pub mod journal;
pub mod log;

mod adopt;
mod backfill;
mod checkpoint;
mod ingest;
mod queue;
mod recovery;
mod retire;
mod shards;
mod stream;
mod streams;
mod training;
mod views;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub use backfill::{BackfillJob, BackfillOutcome};
pub use ingest::RemoteTaken;
pub use journal::{Alert, AlertJournal, AlertKind};
pub use shards::{Imported, Route, ShardTable};
pub use stream::{Stream, StreamMeta};
pub use streams::merge_patch;
pub use views::{RecentView, SPARKLINE, StreamSummary};

use crate::detector::{ConfigError, DetectorConfig, ReadingError};
use crate::metrics::Metrics;
use crate::storage::wal::{SyncPolicy, Wal};
use crate::timestamp::Micros;
use training::QueuedJob;

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
    /// A stream whose series ended (a staleness marker) and took no reading since
    /// is retired after this (`None`: never).
    pub retire_stale_after: Option<Duration>,
    /// A stream that took no reading for this long is retired (`None`: never).
    pub retire_idle_after: Option<Duration>,
    /// The shards this node owns (`None`: not sharded, every stream is its own).
    pub shards: Option<Ownership>,
}

/// The shards a node owns, and the function that places a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ownership {
    /// The deployment's owner function.
    pub function: crate::shard::ShardFunction,
    /// Per shard, whether this node owns it.
    pub owned: Vec<bool>,
}

impl Ownership {
    /// `owned` of `function`'s shards.
    pub fn new(function: crate::shard::ShardFunction, owned: &[u32]) -> Ownership {
        let mut bits = vec![false; function.count as usize];
        for &s in owned {
            if let Some(b) = bits.get_mut(s as usize) {
                *b = true;
            }
        }
        Ownership { function, owned: bits }
    }

    /// Stream `id`'s shard when this node does not own it.
    pub fn foreign(&self, id: &str) -> Option<u32> {
        let shard = self.function.of_id(id);
        (!self.owned[shard as usize]).then_some(shard)
    }
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
            retire_stale_after: Some(Duration::from_secs(3600)),
            retire_idle_after: None,
            shards: None,
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
    /// The stream's shard is moving away from this node: retry soon (at the
    /// shard's new owner, once the routers know it).
    #[error("stream {stream:?} belongs to shard {shard}, which is moving to another node; retry shortly")]
    Moving {
        /// The stream.
        stream: String,
        /// Its shard.
        shard: u32,
    },
    /// A shard operation does not fit the shard's state (or the node is not sharded).
    #[error("{0}")]
    ShardState(String),
    /// A shard archive is invalid; nothing was imported.
    #[error("invalid shard archive: {0}")]
    ShardArchive(String),
    /// The stream belongs to a shard this node does not own.
    #[error("stream {stream:?} belongs to shard {shard}, which this node does not own")]
    NotOwned {
        /// The stream.
        stream: String,
        /// Its shard.
        shard: u32,
    },
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

/// All streams of the service.
#[derive(Debug)]
pub struct Registry {
    config: RegistryConfig,
    streams: RwLock<HashMap<String, Arc<Stream>>>,
    journal: AlertJournal,
    metrics: Arc<Metrics>,
    trainer: queue::JobSender<QueuedJob>,
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
    /// A sharded node's shard table (`None`: not sharded).
    shards: Option<shards::Shards>,
}

impl Registry {
    /// Creates the registry, loads the data directory's snapshots (damaged files are
    /// moved aside and counted, never loaded) and starts the training threads.
    ///
    /// # Errors
    /// If the default detector config is invalid or the data directory is unusable.
    pub fn open(config: RegistryConfig, metrics: Arc<Metrics>) -> Result<Arc<Self>, String> {
        config.default_detector.validate().map_err(|e| e.to_string())?;
        let (tx, rx) = queue::job_queue::<QueuedJob>(config.training_queue);
        for kind in crate::detector::JobKind::ALL {
            metrics.training.queued.with_label_values(&[kind.name()]);
            metrics.training.seconds.with_label_values(&[kind.name()]);
        }
        let shards = match &config.shards {
            Some(o) => {
                let saved = config.data_dir.as_ref().map(|d| d.join("shards.json"));
                Some(shards::Shards::open(o.function.clone(), &o.owned, saved.as_deref())?)
            }
            None => None,
        };
        let registry = Arc::new(Registry {
            shards,
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
        if let Some((table, _)) = registry.shard_table() {
            registry.note_owned(&table);
        }
        let mut registry = registry;
        Arc::get_mut(&mut registry).expect("not shared yet").load()?;
        registry.start_training_threads(rx)?;
        Ok(registry)
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

    /// The error for a stream this node lacks: another node's (421), or none's.
    fn missing(&self, id: &str) -> RegistryError {
        self.owns(id)
            .err()
            .unwrap_or_else(|| RegistryError::NotFound(id.to_string()))
    }

    fn get(&self, id: &str) -> Option<Arc<Stream>> {
        self.streams.read().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    /// Whether this node holds (serves) stream `id`.
    pub fn holds(&self, id: &str) -> bool {
        self.get(id).is_some()
    }

    /// Number of streams.
    pub fn len(&self) -> usize {
        self.streams.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether there are no streams.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

#[cfg(test)]
mod tests;
