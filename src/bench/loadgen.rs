//! `anomalyd bench http`: a load generator for a running service. It posts real
//! request bodies (snappy protobuf remote_write, or JSON batches) from several
//! connections, with timestamps that advance so every sample is scored (none
//! is skipped as a resend), and reports samples scored per second.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prost::Message as _;
use serde::Serialize;

use crate::protocol::prompb;

/// What to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `POST /api/v1/write`: snappy protobuf WriteRequest.
    RemoteWrite,
    /// `POST /v1/readings`: a JSON batch.
    Json,
}

/// The load's shape.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// `http://host:port` of the service.
    pub url: String,
    /// Body format.
    pub format: Format,
    /// Series (streams) in all; each connection owns its share.
    pub series: usize,
    /// Samples per series per request.
    pub samples: usize,
    /// Connections posting at once.
    pub connections: usize,
    /// Seconds to run.
    pub seconds: f64,
}

/// What a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    /// Body format.
    pub format: Format,
    /// Series in all.
    pub series: usize,
    /// Samples per request.
    pub samples_per_request: usize,
    /// Connections.
    pub connections: usize,
    /// Requests answered 2xx per second.
    pub requests_per_s: f64,
    /// Samples in 2xx-answered requests per second.
    pub samples_per_s: f64,
    /// Median request latency, ms.
    pub p50_ms: f64,
    /// 99th percentile request latency, ms.
    pub p99_ms: f64,
    /// Requests answered otherwise (429/503/...).
    pub refused: u64,
}

fn body(format: Format, series: &[usize], step: i64, samples: usize, base_ms: i64) -> (Vec<u8>, usize) {
    let value = |s: usize, t: i64| 100.0 + 20.0 * ((t as f64 + s as f64 * 3.1) / 7.6).sin() + (t % 13) as f64 / 5.0;
    match format {
        Format::RemoteWrite => {
            let req = prompb::WriteRequest {
                timeseries: series
                    .iter()
                    .map(|&s| prompb::TimeSeries {
                        labels: vec![
                            prompb::Label {
                                name: "__name__".into(),
                                value: "load_test".into(),
                            },
                            prompb::Label {
                                name: "series".into(),
                                value: s.to_string(),
                            },
                        ],
                        samples: (0..samples as i64)
                            .map(|k| {
                                let t = step * samples as i64 + k;
                                prompb::Sample {
                                    value: value(s, t),
                                    timestamp: base_ms + t * 1000,
                                }
                            })
                            .collect(),
                    })
                    .collect(),
            };
            let raw = req.encode_to_vec();
            (
                snap::raw::Encoder::new().compress_vec(&raw).expect("snappy"),
                series.len() * samples,
            )
        }
        Format::Json => {
            let mut out = String::from("{\"readings\":[");
            let mut first = true;
            for &s in series {
                for k in 0..samples as i64 {
                    let t = step * samples as i64 + k;
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    out.push_str(&format!(
                        "{{\"stream\":\"load_test{{series=\\\"{s}\\\"}}\",\"timestamp\":{},\"value\":{:.4}}}",
                        (base_ms + t * 1000) / 1000,
                        value(s, t)
                    ));
                }
            }
            out.push_str("]}");
            (out.into_bytes(), series.len() * samples)
        }
    }
}

/// Runs the load and reports.
pub async fn run(cfg: LoadConfig) -> Result<LoadReport, String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(cfg.connections)
        .build()
        .map_err(|e| e.to_string())?;
    let (path, content_type) = match cfg.format {
        Format::RemoteWrite => ("/api/v1/write", "application/x-protobuf"),
        Format::Json => ("/v1/readings", "application/json"),
    };
    let url = format!("{}{path}", cfg.url.trim_end_matches('/'));
    // A day ago, so a long run never reaches the future.
    let base_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_millis() as i64
        - 86_400_000;
    let refused = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let conns = cfg.connections.clamp(1, cfg.series.max(1));
    let tasks: Vec<_> = (0..conns)
        .map(|c| {
            let poster = Poster {
                client: client.clone(),
                url: url.clone(),
                content_type,
                format: cfg.format,
                samples: cfg.samples,
                base_ms,
                deadline: start + Duration::from_secs_f64(cfg.seconds),
                refused: refused.clone(),
            };
            let mine: Vec<usize> = (c..cfg.series).step_by(conns).collect();
            tokio::spawn(poster.run(mine))
        })
        .collect();
    let (mut samples, mut lat) = (0usize, Vec::new());
    for t in tasks {
        let (n, l) = t.await.map_err(|e| e.to_string())?;
        samples += n;
        lat.extend(l);
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * p) as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    Ok(LoadReport {
        format: cfg.format,
        series: cfg.series,
        samples_per_request: cfg.samples * cfg.series.div_ceil(conns),
        connections: conns,
        requests_per_s: lat.len() as f64 / elapsed,
        samples_per_s: samples as f64 / elapsed,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        refused: refused.load(Ordering::Relaxed),
    })
}

/// One connection's load.
struct Poster {
    client: reqwest::Client,
    url: String,
    content_type: &'static str,
    format: Format,
    samples: usize,
    base_ms: i64,
    deadline: Instant,
    refused: Arc<AtomicU64>,
}

impl Poster {
    /// Posts the next samples of `mine` until the deadline; returns the samples
    /// taken and each accepted request's latency.
    async fn run(self, mine: Vec<usize>) -> (usize, Vec<Duration>) {
        let (mut ok, mut latencies) = (0usize, Vec::new());
        let mut step = 0i64;
        let encoding = if self.format == Format::Json {
            "identity"
        } else {
            "snappy"
        };
        while Instant::now() < self.deadline {
            let (b, n) = body(self.format, &mine, step, self.samples, self.base_ms);
            step += 1;
            let t = Instant::now();
            let r = self
                .client
                .post(&self.url)
                .header("content-type", self.content_type)
                .header("content-encoding", encoding)
                .body(b)
                .send()
                .await;
            match r {
                Ok(r) if r.status().is_success() => {
                    let _ = r.bytes().await;
                    latencies.push(t.elapsed());
                    ok += n;
                }
                Ok(r) => {
                    let _ = r.bytes().await;
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(_) => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        (ok, latencies)
    }
}
