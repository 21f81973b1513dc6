//! The Alertmanager client: incidents go to every configured Alertmanager
//! (`POST /api/v2/alerts`), are re-sent while they fire (as Prometheus does, so an
//! Alertmanager that restarted or missed one learns it again, and one that stops
//! hearing from anomalyd lets the alert expire), and are ended with `endsAt` when
//! they resolve. Fed by the alert journal's broadcast, so it sees incidents in
//! sequence order and only once they are durable.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::registry::{Alert, AlertKind, Registry};
use crate::timestamp::format_rfc3339;

/// Settings of the client.
#[derive(Clone, Debug)]
pub struct AlertmanagerConfig {
    /// Base URLs (`http://host:9093`), each receives every alert (an HA pair).
    pub urls: Vec<String>,
    /// How often firing alerts are sent again.
    pub resend: Duration,
    /// Most firing incidents remembered; more are dropped (counted), oldest first.
    pub max_firing: usize,
    /// This service's external URL, for the link in each alert.
    pub external_url: String,
}

impl Default for AlertmanagerConfig {
    fn default() -> Self {
        AlertmanagerConfig {
            urls: Vec::new(),
            resend: Duration::from_secs(60),
            max_firing: 10_000,
            external_url: "http://127.0.0.1:8080".into(),
        }
    }
}

/// The Alertmanager form of an incident event. `labels` are the series' labels
/// (remote_write streams; `__name__` becomes `for`). A firing alert's `endsAt` is
/// four resend intervals ahead of `now`, so it expires if anomalyd goes quiet.
pub fn to_alertmanager(
    a: &Alert,
    labels: Option<&[(String, String)]>,
    cfg: &AlertmanagerConfig,
    now: std::time::SystemTime,
) -> Value {
    let mut l = serde_json::Map::new();
    for (k, v) in labels.unwrap_or_default() {
        let k = if k == "__name__" { "for" } else { k.as_str() };
        l.insert(k.to_string(), json!(v));
    }
    l.insert("alertname".into(), json!("AnomalydIncident"));
    l.insert("stream".into(), json!(a.stream));
    l.insert(
        "severity".into(),
        json!(if a.score >= 0.99 { "critical" } else { "warning" }),
    );
    let top: Vec<String> = a
        .top_features
        .iter()
        .map(|(f, share)| format!("feature {f}: {:.0}%", share * 100.0))
        .collect();
    let mut ann = serde_json::Map::new();
    ann.insert(
        "summary".into(),
        json!(format!("Anomaly in {} (incident {})", a.stream, a.incident)),
    );
    ann.insert("score".into(), json!(format!("{:.3}", a.score)));
    ann.insert("incident".into(), json!(a.incident.to_string()));
    if !a.values.is_empty() {
        ann.insert("actual".into(), json!(format!("{:?}", a.values)));
        ann.insert("expected".into(), json!(format!("{:?}", a.expected)));
    }
    if !top.is_empty() {
        ann.insert("top_features".into(), json!(top.join(", ")));
    }
    let link = format!(
        "{}/v1/streams/{}",
        cfg.external_url.trim_end_matches('/'),
        crate::protocol::percent_encode(&a.stream)
    );
    let ends = match (a.kind, a.end) {
        (AlertKind::Resolved, Some(end)) => format_rfc3339(end),
        _ => {
            let at = now + cfg.resend * 4;
            let us = at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64);
            format_rfc3339(us)
        }
    };
    json!({
        "labels": l,
        "annotations": ann,
        "startsAt": format_rfc3339(a.start),
        "endsAt": ends,
        "generatorURL": link,
    })
}

/// Starts the client (when URLs are configured); it runs until the journal closes.
pub fn spawn(registry: Arc<Registry>, cfg: AlertmanagerConfig) -> Option<tokio::task::JoinHandle<()>> {
    if cfg.urls.is_empty() {
        return None;
    }
    Some(tokio::spawn(run(registry, cfg)))
}

async fn run(registry: Arc<Registry>, cfg: AlertmanagerConfig) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client");
    let mut rx = registry.journal().subscribe();
    // Firing incidents by (stream, incident), with the alert that opened them.
    let mut firing: BTreeMap<(String, u64), (u64, Arc<Alert>)> = BTreeMap::new();
    // Incidents still open from before a restart fire again from the journal.
    for a in registry.journal().query(None, None, usize::MAX) {
        let key = (a.stream.clone(), a.incident);
        match a.kind {
            AlertKind::Opened => {
                firing.insert(key, (a.seq, a));
            }
            AlertKind::Resolved => {
                firing.remove(&key);
            }
        }
    }
    let mut last_seq = registry.journal().latest_seq();
    let reopened: Vec<Arc<Alert>> = firing.values().map(|(_, a)| a.clone()).collect();
    send(&client, &registry, &cfg, &reopened).await;
    let mut tick = tokio::time::interval(cfg.resend);
    tick.tick().await;
    loop {
        let batch: Vec<Arc<Alert>> = tokio::select! {
            r = rx.recv() => match r {
                Ok(a) => vec![a],
                Err(RecvError::Lagged(_)) => registry.journal().query(None, Some(last_seq), usize::MAX),
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                // A stream that left (its shard moved, or it was deleted) is no
                // longer this node's to keep firing: its new node re-sends it.
                firing.retain(|(stream, _), _| registry.holds(stream));
                let all: Vec<Arc<Alert>> = firing.values().map(|(_, a)| a.clone()).collect();
                send(&client, &registry, &cfg, &all).await;
                continue;
            }
        };
        let mut out = Vec::new();
        for a in batch {
            if a.seq <= last_seq {
                continue;
            }
            last_seq = a.seq;
            let key = (a.stream.clone(), a.incident);
            match a.kind {
                AlertKind::Opened => {
                    firing.insert(key, (a.seq, a.clone()));
                    while firing.len() > cfg.max_firing {
                        let oldest = firing.iter().min_by_key(|(_, (seq, _))| *seq).map(|(k, _)| k.clone());
                        if let Some(k) = oldest {
                            firing.remove(&k);
                            registry
                                .metrics()
                                .alertmanager_notifications
                                .with_label_values(&["dropped"])
                                .inc();
                        }
                    }
                }
                AlertKind::Resolved => {
                    firing.remove(&key);
                }
            }
            out.push(a);
        }
        if !out.is_empty() {
            send(&client, &registry, &cfg, &out).await;
        }
    }
}

/// Posts `alerts` to every Alertmanager, retrying each with back-off (0.5, 1,
/// 2 s); counts each delivery as sent or failed.
async fn send(client: &reqwest::Client, registry: &Registry, cfg: &AlertmanagerConfig, alerts: &[Arc<Alert>]) {
    if alerts.is_empty() {
        return;
    }
    let now = std::time::SystemTime::now();
    let body: Vec<Value> = alerts
        .iter()
        .map(|a| to_alertmanager(a, registry.labels_of(&a.stream).as_deref(), cfg, now))
        .collect();
    let sends = cfg.urls.iter().map(|base| {
        let url = format!("{}/api/v2/alerts", base.trim_end_matches('/'));
        let body = &body;
        async move {
            let mut delay = Duration::from_millis(500);
            for attempt in 0..4 {
                match client.post(&url).json(body).send().await {
                    Ok(r) if r.status().is_success() => return true,
                    Ok(r) if r.status().is_client_error() => {
                        tracing::warn!(url, status = r.status().as_u16(), "Alertmanager refused alerts");
                        return false;
                    }
                    other => {
                        if attempt == 3 {
                            tracing::warn!(url, error = ?other.err(), "Alertmanager unreachable");
                            return false;
                        }
                    }
                }
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            false
        }
    });
    for ok in futures_util::future::join_all(sends).await {
        registry
            .metrics()
            .alertmanager_notifications
            .with_label_values(&[if ok { "sent" } else { "failed" }])
            .inc_by(alerts.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(kind: AlertKind) -> Alert {
        Alert {
            seq: 3,
            kind,
            stream: "cpu/a b".into(),
            incident: 2,
            timestamp: 1_700_000_060_000_000,
            start: 1_700_000_000_000_000,
            end: (kind == AlertKind::Resolved).then_some(1_700_000_600_000_000),
            resolution: None,
            score: 0.995,
            values: vec![9.0],
            expected: vec![1.0],
            contributions: vec![1.0],
            top_features: vec![(0, 1.0)],
            model_version: 1,
        }
    }

    #[test]
    fn incidents_become_alertmanager_alerts() {
        let cfg = AlertmanagerConfig::default();
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let labels = vec![
            ("__name__".to_string(), "node_load1".to_string()),
            ("job".to_string(), "n".to_string()),
        ];
        let v = to_alertmanager(&alert(AlertKind::Opened), Some(&labels), &cfg, now);
        assert_eq!(v["labels"]["alertname"], "AnomalydIncident");
        assert_eq!(v["labels"]["stream"], "cpu/a b");
        assert_eq!(v["labels"]["for"], "node_load1");
        assert_eq!(v["labels"]["job"], "n");
        assert_eq!(v["labels"]["severity"], "critical");
        assert_eq!(v["startsAt"], "2023-11-14T22:13:20Z");
        assert_eq!(v["endsAt"], "2027-01-15T08:04:00Z", "four resend intervals ahead");
        assert_eq!(v["annotations"]["expected"], "[1.0]");
        assert_eq!(v["generatorURL"], "http://127.0.0.1:8080/v1/streams/cpu%2Fa%20b");
        let r = to_alertmanager(&alert(AlertKind::Resolved), None, &cfg, now);
        assert_eq!(r["endsAt"], "2023-11-14T22:23:20Z", "resolved: the incident's end");
    }
}
