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
            }),
            capacity: capacity.max(1),
            tx,
        }
    }

    /// Appends an alert (its `seq` is assigned here) and broadcasts it.
    pub fn push(&self, mut alert: Alert) -> u64 {
        let alert = {
            let mut inner = self.inner.lock().expect("journal lock");
            alert.seq = inner.next_seq;
            inner.next_seq += 1;
            let alert = Arc::new(alert);
            if inner.alerts.len() == self.capacity {
                inner.alerts.pop_front();
            }
            inner.alerts.push_back(alert.clone());
            alert
        };
        let seq = alert.seq;
        // No subscribers is fine.
        let _ = self.tx.send(alert);
        seq
    }

    /// The newest sequence number (0 when empty).
    pub fn latest_seq(&self) -> u64 {
        self.inner.lock().expect("journal lock").next_seq - 1
    }

    /// A receiver for alerts pushed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Alert>> {
        self.tx.subscribe()
    }

    /// Alerts with `seq > since` (all when `None`), of `stream` when given, oldest
    /// first, at most `limit`.
    pub fn query(&self, stream: Option<&str>, since: Option<u64>, limit: usize) -> Vec<Arc<Alert>> {
        let inner = self.inner.lock().expect("journal lock");
        inner
            .alerts
            .iter()
            .filter(|a| since.is_none_or(|s| a.seq > s) && stream.is_none_or(|s| a.stream == s))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Serialises the journal (for snapshots).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&*self.inner.lock().expect("journal lock")).expect("alerts serialise")
    }

    /// Restores from [`AlertJournal::to_json`] output.
    pub fn load_json(&self, bytes: &[u8]) -> Result<(), serde_json::Error> {
        let mut loaded: Inner = serde_json::from_slice(bytes)?;
        while loaded.alerts.len() > self.capacity {
            loaded.alerts.pop_front();
        }
        let min_next = loaded.alerts.back().map_or(1, |a| a.seq + 1);
        loaded.next_seq = loaded.next_seq.max(min_next);
        *self.inner.lock().expect("journal lock") = loaded;
        Ok(())
    }
}
