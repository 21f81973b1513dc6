//! Chaos over real sockets against the real binary: `kill -9` at random moments
//! under load (nothing acknowledged is lost: readings, alerts and their sequence
//! numbers), a full disk (503 and not ready, then recovery), and clients that race
//! each other on the same streams (no deadlock, no 5xx but overload answers).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("anomalyd-chaos-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn spawn(dir: &Path, port: u16, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_anomalyd"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir)
        .args(["--training-threads", "1"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits (polling) until `f` holds; fails after a minute.
async fn wait_until(what: &str, f: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_up(c: &reqwest::Client, base: &str) {
    for _ in 0..200 {
        if c.get(format!("{base}/healthz")).send().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("server did not start");
}

/// What clients know was acknowledged, per stream.
#[derive(Default)]
struct Ledger {
    /// Readings answered 200.
    acked: HashMap<String, u64>,
    /// Readings sent without an answer (they may or may not have landed).
    unknown: HashMap<String, u64>,
}

/// A seconds timestamp a month ago plus `i`.
fn ts(i: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    now - 30 * 86_400 + i
}

/// One client: multi-stream batches to its own streams, a spike now and then so
/// incidents open and resolve. Runs until the server dies.
async fn client(base: String, id: usize, next: Arc<Mutex<u64>>, ledger: Arc<Mutex<Ledger>>) {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(id as u64);
    let streams: Vec<String> = (0..4).map(|s| format!("c{id}.s{s}")).collect();
    loop {
        let t0 = {
            let mut n = next.lock().unwrap();
            *n += 5;
            *n - 5
        };
        let mut readings = Vec::new();
        for k in 0..5 {
            for s in &streams {
                let spike = rng.random_bool(0.002);
                let v = if spike { 1e4 } else { rng.random_range(-1.0..1.0) };
                readings.push(json!({"stream": s, "timestamp": ts(t0 + k), "value": v}));
            }
        }
        let sent = c
            .post(format!("{base}/v1/readings"))
            .json(&json!({ "readings": readings }))
            .send()
            .await;
        let mut l = ledger.lock().unwrap();
        match sent {
            Ok(r) if r.status() == 200 => {
                for s in &streams {
                    *l.acked.entry(s.clone()).or_default() += 5;
                }
            }
            Ok(r) if r.status() == 503 || r.status() == 429 => {}
            Ok(r) => panic!("unexpected status {}", r.status()),
            Err(_) => {
                for s in &streams {
                    *l.unknown.entry(s.clone()).or_default() += 5;
                }
                return;
            }
        }
    }
}

/// Collects every alert the server pushes, until the connection drops.
async fn subscriber(base: String, seen: Arc<Mutex<BTreeMap<u64, Value>>>) {
    let url = base.replace("http://", "ws://") + "/v1/alerts/ws";
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await else {
        return;
    };
    let _ = ws
        .send(Message::Text(json!({"type": "subscribe"}).to_string().into()))
        .await;
    while let Some(Ok(msg)) = ws.next().await {
        let Ok(text) = msg.to_text() else { continue };
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            continue;
        };
        if v["type"] == "alert" {
            let seq = v["seq"].as_u64().unwrap();
            seen.lock().unwrap().insert(seq, v);
        }
    }
}

/// Every alert of the journal, by seq.
async fn journal(c: &reqwest::Client, base: &str) -> BTreeMap<u64, Value> {
    let mut out = BTreeMap::new();
    let mut since = 0;
    loop {
        let page: Value = c
            .get(format!("{base}/v1/alerts?since={since}&limit=1000"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let alerts = page["alerts"].as_array().unwrap();
        if alerts.is_empty() {
            return out;
        }
        for a in alerts {
            since = a["seq"].as_u64().unwrap();
            out.insert(since, a.clone());
        }
    }
}

/// The journal keeps the newest 10,000 alerts (the default capacity): an older
/// one missing from a full journal was evicted, not lost.
fn evicted(journal: &BTreeMap<u64, Value>, seq: u64) -> bool {
    journal.len() >= 10_000 && journal.keys().next().is_some_and(|&oldest| seq < oldest)
}

fn same_alert(a: &Value, b: &Value) -> bool {
    ["seq", "kind", "stream", "incident", "timestamp", "start"]
        .iter()
        .all(|k| a[k] == b[k])
}

#[test]
fn kill_dash_nine_under_load_loses_nothing_acknowledged() {
    let dir = temp_dir("kill9");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let next: Vec<Arc<Mutex<u64>>> = (0..4).map(|_| Arc::new(Mutex::new(0))).collect();
    let c = reqwest::Client::new();
    let cycles = 20;
    for cycle in 0..cycles {
        // Checkpoints run often, so kills also land mid-round and mid-truncation.
        let mut child = spawn(&dir, port, &["--snapshot-interval-secs", "0.25"]);
        rt.block_on(async {
            wait_up(&c, &base).await;
            // What came back must hold everything acknowledged before the kill.
            let streams: Vec<String> = ledger.lock().unwrap().acked.keys().cloned().collect();
            for s in streams {
                let info: Value = c
                    .get(format!("{base}/v1/streams/{s}"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let mut l = ledger.lock().unwrap();
                let seen_n = info["readings_seen"].as_u64().unwrap_or(0);
                let (acked, unknown) = (l.acked[&s], l.unknown.get(&s).copied().unwrap_or(0));
                assert!(
                    acked <= seen_n && seen_n <= acked + unknown,
                    "cycle {cycle}, stream {s}: {seen_n} readings after restart, {acked} acknowledged, {unknown} unanswered"
                );
                l.acked.insert(s.clone(), seen_n);
                l.unknown.remove(&s);
            }
            let back = journal(&c, &base).await;
            for (seq, a) in seen.lock().unwrap().iter() {
                if evicted(&back, *seq) {
                    continue;
                }
                let b = back.get(seq).unwrap_or_else(|| panic!("cycle {cycle}: alert {seq} was pushed, then lost"));
                assert!(same_alert(a, b), "cycle {cycle}: alert {seq} changed: {a} vs {b}");
            }
            // Load, then a kill at a random moment of it.
            let sub = tokio::spawn(subscriber(base.clone(), seen.clone()));
            let clients: Vec<_> = (0..4)
                .map(|i| tokio::spawn(client(base.clone(), i, next[i].clone(), ledger.clone())))
                .collect();
            // The kill lands after a random number of acknowledged batches (each
            // client's batch is 20 readings), in the middle of the load.
            let total = |l: &Ledger| l.acked.values().sum::<u64>();
            let target = total(&ledger.lock().unwrap()) + 20 * rng.random_range(5..60u64);
            wait_until("the load to be under way", || total(&ledger.lock().unwrap()) >= target).await;
            child.kill().unwrap();
            child.wait().unwrap();
            for h in clients {
                h.await.unwrap();
            }
            let _ = sub.await;
        });
    }
    let total: u64 = ledger.lock().unwrap().acked.values().sum();
    let alerts = seen.lock().unwrap().len();
    assert!(total > 2_000, "the load was real: {total} readings acknowledged");
    assert!(alerts > 0, "spikes raised alerts for the check to cover");
    // Sequence numbers were never reused: what the subscriber saw is dense enough
    // and every one of them is what the journal holds.
    let mut child = spawn(&dir, port, &[]);
    rt.block_on(async {
        wait_up(&c, &base).await;
        let back = journal(&c, &base).await;
        for (seq, a) in seen.lock().unwrap().iter() {
            if !evicted(&back, *seq) {
                assert!(same_alert(a, &back[seq]), "alert {seq}: {a} vs {}", back[seq]);
            }
        }
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Mounts a tmpfs of `size` at `dir`. Needs root (CI runs as root and sets
/// `ANOMALYD_CI`, so there a failure to mount fails the test).
fn mount_tmpfs(dir: &Path, size: &str) -> bool {
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok || std::env::var_os("ANOMALYD_CI").is_none(),
        "CI must be able to mount a tmpfs for the full-disk test"
    );
    ok
}

#[test]
fn a_full_disk_answers_503_and_not_ready_then_recovers() {
    let dir = temp_dir("full");
    if !mount_tmpfs(&dir, "512k") {
        eprintln!("skipped: cannot mount a tmpfs here (not root?)");
        return;
    }
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = reqwest::Client::new();
    let mut child = spawn(&dir, port, &["--snapshot-interval-secs", "0.2"]);
    let mut acked = 0u64;
    let post = |i: u64| {
        let readings: Vec<Value> = (0..200)
            .map(|k| json!({"stream": format!("s{}", k % 10), "timestamp": ts(i * 20 + k / 10), "values": [1.0, 2.0, 3.0, 4.0]}))
            .collect();
        c.post(format!("{base}/v1/readings"))
            .json(&json!({ "readings": readings }))
            .send()
    };
    rt.block_on(async {
        wait_up(&c, &base).await;
        let mut refused = None;
        for i in 0..2000 {
            let r = post(i).await.unwrap();
            if r.status() == 200 {
                acked += 20;
                continue;
            }
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            refused = Some((i, status, body));
            break;
        }
        let (i, status, body) = refused.expect("the disk filled up");
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "storage_unavailable", "{body}");
        let ready = c.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 503, "not ready while the disk is full");
        // Space returns: the service takes writes again and becomes ready.
        assert!(
            Command::new("mount")
                .args(["-o", "remount,size=64m"])
                .arg(&dir)
                .status()
                .unwrap()
                .success()
        );
        let mut ok = false;
        for j in 0..100 {
            let r = post(i + 1 + j).await.unwrap();
            if r.status() == 200 {
                acked += 20;
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok, "writes resume once there is space");
        let mut ready = false;
        for _ in 0..100 {
            if c.get(format!("{base}/readyz")).send().await.unwrap().status() == 200 {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready, "ready again once a snapshot round succeeds");
    });
    // Nothing acknowledged was lost, through the full disk and a kill -9.
    child.kill().unwrap();
    child.wait().unwrap();
    let mut child = spawn(&dir, port, &[]);
    rt.block_on(async {
        wait_up(&c, &base).await;
        let mut total = 0;
        for k in 0..10 {
            let info: Value = c
                .get(format!("{base}/v1/streams/s{k}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            total += info["readings_seen"].as_u64().unwrap();
        }
        assert!(
            total >= acked * 10,
            "{total} readings back, {} acknowledged",
            acked * 10
        );
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = Command::new("umount").arg(&dir).status();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn racing_clients_on_the_same_streams_never_deadlock_or_fail() {
    let dir = temp_dir("race");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut child = spawn(&dir, port, &["--snapshot-interval-secs", "0.2"]);
    let clock = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let statuses = Arc::new(Mutex::new(BTreeMap::<(String, u16), u64>::new()));
    rt.block_on(async {
        let c = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
        wait_up(&c, &base).await;
        let until = tokio::time::Instant::now() + Duration::from_secs(3);
        let mut tasks = Vec::new();
        for w in 0..7 {
            let (c, base, clock, statuses) = (c.clone(), base.clone(), clock.clone(), statuses.clone());
            tasks.push(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(w);
                while tokio::time::Instant::now() < until {
                    let s = format!("r{}", rng.random_range(0..6));
                    let (kind, req) = match w {
                        0..4 => {
                            let t = clock.fetch_add(3, std::sync::atomic::Ordering::Relaxed);
                            let readings: Vec<Value> = (0..30)
                                .map(|k| {
                                    let s = format!("r{}", (k + w as usize) % 6);
                                    json!({"stream": s, "timestamp": ts(t + (k / 10) as u64), "value": rng.random_range(-1.0..1.0)})
                                })
                                .collect();
                            ("post", c.post(format!("{base}/v1/readings")).json(&json!({ "readings": readings })))
                        }
                        4 => {
                            let window = if rng.random_bool(0.5) { 16 } else { 32 };
                            let cfg = json!({"window": window, "alert": {"threshold": rng.random_range(0.3..0.9)}});
                            ("put", c.put(format!("{base}/v1/streams/{s}")).json(&cfg))
                        }
                        5 => ("delete", c.delete(format!("{base}/v1/streams/{s}"))),
                        _ => ("retrain", c.post(format!("{base}/v1/streams/{s}/retrain"))),
                    };
                    let status = req.send().await.expect("answered within the timeout: no deadlock").status().as_u16();
                    assert!(
                        [200, 201, 202, 204, 404, 409, 429, 503].contains(&status),
                        "{kind} answered {status}"
                    );
                    *statuses.lock().unwrap().entry((kind.to_string(), status)).or_default() += 1;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let metrics = c.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        assert!(metrics.contains("anomalyd_panics_total 0"), "no handler panicked");
        for i in 0..6 {
            let st = c.get(format!("{base}/v1/streams/r{i}")).send().await.unwrap().status();
            assert!(st == 200 || st == 404, "{st}");
        }
    });
    let statuses = statuses.lock().unwrap().clone();
    let count = |kind: &str, st: u16| statuses.get(&(kind.to_string(), st)).copied().unwrap_or(0);
    assert!(
        count("post", 200) > 20 && count("delete", 204) > 5 && count("put", 200) + count("put", 201) > 5,
        "{statuses:?}"
    );
    // And what they left behind loads cleanly after a kill -9.
    child.kill().unwrap();
    child.wait().unwrap();
    let mut child = spawn(&dir, port, &[]);
    rt.block_on(async {
        let c = reqwest::Client::new();
        wait_up(&c, &base).await;
        let metrics = c
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("anomalyd_corrupt_snapshots_total 0"),
            "nothing damaged"
        );
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
