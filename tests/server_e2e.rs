//! The service end to end over real TCP on 127.0.0.1:0 with a temporary data
//! directory: ingest and scores, protobuf, alerts on a WebSocket (with resume), the
//! metrics endpoint, bad input, auth, and restarts (graceful, and kill -9 of a child
//! process).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

mod common;

use anomalyd::detector::DetectorConfig;
use anomalyd::metrics::Metrics;
use anomalyd::protocol::pb;
use anomalyd::registry::{Registry, RegistryConfig};
use anomalyd::server::{self, ServerConfig};

struct Server {
    addr: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(data_dir: &Path, token: Option<&str>) -> Server {
        let mut det = DetectorConfig::default();
        det.model.ensemble = 1;
        let reg = RegistryConfig {
            default_detector: det,
            data_dir: Some(data_dir.to_path_buf()),
            ..Default::default()
        };
        let registry = Registry::open(reg, Arc::new(Metrics::new())).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let cfg = ServerConfig {
            auth_token: token.map(String::from),
            heartbeat: Duration::from_millis(200),
            max_readings_per_request: 2000,
            max_body_bytes: 1 << 20,
            ..Default::default()
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            server::run(listener, registry, cfg, Duration::from_secs(3600), async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Server {
            addr,
            shutdown: Some(tx),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.await.unwrap();
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("anomalyd-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn seasonal(t: usize) -> f64 {
    50.0 + 10.0 * (t as f64 / 8.0).sin() + ((t * 7919) % 13) as f64 / 13.0
}

fn readings(from: usize, to: usize) -> Value {
    let rs: Vec<Value> = (from..to)
        .map(|t| json!({"timestamp": 1_700_000_000 + t as i64 * 60, "value": seasonal(t)}))
        .collect();
    json!({ "readings": rs })
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let r = client.post(url).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = client.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The `/metrics` page as text.
async fn scrape(client: &reqwest::Client, addr: &str) -> String {
    let r = client.get(format!("{addr}/metrics")).send().await.unwrap();
    r.text().await.unwrap()
}

/// The value of the first sample of `/metrics` whose line starts with `name`.
fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

/// Waits until the metric `name` satisfies `ok` (polling `/metrics`).
async fn wait_for_metric(client: &reqwest::Client, addr: &str, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
    for _ in 0..400 {
        let v = metric_value(&scrape(client, addr).await, name);
        if ok(v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{name} never reached the value waited for");
}

async fn wait_for_model(client: &reqwest::Client, url: &str, version: u64) -> Value {
    for _ in 0..300 {
        let (_, info) = get(client, url).await;
        if info["model"]["version"].as_u64().unwrap_or(0) >= version {
            return info;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no model version {version} at {url}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_scores_and_protobuf_round_trip() {
    let dir = temp_dir("ingest");
    let s = Server::start(&dir, None).await;
    let c = reqwest::Client::new();
    let (status, body) = post(
        &c,
        &format!("{}/v1/streams/web%2Flatency%20p99/readings", s.addr),
        &readings(0, 5),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    assert_eq!(results[0]["stream"], "web/latency p99");
    assert_eq!(results[0]["timestamp"], "2023-11-14T22:13:20Z");
    for r in results {
        // A new stream has judged nothing yet: no score (not a 0 that reads as
        // normal), the phase says so, and how many readings it still needs.
        assert!(r["score"].is_null(), "{r}");
        assert_eq!(r["phase"], "warmup");
        assert!(r["readings_needed"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["expected"].as_array().unwrap().len(), 1);
    }
    // Many streams in one batch, RFC 3339 timestamps, multivariate values.
    let batch = json!({"readings": [
        {"stream": "a", "timestamp": "2024-01-01T00:00:00Z", "values": [1.0, 2.0]},
        {"stream": "b", "timestamp": "2024-01-01T00:00:00Z", "value": 3.0},
        {"stream": "a", "timestamp": "2024-01-01T00:01:00Z", "values": [1.5, 2.5]},
    ]});
    let (status, body) = post(&c, &format!("{}/v1/readings", s.addr), &batch).await;
    assert_eq!(status, 200, "{body}");
    let streams: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["stream"].as_str().unwrap())
        .collect();
    assert_eq!(streams, ["a", "b", "a"]);

    // Protobuf in, protobuf out.
    let req = pb::IngestRequest {
        readings: (5..8)
            .map(|t| pb::Reading {
                stream: String::new(),
                timestamp: String::new(),
                unix_seconds: 1_700_000_000.0 + t as f64 * 60.0,
                values: vec![seasonal(t)],
            })
            .collect(),
    };
    let r = c
        .post(format!("{}/v1/streams/web%2Flatency%20p99/readings", s.addr))
        .header("content-type", "application/x-protobuf")
        .header("accept", "application/x-protobuf")
        .body(req.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-protobuf");
    let resp = pb::IngestResponse::decode(r.bytes().await.unwrap()).unwrap();
    assert_eq!(resp.results.len(), 3);
    assert_eq!(resp.results[0].stream, "web/latency p99");
    assert_eq!(resp.results[2].timestamp, "2023-11-14T22:20:20Z");
    // Still warming up: the score is absent, not 0.
    assert_eq!(
        (resp.results[2].score, resp.results[2].phase.as_str()),
        (None, "warmup")
    );
    assert!(resp.results[2].readings_needed > 0);
    let (_, info) = get(&c, &format!("{}/v1/streams/web%2Flatency%20p99", s.addr)).await;
    assert_eq!(info["readings_seen"], 8);
    assert_eq!(info["phase"], "warmup");
    assert!(info["last_score"].is_null() && info["readings_needed"].as_u64().unwrap() > 0);
    // Garbage protobuf is a 400.
    let r = c
        .post(format!("{}/v1/readings", s.addr))
        .header("content-type", "application/x-protobuf")
        .body(vec![0xff, 0xff, 0xff])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (_, list) = get(&c, &format!("{}/v1/streams?limit=2", s.addr)).await;
    assert_eq!(list["streams"], json!(["a", "b"]));
    assert_eq!(list["next_after"], "b");
    assert_eq!(list["total"], 3);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_4xx_and_changes_nothing() {
    let dir = temp_dir("bad");
    let s = Server::start(&dir, None).await;
    let c = reqwest::Client::new();
    let url = format!("{}/v1/streams/s/readings", s.addr);
    assert_eq!(post(&c, &url, &readings(0, 10)).await.0, 200);
    let seen = || async { get(&c, &format!("{}/v1/streams/s", s.addr)).await.1["readings_seen"].clone() };
    assert_eq!(seen().await, 10);
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"readings": [{"timestamp": 1_750_000_000, "values": [1.0, 2.0]}]}),
            400,
            "invalid_reading",
        ),
        (
            json!({"readings": [{"timestamp": 1_600_000_000, "value": 1.0}]}),
            409,
            "out_of_order",
        ),
        (json!({"readings": []}), 400, "empty_batch"),
        (
            json!({"readings": [{"timestamp": "soon", "value": 1.0}]}),
            400,
            "invalid_timestamp",
        ),
        (
            json!({"readings": [{"timestamp": 1_750_000_000}]}),
            400,
            "invalid_reading",
        ),
        (json!({"readngs": []}), 400, "malformed_json"),
        // A good reading followed by a bad one: the whole batch is refused.
        (
            json!({"readings": [{"timestamp": 1_750_000_000, "value": 1.0}, {"timestamp": 1_750_000_060, "values": [1.0, 2.0]}]}),
            400,
            "invalid_reading",
        ),
    ];
    for (body, status, code) in cases {
        let (got, err) = post(&c, &url, &body).await;
        assert_eq!(
            (got, err["error"]["code"].as_str().unwrap_or("")),
            (status, code),
            "{body} -> {err}"
        );
        assert!(!err["error"]["message"].as_str().unwrap().is_empty());
    }
    // NaN and infinities cannot be written in JSON at all; raw text with them is malformed.
    let r = c
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"readings":[{"timestamp":1,"value":NaN}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // ... and through protobuf they are checked by value.
    let req = pb::IngestRequest {
        readings: vec![pb::Reading {
            stream: String::new(),
            timestamp: String::new(),
            unix_seconds: 1.9e9,
            values: vec![f64::NAN],
        }],
    };
    let r = c
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .body(req.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Oversized body, too many readings, a bad stream id, an unknown content type.
    let big = "x".repeat(2 << 20);
    let r = c
        .post(&url)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(post(&c, &url, &readings(100, 2101)).await.0, 413);
    assert_eq!(
        post(
            &c,
            &format!("{}/v1/streams/{}/readings", s.addr, "x".repeat(300)),
            &readings(0, 1)
        )
        .await
        .0,
        400
    );
    assert_eq!(
        post(&c, &format!("{}/v1/streams/%07bell/readings", s.addr), &readings(0, 1))
            .await
            .0,
        400
    );
    let r = c
        .post(&url)
        .header("content-type", "text/csv")
        .body("a,b")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(seen().await, 10, "nothing was applied");
    assert_eq!(get(&c, &format!("{}/v1/streams/nope", s.addr)).await.0, 404);
    let (status, err) = post(
        &c,
        &format!("{}/v1/streams/s/readings", s.addr).replace("/readings", "/nothing"),
        &json!({}),
    )
    .await;
    assert_eq!((status, err["error"]["code"].as_str()), (404, Some("not_found")));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spike_alerts_websocket_subscribers_and_resume_replays() {
    let dir = temp_dir("ws");
    let s = Server::start(&dir, None).await;
    let c = reqwest::Client::new();
    let ws_url = s.addr.replace("http://", "ws://") + "/v1/alerts/ws";
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    ws.send(Message::Text(
        json!({"type": "subscribe", "streams": ["cpu.*"], "min_score": 0.5})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    // An unrelated stream's alerts are filtered out; ours come through.
    for stream in ["mem.host", "cpu.host"] {
        let url = format!("{}/v1/streams/{stream}/readings", s.addr);
        assert_eq!(post(&c, &url, &readings(0, 600)).await.0, 200);
        let spike = json!({"readings": [{"timestamp": 1_700_000_000 + 600 * 60, "value": 500.0}]});
        let (_, r) = post(&c, &url, &spike).await;
        assert_eq!(r["results"][0]["anomaly"], true, "{r}");
    }
    let mut alert = None;
    let mut heartbeat = false;
    while alert.is_none() || !heartbeat {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("message in time")
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
        match v["type"].as_str().unwrap() {
            "alert" => {
                assert_eq!(v["stream"], "cpu.host", "filter applied");
                assert!(v["score"].as_f64().unwrap() >= 0.5);
                assert_eq!(v["values"], json!([500.0]));
                assert_eq!(v["contributions"].as_array().unwrap().len(), 1);
                assert!(v["expected"][0].as_f64().unwrap() < 100.0);
                alert = Some(v);
            }
            "heartbeat" => heartbeat = true,
            other => panic!("unexpected {other}: {v}"),
        }
    }
    let alert = alert.unwrap();
    // The journal has both alerts; resume_from replays what came after a seq.
    let (_, journal) = get(&c, &format!("{}/v1/alerts?limit=10", s.addr)).await;
    let seqs: Vec<u64> = journal["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 2);
    let (_, only_cpu) = get(&c, &format!("{}/v1/alerts?stream=cpu.host", s.addr)).await;
    assert_eq!(only_cpu["alerts"][0]["seq"], alert["seq"]);
    let (mut ws2, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    ws2.send(Message::Text(
        json!({"type": "subscribe", "resume_from": seqs[0] - 1})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let mut replayed = Vec::new();
    while replayed.len() < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws2.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
        if v["type"] == "alert" {
            replayed.push(v["seq"].as_u64().unwrap());
        }
    }
    assert_eq!(replayed, seqs);
    // A malformed client message gets an error message, not a dropped connection.
    ws2.send(Message::Text("{\"type\":\"dance\"}".into())).await.unwrap();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws2.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
        if v["type"] == "error" {
            break;
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_counters_move() {
    let dir = temp_dir("metrics");
    let s = Server::start(&dir, None).await;
    let c = reqwest::Client::new();
    let scrape = || scrape(&c, &s.addr);
    let value = metric_value;
    let before = scrape().await;
    post(&c, &format!("{}/v1/streams/m/readings", s.addr), &readings(0, 50)).await;
    post(
        &c,
        &format!("{}/v1/streams/m/readings", s.addr),
        &json!({"readings": []}),
    )
    .await;
    let after = scrape().await;
    assert_eq!(
        value(&after, "anomalyd_readings_ingested_total") - value(&before, "anomalyd_readings_ingested_total"),
        50.0
    );
    assert_eq!(
        value(&after, "anomalyd_readings_rejected_total{reason=\"empty_batch\"}"),
        1.0
    );
    assert_eq!(value(&after, "anomalyd_scoring_latency_seconds_count"), 50.0);
    // 50 readings: not judged yet (64 normal readings before a limit is used).
    assert_eq!(value(&after, "anomalyd_streams{phase=\"warmup\"}"), 1.0);
    assert!(after.contains("anomalyd_http_requests_total{route=\"/v1/streams/{stream}/readings\",status=\"200\"} 1"));
    assert!(after.contains("process_resident_memory_bytes"));
    for required in [
        "anomalyd_alerts_total",
        "anomalyd_retrain_queue_depth",
        "anomalyd_ws_subscribers",
        "anomalyd_ws_lagged_messages_total",
    ] {
        assert!(after.contains(required), "{required}");
    }
    // Every sample line is `name{labels} value` with a HELP and TYPE for its family.
    for line in after.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (name, v) = line.rsplit_once(' ').unwrap();
        assert!(v.parse::<f64>().is_ok(), "{line}");
        let family = name.split('{').next().unwrap();
        let base = family
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            after.contains(&format!("# TYPE {base} ")) || after.contains(&format!("# TYPE {family} ")),
            "{line}"
        );
    }
    // promtool, the real peer (.ci/run installs it; in CI its absence is a failure).
    let has_promtool = std::process::Command::new("promtool").arg("--version").output().is_ok();
    assert!(
        has_promtool || std::env::var_os("CI").is_none(),
        "promtool is required in CI"
    );
    if let Ok(out) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(after.as_bytes())?;
            child.wait_with_output()
        })
    {
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_on_and_off() {
    let dir = temp_dir("auth");
    let token = "s3cret-token-0123456789";
    let s = Server::start(&dir, Some(token)).await;
    let c = reqwest::Client::new();
    let url = format!("{}/v1/streams/s/readings", s.addr);
    let r = c.post(&url).json(&readings(0, 1)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = c
        .post(&url)
        .bearer_auth("wrong-token-0123456789")
        .json(&readings(0, 1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(&url)
        .bearer_auth(token)
        .json(&readings(0, 1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for path in ["/v1/streams", "/v1/streams/s", "/v1/alerts"] {
        assert_eq!(
            c.get(format!("{}{path}", s.addr)).send().await.unwrap().status(),
            401,
            "{path}"
        );
        assert_eq!(
            c.get(format!("{}{path}", s.addr))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "{path}"
        );
    }
    // Health and metrics stay open for probes and scrapers.
    assert_eq!(c.get(format!("{}/healthz", s.addr)).send().await.unwrap().status(), 200);
    assert_eq!(c.get(format!("{}/metrics", s.addr)).send().await.unwrap().status(), 200);
    let ws = s.addr.replace("http://", "ws://") + "/v1/alerts/ws";
    assert!(
        tokio_tungstenite::connect_async(&ws).await.is_err(),
        "WebSocket needs the token too"
    );
    let (mut sock, _) = tokio_tungstenite::connect_async(format!("{ws}?access_token={token}"))
        .await
        .unwrap();
    // Only the WebSocket takes the token in the query (elsewhere it would end up in
    // proxies' access logs).
    assert_eq!(
        c.get(format!("{}/v1/streams?access_token={token}", s.addr))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // A client message over 64 KiB closes the connection instead of being buffered.
    let _ = sock.send(Message::Text("x".repeat(100_000).into())).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match sock.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert_eq!(closed, Ok(true), "the oversized message ended the connection");
    // Every answer carries a request id: the client's own, or a fresh one.
    let r = c
        .get(format!("{}/healthz", s.addr))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let r = c.get(format!("{}/healthz", s.addr)).send().await.unwrap();
    assert!(r.headers()["x-request-id"].to_str().unwrap().len() >= 10);
    s.stop().await;
    // Off: the same requests need nothing.
    let s = Server::start(&dir, None).await;
    assert_eq!(
        c.get(format!("{}/v1/streams", s.addr)).send().await.unwrap().status(),
        200
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_keeps_streams_models_and_alerts() {
    let dir = temp_dir("restart");
    let s = Server::start(&dir, None).await;
    let c = reqwest::Client::new();
    let url = format!("{}/v1/streams/svc/readings", s.addr);
    post(&c, &url, &readings(0, 500)).await;
    let info = wait_for_model(&c, &format!("{}/v1/streams/svc", s.addr), 1).await;
    let spike = json!({"readings": [{"timestamp": 1_700_000_000 + 500 * 60, "value": 900.0}]});
    assert_eq!(post(&c, &url, &spike).await.1["results"][0]["anomaly"], true);
    s.stop().await;

    let s = Server::start(&dir, None).await;
    let (status, back) = get(&c, &format!("{}/v1/streams/svc", s.addr)).await;
    assert_eq!(status, 200);
    assert_eq!(back["model"]["version"], info["model"]["version"]);
    assert_eq!(back["readings_seen"], 501);
    assert_eq!(
        back["phase"], "model",
        "the restored model scores, before any new reading"
    );
    let metrics = scrape(&c, &s.addr).await;
    assert!(
        metrics.contains("anomalyd_streams{phase=\"model\"} 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("anomalyd_streams"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let (_, alerts) = get(&c, &format!("{}/v1/alerts", s.addr)).await;
    assert_eq!(alerts["alerts"].as_array().unwrap().len(), 1, "the journal survived");
    // Scoring goes on where it left off: the next reading uses the restored model.
    let next = json!({"readings": [{"timestamp": 1_700_000_000 + 501 * 60, "value": seasonal(501)}]});
    let (_, r) = post(&c, &format!("{}/v1/streams/svc/readings", s.addr), &next).await;
    assert_eq!(r["results"][0]["phase"], "model");
    assert_eq!(r["results"][0]["model_version"], info["model"]["version"]);
    // Deleting removes it, also across a restart.
    assert_eq!(
        c.delete(format!("{}/v1/streams/svc", s.addr))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    s.stop().await;
    let s = Server::start(&dir, None).await;
    assert_eq!(get(&c, &format!("{}/v1/streams/svc", s.addr)).await.0, 404);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_snapshots_are_reported_not_loaded() {
    let dir = temp_dir("damaged");
    let s = Server::start(&dir, None).await;
    let c = reqwest::Client::new();
    post(&c, &format!("{}/v1/streams/good/readings", s.addr), &readings(0, 20)).await;
    post(&c, &format!("{}/v1/streams/bad/readings", s.addr), &readings(0, 20)).await;
    s.stop().await;
    let bad = anomalyd::storage::snapshot::stream_file(&dir.join("streams"), "bad");
    let mut bytes = std::fs::read(&bad).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&bad, bytes).unwrap();
    let s = Server::start(&dir, None).await;
    assert_eq!(get(&c, &format!("{}/v1/streams/good", s.addr)).await.0, 200);
    assert_eq!(get(&c, &format!("{}/v1/streams/bad", s.addr)).await.0, 404);
    let metrics = scrape(&c, &s.addr).await;
    assert!(metrics.contains("anomalyd_corrupt_snapshots_total 1"), "counted");
    assert!(bad.with_extension("corrupt").exists(), "moved aside for inspection");
    s.stop().await;
}

#[test]
fn kill_dash_nine_loses_at_most_the_snapshot_interval() {
    let dir = temp_dir("kill9");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_anomalyd"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
                dir.to_str().unwrap(),
            ])
            .args(["--snapshot-interval-secs", "0.2", "--training-threads", "1"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let up = || async {
            for _ in 0..100 {
                if c.get(format!("{base}/healthz")).send().await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("server did not start");
        };
        let mut child = spawn();
        up().await;
        post(&c, &format!("{base}/v1/streams/k9/readings"), &readings(0, 500)).await;
        let info = wait_for_model(&c, &format!("{base}/v1/streams/k9"), 1).await;
        // Wait for a snapshot round that ends after the model is in, then kill
        // without warning.
        let last_round = "anomalyd_snapshot_last_success_timestamp_seconds";
        let t0 = metric_value(&scrape(&c, &base).await, last_round);
        wait_for_metric(&c, &base, last_round, |t| t > t0).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let mut child = spawn();
        up().await;
        let (status, back) = get(&c, &format!("{base}/v1/streams/k9")).await;
        assert_eq!(status, 200);
        assert_eq!(back["model"]["version"], info["model"]["version"]);
        assert_eq!(back["readings_seen"], 500);
        child.kill().unwrap();
        child.wait().unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_configures_streams_and_retrain_queues_a_job() {
    let dir = temp_dir("put");
    let s = Server::start(&dir, None).await;
    let c = reqwest::Client::new();
    let url = format!("{}/v1/streams/cfg", s.addr);
    // Create with a config: every field optional.
    let r = c
        .put(&url)
        .json(&json!({"model": {"cell": "gru", "hidden": 8, "ensemble": 1}, "alert": {"threshold": 0.7}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let info: Value = r.json().await.unwrap();
    assert_eq!(
        (info["config"]["model"]["cell"].as_str(), info["threshold"].as_f64()),
        (Some("gru"), Some(0.7))
    );
    // Invalid configs are refused with the field named, and change nothing.
    for (bad, field) in [
        (json!({"model": {"cell": "transformer"}}), "model.cell"),
        (json!({"model": {"error_scale": 7}}), "model.error_scale"),
        (json!({"alert": {"prune_margin": "wide"}}), "alert.prune_margin"),
        (json!({"window": 1}), "window"),
        (json!({"windw": 3}), "windw"),
        (json!({"context": [1, "x"]}), "context"),
    ] {
        let r = c.put(&url).json(&bad).send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "invalid_config");
        let message = e["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{bad}: {message}");
    }
    assert_eq!(get(&c, &url).await.1["config"]["model"]["cell"], "gru");
    // Train a model, then move the threshold: the model stays (same shape), and a
    // partial body changes only what it names (JSON merge patch).
    post(&c, &format!("{url}/readings"), &readings(0, 500)).await;
    let v1 = wait_for_model(&c, &url, 1).await["model"]["version"].as_u64().unwrap();
    let r = c
        .put(&url)
        .json(&json!({"alert": {"threshold": 0.9}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let info: Value = r.json().await.unwrap();
    assert_eq!(
        (info["threshold"].as_f64(), info["model"]["version"].as_u64()),
        (Some(0.9), Some(v1))
    );
    assert_eq!(info["model"]["cell"], "gru", "the cell set earlier is kept");
    assert_eq!(
        info["model"]["parameters"],
        3 * 8 * (1 + 8) + 2 * 24 + 3 * 8 * (8 + 8) + 2 * 24 + 8 + 1
    );
    // A context that leaves nothing to judge, or names a feature the stream does
    // not have, does not fit: at the PUT once the width is known, at the first
    // reading before (nothing of the batch is taken in).
    for context in [json!([0]), json!([1])] {
        let r = c.put(&url).json(&json!({"context": context})).send().await.unwrap();
        assert_eq!(r.status(), 400, "{context}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "invalid_config");
    }
    let fresh = format!("{}/v1/streams/fresh", s.addr);
    for (context, width) in [(json!([0, 1]), 2), (json!([3]), 2)] {
        let r = c.put(&fresh).json(&json!({"context": context})).send().await.unwrap();
        assert!(r.status().is_success());
        let values: Vec<f64> = vec![1.0; width];
        let batch = json!({"readings": [{"timestamp": 1_750_000_000, "values": values}]});
        let (got, e) = post(&c, &format!("{fresh}/readings"), &batch).await;
        assert_eq!(
            (got, e["error"]["code"].as_str()),
            (400, Some("invalid_reading")),
            "{e}"
        );
        assert!(e["error"]["message"].as_str().unwrap().contains("context"), "{e}");
        assert_eq!(get(&c, &fresh).await.1["readings_seen"], 0);
    }
    // The features may be named, and the context listed by those names; a name
    // not among them, or names that do not fit the stream, are refused.
    let named = format!("{}/v1/streams/named", s.addr);
    let body = json!({"features": ["latency", "deploy"], "context": ["deploy"]});
    let r = c.put(&named).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let batch = json!({"readings": [{"timestamp": 1_750_000_000, "values": [5.0, 1.0]}]});
    let (got, e) = post(&c, &format!("{named}/readings"), &batch).await;
    assert_eq!(got, 200, "{e}");
    assert_eq!(get(&c, &named).await.1["config"]["context"], json!(["deploy"]));
    for (bad, field) in [
        (json!({"context": ["version"]}), "version"),
        (json!({"features": ["a", "b", "c"]}), "features"),
        (json!({"features": ["a", "a"], "context": [1]}), "features"),
    ] {
        let r = c.put(&named).json(&bad).send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "invalid_config");
        assert!(e["error"]["message"].as_str().unwrap().contains(field), "{bad}: {e}");
    }
    // An empty body changes nothing; `null` puts one field back to its default.
    let r = c.put(&url).body("").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["threshold"], 0.9);
    let r = c
        .patch(&url)
        .json(&json!({"alert": {"threshold": null}}))
        .send()
        .await
        .unwrap();
    let info: Value = r.json().await.unwrap();
    assert_eq!(info["threshold"], DetectorConfig::default().alert.threshold);
    assert_eq!(info["config"]["model"]["hidden"], 8);
    // An explicit retrain produces the next version.
    let r = c.post(format!("{url}/retrain")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    wait_for_model(&c, &url, v1 + 1).await;
    // The training queue is visible: each job's wait, its outcome, the depth.
    let text = scrape(&c, &s.addr).await;
    assert!(
        metric_value(&text, "anomalyd_retrain_wait_seconds_count") >= 2.0,
        "{text}"
    );
    assert!(metric_value(&text, "anomalyd_retrain_jobs_total{outcome=\"completed\"}") >= 2.0);
    assert_eq!(metric_value(&text, "anomalyd_retrain_queue_depth"), 0.0);
    // ...and why each job was asked for, with the training time it took.
    for kind in ["first", "requested"] {
        let queued = format!("anomalyd_retrain_jobs_queued_total{{kind=\"{kind}\"}}");
        assert!(metric_value(&text, &queued) >= 1.0, "{queued}");
        assert!(metric_value(&text, &format!("anomalyd_retrain_seconds_total{{kind=\"{kind}\"}}")) > 0.0);
    }
    // A new shape would discard the model and readings: refused unless explicit.
    let reshape = json!({"model": {"cell": "lstm", "hidden": 8}});
    let r = c.put(&url).json(&reshape).send().await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "reset_required");
    assert_eq!(get(&c, &url).await.1["readings_seen"], 500, "nothing changed");
    let r = c.put(format!("{url}?reset=true")).json(&reshape).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let info: Value = r.json().await.unwrap();
    assert_eq!(
        (info["model"].clone(), info["readings_seen"].as_u64()),
        (Value::Null, Some(0))
    );
    assert_eq!(
        c.post(format!("{url}/retrain")).send().await.unwrap().status(),
        409,
        "nothing to train on yet"
    );
    assert_eq!(
        c.post(format!("{}/v1/streams/none/retrain", s.addr))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        c.delete(format!("{}/v1/streams/none", s.addr))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    s.stop().await;
}

/// Hardening findings 1, 2, 5, 13 and 15 over real HTTP: each answered with a JSON
/// 4xx, and the service (and the stream) go on working afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_requests_get_4xx_and_the_service_goes_on() {
    let dir = temp_dir("absurd");
    let s = Server::start(&dir, None).await;
    let c = reqwest::Client::new();
    let url = format!("{}/v1/streams/absurd", s.addr);
    post(&c, &format!("{url}/readings"), &readings(0, 50)).await;
    let bad = |ts: Value| json!({"readings": [{"timestamp": ts, "value": 1.0}]});
    for (body, what) in [
        // A byte offset inside a multi-byte character (panicked the handler).
        (bad(json!("2014-02-14T14:30:00+0é00")), "non-ASCII offset"),
        // Milliseconds sent as seconds: year 55,000 would lock the stream.
        (bad(json!(1_700_000_000_000i64)), "milliseconds"),
        (bad(json!("9999-12-31T00:00:00Z")), "far future"),
        // Beyond what µs since the epoch can hold: refused, not saturated.
        (bad(json!(1e13)), "overflowing seconds"),
    ] {
        let (status, e) = post(&c, &format!("{url}/readings"), &body).await;
        assert_eq!(
            (status, e["error"]["code"].as_str()),
            (400, Some("invalid_timestamp")),
            "{what}: {e}"
        );
    }
    // The stream is not locked: the next ordinary reading is taken.
    let (status, r) = post(&c, &format!("{url}/readings"), &readings(50, 51)).await;
    assert_eq!(status, 200, "{r}");
    // A first reading with 100,000 values allocates nothing: refused.
    let wide = json!({"readings": [{"timestamp": 1_700_000_000, "values": vec![1.0; 100_000]}]});
    let (status, e) = post(&c, &format!("{}/v1/streams/wide/readings", s.addr), &wide).await;
    assert_eq!(status, 400, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("at most 256"), "{e}");
    // Config values that overflowed an allocation under the registry's lock.
    for body in [
        json!({"likelihood": {"averaging_window": 2305843009213693952u64}}),
        json!({"baseline": {"gaussian_window": 2305843009213693952u64}}),
        json!({"baseline": {"seasonal_every": 1}}),
    ] {
        let r = c.put(&url).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
    }
    // Query and path rejections answer the JSON error too, not axum's plain text.
    for (path, code) in [
        ("/v1/streams?limit=lots", "invalid_query"),
        ("/v1/alerts?since=-1", "invalid_query"),
        ("/v1/streams/%FF%FE", "invalid_path"),
        // A plain GET on the WebSocket route (no upgrade headers).
        ("/v1/alerts/ws", "websocket_required"),
    ] {
        let (status, e) = get(&c, &format!("{}{path}", s.addr)).await;
        assert!((400..500).contains(&status), "{path}: {status}");
        assert_eq!(e["error"]["code"].as_str(), Some(code), "{path}: {e}");
    }
    // Everything still answers.
    assert_eq!(get(&c, &url).await.0, 200);
    assert!(scrape(&c, &s.addr).await.contains("anomalyd_readings_ingested_total"));
    let (status, _) = post(&c, &format!("{url}/readings"), &readings(51, 52)).await;
    assert_eq!(status, 200);
    s.stop().await;
}

/// History, incidents and acceptance over HTTP: a stream taught its history scores
/// with a model at once; a spike opens an incident in the journal; accepting it
/// resolves it as `accepted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_then_an_incident_opens_and_is_accepted() {
    let dir = temp_dir("incident");
    let s = Server::start(&dir, None).await;
    let c = reqwest::Client::new();
    let url = format!("{}/v1/streams/pump", s.addr);
    let (status, r) = post(&c, &format!("{url}/history"), &readings(0, 600)).await;
    assert_eq!(status, 200, "{r}");
    assert!(r["results"].as_array().unwrap().iter().all(|v| v["anomaly"] == false));
    wait_for_model(&c, &url, 1).await;
    let (_, r) = post(&c, &format!("{url}/readings"), &readings(600, 650)).await;
    assert!(
        r["results"].as_array().unwrap().iter().all(|v| v["anomaly"] == false),
        "{r}"
    );
    // A lasting fault: every reading anomalous, one incident.
    let fault: Vec<Value> = (650..700)
        .map(|t| json!({"timestamp": 1_700_000_000 + t as i64 * 60, "value": seasonal(t) + 200.0}))
        .collect();
    let (_, r) = post(&c, &format!("{url}/readings"), &json!({ "readings": fault })).await;
    let res = r["results"].as_array().unwrap();
    assert_eq!(
        (res[0]["anomaly"].as_bool(), res[0]["event"].as_str()),
        (Some(true), Some("opened")),
        "{}",
        res[0]
    );
    assert!(res[0]["cause"].is_string(), "the result names what decided: {}", res[0]);
    assert!(
        res[1..]
            .iter()
            .all(|v| v["anomaly"] == true && v["suppressed"] == "incident_open")
    );
    let (_, info) = get(&c, &url).await;
    assert_eq!(info["incident"]["id"], 1, "{info}");
    let (_, alerts) = get(&c, &format!("{}/v1/alerts?stream=pump", s.addr)).await;
    let a = &alerts["alerts"][0];
    assert_eq!(
        (a["kind"].as_str(), a["incident"].as_u64()),
        (Some("opened"), Some(1)),
        "{alerts}"
    );
    assert_eq!(a["top_features"][0]["feature"], 0);
    // The operator accepts the new level.
    let (status, r) = post(&c, &format!("{url}/accept"), &json!({})).await;
    assert_eq!((status, r["resolved_incident"].as_u64()), (200, Some(1)), "{r}");
    assert!(r["accepted_readings"].as_u64().unwrap() >= 50);
    let (_, alerts) = get(&c, &format!("{}/v1/alerts?stream=pump", s.addr)).await;
    let a = &alerts["alerts"][1];
    assert_eq!(
        (a["kind"].as_str(), a["resolution"].as_str()),
        (Some("resolved"), Some("accepted")),
        "{alerts}"
    );
    let (status, _) = post(&c, &format!("{}/v1/streams/nope/accept", s.addr), &json!({})).await;
    assert_eq!(status, 404);
    s.stop().await;
}

/// Hardening finding 8: admission comes before the body is read, waiters are
/// capped (429 at once), and a request that never finishes its body is cut off by
/// the request timeout, freeing its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_before_the_body_and_a_cap_on_waiters() {
    use tokio::io::AsyncWriteExt;
    let registry = Registry::open(RegistryConfig::default(), Arc::new(Metrics::new())).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = ServerConfig {
        max_inflight: 1,
        max_waiters: 1,
        queue_wait: Duration::from_secs(5),
        request_timeout: Duration::from_millis(1500),
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::run(
        listener,
        registry,
        cfg,
        Duration::from_secs(3600),
        async move {
            let _ = rx.await;
        },
    ));
    // A client that announces a body and never sends it takes the one slot.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(
        b"POST /v1/streams/a/readings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{",
    )
    .await
    .unwrap();
    let c = reqwest::Client::new();
    let base = format!("http://{addr}");
    wait_for_metric(&c, &base, "anomalyd_scoring_slots_in_use", |n| n >= 1.0).await;
    // Not a wait for something to happen: the waiter's own request timeout must end
    // well after the slow one's, which frees the slot, so it arrives later.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = format!("http://{addr}/v1/streams/b/readings");
    // One more may wait for the slot; the next is refused at once, body unread.
    let waiting = tokio::spawn({
        let (c, url) = (c.clone(), url.clone());
        async move {
            c.post(&url)
                .json(&readings(0, 5))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    wait_for_metric(&c, &base, "anomalyd_scoring_waiters", |n| n >= 1.0).await;
    let t = std::time::Instant::now();
    let r = c.post(&url).json(&readings(0, 5)).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert!(t.elapsed() < Duration::from_secs(1), "refused without waiting");
    // The slow body is cut off by the request timeout; the waiter then gets the slot.
    assert_eq!(waiting.await.unwrap(), 200);
    let mut answer = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut slow, &mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}

/// Hardening finding 7: requests that wait for a busy stream's lock wait on the
/// blocking pool, never on an async worker, so the rest of the service (here on a
/// single worker thread) keeps answering.
#[test]
fn a_busy_stream_does_not_stall_other_requests() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let registry = Registry::open(RegistryConfig::default(), Arc::new(Metrics::new())).unwrap();
        let s = common::TestServer::start(registry.clone(), ServerConfig::default()).await;
        let c = reqwest::Client::new();
        let base = format!("http://{}", s.addr);
        post(&c, &format!("{base}/v1/streams/busy/readings"), &readings(0, 5)).await;
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            registry.with_stream_locked("busy", || {
                held_tx.send(()).unwrap();
                let _ = release_rx.recv_timeout(Duration::from_secs(30));
            })
        });
        held_rx.recv().unwrap();
        // These wait for the lock...
        let waiting: Vec<_> = ["GET", "POST", "DELETE"]
            .into_iter()
            .map(|m| {
                let url = match m {
                    "POST" => format!("{base}/v1/streams/busy/retrain"),
                    _ => format!("{base}/v1/streams/busy"),
                };
                let req = c.request(m.parse().unwrap(), url);
                tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) })
            })
            .collect();
        // The three are being served (the scrape counts itself too).
        wait_for_metric(&c, &base, "anomalyd_http_requests_in_flight", |n| n >= 4.0).await;
        // ...while everything else still answers at once.
        for path in ["/healthz", "/metrics", "/v1/streams", "/metrics/scores"] {
            let r = tokio::time::timeout(Duration::from_secs(2), c.get(format!("{base}{path}")).send()).await;
            assert!(r.is_ok_and(|r| r.is_ok()), "{path} stalled behind a busy stream");
        }
        let r = tokio::time::timeout(
            Duration::from_secs(2),
            c.post(format!("{base}/v1/streams/other/readings"))
                .json(&readings(0, 1))
                .send(),
        )
        .await;
        assert!(r.is_ok(), "ingest to another stream stalled");
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        for w in waiting {
            assert!(w.await.unwrap().is_ok());
        }
        s.stop().await;
    });
}
