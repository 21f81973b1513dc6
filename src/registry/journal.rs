//! The alert journal: a bounded, sequence-numbered log of recent alerts, and the
//! broadcast that feeds WebSocket subscribers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::timestamp::Micros;

/// One alert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Sequence number: increasing, never reused (also across restarts).
    pub seq: u64,
    /// The stream.
    pub stream: String,
    /// The reading's timestamp.
    pub timestamp: Micros,
    /// Score that raised it.
    pub score: f64,
    /// The reading's values.
    pub values: Vec<f64>,
    /// What the detector expected.
    pub expected: Vec<f64>,
    /// Each feature's share of the surprise.
    pub contributions: Vec<f64>,
    /// Model version that scored.
    pub model_version: u64,
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
