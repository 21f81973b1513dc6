//! History from Prometheus: a stream that remote_write creates asks the
//! Prometheus at `--prometheus-url` for its series' past (the exact label set,
//! up to `lookback` back, at most `max_points` samples at the series' own step)
//! and learns it as history, so it judges and has a model within seconds instead
//! of after its warm-up. Bounded: one queue (full: the job is dropped, and the
//! stream's next batch offers it again), a rate limit on queries, a timeout on
//! each; a Prometheus that is down or slow delays nothing else, and a failed
//! backfill is retried with a growing pause while the stream still warms up.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::registry::{BackfillJob, BackfillOutcome, Registry};
use crate::timestamp::Micros;

/// Settings of the backfill.
#[derive(Clone, Debug)]
pub struct BackfillConfig {
    /// Prometheus' base URL (`http://host:9090`); None: no backfill.
    pub url: Option<String>,
    /// How far back to ask.
    pub lookback: Duration,
    /// Most samples learnt per stream (the newest; the look-back shrinks to fit).
    pub max_points: usize,
    /// Queries per second at most.
    pub rate: f64,
    /// Longest a query may take.
    pub timeout: Duration,
    /// Jobs waiting at most.
    pub queue: usize,
}

impl Default for BackfillConfig {
    fn default() -> Self {
        BackfillConfig {
            url: None,
            lookback: Duration::from_secs(7 * 86_400),
            max_points: 10_000,
            rate: 10.0,
            timeout: Duration::from_secs(10),
            queue: 10_000,
        }
    }
}

/// First pause before a failed backfill is tried again; it doubles up to
/// [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(2);
const MAX_RETRY: Duration = Duration::from_secs(120);

/// A job and how often it failed.
struct Attempt {
    job: BackfillJob,
    failures: u32,
}

/// The queue's sending side (cheap to clone).
#[derive(Clone)]
pub struct Backfill {
    tx: mpsc::Sender<Attempt>,
    registry: Arc<Registry>,
}

impl Backfill {
    /// Queues the pasts of `jobs`; a job that finds the queue full is dropped and
    /// its stream offered again at its next batch.
    pub fn offer(&self, jobs: Vec<BackfillJob>) {
        let m = self.registry.metrics();
        for job in jobs {
            let id = job.stream.clone();
            match self.tx.try_send(Attempt { job, failures: 0 }) {
                Ok(()) => m.backfill_pending.inc(),
                Err(_) => {
                    m.backfill_jobs.with_label_values(&["dropped"]).inc();
                    self.registry.backfill_forget(&id);
                }
            }
        }
    }
}

/// Starts the worker when a Prometheus URL is set.
pub fn spawn(registry: Arc<Registry>, config: BackfillConfig) -> Option<(Backfill, tokio::task::JoinHandle<()>)> {
    let url = config.url.clone()?;
    let (tx, rx) = mpsc::channel(config.queue.max(1));
    let backfill = Backfill {
        tx: tx.clone(),
        registry: registry.clone(),
    };
    let client = reqwest::Client::builder().timeout(config.timeout).build().ok()?;
    let worker = Worker {
        registry,
        config,
        url: url.trim_end_matches('/').to_string(),
        client,
        tx,
    };
    Some((backfill, tokio::spawn(worker.run(rx))))
}

struct Worker {
    registry: Arc<Registry>,
    config: BackfillConfig,
    url: String,
    client: reqwest::Client,
    tx: mpsc::Sender<Attempt>,
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Attempt>) {
        // Two queries a job: the pause keeps to `rate` queries a second.
        let pause = Duration::from_secs_f64(2.0 / self.config.rate.max(1e-3));
        let mut tick = tokio::time::interval(pause);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while let Some(attempt) = rx.recv().await {
            tick.tick().await;
            self.registry.metrics().backfill_pending.dec();
            self.attempt(attempt).await;
        }
    }

    async fn attempt(&self, mut a: Attempt) {
        let m = self.registry.metrics();
        let id = a.job.stream.clone();
        let registry = self.registry.clone();
        let wanted = {
            let id = id.clone();
            tokio::task::spawn_blocking(move || registry.backfill_wanted(&id))
                .await
                .unwrap_or(false)
        };
        if !wanted {
            m.backfill_jobs.with_label_values(&["too_late"]).inc();
            return;
        }
        let past = match self.fetch(&a.job).await {
            Ok(past) => past,
            Err(e) => {
                m.backfill_jobs.with_label_values(&["failed"]).inc();
                a.failures += 1;
                let wait = FIRST_RETRY.saturating_mul(1 << a.failures.min(8)).min(MAX_RETRY);
                tracing::warn!(stream = %id, error = %e, retry_in_s = wait.as_secs(), "backfill from Prometheus failed");
                let tx = self.tx.clone();
                let pending = m.backfill_pending.clone();
                pending.inc();
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    if tx.try_send(a).is_err() {
                        pending.dec();
                    }
                });
                return;
            }
        };
        let registry = self.registry.clone();
        let done = tokio::task::spawn_blocking(move || registry.backfill(&id, &past)).await;
        let outcome = match done {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => {
                tracing::warn!(stream = %a.job.stream, error = %e, "backfill not learnt");
                BackfillOutcome::TooLate
            }
            Err(_) => BackfillOutcome::TooLate,
        };
        m.backfill_jobs.with_label_values(&[outcome.name()]).inc();
        if let BackfillOutcome::Learnt(n) = outcome {
            tracing::info!(stream = %a.job.stream, readings = n, "learnt the stream's past from Prometheus");
        }
    }

    /// The series' samples before the job's first reading: how many there are in
    /// the look-back, then the newest `max_points` of them at their own times.
    async fn fetch(&self, job: &BackfillJob) -> Result<Vec<(Micros, f64)>, String> {
        let selector = selector(&job.labels);
        // Just before the first live reading: a range ends at (and includes) `time`.
        let at = format!("{:.3}", (job.before - 1_000) as f64 / 1e6);
        let lookback = self.config.lookback.as_secs().max(1);
        let count = self
            .query(&format!("count_over_time({selector}[{lookback}s])"), &at)
            .await?;
        let n = count
            .as_array()
            .and_then(|r| r.iter().find(|s| same_labels(&s["metric"], &job.labels, true)))
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if n < 1.0 {
            return Ok(Vec::new());
        }
        let window = if n > self.config.max_points as f64 {
            ((lookback as f64 * self.config.max_points as f64 / n).floor() as u64).max(1)
        } else {
            lookback
        };
        let raw = self.query(&format!("{selector}[{window}s]"), &at).await?;
        let series = raw
            .as_array()
            .and_then(|r| r.iter().find(|s| same_labels(&s["metric"], &job.labels, false)));
        Ok(series.map(samples).unwrap_or_default())
    }

    /// `GET /api/v1/query`; the `data.result` of a successful answer.
    async fn query(&self, promql: &str, at: &str) -> Result<Value, String> {
        let resp = self
            .client
            .get(format!(
                "{}/api/v1/query?query={}&time={at}",
                self.url,
                crate::protocol::percent_encode(promql)
            ))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body: Value = resp.json().await.map_err(|e| format!("{status}: {e}"))?;
        if !status.is_success() || body["status"] != "success" {
            return Err(format!(
                "{status}: {}",
                body["error"].as_str().unwrap_or("no error given")
            ));
        }
        Ok(body["data"]["result"].clone())
    }
}

/// The PromQL selector of exactly these labels.
pub fn selector(labels: &[(String, String)]) -> String {
    let escape = |v: &str| v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n");
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    format!("{{{}}}", inner.join(","))
}

/// Whether a result's `metric` is the series (a selector also matches series
/// with more labels); an aggregate (`count_over_time`) drops `__name__`.
fn same_labels(metric: &Value, labels: &[(String, String)], without_name: bool) -> bool {
    let Some(m) = metric.as_object() else { return false };
    let want: Vec<&(String, String)> = labels
        .iter()
        .filter(|(k, _)| !(without_name && k == "__name__"))
        .collect();
    m.len() == want.len()
        && want
            .iter()
            .all(|(k, v)| m.get(k).and_then(Value::as_str) == Some(v.as_str()))
}

/// A matrix series' `values` as (time, value), unparsable ones left out.
fn samples(series: &Value) -> Vec<(Micros, f64)> {
    series["values"]
        .as_array()
        .map(|vs| {
            vs.iter()
                .filter_map(|p| {
                    let t = p[0].as_f64()?;
                    let v = p[1].as_str()?.parse::<f64>().ok()?;
                    Some(((t * 1e6).round() as Micros, v))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_selector_names_every_label_escaped_and_results_must_match_exactly() {
        let l = labels(&[("__name__", "up"), ("job", "a\"b\\c"), ("path", "x\ny")]);
        assert_eq!(selector(&l), r#"{__name__="up",job="a\"b\\c",path="x\ny"}"#);
        let exact = json!({"__name__": "up", "job": "a\"b\\c", "path": "x\ny"});
        let wider = json!({"__name__": "up", "job": "a\"b\\c", "path": "x\ny", "extra": "1"});
        assert!(same_labels(&exact, &l, false));
        assert!(!same_labels(&wider, &l, false));
        assert!(same_labels(&json!({"job": "a\"b\\c", "path": "x\ny"}), &l, true));
        let s = samples(&json!({"values": [[1700000000.5, "1.25"], [1700000015, "NaN"], [1700000030, "x"]]}));
        assert_eq!(s[0], (1_700_000_000_500_000, 1.25));
        assert!(
            s[1].1.is_nan() && s.len() == 2,
            "NaN parses and is left out later; junk is dropped here"
        );
    }
}
