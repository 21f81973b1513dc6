//! One stream of the registry: its detector behind one lock ([`StreamState`]),
//! its phase readable without that lock, and its exported view (`/metrics/scores`)
//! behind a short lock of its own; and the few steps on a locked state that both
//! live requests and the log's replay take (apply a reading, reconfigure, accept).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use super::{Alert, Reading, RegistryError};
use crate::detector::{Detector, DetectorConfig, Phase, Verdict};

/// A stream: its id and its detector behind one lock.
#[derive(Debug)]
pub struct Stream {
    pub(super) id: String,
    pub(super) state: Mutex<StreamState>,
    /// The detector's phase as of its last change, readable without the lock
    /// (`/metrics` counts phases without locking every stream).
    pub(super) phase: AtomicU8,
    /// What `/metrics/scores` shows, behind its own short lock (taken after the
    /// state's, never the other way round).
    pub(super) meta: Mutex<StreamMeta>,
    /// Offered a backfill of its past from Prometheus (once per process).
    pub(super) backfill_offered: std::sync::atomic::AtomicBool,
    /// Unix seconds of the last batch that brought it readings (or of its
    /// loading): how long it has been idle.
    pub(super) last_seen: std::sync::atomic::AtomicU64,
    /// Unix seconds of the staleness marker that ended its series, when no reading
    /// came since (0: none).
    pub(super) stale_since: std::sync::atomic::AtomicU64,
}

/// Seconds since 1970 now (the registry's clock for idleness).
pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A stream's exported view: its Prometheus labels and its newest verdict.
#[derive(Clone, Debug, Default)]
pub struct StreamMeta {
    /// The series' labels (remote_write streams), `__name__` included, sorted.
    pub labels: Option<Arc<[(String, String)]>>,
    /// The newest reading's values.
    pub values: Vec<f64>,
    /// The newest verdict's score (`None` while warming up: not judged).
    pub score: Option<f64>,
    /// Normal readings still needed before the stream judges (0 once it does).
    pub readings_needed: u64,
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
    pub(super) fn new(id: &str, detector: Detector, dirty: bool, lsn: u64) -> Arc<Stream> {
        // Not yet on disk: anything logged from `lsn` on may be needed to rebuild it.
        let dirty = dirty.then_some(lsn);
        let phase = AtomicU8::new(phase_index(detector.phase()));
        Arc::new(Stream {
            id: id.to_string(),
            phase,
            meta: Mutex::new(StreamMeta::default()),
            backfill_offered: Default::default(),
            last_seen: unix_now().into(),
            stale_since: Default::default(),
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

fn phase_index(p: Phase) -> u8 {
    match p {
        Phase::Warmup => 0,
        Phase::Baseline => 1,
        Phase::Model => 2,
    }
}

impl Stream {
    /// Records the detector's phase for lock-free readers.
    pub(super) fn note_phase(&self, st: &StreamState) {
        self.phase.store(phase_index(st.detector.phase()), Ordering::Relaxed);
    }
}

impl StreamState {
    /// Marks a change logged at `lsn` (or not logged: `u64::MAX`) as not yet
    /// in the snapshot.
    pub(super) fn touch(&mut self, lsn: u64) {
        self.dirty = Some(self.dirty.map_or(lsn, |d| d.min(lsn)));
    }
}

#[derive(Debug)]
pub(super) struct StreamState {
    pub(super) detector: Detector,
    /// Changed since the last snapshot: the LSN of the oldest change not in it
    /// (`u64::MAX` for changes the log does not hold, such as a new model). The
    /// log is kept from the oldest of these on.
    pub(super) dirty: Option<u64>,
    /// The last write-ahead log record applied to this state: replay skips this
    /// stream's records up to it (they are in its snapshot).
    pub(super) lsn: u64,
    /// Removed from the registry (late training results are discarded).
    pub(super) deleted: bool,
    pub(super) last_verdict: Option<Verdict>,
    /// The model version whose weights are on disk, and the file they are in (the
    /// one the state on disk names): a checkpoint writes the weights again only
    /// when the version changed.
    pub(super) model_saved: Option<(u64, std::path::PathBuf)>,
}

/// Applies one logged reading at start-up (a reading the stream would refuse is
/// skipped: the log only holds validated ones, but a snapshot may be newer).
pub(super) fn replay_reading(st: &mut StreamState, r: &Reading, history: bool, lsn: u64) {
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
pub(super) fn reconfigure(st: &mut StreamState, config: DetectorConfig) -> Result<(), RegistryError> {
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
pub(super) fn accept_into(id: &str, st: &mut StreamState) -> (usize, Option<Alert>) {
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

/// Starts a stream over under its config (model, readings, limits and recent
/// verdicts discarded); returns the alert of the incident that was open, now
/// resolved as `reset`.
pub(super) fn reset_into(id: &str, st: &mut StreamState) -> Option<Alert> {
    let d = &st.detector;
    let version = d.model().map_or(0, |m| m.version);
    let alert = d.incident().map(|inc| {
        let at = d.last_timestamp().unwrap_or(inc.start);
        Alert::resolved(id, inc, at, crate::detector::Resolution::Reset, at, version)
    });
    match Detector::new(d.config().clone()) {
        Ok(fresh) => st.detector = fresh,
        // A config in use was validated when it was set.
        Err(e) => tracing::error!(stream = id, error = %e, "reset refused its own config"),
    }
    st.model_saved = None;
    st.last_verdict = None;
    st.touch(u64::MAX);
    alert
}

/// Where a warming-up stream's past may still go: before its first reading, as
/// long as every reading it took is among its recent ones (they are learnt again
/// after the past) and nothing judged it yet. `None`: too late.
pub(super) fn backfill_before(d: &Detector) -> Option<crate::timestamp::Micros> {
    let recent = d.recent();
    let untouched = d.phase() == Phase::Warmup && d.model().is_none() && d.incident().is_none();
    let all_recent = d.readings_seen() == recent.len() as u64;
    recent.first_timestamp().filter(|_| untouched && all_recent)
}

/// Starts a warming-up stream over having learnt `past` (its readings before its
/// first, oldest first) and then its own readings, all as history; it then
/// trains. Readings it would refuse (out of order) are skipped.
pub(super) fn backfill_into(st: &mut StreamState, past: &[Reading]) {
    let d = &st.detector;
    let own = d.recent().points(usize::MAX);
    let Ok(mut fresh) = Detector::new(d.config().clone()) else {
        return;
    };
    let past = past.iter().map(|r| (r.timestamp, &r.values[..]));
    for (t, values) in past.chain(own.iter().map(|p| (p.timestamp, &p.values[..]))) {
        if fresh.check(t, values).is_ok() {
            let _ = fresh.update_history(t, values);
        }
    }
    fresh.request_retrain();
    st.detector = fresh;
    st.model_saved = None;
    st.touch(u64::MAX);
}
