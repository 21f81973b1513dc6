//! Prometheus metrics, named `anomalyd_<name>_<unit>[_total]`. No per-stream labels:
//! stream counts are unbounded, so label cardinality would be too.

use prometheus::{
    CounterVec, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Every metric the service exports, registered in one registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Readings accepted and scored.
    pub readings_ingested: IntCounter,
    /// Readings rejected, by reason.
    pub readings_rejected: IntCounterVec,
    /// Time to score one reading (detector update).
    pub scoring_latency: Histogram,
    /// Alerts raised.
    pub alerts: IntCounter,
    /// Streams by phase (set at scrape time).
    pub streams: IntGaugeVec,
    /// The training queue and its jobs.
    pub training: TrainingMetrics,
    /// Connected WebSocket subscribers.
    pub ws_subscribers: IntGauge,
    /// Alerts dropped for lagging subscribers.
    pub ws_lagged: IntCounter,
    /// HTTP requests by route and status.
    pub http_requests: IntCounterVec,
    /// Snapshot files written and failures.
    pub snapshots: IntCounterVec,
    /// Snapshot files found damaged at start-up (moved aside, not loaded).
    pub corrupt_snapshots: IntCounter,
    /// Storage failures by operation (wal_append, wal_sync).
    pub storage_errors: IntCounterVec,
    /// Duration of snapshot rounds (checkpoints).
    pub snapshot_duration: Histogram,
    /// Unix time of the last snapshot round that wrote everything.
    pub snapshot_last_success: Gauge,
    /// Requests whose handler panicked (answered 500).
    pub panics: IntCounter,
    /// Prometheus remote_write samples by outcome (scored, resent, stale,
    /// not_finite, stream_limit).
    pub remote_write_samples: IntCounterVec,
    /// Alerts delivered to Alertmanagers by outcome (sent, failed, dropped).
    pub alertmanager_notifications: IntCounterVec,
    /// Streams retired by reason (stale, idle).
    pub streams_retired: IntCounterVec,
    /// Backfills from Prometheus by outcome (learnt, empty, failed, too_late, dropped).
    pub backfill_jobs: IntCounterVec,
    /// Past readings learnt from Prometheus.
    pub backfill_points: IntCounter,
    /// Backfills waiting in the queue or for a retry.
    pub backfill_pending: IntGauge,
    /// Requests for another node's stream passed on to it.
    pub requests_forwarded: IntCounter,
    /// 1 per shard this node owns (sharded deployments).
    pub shards_owned: IntGaugeVec,
    /// HTTP requests being served now.
    pub http_requests_in_flight: IntGauge,
    /// Scoring slots held (set at scrape time).
    pub scoring_slots_in_use: IntGauge,
    /// Requests waiting for a scoring slot (set at scrape time).
    pub scoring_waiters: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric, plus the process collector.
    pub fn new() -> Self {
        let registry = Registry::new();
        let streams = register_fixed(&registry);
        let r = Registrar(&registry);
        let lifecycle = lifecycle_metrics(&r);
        Metrics {
            readings_ingested: r.counter("anomalyd_readings_ingested_total", "Readings accepted and scored."),
            readings_rejected: r.counter_vec(
                "anomalyd_readings_rejected_total",
                "Readings rejected, by reason.",
                &["reason"],
            ),
            scoring_latency: r.histogram(
                "anomalyd_scoring_latency_seconds",
                "Time to score one reading.",
                prometheus::exponential_buckets(5e-6, 2.0, 16).expect("buckets"),
            ),
            alerts: r.counter("anomalyd_alerts_total", "Alerts raised."),
            streams,
            training: TrainingMetrics::new(&r),
            ws_subscribers: r.gauge("anomalyd_ws_subscribers", "Connected WebSocket alert subscribers."),
            ws_lagged: r.counter(
                "anomalyd_ws_lagged_messages_total",
                "Alerts dropped for lagging subscribers.",
            ),
            http_requests: r.counter_vec(
                "anomalyd_http_requests_total",
                "HTTP requests by route and status.",
                &["route", "status"],
            ),
            snapshots: r.counter_vec(
                "anomalyd_snapshots_total",
                "Stream snapshots written, by result.",
                &["result"],
            ),
            corrupt_snapshots: r.counter(
                "anomalyd_corrupt_snapshots_total",
                "Damaged snapshot files found at start-up (moved aside, not loaded).",
            ),
            storage_errors: r.counter_vec(
                "anomalyd_storage_errors_total",
                "Storage failures by operation (wal_append, wal_sync).",
                &["op"],
            ),
            snapshot_duration: r.histogram(
                "anomalyd_snapshot_duration_seconds",
                "Duration of snapshot rounds (checkpoints).",
                prometheus::exponential_buckets(0.001, 2.0, 18).expect("buckets"),
            ),
            snapshot_last_success: r.float_gauge(
                "anomalyd_snapshot_last_success_timestamp_seconds",
                "Unix time of the last snapshot round that wrote everything.",
            ),
            panics: r.counter(
                "anomalyd_panics_total",
                "Requests whose handler panicked (answered 500).",
            ),
            remote_write_samples: r.counter_vec(
                "anomalyd_remote_write_samples_total",
                "Prometheus remote_write samples by outcome (scored, resent, stale, not_finite, stream_limit: new series over --max-streams).",
                &["outcome"],
            ),
            alertmanager_notifications: r.counter_vec(
                "anomalyd_alertmanager_notifications_total",
                "Alerts delivered to Alertmanagers by outcome (sent, failed, dropped).",
                &["outcome"],
            ),
            streams_retired: lifecycle.0,
            backfill_jobs: lifecycle.1,
            backfill_points: lifecycle.2,
            backfill_pending: lifecycle.3,
            requests_forwarded: lifecycle.4,
            shards_owned: lifecycle.5,
            http_requests_in_flight: r.gauge("anomalyd_http_requests_in_flight", "HTTP requests being served now."),
            scoring_slots_in_use: r.gauge("anomalyd_scoring_slots_in_use", "Scoring slots held by requests."),
            scoring_waiters: r.gauge("anomalyd_scoring_waiters", "Requests waiting for a scoring slot."),
            registry,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut buf)
            .expect("utf-8 metrics");
        buf
    }
}

/// The streams' lifecycle beyond ingest: retirement, backfill, other nodes.
#[allow(clippy::type_complexity)]
fn lifecycle_metrics(
    r: &Registrar<'_>,
) -> (
    IntCounterVec,
    IntCounterVec,
    IntCounter,
    IntGauge,
    IntCounter,
    IntGaugeVec,
) {
    (
        r.counter_vec(
            "anomalyd_streams_retired_total",
            "Streams retired by reason: stale (their series ended), idle (no reading for --retire-idle-after-secs).",
            &["reason"],
        ),
        r.counter_vec(
            "anomalyd_backfill_jobs_total",
            "Backfills of new streams' past from Prometheus by outcome (learnt, empty, failed, too_late, dropped).",
            &["outcome"],
        ),
        r.counter(
            "anomalyd_backfill_points_total",
            "Past readings learnt from Prometheus.",
        ),
        r.gauge(
            "anomalyd_backfill_pending",
            "Backfills waiting in the queue or for a retry.",
        ),
        r.counter(
            "anomalyd_requests_forwarded_total",
            "Requests for another node's stream passed on to its owner.",
        ),
        r.gauge_vec(
            "anomalyd_shard_owned",
            "1 for each shard this node owns (sharded deployments only).",
            &["shard"],
        ),
    )
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The training queue and its jobs.
#[derive(Clone, Debug)]
pub struct TrainingMetrics {
    /// Retraining jobs by outcome: completed, diverged, dropped (queue full).
    pub jobs: IntCounterVec,
    /// Duration of retraining jobs.
    pub duration: Histogram,
    /// Jobs waiting for a training thread.
    pub queue_depth: IntGauge,
    /// How long jobs waited in the queue for a training thread.
    pub wait: Histogram,
    /// Jobs queued, by why they were asked for (`detector::JobKind`).
    pub queued: IntCounterVec,
    /// Seconds the training threads spent on jobs, by why they were asked for.
    pub seconds: CounterVec,
}

impl TrainingMetrics {
    fn new(r: &Registrar) -> Self {
        TrainingMetrics {
            jobs: r.counter_vec(
                "anomalyd_retrain_jobs_total",
                "Retraining jobs by outcome (completed, diverged, dropped).",
                &["outcome"],
            ),
            duration: r.histogram(
                "anomalyd_retrain_duration_seconds",
                "Duration of retraining jobs.",
                prometheus::exponential_buckets(0.01, 2.0, 14).expect("buckets"),
            ),
            queue_depth: r.gauge("anomalyd_retrain_queue_depth", "Retraining jobs waiting for a thread."),
            wait: r.histogram(
                "anomalyd_retrain_wait_seconds",
                "How long retraining jobs waited in the queue for a training thread.",
                prometheus::exponential_buckets(0.01, 2.0, 18).expect("buckets"),
            ),
            queued: r.counter_vec(
                "anomalyd_retrain_jobs_queued_total",
                "Retraining jobs queued, by why (first, completion, scheduled, drift, requested).",
                &["kind"],
            ),
            seconds: r.add(
                CounterVec::new(
                    Opts::new(
                        "anomalyd_retrain_seconds_total",
                        "Seconds training threads spent on jobs, by why they were asked for.",
                    ),
                    &["kind"],
                )
                .expect("valid metric"),
            ),
        }
    }
}

/// Registers metrics as they are made.
struct Registrar<'a>(&'a Registry);

impl Registrar<'_> {
    fn add<M: prometheus::core::Collector + Clone + 'static>(&self, m: M) -> M {
        self.0.register(Box::new(m.clone())).expect("unique metric");
        m
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(name, help).expect("valid metric"))
    }

    fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::new(name, help).expect("valid metric"))
    }

    fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    fn float_gauge(&self, name: &str, help: &str) -> Gauge {
        self.add(Gauge::new(name, help).expect("valid metric"))
    }

    fn histogram(&self, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
        self.add(Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric"))
    }
}

/// Registers the streams-by-phase gauge (returned), the build info and the
/// process collector.
fn register_fixed(registry: &Registry) -> IntGaugeVec {
    let r = Registrar(registry);
    let streams =
        r.add(IntGaugeVec::new(Opts::new("anomalyd_streams", "Streams by phase."), &["phase"]).expect("valid"));
    let build = r.add(
        IntGaugeVec::new(
            Opts::new("anomalyd_build_info", "The build: version of anomalyd (value 1)."),
            &["version"],
        )
        .expect("valid"),
    );
    build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    #[cfg(target_os = "linux")]
    registry
        .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
        .expect("process collector");
    streams
}
