//! The WebSocket subscriber loop over channels (no sockets): a subscriber that falls
//! behind is told how many alerts it missed instead of the server buffering them.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

use anomalyd::metrics::Metrics;
use anomalyd::registry::{Alert, AlertKind, Registry, RegistryConfig};
use anomalyd::server::ws::run_subscriber;

fn alert(stream: &str, score: f64) -> Alert {
    Alert {
        seq: 0,
        kind: AlertKind::Opened,
        stream: stream.into(),
        incident: 1,
        timestamp: 0,
        start: 0,
        end: None,
        resolution: None,
        top_features: vec![(0, 1.0)],
        score,
        values: vec![1.0],
        expected: vec![0.0],
        contributions: vec![1.0],
        model_version: 0,
    }
}

#[tokio::test]
async fn a_slow_subscriber_is_told_it_lagged() {
    let reg = Registry::open(
        RegistryConfig {
            subscriber_buffer: 4,
            ..Default::default()
        },
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let (in_tx, in_rx) = futures::channel::mpsc::unbounded::<Option<String>>();
    // A bounded outgoing channel nobody reads yet: the subscriber blocks on it.
    let (out_tx, mut out_rx) = futures::channel::mpsc::channel::<String>(0);
    let task = tokio::spawn(run_subscriber(reg.clone(), in_rx, out_tx, Duration::from_secs(3600)));
    tokio::task::yield_now().await;
    for i in 0..20 {
        reg.journal().push(alert("s", 0.9 + i as f64 * 0.001));
    }
    let mut alerts = 0;
    let mut missed = 0;
    while alerts + missed < 20 {
        let msg = tokio::time::timeout(Duration::from_secs(5), out_rx.next())
            .await
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(&msg).unwrap();
        match v["type"].as_str().unwrap() {
            "alert" => alerts += 1,
            "lagged" => missed += v["missed"].as_u64().unwrap(),
            other => panic!("{other}"),
        }
    }
    assert!(missed > 0, "the subscriber could not keep 20 alerts in a buffer of 4");
    assert!(alerts <= 6, "{alerts} alerts delivered");
    assert_eq!(reg.metrics().ws_lagged.get(), missed);
    in_tx.unbounded_send(None).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn filters_and_min_score_apply() {
    let reg = Registry::open(RegistryConfig::default(), Arc::new(Metrics::new())).unwrap();
    let (in_tx, in_rx) = futures::channel::mpsc::unbounded::<Option<String>>();
    let (out_tx, mut out_rx) = futures::channel::mpsc::channel::<String>(64);
    let task = tokio::spawn(run_subscriber(reg.clone(), in_rx, out_tx, Duration::from_secs(3600)));
    in_tx
        .unbounded_send(Some(
            r#"{"type":"subscribe","streams":["db.*","*-eu"],"min_score":0.8}"#.into(),
        ))
        .unwrap();
    // Messages are taken in order: once the answer to a bad one is back, the
    // subscription before it is in place.
    in_tx.unbounded_send(Some("not json".into())).unwrap();
    let v: Value = serde_json::from_str(&out_rx.next().await.unwrap()).unwrap();
    assert_eq!(v["type"], "error", "{v}");
    for (s, score) in [("db.main", 0.9), ("web-eu", 0.95), ("web-us", 0.99), ("db.main", 0.5)] {
        reg.journal().push(alert(s, score));
    }
    let mut got = Vec::new();
    while got.len() < 2 {
        let v: Value = serde_json::from_str(&out_rx.next().await.unwrap()).unwrap();
        got.push((v["stream"].as_str().unwrap().to_string(), v["seq"].as_u64().unwrap()));
    }
    assert_eq!(got, [("db.main".to_string(), 1), ("web-eu".to_string(), 2)]);
    in_tx.unbounded_send(None).unwrap();
    task.await.unwrap();
    assert!(out_rx.try_recv().is_err(), "nothing else matched");
}

#[tokio::test]
async fn a_live_alert_before_subscribe_does_not_skip_the_backlog() {
    let reg = Registry::open(RegistryConfig::default(), Arc::new(Metrics::new())).unwrap();
    for i in 0..5 {
        reg.journal().push(alert(&format!("old{i}"), 0.9));
    }
    let (in_tx, in_rx) = futures::channel::mpsc::unbounded::<Option<String>>();
    let (out_tx, mut out_rx) = futures::channel::mpsc::channel::<String>(64);
    let task = tokio::spawn(run_subscriber(reg.clone(), in_rx, out_tx, Duration::from_secs(3600)));
    tokio::task::yield_now().await;
    // A live alert reaches the connection before its subscribe message does.
    let live = reg.journal().push(alert("live", 0.9));
    let mut next = async || -> Value {
        let msg = tokio::time::timeout(Duration::from_secs(5), out_rx.next())
            .await
            .unwrap()
            .unwrap();
        serde_json::from_str(&msg).unwrap()
    };
    assert_eq!(next().await["seq"], live);
    in_tx
        .unbounded_send(Some(r#"{"type":"subscribe","resume_from":0}"#.into()))
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(next().await["seq"].as_u64().unwrap());
    }
    assert_eq!(got, vec![1, 2, 3, 4, 5], "the backlog, without the live alert again");
    in_tx.unbounded_send(None).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_that_stops_reading_is_dropped() {
    let reg = Registry::open(RegistryConfig::default(), Arc::new(Metrics::new())).unwrap();
    let (_in_tx, in_rx) = futures::channel::mpsc::unbounded::<Option<String>>();
    // Nobody ever reads this: every send waits.
    let (out_tx, _out_rx) = futures::channel::mpsc::channel::<String>(0);
    let task = tokio::spawn(run_subscriber(reg.clone(), in_rx, out_tx, Duration::from_secs(3600)));
    tokio::task::yield_now().await;
    for _ in 0..3 {
        reg.journal().push(alert("s", 0.9));
    }
    // The clock is paused and jumps ahead while everything waits: the send times out.
    tokio::time::timeout(anomalyd::server::ws::SEND_TIMEOUT * 3, task)
        .await
        .expect("the subscriber gave up its slot")
        .unwrap();
}
