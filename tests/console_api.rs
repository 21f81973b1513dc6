//! The API the console (and Grafana, or a script) reads: a stream's recent
//! readings and its chart, the streams page with summaries and search, the
//! journal newest first, the reset action; and that recent readings and a reset
//! survive a restart and a crash.

use std::sync::Arc;

use serde_json::{Value, json};

mod common;
use common::{TestServer, temp_dir};

use anomalyd::metrics::Metrics;
use anomalyd::registry::{Reading, Registry, RegistryConfig};
use anomalyd::server::ServerConfig;

/// A slow cycle, `shift` added in `fault`.
fn value(i: usize, fault: &std::ops::Range<usize>, shift: f64) -> f64 {
    let v = 50.0 + 10.0 * (i as f64 / 10.0).sin() + ((i * 7919) % 13) as f64 / 13.0;
    if fault.contains(&i) { v + shift } else { v }
}

fn body(from: usize, n: usize, fault: std::ops::Range<usize>) -> Value {
    let rs: Vec<Value> = (from..from + n)
        .map(|i| json!({"timestamp": 1_700_000_000 + 15 * i as i64, "values": [value(i, &fault, 40.0)]}))
        .collect();
    json!({ "readings": rs })
}

async fn call(c: &reqwest::Client, method: reqwest::Method, url: &str) -> (u16, Value) {
    if method == reqwest::Method::GET {
        return common::get_json(c, url).await;
    }
    let r = c.request(method, url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_chart_search_newest_alerts_and_reset() {
    let registry = Registry::open(RegistryConfig::default(), Arc::new(Metrics::new())).unwrap();
    let server = TestServer::start(registry, ServerConfig::default()).await;
    let api = format!("http://{}", server.addr);
    let c = reqwest::Client::new();
    for (stream, fault) in [("web-1", 380..395), ("web-2", 0..0), ("db-1", 0..0)] {
        let r = c
            .post(format!("{api}/v1/streams/{stream}/readings"))
            .json(&body(0, 400, fault))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    use reqwest::Method as M;

    let (status, recent) = call(&c, M::GET, &format!("{api}/v1/streams/web-1/recent?limit=25")).await;
    assert_eq!(status, 200);
    let points = recent["points"].as_array().unwrap();
    assert_eq!(points.len(), 25);
    assert_eq!(points[24]["timestamp"], "2023-11-14T23:53:05Z");
    assert_eq!(points[0]["anomaly"], false);
    assert!(
        points[5..].iter().all(|p| p["incident"] == true),
        "the fault's incident is open"
    );
    assert!((points[24]["values"][0].as_f64().unwrap() - value(399, &(380..395), 40.0)).abs() < 1e-4);
    assert_eq!(recent["band"].as_array().unwrap().len(), 1);
    assert_eq!(recent["threshold"], 0.5);

    let svg = c.get(format!("{api}/v1/streams/web-1/chart.svg")).send().await.unwrap();
    assert_eq!(svg.headers()["content-type"], "image/svg+xml");
    let svg = svg.text().await.unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains(r#"<rect class="anomaly""#),
        "{svg}"
    );
    let (status, err) = call(&c, M::GET, &format!("{api}/v1/streams/web-1/chart.svg?features=1")).await;
    assert_eq!((status, err["error"]["code"].as_str()), (400, Some("invalid_query")));
    assert_eq!(call(&c, M::GET, &format!("{api}/v1/streams/nope/recent")).await.0, 404);
    assert_eq!(
        call(&c, M::GET, &format!("{api}/v1/streams/web-1/recent?limit=x"))
            .await
            .0,
        400
    );

    let (_, page) = call(&c, M::GET, &format!("{api}/v1/streams?detail=true&q=web&limit=1")).await;
    assert_eq!(page["total"], 2);
    assert_eq!(page["next_after"], "web-1");
    let first = &page["streams"][0];
    assert_eq!(
        (first["stream"].as_str(), first["incident"].as_u64()),
        (Some("web-1"), Some(1))
    );
    assert_eq!(first["scores"].as_array().unwrap().len(), anomalyd::registry::SPARKLINE);
    let (_, page) = call(&c, M::GET, &format!("{api}/v1/streams?q=*-1")).await;
    assert_eq!(page["streams"], json!(["db-1", "web-1"]));

    let (status, reset) = call(&c, M::POST, &format!("{api}/v1/streams/web-1/reset")).await;
    assert_eq!((status, reset["resolved_incident"].as_u64()), (200, Some(1)));
    let (_, info) = call(&c, M::GET, &format!("{api}/v1/streams/web-1")).await;
    assert_eq!(
        (info["phase"].as_str(), info["readings_seen"].as_u64()),
        (Some("warmup"), Some(0))
    );
    let (_, recent) = call(&c, M::GET, &format!("{api}/v1/streams/web-1/recent")).await;
    assert_eq!(recent["points"], json!([]));
    let (_, alerts) = call(&c, M::GET, &format!("{api}/v1/alerts?newest=true&stream=web-*")).await;
    let alerts = alerts["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    assert_eq!(
        (alerts[0]["kind"].as_str(), alerts[0]["resolution"].as_str()),
        (Some("resolved"), Some("reset"))
    );
    assert_eq!(alerts[1]["kind"], "opened");
    assert_eq!(call(&c, M::POST, &format!("{api}/v1/streams/nope/reset")).await.0, 404);
    server.stop().await;
}

fn reading(i: usize) -> Reading {
    Reading {
        stream: "kept".into(),
        timestamp: (1_700_000_000 + 15 * i as i64) * 1_000_000,
        values: vec![value(i, &(0..0), 0.0)],
    }
}

#[test]
fn recent_readings_survive_a_restart_and_a_reset_survives_a_crash() {
    let dir = temp_dir("console-restart");
    let config = || RegistryConfig {
        data_dir: Some(dir.clone()),
        ..Default::default()
    };
    let reg = Registry::open(config(), Arc::new(Metrics::new())).unwrap();
    reg.ingest(&(0..200).map(reading).collect::<Vec<_>>()).unwrap();
    let before = serde_json::to_value(reg.recent("kept", 128).unwrap()).unwrap();
    reg.snapshot().unwrap();
    drop(reg);

    let reg = Registry::open(config(), Arc::new(Metrics::new())).unwrap();
    let after = serde_json::to_value(reg.recent("kept", 128).unwrap()).unwrap();
    assert_eq!(after["points"], before["points"]);
    assert_eq!(after["points"].as_array().unwrap().len(), 128);
    // Reset, then "crash": only the log holds it.
    reg.reset("kept").unwrap();
    drop(reg);

    let reg = Registry::open(config(), Arc::new(Metrics::new())).unwrap();
    assert_eq!(reg.info("kept").unwrap().readings_seen, 0);
    assert_eq!(reg.recent("kept", 128).unwrap().points.len(), 0);
}
