//! Shards that move with their models (issue 23, point 3), on real processes:
//! four of sixteen shards move to a fourth node under load with `anomalyd shards
//! move` (no reading acknowledged is lost, none falls back to its baseline, an
//! open incident stays one Alertmanager alert), and a node wiped and restored
//! from its exported archives is back on its models.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

mod common;
use common::{Killed, eventually, free_port, get_json, peer, temp_dir};

use anomalyd::shard::{DEFAULT_LABELS, ShardFunction};

const SHARDS: u32 = 16;

fn function() -> ShardFunction {
    ShardFunction::new(SHARDS, DEFAULT_LABELS.map(String::from).to_vec()).unwrap()
}

/// A node's process on a data directory.
struct Node {
    base: String,
    port: u16,
    dir: PathBuf,
    _child: Killed,
}

/// Starts `anomalyd serve` on `dir` (port 0: a new one) with `extra` flags;
/// the default detector trains one small model per stream.
async fn start(dir: &Path, port: u16, extra: &[String]) -> Node {
    let port = if port == 0 { free_port() } else { port };
    std::fs::write(dir.join("anomalyd.toml"), "[detector.model]\nensemble = 1\n").unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_anomalyd"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.join("data"))
        .arg("--config")
        .arg(dir.join("anomalyd.toml"))
        .args(["--training-threads", "1", "--shard-count", "16"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let c = reqwest::Client::new();
    eventually("the node to answer", Duration::from_secs(30), async || {
        c.get(format!("{base}/healthz")).send().await.ok().map(|_| ())
    })
    .await;
    Node {
        base,
        port,
        dir: dir.to_path_buf(),
        _child: Killed(child),
    }
}

fn seasonal(t: i64) -> f64 {
    50.0 + 10.0 * (t as f64 / 8.0).sin() + ((t * 7919) % 13) as f64 / 13.0
}

const T0: i64 = 1_700_000_000;

/// Teaches `id` 420 normal readings as history (a model follows).
async fn teach(c: &reqwest::Client, base: &str, id: &str) {
    let rs: Vec<Value> = (0..420)
        .map(|t| json!({"timestamp": T0 + t * 60, "value": seasonal(t)}))
        .collect();
    let r = c
        .post(format!("{base}/v1/streams/{id}/history"))
        .json(&json!({ "readings": rs }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// A stream's info (`Null` if the node does not answer 200).
async fn info(c: &reqwest::Client, base: &str, id: &str) -> Value {
    let (status, v) = get_json(c, &format!("{base}/v1/streams/{id}")).await;
    if status == 200 { v } else { Value::Null }
}

/// Waits until every stream of `ids` on `base` has a model.
async fn all_on_models(c: &reqwest::Client, base: &str, ids: &[String]) {
    eventually("every stream on a model", Duration::from_secs(240), async || {
        for id in ids {
            if info(c, base, id).await["model"]["version"].as_u64().unwrap_or(0) < 1 {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// Readings acknowledged (200) per stream, by a client that sends one reading
/// to each stream in turn to the node the original layout names, and sends a
/// refused reading (421 while its shard moves, 5xx) again until it is taken.
async fn load(
    c: reqwest::Client,
    routes: Vec<(String, String)>,
    stop: Arc<Mutex<bool>>,
    acked: Arc<Mutex<HashMap<String, i64>>>,
) {
    let mut t = 1000;
    while !*stop.lock().unwrap() {
        for (id, base) in &routes {
            let body = json!({"readings": [{"timestamp": T0 + t * 60, "value": seasonal(t)}]});
            for _ in 0..600 {
                let r = c
                    .post(format!("{base}/v1/streams/{id}/readings"))
                    .json(&body)
                    .send()
                    .await;
                match r.map(|r| r.status().as_u16()) {
                    Ok(200) => {
                        *acked.lock().unwrap().entry(id.clone()).or_default() += 1;
                        break;
                    }
                    Ok(421 | 502 | 503) | Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    Ok(s) => panic!("{id}: unexpected {s}"),
                }
            }
        }
        t += 1;
    }
}

async fn alerts_for(c: &reqwest::Client, am: u16, stream: &str) -> Vec<Value> {
    let (_, v) = get_json(c, &format!("http://127.0.0.1:{am}/api/v2/alerts")).await;
    v.as_array()
        .map(|a| a.iter().filter(|x| x["labels"]["stream"] == stream).cloned().collect())
        .unwrap_or_default()
}

/// `anomalyd shards move`, run as a user would; its output.
fn shards_move(from: &str, to: &str, shards: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_anomalyd"))
        .args(["shards", "move", "--from", from, "--to", to, "--shards", shards])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_of_sixteen_shards_move_to_a_fourth_node_under_load() {
    let dir = temp_dir("move");
    let Some((_am, am)) = common::alertmanager(&dir, "am") else {
        return;
    };
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let urls: Vec<String> = ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
    let am_flags = [
        format!("--alertmanager-url=http://127.0.0.1:{am}"),
        "--alertmanager-resend-secs=1".to_string(),
    ];
    let mut nodes = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let d = dir.join(format!("n{i}"));
        std::fs::create_dir_all(&d).unwrap();
        let mut flags = vec![
            format!("--node-ordinal={i}"),
            "--nodes=3".into(),
            format!("--node-urls={}", urls.join(",")),
        ];
        flags.extend(am_flags.iter().cloned());
        nodes.push(start(&d, *port, &flags).await);
    }
    let d4 = dir.join("n3");
    std::fs::create_dir_all(&d4).unwrap();
    let mut flags = vec!["--shards=".to_string()];
    flags.extend(am_flags.iter().cloned());
    let fourth = start(&d4, 0, &flags).await;

    let f = function();
    let owner = |id: &str| anomalyd::shard::node_of(f.of_id(id), 3, SHARDS) as usize;
    let c = reqwest::Client::new();
    let ids: Vec<String> = (0..240).map(|i| format!("svc-{i:03}")).collect();
    for chunk in ids.chunks(8) {
        futures::future::join_all(chunk.iter().map(|id| teach(&c, &nodes[owner(id)].base, id))).await;
    }
    for (n, node) in nodes.iter().enumerate() {
        let mine: Vec<String> = ids.iter().filter(|id| owner(id) == n).cloned().collect();
        all_on_models(&c, &node.base, &mine).await;
    }
    // An incident, open before the move, on a stream of a shard that moves.
    let moving = [0u32, 1, 6, 11];
    let faulty = ids.iter().find(|id| f.of_id(id) == 0).unwrap().clone();
    let spike: Vec<Value> = (420..440)
        .map(|t| json!({"timestamp": T0 + t * 60, "value": 500.0}))
        .collect();
    c.post(format!("{}/v1/streams/{faulty}/readings", nodes[0].base))
        .json(&json!({ "readings": spike }))
        .send()
        .await
        .unwrap();
    let incident = info(&c, &nodes[0].base, &faulty).await["incident"]["id"].clone();
    assert!(incident.is_u64(), "an incident is open on {faulty}");
    eventually("the alert in Alertmanager", Duration::from_secs(30), async || {
        (alerts_for(&c, am, &faulty).await.len() == 1).then_some(())
    })
    .await;
    let mut before = HashMap::new();
    for id in &ids {
        before.insert(
            id.clone(),
            info(&c, &nodes[owner(id)].base, id).await["readings_seen"]
                .as_i64()
                .unwrap(),
        );
    }

    // Under load (every stream but the faulty one), the four shards move.
    let routes: Vec<(String, String)> = ids
        .iter()
        .filter(|id| **id != faulty)
        .map(|id| (id.clone(), nodes[owner(id)].base.clone()))
        .collect();
    let (stop, acked) = (Arc::new(Mutex::new(false)), Arc::new(Mutex::new(HashMap::new())));
    let client = tokio::spawn(load(c.clone(), routes, stop.clone(), acked.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let to = fourth.base.clone();
    let moves = [(0usize, "0-1"), (1, "6"), (2, "11")];
    let outputs = tokio::task::spawn_blocking({
        let from: Vec<String> = nodes.iter().map(|n| n.base.clone()).collect();
        move || moves.map(|(n, s)| shards_move(&from[n], &to, s))
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    *stop.lock().unwrap() = true;
    client.await.unwrap();
    assert!(outputs.iter().all(|o| o.contains("unavailable for")), "{outputs:?}");

    // A quarter of the streams moved, each on its model, none lost a reading.
    let moved: Vec<&String> = ids.iter().filter(|id| moving.contains(&f.of_id(id))).collect();
    let share = moved.len() as f64 / ids.len() as f64;
    assert!((0.20..=0.30).contains(&share), "{share} of the streams moved");
    let acked = acked.lock().unwrap().clone();
    for id in &ids {
        let home = if moved.contains(&id) {
            &fourth.base
        } else {
            &nodes[owner(id)].base
        };
        let v = info(&c, home, id).await;
        assert_eq!(v["phase"], "model", "{id} on its model after the move: {v}");
        let want = before[id] + acked.get(id).copied().unwrap_or(0);
        assert_eq!(
            v["readings_seen"].as_i64(),
            Some(want),
            "{id}: every acknowledged reading"
        );
        if moved.contains(&id) {
            let (status, _) = get_json(&c, &format!("{}/v1/streams/{id}?x=1", nodes[owner(id)].base)).await;
            assert_eq!(status, 200, "the old node passes requests for {id} on");
        }
    }
    assert!(
        acked.values().sum::<i64>() > ids.len() as i64,
        "the load ran through the move"
    );
    let after = info(&c, &fourth.base, &faulty).await;
    assert_eq!(after["incident"]["id"], incident, "the incident is still open");
    // One alert, still active, past several resend periods of both nodes.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let alerts = alerts_for(&c, am, &faulty).await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["status"]["state"], "active");
    let (_, table) = get_json(&c, &format!("{}/v1/shards", nodes[0].base)).await;
    assert_eq!(table["moved"]["0"], fourth.base.as_str());
    assert_eq!(table["owned"], json!([2, 3, 4, 5]));
    drop(nodes);
    drop(fourth);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_restored_from_its_archives_is_back_on_its_models() {
    let dir = temp_dir("restore");
    let node = start(&dir, 0, &["--shards=0-15".to_string()]).await;
    let c = reqwest::Client::new();
    let ids: Vec<String> = (0..120).map(|i| format!("db-{i:03}")).collect();
    for chunk in ids.chunks(8) {
        futures::future::join_all(chunk.iter().map(|id| teach(&c, &node.base, id))).await;
    }
    all_on_models(&c, &node.base, &ids).await;
    // Backups: every shard's archive, taken while the node runs.
    let mut archives = Vec::new();
    for shard in 0..SHARDS {
        let r = c
            .get(format!("{}/v1/shards/{shard}/export", node.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        archives.push(r.bytes().await.unwrap());
    }
    let (port, data) = (node.port, node.dir.join("data"));
    drop(node); // kill -9
    std::fs::remove_dir_all(&data).unwrap();
    let node = start(&dir, port, &["--shards=0-15".to_string()]).await;
    assert_eq!(info(&c, &node.base, &ids[0]).await, Value::Null, "wiped");
    // What a careless client may send: clear 4xx answers.
    for (method, path, body, want) in [
        ("GET", "/v1/shards/16/export", "", 404),
        ("POST", "/v1/shards/x/release", "", 400),
        ("POST", "/v1/shards/3/forget", "", 409),
        ("POST", "/v1/shards/3/forget", "{\"to\": 5}", 400),
        ("POST", "/v1/shards/3/import", "junk", 400),
    ] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = c
            .request(m, format!("{}{path}", node.base))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "{method} {path}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].is_object() || v["error"].is_string(), "{path}: {v}");
    }
    let mut damaged = archives[3].to_vec();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x10;
    let r = c
        .post(format!("{}/v1/shards/3/import", node.base))
        .body(damaged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a damaged archive is refused");
    for (shard, bytes) in archives.into_iter().enumerate() {
        let r = c
            .post(format!("{}/v1/shards/{shard}/import", node.base))
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    let mut on_model = 0;
    for id in &ids {
        let v = info(&c, &node.base, id).await;
        on_model += usize::from(v["phase"] == "model" && v["readings_seen"] == 420);
    }
    assert!(
        on_model * 100 >= ids.len() * 99,
        "{on_model} of {} on their models",
        ids.len()
    );
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

fn metric(text: &str, line: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

async fn ingested(c: &reqwest::Client, base: &str) -> f64 {
    metric(
        &common::get_text(c, &format!("{base}/metrics")).await,
        "anomalyd_readings_ingested_total ",
    )
}

/// Readings ingested per second by each node of `bases` over `secs`.
async fn rates(c: &reqwest::Client, bases: &[&str], secs: u64) -> Vec<f64> {
    let mut start = Vec::new();
    for b in bases {
        start.push(ingested(c, b).await);
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let mut out = Vec::new();
    for (b, s) in bases.iter().zip(start) {
        out.push((ingested(c, b).await - s) / secs as f64);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_for_30_s_comes_back_with_every_model_and_prometheus_backlog() {
    let Some(prometheus) = peer("prometheus") else { return };
    let dir = temp_dir("failover");
    let f = function();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let urls: Vec<String> = ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
    let flags = |i: usize| vec![format!("--node-ordinal={i}"), "--nodes=3".to_string()];
    let mut nodes = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let d = dir.join(format!("n{i}"));
        std::fs::create_dir_all(&d).unwrap();
        nodes.push(Some(start(&d, *port, &flags(i)).await));
    }
    // 240 series, each with a model before Prometheus sends its first sample.
    let ids: Vec<String> = (0..240)
        .map(|i| format!("load{{instance=\"10.2.{}.{}:9100\",job=\"api\"}}", i / 50, i % 50))
        .collect();
    let owner = |id: &str| anomalyd::shard::node_of(f.of_id(id), 3, SHARDS) as usize;
    let enc = |id: &str| anomalyd::protocol::percent_encode(id);
    let c = reqwest::Client::new();
    let encoded: Vec<(String, String)> = ids.iter().map(|id| (enc(id), urls[owner(id)].clone())).collect();
    for chunk in encoded.chunks(8) {
        futures::future::join_all(chunk.iter().map(|(id, base)| teach(&c, base, id))).await;
    }
    let dead: Vec<String> = ids.iter().filter(|id| owner(id) == 1).cloned().collect();
    let dead_enc: Vec<String> = dead.iter().map(|id| enc(id)).collect();
    all_on_models(&c, &urls[1], &dead_enc).await;
    let port = common::load_exporter(ids.len(), 2, &["api"]).await;
    let config = format!(
        "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: load\n    honor_labels: true\n    \
         static_configs: [{{targets: [\"127.0.0.1:{port}\"]}}]\n{}",
        anomalyd::shard::prometheus_remote_write(&f, &urls).replace(
            "    write_relabel_configs:",
            "    queue_config: {batch_send_deadline: 1s, min_backoff: 100ms, max_backoff: 1s}\n    write_relabel_configs:"
        )
    );
    let prom_port = free_port();
    let _prom = common::prometheus(prometheus, &dir, prom_port, &config);
    let (a, b) = (urls[0].as_str(), urls[2].as_str());
    eventually("samples on every node", Duration::from_secs(60), async || {
        let r = rates(&c, &[a, b, &urls[1]], 2).await;
        r.iter().all(|&x| x > 0.0).then_some(())
    })
    .await;
    let before = rates(&c, &[a, b], 10).await;

    let mut versions = Vec::new();
    for id in &dead_enc {
        versions.push(info(&c, &urls[1], id).await["model"]["version"].as_u64().unwrap_or(0));
    }
    nodes[1] = None; // kill -9
    let during = rates(&c, &[a, b], 30).await;
    println!("readings/s of the two live nodes: before {before:?}, with the third dead {during:?}");
    for (x, y) in before.iter().zip(&during) {
        assert!(*y >= 0.9 * x, "ingest with a node dead: {during:?} against {before:?}");
    }
    for base in [a, b] {
        for id in &dead_enc {
            let (status, _) = get_json(&c, &format!("{base}/v1/streams/{id}")).await;
            assert_ne!(status, 200, "{id} appeared on {base}");
        }
    }
    let restarted = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    nodes[1] = Some(start(&dir.join("n1"), ports[1], &flags(1)).await);
    for (id, before) in dead_enc.iter().zip(versions) {
        let v = info(&c, &urls[1], id).await["model"]["version"].as_u64().unwrap_or(0);
        assert!(
            v >= before.max(1),
            "{id} back with its model: version {v}, {before} before"
        );
    }
    // Prometheus' backlog drains: each series has every sample Prometheus has up
    // to its newest reading, once.
    for (id, e) in dead.iter().zip(&dead_enc).step_by(8) {
        eventually("the backlog drained", Duration::from_secs(90), async || {
            let v = info(&c, &urls[1], e).await;
            let last = v["last_timestamp"].as_str()?;
            let at = anomalyd::timestamp::parse(last)? as f64 / 1e6;
            if at < restarted {
                return None;
            }
            let q = format!("count_over_time({id}[2h] @ {at})");
            let url = format!("http://127.0.0.1:{prom_port}/api/v1/query?query={}", enc(&q));
            let (_, r) = get_json(&c, &url).await;
            let n: i64 = r["data"]["result"][0]["value"][1].as_str()?.parse().ok()?;
            let seen = v["readings_seen"].as_i64()? - 420;
            assert!(seen <= n, "{id}: {seen} readings of {n} samples: duplicates");
            (seen == n).then_some(())
        })
        .await;
    }
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}
