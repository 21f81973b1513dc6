//! Wire types only: the JSON bodies of API v1, the WebSocket messages, and the
//! protobuf messages generated from `proto/anomalyd/v1/anomalyd.proto`. No behaviour
//! beyond (de)serialisation lives here; `server` converts to domain types.

use serde::{Deserialize, Serialize};

/// Protobuf messages (prost, generated at build time).
#[allow(missing_docs, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/anomalyd.v1.rs"));
}

/// Percent-encodes everything but RFC 3986's unreserved characters (a stream id
/// as one path segment or query value).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Prometheus remote_write 1.0 messages (`proto/prometheus/remote.proto`).
#[allow(missing_docs)]
pub mod prompb {
    include!(concat!(env!("OUT_DIR"), "/prometheus.rs"));
}

/// A timestamp as clients send it: an RFC 3339 string or Unix seconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WireTime {
    /// Unix seconds.
    Seconds(f64),
    /// RFC 3339 or `YYYY-MM-DD HH:MM:SS`.
    Text(String),
}

/// One reading in a JSON request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadingIn {
    /// Target stream (batch route only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// When it was observed.
    pub timestamp: WireTime,
    /// A univariate value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// A multivariate reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<f64>>,
}

/// Body of both ingest routes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestIn {
    /// The readings, in order.
    pub readings: Vec<ReadingIn>,
}

/// The verdict for one reading.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadingOut {
    /// The stream.
    pub stream: String,
    /// RFC 3339, UTC.
    pub timestamp: String,
    /// Anomaly score in [0, 1] against the stream's learnt normal behaviour: 0.5 at
    /// its calibrated limit, 0.9 at three times it, 0.99 at ten times; `null` while
    /// the stream warms up (not judged yet, which is not "normal").
    pub score: Option<f64>,
    /// The anomaly state: this reading is abnormal.
    pub anomaly: bool,
    /// How new the reading is against the recent past (onset signal), in [0, 1].
    pub event_score: f64,
    /// `warmup` (not judged yet), `baseline` or `model`.
    pub phase: String,
    /// While warming up: normal readings still needed before the stream judges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readings_needed: Option<u64>,
    /// Model version (0: none yet).
    pub model_version: u64,
    /// Expected values per feature.
    pub expected: Vec<f64>,
    /// The incident open at this reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<u64>,
    /// `opened` or `resolved` when an incident changed at this reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// Why an anomalous reading opened no incident: `incident_open`, `min_duration`,
    /// `recurring`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<String>,
    /// The statistic that decided the score: `level`, `ar`, `seasonal`, `model`,
    /// `joint`, `joint_level`, `change` or `trend`, with ` smoothed` when its
    /// sustained form did (always for `change` and `trend`), or `stuck` (a feature
    /// repeats one value for too long).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

/// Response of both ingest routes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IngestOut {
    /// One result per reading, in request order.
    pub results: Vec<ReadingOut>,
}

/// An error body: `{"error": {"code", "message"}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorOut {
    /// The error.
    pub error: ErrorDetail,
}

/// Machine-readable code and human message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// e.g. `invalid_reading`, `not_found`, `overloaded`.
    pub code: String,
    /// What went wrong, specifically.
    pub message: String,
}

/// One incident event as the API and the WebSocket show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertOut {
    /// Journal sequence number (increasing, never reused).
    pub seq: u64,
    /// `opened` or `resolved`.
    pub kind: String,
    /// The stream.
    pub stream: String,
    /// The incident's id within the stream.
    pub incident: u64,
    /// RFC 3339, UTC: the reading at which this happened.
    pub timestamp: String,
    /// RFC 3339: the incident's first anomalous reading.
    pub start: String,
    /// RFC 3339: its last anomalous reading (resolved only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// `normal` (the stream recovered) or `accepted` (resolved only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
    /// The reading's score (opened) or the incident's peak score (resolved).
    pub score: f64,
    /// The features that contributed most, `{feature, share}`, largest first.
    pub top_features: Vec<FeatureShare>,
    /// The reading's values.
    pub values: Vec<f64>,
    /// What the detector expected.
    pub expected: Vec<f64>,
    /// Each feature's share of the surprise.
    pub contributions: Vec<f64>,
    /// Model version that scored.
    pub model_version: u64,
}

/// A feature's share of an incident's surprise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureShare {
    /// Position of the feature in the stream's readings.
    pub feature: usize,
    /// Its share in [0, 1].
    pub share: f64,
}

/// Messages the server sends on `/v1/alerts/ws`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WsServerMessage {
    /// An incident event.
    Alert(Box<AlertOut>),
    /// Liveness, with the newest journal sequence number.
    Heartbeat {
        /// Newest sequence number.
        seq: u64,
    },
    /// This subscriber fell behind and `missed` alerts were dropped for it.
    Lagged {
        /// Alerts not delivered.
        missed: u64,
    },
    /// A client message could not be understood.
    Error {
        /// Why.
        message: String,
    },
}

/// Messages a client sends on `/v1/alerts/ws`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum WsClientMessage {
    /// Sets this connection's filter (replacing the previous one).
    Subscribe {
        /// Stream globs (`*` matches any run of characters); empty or absent: all.
        #[serde(default)]
        streams: Vec<String>,
        /// Only alerts at or above this score.
        #[serde(default)]
        min_score: Option<f64>,
        /// Replay journal alerts with a greater sequence number first.
        #[serde(default)]
        resume_from: Option<u64>,
    },
}

/// What `GET /v1/streams/{stream}` shows.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StreamInfo {
    /// Id.
    pub stream: String,
    /// Config.
    pub config: crate::detector::DetectorConfig,
    /// `warmup` (not judged yet), `baseline` or `model`.
    pub phase: crate::detector::Phase,
    /// Normal readings still needed before the stream judges (0 once it does).
    pub readings_needed: u64,
    /// Features per reading (once known).
    pub n_features: Option<usize>,
    /// Readings scored.
    pub readings_seen: u64,
    /// The model, once one exists.
    pub model: Option<ModelInfo>,
    /// Score at or above which a reading is anomalous.
    pub threshold: f64,
    /// The newest verdict's score (`null` before one was judged).
    pub last_score: Option<f64>,
    /// The newest verdict's anomaly state.
    pub anomalous: bool,
    /// The open incident, if any.
    pub incident: Option<IncidentInfo>,
    /// Timestamp of the newest reading (RFC 3339).
    pub last_timestamp: Option<String>,
    /// Training jobs that diverged.
    pub failed_training_jobs: u64,
}

/// The open incident in [`StreamInfo`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct IncidentInfo {
    /// Id within the stream.
    pub id: u64,
    /// Its first anomalous reading (RFC 3339).
    pub start: String,
    /// Highest score so far.
    pub peak_score: f64,
    /// Anomalous readings so far.
    pub anomalous_readings: u64,
    /// Features that contributed most, `{feature, share}`, largest first.
    pub top_features: Vec<FeatureShare>,
}

/// The model part of [`StreamInfo`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelInfo {
    /// Cell kind.
    pub cell: String,
    /// Hidden units.
    pub hidden: usize,
    /// Layers.
    pub layers: usize,
    /// Bidirectional encoder.
    pub bidirectional: bool,
    /// Ensemble members.
    pub members: usize,
    /// Parameters per member.
    pub parameters: usize,
    /// Version.
    pub version: u64,
    /// Timestamp of the newest reading in its training data (RFC 3339).
    pub trained_at: String,
    /// Training loss of the last epoch.
    pub train_loss: f64,
    /// Held-out loss.
    pub val_loss: f64,
}
