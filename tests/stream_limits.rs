//! Limits that never starve the streams a node already has: a remote_write batch
//! with new series past `--max-streams` is taken for the existing streams (and
//! the new ones that fit), the rest counted, and answered 204; streams whose
//! series ended are retired, so series churn (a new series per pod restart)
//! does not fill the node. Also with a real Prometheus (Debian's package).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use serde_json::Value;

mod common;
use common::{TestServer, eventually, free_port, get_json, get_text, peer, temp_dir};

use anomalyd::metrics::Metrics;
use anomalyd::protocol::{percent_encode, prompb};
use anomalyd::registry::{Registry, RegistryConfig};
use anomalyd::server::ServerConfig;

const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

/// A remote_write body: per series name, its (value, ms) samples.
fn body(series: &[(String, Vec<(f64, i64)>)]) -> Vec<u8> {
    let req = prompb::WriteRequest {
        timeseries: series
            .iter()
            .map(|(name, samples)| prompb::TimeSeries {
                labels: vec![prompb::Label {
                    name: "__name__".into(),
                    value: name.clone(),
                }],
                samples: samples
                    .iter()
                    .map(|&(value, timestamp)| prompb::Sample { value, timestamp })
                    .collect(),
            })
            .collect(),
    };
    snap::raw::Encoder::new().compress_vec(&req.encode_to_vec()).unwrap()
}

async fn write(c: &reqwest::Client, base: &str, series: &[(String, Vec<(f64, i64)>)]) -> u16 {
    let r = c
        .post(format!("{base}/api/v1/write"))
        .header("content-encoding", "snappy")
        .body(body(series))
        .send()
        .await
        .unwrap();
    r.status().as_u16()
}

async fn seen(c: &reqwest::Client, base: &str, id: &str) -> Option<u64> {
    let (status, v) = get_json(c, &format!("{base}/v1/streams/{}", percent_encode(id))).await;
    (status == 200).then(|| v["readings_seen"].as_u64().unwrap())
}

fn metric(text: &str, line: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_stream_limit_existing_series_keep_every_sample_and_ended_ones_make_room() {
    let registry = Registry::open(
        RegistryConfig {
            max_streams: 10,
            retire_stale_after: Some(Duration::from_secs(60)),
            ..Default::default()
        },
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let server = TestServer::start(registry.clone(), ServerConfig::default()).await;
    let base = format!("http://{}", server.addr);
    let c = reqwest::Client::new();
    let t0 = now_ms() - 60_000;
    let old: Vec<String> = (0..10).map(|i| format!("old_{i}")).collect();
    let batch = |names: &[String], k: i64| -> Vec<(String, Vec<(f64, i64)>)> {
        names
            .iter()
            .map(|n| (n.clone(), vec![(k as f64, t0 + k * 1000)]))
            .collect()
    };

    // Ten series fill the node; each next batch brings one new series more.
    assert_eq!(write(&c, &base, &batch(&old, 0)).await, 204);
    for k in 1..3 {
        let mut names = old.clone();
        names.push(format!("new_{k}"));
        assert_eq!(write(&c, &base, &batch(&names, k)).await, 204, "taken what fits");
    }
    for n in &old {
        assert_eq!(
            seen(&c, &base, &format!("{n}{{}}")).await,
            Some(3),
            "{n} kept every sample"
        );
    }
    assert_eq!(seen(&c, &base, "new_1{}").await, None);
    let m = get_text(&c, &format!("{base}/metrics")).await;
    assert_eq!(
        metric(&m, "anomalyd_remote_write_samples_total{outcome=\"stream_limit\"}"),
        2.0
    );

    // Five series end (Prometheus' staleness marker); once they are due, they are
    // retired and five new series fit, while the other five keep every sample.
    let mut ending = batch(&old, 3);
    for (_, samples) in &mut ending[..5] {
        samples[0].0 = f64::from_bits(STALE_NAN);
    }
    assert_eq!(write(&c, &base, &ending).await, 204);
    let soon = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!(registry.retire(soon + 30).unwrap().is_empty(), "not before their delay");
    let retired = registry.retire(soon + 61).unwrap();
    assert_eq!(retired.len(), 5, "{retired:?}");
    assert!(
        retired
            .iter()
            .all(|(id, why)| id < &"old_5{}".to_string() && *why == "stale")
    );
    let mut names: Vec<String> = old[5..].to_vec();
    names.extend((0..5).map(|i| format!("next_{i}")));
    assert_eq!(write(&c, &base, &batch(&names, 4)).await, 204);
    for n in &names {
        let want = if n.starts_with("old") { 5 } else { 1 };
        assert_eq!(seen(&c, &base, &format!("{n}{{}}")).await, Some(want), "{n}");
    }
    let m = get_text(&c, &format!("{base}/metrics")).await;
    assert_eq!(metric(&m, "anomalyd_streams_retired_total{reason=\"stale\"}"), 5.0);
    server.stop().await;
}

/// An exporter whose pods are replaced every `GENERATION` (a rollout): six
/// `pod_load{pod=...}` series per generation, and one `node_load` that lives on.
async fn churning_exporter(start: std::time::Instant) -> u16 {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route(
        "/metrics",
        get(move || async move {
            let g = start.elapsed().as_secs() / GENERATION;
            let mut text = String::from("# TYPE node_load gauge\nnode_load 1.5\n# TYPE pod_load gauge\n");
            for i in 0..6 {
                text.push_str(&format!("pod_load{{pod=\"g{g}-{i}\"}} {}\n", 2.0 + i as f64));
            }
            text
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

const GENERATION: u64 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_churn_under_a_real_prometheus_never_costs_a_live_series_a_sample() {
    let Some(prometheus) = peer("prometheus") else { return };
    let registry = Registry::open(
        RegistryConfig {
            max_streams: 10,
            retire_stale_after: Some(Duration::from_secs(1)),
            ..Default::default()
        },
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let server = TestServer::start(registry, ServerConfig::default()).await;
    let base = format!("http://{}", server.addr);
    let exporter = churning_exporter(std::time::Instant::now()).await;
    let dir = temp_dir("limits-prom");
    let prom_port = free_port();
    let config = format!(
        r#"global: {{scrape_interval: 1s}}
scrape_configs:
  - job_name: churn
    static_configs: [{{targets: ["127.0.0.1:{exporter}"]}}]
remote_write:
  - url: {base}/api/v1/write
    queue_config: {{batch_send_deadline: 1s, max_samples_per_send: 100}}
    write_relabel_configs:
      - {{source_labels: [__name__], regex: "node_load|pod_load", action: keep}}
"#
    );
    let _prom = common::prometheus(prometheus, &dir, prom_port, &config);
    let c = reqwest::Client::new();
    // Three rollouts: 6 + 6 + 6 + 6 pods and a node series through a node of 10.
    let latest = eventually("the fourth generation's pods", Duration::from_secs(60), async || {
        let (_, page) = get_json(&c, &format!("{base}/v1/streams?q=pod=%22g3-&limit=100")).await;
        (page["total"].as_u64()? == 6).then_some(page)
    })
    .await;
    assert_eq!(latest["streams"].as_array().unwrap().len(), 6);
    let m = get_text(&c, &format!("{base}/metrics")).await;
    assert!(
        metric(&m, "anomalyd_streams_retired_total{reason=\"stale\"}") >= 12.0,
        "{m}"
    );
    // The node series lives through it all with every sample Prometheus has.
    let node = r#"node_load{instance="127.0.0.1:EXPORTER",job="churn"}"#.replace("EXPORTER", &exporter.to_string());
    let query = format!("http://127.0.0.1:{prom_port}/api/v1/query?query=count_over_time(node_load%5B10m%5D)");
    eventually(
        "every node_load sample Prometheus has, in anomalyd",
        Duration::from_secs(20),
        async || {
            let (_, v): (u16, Value) = get_json(&c, &query).await;
            let in_prometheus: u64 = v["data"]["result"][0]["value"][1].as_str()?.parse().ok()?;
            let in_anomalyd = seen(&c, &base, &node).await?;
            (in_anomalyd >= in_prometheus && in_prometheus >= 12).then_some(())
        },
    )
    .await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
