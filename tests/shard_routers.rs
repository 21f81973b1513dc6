//! The owner function agrees with the routers in front, computed by the real
//! ones (Debian's packages, which `.ci/run` installs): Prometheus' `hashmod`
//! relabeling for remote_write series, and nginx's `split_clients` for stream
//! ids, for every stream tried.

use std::time::Duration;

use serde_json::Value;

mod common;
use common::{eventually, free_port, get_text, peer, temp_dir};

use anomalyd::shard::{DEFAULT_LABELS, ShardFunction};

const SHARDS: u32 = 16;

fn function() -> ShardFunction {
    ShardFunction::new(SHARDS, DEFAULT_LABELS.map(String::from).to_vec()).unwrap()
}

/// Stream ids as clients name them (unreserved characters: nginx hashes the id
/// as it stands in the URL).
fn ids() -> Vec<String> {
    let mut out: Vec<String> = (0..1000).map(|i| format!("host-{i:04}.cpu")).collect();
    out.extend(
        [
            "a",
            "",
            "x_y~z",
            "Z",
            "0",
            "web-1",
            "a-much-longer-stream-name-than-the-others.p99_latency",
        ]
        .map(String::from),
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_split_clients_puts_every_stream_id_where_anomalyd_does() {
    let parts: String = (0..SHARDS - 1)
        .map(|s| format!("{}% {s}; ", 100.0 / f64::from(SHARDS)))
        .collect();
    let Some((_nginx, port)) = common::nginx("shard-nginx", |port| {
        format!(
            r#"  split_clients "${{arg_id}}" $shard {{ {parts}* {last}; }}
  server {{
    listen 127.0.0.1:{port};
    location = /shard {{ return 200 "$shard"; }}
  }}"#,
            last = SHARDS - 1
        )
    }) else {
        return;
    };
    let c = reqwest::Client::new();
    let url = |id: &str| format!("http://127.0.0.1:{port}/shard?id={id}");
    eventually("nginx", Duration::from_secs(10), async || {
        c.get(url("a")).send().await.ok().map(|_| ())
    })
    .await;
    let f = function();
    let mut counts = vec![0; SHARDS as usize];
    for id in ids() {
        let theirs: u32 = get_text(&c, &url(&id)).await.parse().unwrap();
        assert_eq!(theirs, f.of_id(&id), "stream {id:?}");
        counts[theirs as usize] += 1;
    }
    assert!(counts.iter().all(|&n| n > 0), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_hashmod_puts_every_series_where_anomalyd_does() {
    use axum::routing::get;
    let Some(prometheus) = peer("prometheus") else { return };
    // An exporter with 300 series whose `instance` and `job` it names itself.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let exporter = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route(
        "/metrics",
        get(|| async {
            let mut text = String::from("# TYPE demo gauge\n");
            for i in 0..300 {
                let job = ["api", "db", "cache"][i % 3];
                text.push_str(&format!(
                    "demo{{instance=\"10.0.{}.{}:9100\",job=\"{job}\"}} 1\n",
                    i / 7,
                    i % 7
                ));
            }
            text
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = temp_dir("shard-prom");
    let prom_port = free_port();
    let config = format!(
        r#"global: {{scrape_interval: 1s}}
scrape_configs:
  - job_name: demo
    honor_labels: true
    static_configs: [{{targets: ["127.0.0.1:{exporter}"]}}]
    metric_relabel_configs:
      - {{source_labels: [__name__, instance, job], modulus: {SHARDS}, target_label: shard, action: hashmod}}
"#
    );
    let _prom = common::prometheus(prometheus, &dir, prom_port, &config);
    let c = reqwest::Client::new();
    let series = eventually("300 series with their shard", Duration::from_secs(60), async || {
        let url = format!("http://127.0.0.1:{prom_port}/api/v1/series?match%5B%5D=demo");
        let v: Value = c.get(url).send().await.ok()?.json().await.ok()?;
        let s = v["data"].as_array()?.clone();
        (s.len() == 300).then_some(s)
    })
    .await;
    let f = function();
    let mut counts = vec![0; SHARDS as usize];
    for s in series {
        let theirs: u32 = s["shard"].as_str().unwrap().parse().unwrap();
        let labels: Vec<(String, String)> = s
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "shard")
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        assert_eq!(theirs, f.of_labels(&labels), "series {s}");
        counts[theirs as usize] += 1;
    }
    assert!(counts.iter().all(|&n| n > 0), "{counts:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_never_creates_a_stream_of_a_shard_it_does_not_own() {
    use anomalyd::metrics::Metrics;
    use anomalyd::registry::{Ownership, Registry, RegistryConfig};
    use prost::Message as _;
    let f = function();
    let mine: Vec<u32> = (0..8).collect();
    let registry = Registry::open(
        RegistryConfig {
            shards: Some(Ownership::new(f.clone(), &mine)),
            ..Default::default()
        },
        std::sync::Arc::new(Metrics::new()),
    )
    .unwrap();
    let server = common::TestServer::start(registry, Default::default()).await;
    let base = format!("http://{}", server.addr);
    let c = reqwest::Client::new();
    let ids = ids();
    let owned = ids.iter().find(|id| f.of_id(id) < 8 && !id.is_empty()).unwrap();
    let foreign = ids.iter().find(|id| f.of_id(id) >= 8 && !id.is_empty()).unwrap();
    let body = serde_json::json!({"readings": [{"timestamp": 1_700_000_000, "value": 1.0}]});

    let post = |id: &str| c.post(format!("{base}/v1/streams/{id}/readings")).json(&body).send();
    assert_eq!(post(owned).await.unwrap().status(), 200);
    let refused = post(foreign).await.unwrap();
    assert_eq!(refused.status(), 421);
    let err: Value = refused.json().await.unwrap();
    assert_eq!(err["error"]["code"], "misdirected");
    let shard = f.of_id(foreign);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("shard {shard}")),
        "{err}"
    );
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(
        status(c.get(format!("{base}/v1/streams/{foreign}")).send().await.unwrap()),
        421
    );
    assert_eq!(
        status(c.put(format!("{base}/v1/streams/{foreign}")).send().await.unwrap()),
        421
    );
    let unknown_mine = ids
        .iter()
        .find(|id| f.of_id(id) < 8 && *id != owned && !id.is_empty())
        .unwrap();
    assert_eq!(
        status(c.get(format!("{base}/v1/streams/{unknown_mine}")).send().await.unwrap()),
        404
    );

    // remote_write: this node's series are taken, another node's left out (204).
    let series = |job: &str| anomalyd::protocol::prompb::TimeSeries {
        labels: [("__name__", "up"), ("instance", "h:9100"), ("job", job)]
            .map(|(name, value)| anomalyd::protocol::prompb::Label {
                name: name.into(),
                value: value.into(),
            })
            .to_vec(),
        samples: vec![anomalyd::protocol::prompb::Sample {
            value: 1.0,
            timestamp: 1_700_000_000_000,
        }],
    };
    let labels = |job: &str| {
        vec![
            ("__name__".to_string(), "up".to_string()),
            ("instance".to_string(), "h:9100".to_string()),
            ("job".to_string(), job.to_string()),
        ]
    };
    let jobs: Vec<String> = (0..40).map(|i| format!("job-{i}")).collect();
    let req = anomalyd::protocol::prompb::WriteRequest {
        timeseries: jobs.iter().map(|j| series(j)).collect(),
    };
    let body = snap::raw::Encoder::new().compress_vec(&req.encode_to_vec()).unwrap();
    let r = c.post(format!("{base}/api/v1/write")).body(body).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let (_, page) = common::get_json(&c, &format!("{base}/v1/streams?q=up%7B&limit=100")).await;
    let held: Vec<&str> = page["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let expected = jobs.iter().filter(|j| f.of_labels(&labels(j)) < 8).count();
    assert_eq!(held.len(), expected);
    assert!(held.iter().all(|id| f.of_id(id) < 8));
    let m = get_text(&c, &format!("{base}/metrics")).await;
    let line = format!(
        "anomalyd_remote_write_samples_total{{outcome=\"not_owned\"}} {}",
        40 - expected
    );
    assert!(m.contains(&line), "{line}");
    let owned_shards = (0..SHARDS)
        .filter(|s| m.contains(&format!("anomalyd_shard_owned{{shard=\"{s}\"}} 1")))
        .count();
    assert_eq!(owned_shards, 8, "this node's shards in /metrics");
    // Each score series carries its stream's shard.
    let scores = get_text(&c, &format!("{base}/metrics/scores")).await;
    let want = format!("stream=\"{owned}\",anomalyd_shard=\"{}\"}}", f.of_id(owned));
    assert!(scores.contains(&want), "{want} in {scores}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_another_nodes_stream_is_passed_on_to_it_once() {
    use anomalyd::metrics::Metrics;
    use anomalyd::registry::{Ownership, Registry, RegistryConfig};
    use anomalyd::server::ServerConfig;
    use anomalyd::server::forward::NodeMap;
    let f = function();
    let ports = [free_port(), free_port()];
    let urls: Vec<String> = ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
    let mut nodes = Vec::new();
    for (i, &port) in ports.iter().enumerate() {
        let shards = anomalyd::shard::of_node(i as u32, 2, SHARDS);
        let registry = Registry::open(
            RegistryConfig {
                shards: Some(Ownership::new(f.clone(), &shards)),
                ..Default::default()
            },
            std::sync::Arc::new(Metrics::new()),
        )
        .unwrap();
        let config = ServerConfig {
            nodes: NodeMap { urls: urls.clone() },
            ..Default::default()
        };
        nodes.push(common::TestServer::start_on(port, registry, config).await);
    }
    let c = reqwest::Client::new();
    let on_b = ids().into_iter().find(|id| f.of_id(id) >= 8 && !id.is_empty()).unwrap();
    let body = serde_json::json!({"readings": [{"timestamp": 1_700_000_000, "value": 2.5}]});
    // Posted to node A, created and scored on node B, its owner.
    let r = c
        .post(format!("{}/v1/streams/{on_b}/readings", urls[0]))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, on_a) = common::get_json(&c, &format!("{}/v1/streams?limit=10", urls[0])).await;
    let (_, at_b) = common::get_json(&c, &format!("{}/v1/streams?limit=10", urls[1])).await;
    assert_eq!(
        (on_a["total"].as_u64(), at_b["streams"][0].as_str()),
        (Some(0), Some(on_b.as_str()))
    );
    // Read through either node.
    for url in &urls {
        let (status, info) = common::get_json(&c, &format!("{url}/v1/streams/{on_b}")).await;
        assert_eq!((status, info["readings_seen"].as_u64()), (200, Some(1)), "{url}");
    }
    let m = get_text(&c, &format!("{}/metrics", urls[0])).await;
    assert!(m.contains("anomalyd_requests_forwarded_total 2"), "counted");
    // Passed on once at most: a request already passed on is answered here.
    let again = c
        .get(format!("{}/v1/streams/{on_b}", urls[0]))
        .header(anomalyd::server::forward::FORWARDED, "1")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 421);
    for n in nodes {
        n.stop().await;
    }
}
