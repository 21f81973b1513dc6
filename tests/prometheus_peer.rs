//! anomalyd beside a real Prometheus (Debian's `prometheus` package, which
//! `.ci/run` installs): Prometheus remote-writes series into anomalyd, they become
//! streams named by their labels, and the scores Prometheus scrapes back carry the
//! original series' labels.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

mod common;
use anomalyd::protocol::percent_encode;
use common::{Killed, TestServer, eventually, free_port, peer, temp_dir};

use anomalyd::metrics::Metrics;
use anomalyd::registry::{Registry, RegistryConfig};
use anomalyd::server::ServerConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_remote_writes_in_and_scrapes_scores_back_with_the_labels() {
    let Some(prometheus) = peer("prometheus") else { return };
    let dir = temp_dir("peer-prom");
    // A stream has no score until it judges (64 readings by default, a minute
    // at this 1 s scrape); 8 lets every dashboard panel have data in time.
    let mut default_detector = anomalyd::detector::DetectorConfig::default();
    default_detector.alert.min_normal = 8;
    let registry = Registry::open(
        RegistryConfig {
            data_dir: Some(dir.join("anomalyd")),
            default_detector,
            ..Default::default()
        },
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let server = TestServer::start(registry, ServerConfig::default()).await;
    let addr = server.addr;
    let prom_port = free_port();
    // Prometheus scrapes itself (a real exporter) and anomalyd, sends two of those
    // series to anomalyd, and scrapes the scores back.
    let config = format!(
        r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: prometheus
    static_configs: [{{targets: ["127.0.0.1:{prom_port}"]}}]
  - job_name: anomalyd
    static_configs: [{{targets: ["{addr}"]}}]
  - job_name: anomalyd-scores
    metrics_path: /metrics/scores
    honor_labels: true
    static_configs: [{{targets: ["{addr}"]}}]
remote_write:
  - url: http://{addr}/api/v1/write
    queue_config: {{batch_send_deadline: 1s, max_samples_per_send: 500}}
    write_relabel_configs:
      - source_labels: [__name__]
        regex: "prometheus_tsdb_head_series|anomalyd_readings_ingested_total"
        action: keep
"#
    );
    std::fs::write(dir.join("prometheus.yml"), &config).unwrap();
    let check = Command::new("promtool")
        .args(["check", "config"])
        .arg(dir.join("prometheus.yml"))
        .output();
    if let Ok(out) = check {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    }
    let _prom = Killed(
        Command::new(prometheus)
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let c = reqwest::Client::new();
    let base = format!("http://{addr}");
    // The series arrive as streams named by their canonical label sets.
    let stream = format!(r#"prometheus_tsdb_head_series{{instance="127.0.0.1:{prom_port}",job="prometheus"}}"#);
    let streams = eventually(
        "remote_write series to become streams",
        Duration::from_secs(60),
        async || {
            let v: Value = c
                .get(format!("{base}/v1/streams"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let ids: Vec<String> = serde_json::from_value(v["streams"].clone()).ok()?;
            (ids.contains(&stream) && ids.len() >= 2).then_some(ids)
        },
    )
    .await;
    assert!(
        streams.iter().all(
            |s| s.starts_with("prometheus_tsdb_head_series{") || s.starts_with("anomalyd_readings_ingested_total{")
        ),
        "only the relabelled series were sent: {streams:?}"
    );
    let info: Value = c
        .get(format!("{base}/v1/streams/{}", percent_encode(&stream)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(info["readings_seen"].as_u64().unwrap() >= 1, "{info}");
    // The stream's state comes back into Prometheus with the original series'
    // labels: at first how many readings it still needs (no score until it
    // judges), then 0 beside its score.
    let query = format!(
        "http://127.0.0.1:{prom_port}/api/v1/query?query=anomalyd_stream_readings_needed%7Bfor%3D%22prometheus_tsdb_head_series%22%7D"
    );
    let result = eventually(
        "the stream's warm-up to be queryable in Prometheus",
        Duration::from_secs(60),
        async || {
            let v: Value = c.get(&query).send().await.ok()?.json().await.ok()?;
            let r = v["data"]["result"].as_array()?.first()?.clone();
            Some(r)
        },
    )
    .await;
    assert_eq!(result["metric"]["job"], "prometheus", "{result}");
    assert_eq!(result["metric"]["instance"], format!("127.0.0.1:{prom_port}"));
    let needed: f64 = result["value"][1].as_str().unwrap().parse().unwrap();
    assert!((0.0..=8.0).contains(&needed), "{result}");
    // The expected value sits beside the series for a Grafana panel.
    let expected = format!(
        "http://127.0.0.1:{prom_port}/api/v1/query?query=anomalyd_stream_expected%7Bfor%3D%22prometheus_tsdb_head_series%22%7D"
    );
    let v: Value = c.get(&expected).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["data"]["result"].as_array().map(Vec::len), Some(1), "{v}");
    // Every PromQL expression of the Grafana dashboard returns data from it.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/grafana/dashboards/anomalyd.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().replace("$metric", ".*"))
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    for expr in &exprs {
        let q = format!(
            "http://127.0.0.1:{prom_port}/api/v1/query?query={}",
            percent_encode(expr)
        );
        eventually(&format!("data for {expr}"), Duration::from_secs(60), async || {
            let v: Value = c.get(&q).send().await.ok()?.json().await.ok()?;
            assert_eq!(v["status"], "success", "{expr}: {v}");
            (!v["data"]["result"].as_array()?.is_empty()).then_some(())
        })
        .await;
    }
    // Resent samples (Prometheus retries whole requests) were taken once.
    let m = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("anomalyd_remote_write_samples_total{outcome=\"scored\"}"),
        "counted"
    );
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn write_body(samples: &[(f64, i64)]) -> Vec<u8> {
    use anomalyd::protocol::prompb;
    use prost::Message as _;
    let req = prompb::WriteRequest {
        timeseries: vec![prompb::TimeSeries {
            labels: vec![
                prompb::Label {
                    name: "__name__".into(),
                    value: "temp".into(),
                },
                prompb::Label {
                    name: "room".into(),
                    value: "a".into(),
                },
            ],
            samples: samples
                .iter()
                .map(|&(value, timestamp)| prompb::Sample { value, timestamp })
                .collect(),
        }],
    };
    snap::raw::Encoder::new().compress_vec(&req.encode_to_vec()).unwrap()
}

/// The receiver's contract with Prometheus' retry logic, without a Prometheus:
/// 204 once taken, a resent request taken once, 400 (dropped) for garbage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_write_takes_a_resend_once_and_refuses_garbage_with_400() {
    let registry = Registry::open(RegistryConfig::default(), Arc::new(Metrics::new())).unwrap();
    let server = TestServer::start(registry, ServerConfig::default()).await;
    let addr = server.addr;
    let c = reqwest::Client::new();
    let url = format!("http://{addr}/api/v1/write");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let body = write_body(&[
        (20.0, now_ms - 2000),
        (20.5, now_ms - 1000),
        (f64::from_bits(0x7ff0_0000_0000_0002), now_ms),
    ]);
    for _ in 0..2 {
        let r = c
            .post(&url)
            .header("content-encoding", "snappy")
            .header("content-type", "application/x-protobuf")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    let info: Value = c
        .get(format!(
            "http://{addr}/v1/streams/{}",
            percent_encode(r#"temp{room="a"}"#)
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        info["readings_seen"], 2,
        "two samples, the resend not scored again, the stale marker skipped"
    );
    let m = c
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("anomalyd_remote_write_samples_total{outcome=\"resent\"} 2"),
        "{m}"
    );
    assert!(m.contains("anomalyd_remote_write_samples_total{outcome=\"stale\"} 2"));
    for garbage in [
        b"definitely not snappy".to_vec(),
        snap::raw::Encoder::new().compress_vec(b"\xff\xff").unwrap(),
    ] {
        let r = c.post(&url).body(garbage).send().await.unwrap();
        assert_eq!(r.status(), 400);
    }
    let scores = c
        .get(format!("http://{addr}/metrics/scores"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        scores.contains(r#"anomalyd_stream_value{for="temp",room="a"} 20.5"#),
        "{scores}"
    );
    server.stop().await;
}

/// The Prometheus and Alertmanager files in deploy/ are valid for the real tools.
#[test]
fn deploy_configs_pass_promtool_and_amtool() {
    let Some(_) = peer("promtool") else { return };
    let deploy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy");
    for args in [
        vec!["check", "config", "prometheus/prometheus.yml"],
        vec!["check", "rules", "prometheus/rules.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(&deploy)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let Some(_) = peer("amtool") else { return };
    let out = Command::new("amtool")
        .args(["check-config", "alertmanager/alertmanager.yml"])
        .current_dir(&deploy)
        .output()
        .unwrap();
    assert!(out.status.success(), "amtool: {}", String::from_utf8_lossy(&out.stdout));
}
