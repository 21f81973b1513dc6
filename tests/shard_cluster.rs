//! Three nodes of 16 shards behind the real routers (Debian's nginx and
//! Prometheus, which `.ci/run` installs), configured by `anomalyd shards config`:
//! 1,000 JSON streams posted through nginx and 1,000 series remote-written by
//! Prometheus each live on exactly one node, the one the owner function names,
//! and no reading is misrouted.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

mod common;
use common::{Killed, TestServer, eventually, free_port, get_json, get_text, peer, temp_dir};

use anomalyd::metrics::Metrics;
use anomalyd::registry::{Ownership, Registry, RegistryConfig};
use anomalyd::shard::{self, DEFAULT_LABELS, ShardFunction};

const SHARDS: u32 = 16;
const NODES: u32 = 3;
const STREAMS: usize = 1000;

fn function() -> ShardFunction {
    ShardFunction::new(SHARDS, DEFAULT_LABELS.map(String::from).to_vec()).unwrap()
}

/// Every stream id a node holds.
async fn streams_of(c: &reqwest::Client, base: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let url = format!(
            "{base}/v1/streams?limit=1000&after={}",
            anomalyd::protocol::percent_encode(&after)
        );
        let (_, page) = get_json(c, &url).await;
        let ids: Vec<String> = page["streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().into())
            .collect();
        out.extend(ids);
        match page["next_after"].as_str() {
            Some(next) => after = next.to_string(),
            None => return out,
        }
    }
}

fn metric(text: &str, line: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// nginx in front of the nodes, with the config `shards config nginx` writes.
fn nginx(nodes: &[String]) -> Option<(Killed, u16)> {
    common::nginx("cluster-nginx", |port| {
        shard::nginx_conf(&function(), nodes, &format!("127.0.0.1:{port}"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_behind_nginx_and_prometheus_hold_every_stream_exactly_once() {
    let (Some(_), Some(prometheus)) = (peer("nginx"), peer("prometheus")) else {
        return;
    };
    let f = function();
    let mut servers = Vec::new();
    for i in 0..NODES {
        let registry = Registry::open(
            RegistryConfig {
                shards: Some(Ownership::new(f.clone(), &shard::of_node(i, NODES, SHARDS))),
                ..Default::default()
            },
            Arc::new(Metrics::new()),
        )
        .unwrap();
        servers.push(TestServer::start(registry, Default::default()).await);
    }
    let addrs: Vec<String> = servers.iter().map(|s| s.addr.to_string()).collect();
    let bases: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();
    let (_nginx, port) = nginx(&addrs).unwrap();
    let c = reqwest::Client::new();

    // 1,000 JSON streams through nginx, eight at a time.
    let body = json!({"readings": [{"timestamp": 1_700_000_000, "value": 1.0}]});
    let ids: Vec<String> = (0..STREAMS).map(|i| format!("svc-{i:04}.latency")).collect();
    for chunk in ids.chunks(8) {
        let posts = chunk.iter().map(|id| {
            c.post(format!("http://127.0.0.1:{port}/v1/streams/{id}/readings"))
                .json(&body)
                .send()
        });
        for r in futures::future::join_all(posts).await {
            assert_eq!(r.unwrap().status(), 200, "routed to the owner");
        }
    }

    // 1,000 series remote-written by Prometheus, one block per node.
    let exporter = common::load_exporter(STREAMS, 1, &["api", "db", "cache", "queue"]).await;
    let dir = temp_dir("cluster-prom");
    let urls: Vec<String> = bases.clone();
    let config = format!(
        "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: load\n    honor_labels: true\n    \
         static_configs: [{{targets: [\"127.0.0.1:{exporter}\"]}}]\n{}",
        shard::prometheus_remote_write(&f, &urls).replace(
            "    write_relabel_configs:",
            "    queue_config: {batch_send_deadline: 1s}\n    write_relabel_configs:"
        )
    );
    let prom_port = free_port();
    let _prom = common::prometheus(prometheus, &dir, prom_port, &config);
    let held = eventually("every series on some node", Duration::from_secs(60), async || {
        let mut all = Vec::new();
        for base in &bases {
            all.push(streams_of(&c, base).await);
        }
        // Prometheus' own series of the scrape (`up`, ...) come too.
        let series = all.iter().flatten().filter(|id| id.starts_with("load{")).count();
        (series == STREAMS).then_some(all)
    })
    .await;

    // Exactly once, on the node that owns it, nothing misrouted.
    let mut union = BTreeSet::new();
    for (node, streams) in held.iter().enumerate() {
        let mine: BTreeSet<u32> = shard::of_node(node as u32, NODES, SHARDS).into_iter().collect();
        for id in streams {
            assert!(mine.contains(&f.of_id(id)), "{id} on node {node}");
            assert!(union.insert(id.clone()), "{id} on two nodes");
        }
        let m = get_text(&c, &format!("{}/metrics", bases[node])).await;
        assert_eq!(
            metric(&m, "anomalyd_remote_write_samples_total{outcome=\"not_owned\"}"),
            0.0
        );
        assert_eq!(
            metric(&m, "anomalyd_readings_rejected_total{reason=\"not_owned\"}"),
            0.0
        );
    }
    assert!(ids.iter().all(|id| union.contains(id)));
    let sizes: Vec<usize> = held.iter().map(Vec::len).collect();
    let (most, least) = (*sizes.iter().max().unwrap(), *sizes.iter().min().unwrap());
    assert!(most as f64 <= 1.3 * least as f64, "balance: {sizes:?}");
    for s in servers {
        s.stop().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
