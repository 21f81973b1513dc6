//! `GET /v1/alerts/ws`: alerts pushed to subscribers, with filters, heartbeats,
//! resume from a sequence number, and a bounded buffer per subscriber (a subscriber
//! that falls behind is told how many alerts it missed instead of the server
//! buffering without bound). The loop is written over a generic Sink/Stream so it
//! can be tested with channels.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::broadcast::error::RecvError;

use crate::protocol::{AlertOut, FeatureShare, WsClientMessage, WsServerMessage};
use crate::registry::{Alert, AlertKind, Registry};

/// A subscriber's filter.
#[derive(Clone, Debug, Default)]
struct Filter {
    globs: Vec<String>,
    min_score: f64,
}

impl Filter {
    fn matches(&self, a: &Alert) -> bool {
        a.score >= self.min_score && (self.globs.is_empty() || self.globs.iter().any(|g| glob_match(g, &a.stream)))
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

/// Converts a journal alert to its wire form.
pub fn alert_out(a: &Alert) -> AlertOut {
    AlertOut {
        seq: a.seq,
        kind: match a.kind {
            AlertKind::Opened => "opened",
            AlertKind::Resolved => "resolved",
        }
        .to_string(),
        stream: a.stream.clone(),
        incident: a.incident,
        timestamp: crate::timestamp::format_rfc3339(a.timestamp),
        start: crate::timestamp::format_rfc3339(a.start),
        end: a.end.map(crate::timestamp::format_rfc3339),
        resolution: a.resolution.map(|r| r.name().to_string()),
        score: a.score,
        top_features: a
            .top_features
            .iter()
            .map(|&(feature, share)| FeatureShare { feature, share })
            .collect(),
        values: a.values.clone(),
        expected: a.expected.clone(),
        contributions: a.contributions.clone(),
        model_version: a.model_version,
    }
}

/// Runs one subscriber: `incoming` yields the client's text messages (None: closed),
/// `outgoing` takes the server's JSON texts.
pub async fn run_subscriber<I, O>(registry: Arc<Registry>, mut incoming: I, mut outgoing: O, heartbeat: Duration)
where
    I: Stream<Item = Option<String>> + Unpin,
    O: Sink<String> + Unpin,
{
    let journal = registry.journal();
    let mut rx = journal.subscribe();
    let mut filter = Filter::default();
    let mut last_sent = 0u64;
    let mut tick = tokio::time::interval(heartbeat);
    tick.tick().await;
    let send = |msg: WsServerMessage| serde_json::to_string(&msg).expect("messages serialise");
    loop {
        tokio::select! {
            msg = incoming.next() => {
                let Some(Some(text)) = msg else { break };
                match serde_json::from_str::<WsClientMessage>(&text) {
                    Ok(WsClientMessage::Subscribe { streams, min_score, resume_from }) => {
                        filter = Filter { globs: streams, min_score: min_score.unwrap_or(0.0) };
                        if let Some(from) = resume_from {
                            for a in journal.query(None, Some(from.max(last_sent)), usize::MAX) {
                                if filter.matches(&a)
                                    && outgoing.send(send(WsServerMessage::Alert(Box::new(alert_out(&a))))).await.is_err()
                                {
                                    return;
                                }
                                last_sent = last_sent.max(a.seq);
                            }
                        }
                    }
                    Err(e) => {
                        let m = WsServerMessage::Error { message: format!("not a subscribe message: {e}") };
                        if outgoing.send(send(m)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            r = rx.recv() => match r {
                Ok(a) => {
                    if a.seq > last_sent {
                        last_sent = a.seq;
                        if filter.matches(&a) && outgoing.send(send(WsServerMessage::Alert(Box::new(alert_out(&a))))).await.is_err() {
                            return;
                        }
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    registry.metrics().ws_lagged.inc_by(n);
                    if outgoing.send(send(WsServerMessage::Lagged { missed: n })).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Closed) => break,
            },
            _ = tick.tick() => {
                if outgoing.send(send(WsServerMessage::Heartbeat { seq: journal.latest_seq() })).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("cpu.*", "cpu.host1"));
        assert!(!glob_match("cpu.*", "mem.host1"));
        assert!(glob_match("*.host1", "cpu.host1"));
        assert!(glob_match("a*b*c", "a-x-b-y-c"));
        assert!(!glob_match("a*b*c", "a-x-c-y-b"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(!glob_match("ab*ba", "aba"));
    }
}
