//! anomalyd beside two real Alertmanagers (Debian's `prometheus-alertmanager`,
//! which `.ci/run` installs): an incident opens an alert in both, carrying the
//! stream and its annotations, and its resolution ends it in both.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

mod common;
use common::{Killed, TestServer, eventually};

use anomalyd::detector::DetectorConfig;
use anomalyd::metrics::Metrics;
use anomalyd::registry::{Registry, RegistryConfig};
use anomalyd::server::ServerConfig;
use anomalyd::server::alertmanager::AlertmanagerConfig;

/// [`eventually`] with a minute to spare.
async fn eventually_60s<T>(what: &str, f: impl AsyncFnMut() -> Option<T>) -> T {
    eventually(what, Duration::from_secs(60), f).await
}

fn seasonal(t: usize) -> f64 {
    50.0 + 10.0 * (t as f64 / 8.0).sin() + ((t * 7919) % 13) as f64 / 13.0
}

fn readings(range: std::ops::Range<usize>, shift: f64) -> Value {
    let rs: Vec<Value> = range
        .map(|t| json!({"timestamp": 1_700_000_000 + t as i64 * 60, "value": seasonal(t) + shift}))
        .collect();
    json!({ "readings": rs })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_open_and_resolve_in_two_alertmanagers() {
    let dir: PathBuf = std::env::temp_dir().join(format!("anomalyd-am-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let Some(ams) = (0..2)
        .map(|i| common::alertmanager(&dir, &format!("am{i}")).map(|(k, p)| (p, k)))
        .collect::<Option<Vec<(u16, Killed)>>>()
    else {
        return;
    };
    let mut det = DetectorConfig::default();
    det.model.ensemble = 1;
    let registry = Registry::open(
        RegistryConfig {
            default_detector: det,
            ..Default::default()
        },
        Arc::new(Metrics::new()),
    )
    .unwrap();
    // The external URL is only a link in the alerts.
    let cfg = ServerConfig {
        alertmanager: AlertmanagerConfig {
            urls: ams.iter().map(|(p, _)| format!("http://127.0.0.1:{p}")).collect(),
            resend: Duration::from_secs(1),
            external_url: "http://anomalyd.example".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let server = TestServer::start(registry, cfg).await;
    let addr = server.addr;
    let c = reqwest::Client::new();
    let url = format!("http://{addr}/v1/streams/pump");
    let post = async |path: &str, body: Value| -> Value {
        c.post(format!("{url}/{path}"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    post("history", readings(0..600, 0.0)).await;
    eventually_60s("a model", async || {
        let v: Value = c.get(&url).send().await.ok()?.json().await.ok()?;
        v["model"]["version"].as_u64().filter(|&v| v >= 1)
    })
    .await;
    let r = post("readings", readings(600..650, 200.0)).await;
    assert_eq!(r["results"][0]["event"], "opened", "{}", r["results"][0]);
    // Both Alertmanagers show it, with the stream and what was expected.
    let alerts = async |port: u16| -> Vec<Value> {
        let v: Value = c
            .get(format!("http://127.0.0.1:{port}/api/v2/alerts"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .filter(|a| a["labels"]["stream"] == "pump")
            .cloned()
            .collect()
    };
    for (port, _) in &ams {
        let a = eventually_60s("the alert in Alertmanager", async || {
            let a = alerts(*port).await;
            (a.len() == 1).then(|| a[0].clone())
        })
        .await;
        assert_eq!(a["labels"]["alertname"], "AnomalydIncident");
        assert_eq!(a["status"]["state"], "active", "{a}");
        assert!(a["annotations"]["expected"].is_string(), "{a}");
        // The incident's start: its first anomalous reading, minute 600.
        let start = anomalyd::timestamp::format_rfc3339((1_700_000_000 + 600 * 60) * 1_000_000);
        assert_eq!(a["startsAt"], start.replace('Z', ".000Z"), "{a}");
        assert!(a["generatorURL"].as_str().unwrap().ends_with("/v1/streams/pump"));
    }
    // Back to normal: the incident resolves and both Alertmanagers end the alert.
    // (Within a model window plus `resolve_after` readings: the model judges the
    // window that ends at each reading, which holds fault readings for 32 more.)
    let r = post("readings", readings(650..700, 0.0)).await;
    assert!(
        r["results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["event"] == "resolved"),
        "{r}"
    );
    for (port, _) in &ams {
        eventually_60s("the alert to end", async || {
            alerts(*port).await.is_empty().then_some(())
        })
        .await;
    }
    let m = c
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("anomalyd_alertmanager_notifications_total{outcome=\"sent\"}"),
        "counted"
    );
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
