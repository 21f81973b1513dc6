//! History from a real Prometheus (Debian's `prometheus` and `promtool`, which
//! `.ci/run` installs): a series' past sits in Prometheus' TSDB (written with
//! `promtool tsdb create-blocks-from openmetrics`); when Prometheus starts
//! scraping the series (from a tiny exporter here) and remote-writing it, its new
//! stream learns that past as history and has a model before its 10th live
//! reading. With Prometheus stopped, ingest (from another sender) goes on and the
//! backfill is retried until Prometheus is back.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use serde_json::Value;

mod common;
use common::{Killed, TestServer, eventually, free_port, peer, temp_dir};

use anomalyd::metrics::Metrics;
use anomalyd::protocol::{percent_encode, prompb};
use anomalyd::registry::{Registry, RegistryConfig};
use anomalyd::server::ServerConfig;
use anomalyd::server::backfill::BackfillConfig;

/// The stored past's step, seconds: the scrape interval.
const STEP: i64 = 1;
const PAST: i64 = 2_000;

fn value(host: &str, t: i64) -> f64 {
    let phase = if host == "a" { 0.0 } else { 1.0 };
    50.0 + 10.0 * (t as f64 / 60.0 + phase).sin() + ((t * 7919) % 13) as f64 / 13.0
}

/// The label set of host `h`'s series, as a scrape of the exporter gives it.
fn series(h: &str, exporter: u16) -> String {
    format!(r#"demo_load{{host="{h}",instance="127.0.0.1:{exporter}",job="demo"}}"#)
}

/// Writes `PAST` samples of each host's series, `STEP` apart and ending at `end`,
/// into a TSDB at `dir/tsdb`.
fn stored_history(dir: &Path, end: i64, exporter: u16) {
    let mut om = String::from("# TYPE demo_load gauge\n");
    for host in ["a", "b"] {
        for i in 0..PAST {
            let t = end - (PAST - 1 - i) * STEP;
            om.push_str(&format!("{} {} {t}\n", series(host, exporter), value(host, t)));
        }
    }
    om.push_str("# EOF\n");
    std::fs::write(dir.join("history.om"), om).unwrap();
    let out = Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(dir.join("history.om"))
        .arg(dir.join("tsdb"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Prometheus on `port` over `dir/tsdb`; with `scrape`, it scrapes the exporter
/// every second and remote-writes host a's series to anomalyd.
fn start_prometheus(dir: &Path, port: u16, scrape: Option<(u16, std::net::SocketAddr)>) -> Killed {
    let config = match scrape {
        Some((exporter, anomalyd)) => format!(
            r#"global: {{scrape_interval: 1s}}
scrape_configs:
  - job_name: demo
    static_configs: [{{targets: ["127.0.0.1:{exporter}"]}}]
remote_write:
  - url: http://{anomalyd}/api/v1/write
    queue_config: {{batch_send_deadline: 1s, max_samples_per_send: 100}}
    write_relabel_configs:
      - {{source_labels: [__name__, host], regex: "demo_load;a", action: keep}}
"#
        ),
        None => "global: {scrape_interval: 15s}\n".to_string(),
    };
    common::prometheus("prometheus", dir, port, &config)
}

/// A tiny exporter: host a's value now, in Prometheus' text format.
async fn exporter() -> u16 {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route(
        "/metrics",
        get(|| async {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
            format!("# TYPE demo_load gauge\ndemo_load{{host=\"a\"}} {}\n", value("a", now))
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// One sample of host `host`'s series, as another sender would remote-write it.
fn write_body(host: &str, t: i64, exporter: u16) -> Vec<u8> {
    let label = |name: &str, value: &str| prompb::Label {
        name: name.into(),
        value: value.into(),
    };
    let instance = format!("127.0.0.1:{exporter}");
    let req = prompb::WriteRequest {
        timeseries: vec![prompb::TimeSeries {
            labels: vec![
                label("__name__", "demo_load"),
                label("host", host),
                label("instance", &instance),
                label("job", "demo"),
            ],
            samples: vec![prompb::Sample {
                value: value(host, t),
                timestamp: t * 1000,
            }],
        }],
    };
    snap::raw::Encoder::new().compress_vec(&req.encode_to_vec()).unwrap()
}

async fn remote_write(c: &reqwest::Client, base: &str, body: Vec<u8>) {
    let r = c
        .post(format!("{base}/api/v1/write"))
        .header("content-encoding", "snappy")
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "ingest goes on");
}

async fn info(c: &reqwest::Client, base: &str, id: &str) -> Value {
    let id = percent_encode(id);
    c.get(format!("{base}/v1/streams/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn metric(c: &reqwest::Client, base: &str, line: &str) -> f64 {
    let text = common::get_text(c, &format!("{base}/metrics")).await;
    text.lines()
        .find_map(|l| l.strip_prefix(line).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_series_learns_its_past_from_prometheus_and_a_prometheus_down_is_retried() {
    if peer("prometheus").is_none() || peer("promtool").is_none() {
        return;
    }
    let dir = temp_dir("backfill");
    let exporter = exporter().await;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let end = now - 5;
    stored_history(&dir, end, exporter);
    let registry = Registry::open(RegistryConfig::default(), Arc::new(Metrics::new())).unwrap();
    let prom_port = free_port();
    let config = ServerConfig {
        backfill: BackfillConfig {
            url: Some(format!("http://127.0.0.1:{prom_port}")),
            rate: 100.0,
            timeout: Duration::from_secs(2),
            ..Default::default()
        },
        ..Default::default()
    };
    let server = TestServer::start(registry, config).await;
    let base = format!("http://{}", server.addr);
    let c = reqwest::Client::new();

    // Prometheus scrapes host a every second and remote-writes it: its stream
    // learns the stored past and has a model long before its 384th live reading.
    let prom = start_prometheus(&dir, prom_port, Some((exporter, server.addr)));
    let started = Instant::now();
    let a = series("a", exporter);
    let (live, i) = eventually("host a's model", Duration::from_secs(60), async || {
        let i = info(&c, &base, &a).await;
        let seen = i["readings_seen"].as_u64()?;
        assert!(
            seen < 10 || seen > PAST as u64,
            "no past learnt after {seen} live readings: {i}"
        );
        let live = seen.saturating_sub(PAST as u64);
        (i["model"]["version"].as_u64().unwrap_or(0) >= 1).then_some((live, i))
    })
    .await;
    eprintln!(
        "host a: a model after {live} live readings, {:.1} s after Prometheus started",
        started.elapsed().as_secs_f64()
    );
    // Without the past, the first model would come after `first_after` (384) live
    // readings; with it, as soon as a job has trained, which on a loaded machine
    // running a debug build takes more than the 10 s it usually does.
    assert!((1..64).contains(&live), "a model after {live} live readings: {i}");
    assert_eq!(i["readings_needed"], 0, "judging already");
    let learnt = metric(&c, &base, "anomalyd_backfill_points_total").await;
    assert!(learnt >= PAST as f64 - 10.0, "{learnt} past readings learnt");
    let (_, recent) = common::get_json(&c, &format!("{base}/v1/streams/{}/recent", percent_encode(&a))).await;
    assert_eq!(recent["points"][0]["history"], true, "the past shows as history");

    // Prometheus down: host b's first readings (from another sender) are taken
    // all the same, the backfill fails and is retried; once Prometheus is back,
    // b learns its past.
    drop(prom);
    let b = series("b", exporter);
    for k in 1..=3 {
        remote_write(&c, &base, write_body("b", end + k * STEP, exporter)).await;
    }
    eventually("a failed backfill", Duration::from_secs(20), async || {
        (metric(&c, &base, "anomalyd_backfill_jobs_total{outcome=\"failed\"}").await >= 1.0).then_some(())
    })
    .await;
    assert_eq!(info(&c, &base, &b).await["readings_seen"], 3);
    let _prom = start_prometheus(&dir, prom_port, None);
    let back = eventually("host b's past after the retry", Duration::from_secs(60), async || {
        let i = info(&c, &base, &b).await;
        (i["model"]["version"].as_u64().unwrap_or(0) >= 1).then_some(i)
    })
    .await;
    assert_eq!(back["readings_seen"], PAST + 3, "its past, then its own three readings");
    assert_eq!(
        metric(&c, &base, "anomalyd_backfill_jobs_total{outcome=\"learnt\"}").await,
        2.0
    );
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
