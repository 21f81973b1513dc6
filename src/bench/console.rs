//! `anomalyd bench console`: what the console's pages cost with many streams:
//! the service on loopback holding `streams` streams (copies of one stream past
//! its warm-up), and the requests the pages make timed over HTTP.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::trained_detector;
use crate::metrics::Metrics;
use crate::registry::{Registry, RegistryConfig};
use crate::server::ServerConfig;

/// Milliseconds one kind of request took, over the rounds.
#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    /// The request.
    pub path: String,
    /// Median, ms.
    pub median_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
}

/// `anomalyd bench console`.
#[derive(Clone, Debug, Serialize)]
pub struct ConsoleBenchReport {
    /// Streams held.
    pub streams: usize,
    /// Requests of each kind timed.
    pub rounds: usize,
    /// Each request the console makes.
    pub timings: Vec<Timing>,
}

/// Holds `streams` streams behind the API and times the console's requests.
pub fn run_console_bench(streams: usize, rounds: usize) -> Result<ConsoleBenchReport, String> {
    let config = crate::detector::DetectorConfig::default();
    let det = trained_detector(&config, 100)?;
    let registry = Registry::open(
        RegistryConfig {
            max_streams: streams.max(1),
            ..Default::default()
        },
        std::sync::Arc::new(Metrics::new()),
    )?;
    for i in 0..streams {
        registry
            .adopt(&format!("host-{i:06}/cpu"), det.clone())
            .map_err(|e| e.to_string())?;
    }
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(time_requests(registry, streams, rounds.max(1)))
}

async fn time_requests(
    registry: std::sync::Arc<Registry>,
    streams: usize,
    rounds: usize,
) -> Result<ConsoleBenchReport, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::server::run(
        listener,
        registry,
        ServerConfig::default(),
        Duration::from_secs(86_400),
        async move {
            let _ = stopped.await;
        },
    ));
    let middle = format!("host-{:06}/cpu", streams / 2);
    let paths = [
        "/ui/".to_string(),
        "/v1/streams?detail=true&limit=50".to_string(),
        format!(
            "/v1/streams?detail=true&limit=50&after={}",
            crate::protocol::percent_encode(&middle)
        ),
        "/v1/streams?detail=true&limit=50&q=host-0999*".to_string(),
        "/v1/streams?detail=true&limit=50&q=99/cp".to_string(),
        format!("/v1/streams/{}", crate::protocol::percent_encode(&middle)),
        format!("/v1/streams/{}/chart.svg", crate::protocol::percent_encode(&middle)),
        "/v1/alerts?newest=true&limit=200".to_string(),
    ];
    let http = reqwest::Client::new();
    let mut timings = Vec::new();
    for path in paths {
        let url = format!("http://{addr}{path}");
        let mut ms = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let start = Instant::now();
            let resp = http.get(&url).send().await.map_err(|e| e.to_string())?;
            let status = resp.status();
            resp.bytes().await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("{path}: {status}"));
            }
            ms.push(start.elapsed().as_secs_f64() * 1e3);
        }
        ms.sort_by(f64::total_cmp);
        timings.push(Timing {
            path,
            median_ms: ms[ms.len() / 2],
            max_ms: ms[ms.len() - 1],
        });
    }
    let _ = stop.send(());
    let _ = server.await;
    Ok(ConsoleBenchReport {
        streams,
        rounds,
        timings,
    })
}
