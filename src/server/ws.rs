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

pub use crate::registry::journal::glob_match;

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

/// How long one message may take to reach a subscriber before it is dropped: a
/// client that stops reading must not hold its slot (and its buffer) forever.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs one subscriber: `incoming` yields the client's text messages (None: closed),
/// `outgoing` takes the server's JSON texts. Returns when the client leaves, or
/// when a send fails or takes longer than [`SEND_TIMEOUT`].
pub async fn run_subscriber<I, O>(registry: Arc<Registry>, mut incoming: I, mut outgoing: O, heartbeat: Duration)
where
    I: Stream<Item = Option<String>> + Unpin,
    O: Sink<String> + Unpin,
{
    let journal = registry.journal();
    let mut rx = journal.subscribe();
    let mut filter = Filter::default();
    // Live alerts sent so far are the seqs `first_live..=last_sent` (broadcast is in
    // sequence order); a resumed backlog skips exactly those.
    let mut first_live = None;
    let mut last_sent = 0u64;
    let mut tick = tokio::time::interval(heartbeat);
    tick.tick().await;
    let text = |msg: WsServerMessage| serde_json::to_string(&msg).expect("messages serialise");
    macro_rules! send {
        ($msg:expr) => {
            match tokio::time::timeout(SEND_TIMEOUT, outgoing.send(text($msg))).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        };
    }
    loop {
        tokio::select! {
            msg = incoming.next() => {
                let Some(Some(msg)) = msg else { break };
                match serde_json::from_str::<WsClientMessage>(&msg) {
                    Ok(WsClientMessage::Subscribe { streams, min_score, resume_from }) => {
                        filter = Filter { globs: streams, min_score: min_score.unwrap_or(0.0) };
                        if let Some(from) = resume_from {
                            let live = first_live.map(|f| f..=last_sent);
                            for a in journal.query(None, Some(from), usize::MAX) {
                                if live.as_ref().is_some_and(|r| r.contains(&a.seq)) || !filter.matches(&a) {
                                    continue;
                                }
                                send!(WsServerMessage::Alert(Box::new(alert_out(&a))));
                                last_sent = last_sent.max(a.seq);
                            }
                        }
                    }
                    Err(e) => send!(WsServerMessage::Error { message: format!("not a subscribe message: {e}") }),
                }
            }
            r = rx.recv() => match r {
                Ok(a) => {
                    if a.seq > last_sent {
                        first_live.get_or_insert(a.seq);
                        last_sent = a.seq;
                        if filter.matches(&a) {
                            send!(WsServerMessage::Alert(Box::new(alert_out(&a))));
                        }
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    registry.metrics().ws_lagged.inc_by(n);
                    send!(WsServerMessage::Lagged { missed: n });
                }
                Err(RecvError::Closed) => break,
            },
            _ = tick.tick() => send!(WsServerMessage::Heartbeat { seq: journal.latest_seq() }),
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
