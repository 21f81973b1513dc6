//! Retiring streams whose series ended: in Kubernetes every pod restart is a new
//! series, so without this a node fills with dead streams and then reaches its
//! stream limit. A stream whose series Prometheus ended with a staleness marker,
//! and that took no reading since, is retired after `retire_stale_after`; with
//! `retire_idle_after` set, any stream that took no reading for that long is
//! too. Retiring is deleting: logged, the files removed at the next checkpoint,
//! counted in `anomalyd_streams_retired_total{reason}`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::stream::{Stream, unix_now};
use super::{Registry, RegistryError};

/// Why a stream is retired, at `now`, if it is.
fn due(s: &Stream, now: u64, stale_after: Option<Duration>, idle_after: Option<Duration>) -> Option<&'static str> {
    let past = |since: u64, after: Option<Duration>| {
        after.is_some_and(|d| since > 0 && now.saturating_sub(since) >= d.as_secs())
    };
    if past(s.stale_since.load(Ordering::Relaxed), stale_after) {
        Some("stale")
    } else if past(s.last_seen.load(Ordering::Relaxed), idle_after) {
        Some("idle")
    } else {
        None
    }
}

impl Registry {
    /// Notes that Prometheus ended the series of these streams (a staleness
    /// marker was their newest sample).
    pub fn mark_stale<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let now = unix_now();
        for id in ids {
            if let Some(s) = self.get(id) {
                let _ = s
                    .stale_since
                    .compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }

    /// Retires the streams that are due at `now` (unix seconds); returns them
    /// with the reason. Blocking.
    pub fn retire(&self, now: u64) -> Result<Vec<(String, &'static str)>, RegistryError> {
        let (stale, idle) = (self.config.retire_stale_after, self.config.retire_idle_after);
        if stale.is_none() && idle.is_none() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for s in self.all_streams() {
            let Some(reason) = due(&s, now, stale, idle) else {
                continue;
            };
            // Checked again under the stream's lock: a reading may have come.
            if self.delete_if(&s.id, |s| due(s, now, stale, idle).is_some())? {
                tracing::info!(stream = %s.id, reason, "stream retired");
                self.metrics.streams_retired.with_label_values(&[reason]).inc();
                out.push((s.id.clone(), reason));
            }
        }
        Ok(out)
    }

    /// Retires due streams every `every` on the blocking pool until the returned
    /// handle is aborted.
    pub fn spawn_retirer(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let registry = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let r = registry.clone();
                match tokio::task::spawn_blocking(move || r.retire(unix_now())).await {
                    Ok(Err(e)) => tracing::warn!(error = %e, "retiring streams failed; retried next round"),
                    Err(e) => tracing::warn!(error = %e, "retiring task failed"),
                    Ok(Ok(_)) => {}
                }
            }
        })
    }
}
