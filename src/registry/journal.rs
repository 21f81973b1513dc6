//! The alert journal: a bounded, sequence-numbered log of recent incident events
//! (opened, resolved), and the broadcast that feeds WebSocket subscribers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::timestamp::Micros;

/// What happened to an incident.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// The stream's state turned anomalous: an incident opened.
    #[default]
    Opened,
    /// The incident ended.
    Resolved,
}

/// One incident event: an incident opened or resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Sequence number: increasing, never reused (also across restarts).
    pub seq: u64,
    /// Opened or resolved.
    #[serde(default)]
    pub kind: AlertKind,
    /// The stream.
    pub stream: String,
    /// The incident's id within the stream.
    #[serde(default)]
    pub incident: u64,
    /// The timestamp of the reading at which this happened.
    pub timestamp: Micros,
    /// When the incident started (its first anomalous reading).
    #[serde(default)]
    pub start: Micros,
    /// When it ended (resolved events only).
    #[serde(default)]
    pub end: Option<Micros>,
    /// Why it ended (resolved events only).
    #[serde(default)]
    pub resolution: Option<crate::detector::Resolution>,
    /// The reading's score (opened) or the incident's peak score (resolved).
    pub score: f64,
    /// The reading's values (opened; empty for resolved).
    pub values: Vec<f64>,
    /// What the detector expected (opened).
    pub expected: Vec<f64>,
    /// Each feature's share of the surprise (opened: this reading; resolved: the
    /// whole incident).
    pub contributions: Vec<f64>,
    /// The features that contributed most over the incident, with their shares.
    #[serde(default)]
    pub top_features: Vec<(usize, f64)>,
    /// Model version that scored.
    pub model_version: u64,
}

impl Alert {
    /// The journal record of an incident event (its `seq` is set by the journal).
    pub fn of_event(
        stream: &str,
        event: &crate::detector::IncidentEvent,
        verdict: &crate::detector::Verdict,
        values: &[f64],
    ) -> Alert {
        use crate::detector::IncidentEvent;
        match event {
            IncidentEvent::Opened(inc) => Alert {
                seq: 0,
                kind: AlertKind::Opened,
                stream: stream.to_string(),
                incident: inc.id,
                timestamp: verdict.timestamp,
                start: inc.start,
                end: None,
                resolution: None,
                score: verdict.score,
                values: values.to_vec(),
                expected: verdict.expected.clone(),
                contributions: verdict.contributions.clone(),
                top_features: inc.top_features(),
                model_version: verdict.model_version,
            },
            IncidentEvent::Resolved {
                incident,
                end,
                resolution,
            } => Alert::resolved(
                stream,
                incident,
                *end,
                *resolution,
                verdict.timestamp,
                verdict.model_version,
            ),
        }
    }

    /// The record of an incident's end.
    pub fn resolved(
        stream: &str,
        inc: &crate::detector::Incident,
        end: Micros,
        resolution: crate::detector::Resolution,
        at: Micros,
        model_version: u64,
    ) -> Alert {
        let total: f64 = inc.contributions.iter().sum();
        Alert {
            seq: 0,
            kind: AlertKind::Resolved,
            stream: stream.to_string(),
            incident: inc.id,
            timestamp: at,
            start: inc.start,
            end: Some(end),
            resolution: Some(resolution),
            score: inc.peak_score,
            values: Vec::new(),
            expected: Vec::new(),
            contributions: inc
                .contributions
                .iter()
                .map(|c| if total > 0.0 { c / total } else { 0.0 })
                .collect(),
            top_features: inc.top_features(),
            model_version,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Inner {
    alerts: VecDeque<Arc<Alert>>,
    next_seq: u64,
    /// Alerts not yet broadcast, with the log record that holds them: they go
    /// out once that record is durable, in sequence order.
    #[serde(skip)]
    pending: VecDeque<(u64, Arc<Alert>)>,
}

/// The journal. Cheap to share (`Arc` inside the registry).
#[derive(Debug)]
pub struct AlertJournal {
    inner: Mutex<Inner>,
    capacity: usize,
    tx: broadcast::Sender<Arc<Alert>>,
}

impl AlertJournal {
    /// A journal keeping the last `capacity` alerts; each subscriber may fall
    /// `subscriber_buffer` alerts behind before it is told it lagged.
    pub fn new(capacity: usize, subscriber_buffer: usize) -> Self {
        let (tx, _) = broadcast::channel(subscriber_buffer.max(1));
        AlertJournal {
            inner: Mutex::new(Inner {
                alerts: VecDeque::new(),
                next_seq: 1,
                pending: VecDeque::new(),
            }),
            capacity: capacity.max(1),
            tx,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The journal's state is valid between statements: a panic elsewhere while
        // it was held leaves nothing half-done worth refusing service over.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn keep(&self, inner: &mut Inner, alert: Arc<Alert>) {
        if inner.alerts.len() == self.capacity {
            inner.alerts.pop_front();
        }
        inner.alerts.push_back(alert);
    }

    /// Appends an alert (its `seq` is assigned here) and broadcasts it at once
    /// (a journal without a log).
    pub fn push(&self, alert: Alert) -> u64 {
        let seq = self
            .push_logged(vec![alert], |_| Ok::<u64, ()>(0))
            .map_or(0, |(_, seqs)| seqs[0]);
        self.publish(0);
        seq
    }

    /// Assigns sequence numbers to `alerts`, hands them to `log` (which writes
    /// them to the write-ahead log and returns the record's LSN) and keeps them;
    /// all under the journal's lock, so sequence order is log order. They are
    /// broadcast by [`AlertJournal::publish`] once the record is durable. If `log`
    /// fails they are kept and go out with the next publish. Returns the LSN and
    /// the sequence numbers.
    pub fn push_logged<E>(
        &self,
        alerts: Vec<Alert>,
        log: impl FnOnce(&[Alert]) -> Result<u64, E>,
    ) -> Result<(u64, Vec<u64>), E> {
        let mut inner = self.lock();
        let mut alerts = alerts;
        for a in &mut alerts {
            a.seq = inner.next_seq;
            inner.next_seq += 1;
        }
        let seqs = alerts.iter().map(|a| a.seq).collect();
        let logged = log(&alerts);
        let lsn = *logged.as_ref().unwrap_or(&0);
        for a in alerts {
            let a = Arc::new(a);
            inner.pending.push_back((lsn, a.clone()));
            self.keep(&mut inner, a);
        }
        logged.map(|lsn| (lsn, seqs))
    }

    /// Broadcasts, in sequence order, the kept alerts whose log record is at or
    /// before `durable`.
    pub fn publish(&self, durable: u64) {
        let mut inner = self.lock();
        while inner.pending.front().is_some_and(|(lsn, _)| *lsn <= durable) {
            let (_, a) = inner.pending.pop_front().expect("front exists");
            // No subscribers is fine.
            let _ = self.tx.send(a);
        }
    }

    /// Puts back an alert read from the log at start-up (kept, not broadcast),
    /// unless the journal already has it.
    pub fn restore(&self, alert: Alert) {
        let mut inner = self.lock();
        if alert.seq < inner.next_seq {
            return;
        }
        inner.next_seq = alert.seq + 1;
        self.keep(&mut inner, Arc::new(alert));
    }

    /// The newest sequence number (0 when empty).
    pub fn latest_seq(&self) -> u64 {
        self.lock().next_seq - 1
    }

    /// A receiver for alerts pushed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Alert>> {
        self.tx.subscribe()
    }

    /// Alerts with `seq > since` (all when `None`), of `stream` when given, oldest
    /// first, at most `limit`.
    pub fn query(&self, stream: Option<&str>, since: Option<u64>, limit: usize) -> Vec<Arc<Alert>> {
        let inner = self.lock();
        inner
            .alerts
            .iter()
            .filter(|a| since.is_none_or(|s| a.seq > s) && stream.is_none_or(|s| a.stream == s))
            .take(limit)
            .cloned()
            .collect()
    }

    /// The newest `limit` alerts (newest first) of the streams `pattern` matches
    /// (a glob, see [`glob_match`]; all when None), before sequence `before`.
    pub fn newest(&self, pattern: Option<&str>, before: Option<u64>, limit: usize) -> Vec<Arc<Alert>> {
        let inner = self.lock();
        inner
            .alerts
            .iter()
            .rev()
            .filter(|a| before.is_none_or(|b| a.seq < b) && pattern.is_none_or(|p| glob_match(p, &a.stream)))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Serialises the journal (for snapshots).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&*self.lock()).expect("alerts serialise")
    }

    /// Restores from [`AlertJournal::to_json`] output.
    pub fn load_json(&self, bytes: &[u8]) -> Result<(), serde_json::Error> {
        let mut loaded: Inner = serde_json::from_slice(bytes)?;
        while loaded.alerts.len() > self.capacity {
            loaded.alerts.pop_front();
        }
        let min_next = loaded.alerts.back().map_or(1, |a| a.seq + 1);
        loaded.next_seq = loaded.next_seq.max(min_next);
        let mut inner = self.lock();
        inner.alerts = loaded.alerts;
        inner.next_seq = loaded.next_seq;
        Ok(())
    }
}

/// `*` matches any run of characters (including none); everything else literally.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || s.len() < first.len() + last.len() || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}
