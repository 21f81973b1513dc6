//! The only module that knows HTTP: the axum router, handlers, WebSocket, metrics
//! endpoint, auth and limits. It converts wire DTOs to domain types and back, runs
//! scoring off the async workers (`spawn_blocking`, bounded by a semaphore), and
//! answers overload with 503 + Retry-After.

pub mod alertmanager;
pub mod error;
pub mod listener;
pub mod prom;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{FutureExt, SinkExt, StreamExt};
use prost::Message as _;
use serde::Deserialize;
use tokio::sync::Semaphore;

pub use error::ApiError;

use crate::detector::{IncidentEvent, Verdict};
use crate::protocol::{self, IngestIn, IngestOut, ReadingOut, WireTime, pb};
use crate::registry::{Reading, Registry};
use crate::timestamp;

/// Limits and settings of the HTTP layer.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Most readings in one request.
    pub max_readings_per_request: usize,
    /// Most WebSocket subscribers at once.
    pub max_ws_subscribers: usize,
    /// Scoring batches in flight at once; more wait up to `queue_wait`, then 503.
    pub max_inflight: usize,
    /// How long a request may wait for a scoring slot.
    pub queue_wait: Duration,
    /// WebSocket heartbeat interval.
    pub heartbeat: Duration,
    /// Bearer token required on /v1 (None: no auth).
    pub auth_token: Option<String>,
    /// Requests waiting for a scoring slot at once; more are refused at once (429).
    pub max_waiters: usize,
    /// Open connections at once; more wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Longest a request may take, body included (then 503 `timeout`).
    pub request_timeout: Duration,
    /// Where incidents are sent (no URLs: nowhere).
    pub alertmanager: alertmanager::AlertmanagerConfig,
    /// How far ahead of this server's clock a timestamp may be. A stream's readings
    /// must not go back in time, so one reading from the far future (milliseconds
    /// sent as seconds, a `9999-12-31`) would lock its stream until it is deleted.
    pub max_future_skew: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_body_bytes: 4 * 1024 * 1024,
            max_readings_per_request: 10_000,
            max_ws_subscribers: 1024,
            max_inflight: 64,
            queue_wait: Duration::from_millis(200),
            max_waiters: 256,
            max_connections: 4096,
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
            auth_token: None,
            max_future_skew: Duration::from_secs(86_400),
            alertmanager: alertmanager::AlertmanagerConfig::default(),
        }
    }
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    registry: Arc<Registry>,
    config: Arc<ServerConfig>,
    inflight: Arc<Semaphore>,
    /// One permit per WebSocket subscriber: taken before the upgrade, so the limit
    /// cannot be raced past.
    ws_slots: Arc<Semaphore>,
    /// Requests waiting for an `inflight` permit.
    waiters: Arc<std::sync::atomic::AtomicUsize>,
}

/// `Query` whose rejection is the JSON error (400 `invalid_query`), not axum's text.
pub struct ApiQuery<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
    }
}

/// `Path` whose rejection is the JSON error (400 `invalid_path`), not axum's text.
pub struct ApiPath<T>(pub T);

impl<T: serde::de::DeserializeOwned + Send, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| ApiPath(p))
            .map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))
    }
}

/// The router (separate from `main` so tests drive it with `oneshot` or real TCP).
pub fn router(registry: Arc<Registry>, config: ServerConfig) -> Router {
    let state = AppState {
        inflight: Arc::new(Semaphore::new(config.max_inflight.max(1))),
        ws_slots: Arc::new(Semaphore::new(config.max_ws_subscribers)),
        waiters: Arc::default(),
        registry,
        config: Arc::new(config),
    };
    let v1 = Router::new()
        .route("/v1/streams", get(list_streams))
        .route(
            "/v1/streams/{stream}",
            get(get_stream).put(put_stream).patch(put_stream).delete(delete_stream),
        )
        .route("/v1/streams/{stream}/readings", post(ingest_stream))
        .route("/v1/streams/{stream}/retrain", post(retrain_stream))
        .route("/v1/streams/{stream}/history", post(history_stream))
        .route("/v1/streams/{stream}/accept", post(accept_stream))
        .route("/v1/readings", post(ingest_batch))
        .route("/v1/alerts", get(list_alerts))
        .route("/v1/alerts/ws", get(alerts_ws))
        .route("/api/v1/write", post(remote_write))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(v1)
        .route("/metrics", get(metrics))
        .route("/metrics/scores", get(metrics_scores))
        .route("/healthz", get(|| async { Json(serde_json::json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .with_state(state)
}

/// Request ids: a per-process prefix and a counter (or the client's own
/// `x-request-id`, when it is short and printable).
fn request_id(headers: &HeaderMap) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(
            || {
                let prefix = *PREFIX.get_or_init(rand::random::<u32>);
                format!("{prefix:08x}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
            },
            String::from,
        )
}

async fn count_requests(State(st): State<AppState>, req: Request, next: Next) -> Response {
    use tracing::Instrument;
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let id = request_id(req.headers());
    let span = tracing::info_span!("request", id = %id, method = %req.method(), route = %route);
    // The last line of defence: a panicking handler is a counted 500, and a request
    // that takes too long (a client dribbling its body) is cut off.
    let run = std::panic::AssertUnwindSafe(next.run(req)).catch_unwind();
    let mut resp = match tokio::time::timeout(st.config.request_timeout, run)
        .instrument(span.clone())
        .await
    {
        Ok(Ok(resp)) => resp,
        Ok(Err(_)) => {
            st.registry.metrics().panics.inc();
            tracing::error!(parent: &span, "request handler panicked");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error").into_response()
        }
        Err(_) => ApiError {
            retry_after: Some(1),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", "the request took too long")
        }
        .into_response(),
    };
    let status = resp.status();
    if status.is_server_error() {
        tracing::warn!(parent: &span, status = status.as_u16(), "request failed");
    } else if status.is_client_error() {
        tracing::debug!(parent: &span, status = status.as_u16(), "request rejected");
    }
    if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    st.registry
        .metrics()
        .http_requests
        .with_label_values(&[&route, status.as_str()])
        .inc();
    resp
}

async fn auth(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &st.config.auth_token {
        let header_ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
        // Browsers cannot set headers on WebSockets: `?access_token=` works there,
        // and only there (elsewhere it would end up in proxies' access logs).
        let query_ok = req.uri().path() == "/v1/alerts/ws"
            && req.uri().query().is_some_and(|q| {
                q.split('&').any(|kv| {
                    kv.strip_prefix("access_token=")
                        .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()))
                })
            });
        if !header_ok && !query_ok {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required",
            )
            .into_response();
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The body as bytes, within the size limit (413 JSON otherwise). Past the limit
/// the rest is read and dropped (up to eight times the limit), so the client
/// finishes sending and reads the 413 instead of a broken connection; memory
/// stays within the limit.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let (mut buf, mut total) = (Vec::new(), 0usize);
    let drain_cap = limit.saturating_mul(8).max(16 << 20);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request("body_read", format!("reading the body failed: {e}")))?;
        total = total.saturating_add(chunk.len());
        if total <= limit {
            buf.extend_from_slice(&chunk);
        } else if total > drain_cap {
            break;
        }
    }
    if total > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body exceeds {limit} bytes"),
        ));
    }
    Ok(Bytes::from(buf))
}

fn wants_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-protobuf"))
}

fn is_protobuf(headers: &HeaderMap) -> Result<bool, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let ct = ct.split(';').next().unwrap_or("").trim();
    match ct {
        // curl -d sends form-urlencoded unless told otherwise: read it as JSON.
        "application/json" | "" | "application/x-www-form-urlencoded" | "text/plain" => Ok(false),
        "application/x-protobuf" | "application/protobuf" => Ok(true),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("content type {other:?}: use application/json or application/x-protobuf"),
        )),
    }
}

/// Parses an ingest body; `path_stream` is the stream of the per-stream route.
fn parse_readings(
    headers: &HeaderMap,
    body: &[u8],
    path_stream: Option<&str>,
    max: usize,
) -> Result<Vec<Reading>, ApiError> {
    let mut out = Vec::new();
    let stream_of = |i: usize, s: Option<String>| -> Result<String, ApiError> {
        match (path_stream, s.filter(|s| !s.is_empty())) {
            (Some(p), None) => Ok(p.to_string()),
            (Some(p), Some(s)) if s == p => Ok(s),
            (Some(p), Some(s)) => Err(ApiError::bad_request(
                "invalid_reading",
                format!("reading {i} names stream {s:?} on the route of stream {p:?}"),
            )),
            (None, Some(s)) => Ok(s),
            (None, None) => Err(ApiError::bad_request(
                "invalid_reading",
                format!("reading {i} has no stream"),
            )),
        }
    };
    if is_protobuf(headers)? {
        let req = pb::IngestRequest::decode(body)
            .map_err(|e| ApiError::bad_request("malformed_protobuf", format!("not an IngestRequest: {e}")))?;
        check_count(req.readings.len(), max)?;
        for (i, r) in req.readings.into_iter().enumerate() {
            let ts = if r.timestamp.is_empty() {
                seconds_to_micros(r.unix_seconds)
            } else {
                timestamp::parse(&r.timestamp)
            };
            let ts =
                ts.ok_or_else(|| ApiError::bad_request("invalid_timestamp", format!("reading {i}: bad timestamp")))?;
            out.push(Reading {
                stream: stream_of(i, Some(r.stream))?,
                timestamp: ts,
                values: r.values,
            });
        }
    } else {
        let req: IngestIn = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request("malformed_json", format!("invalid request body: {e}")))?;
        check_count(req.readings.len(), max)?;
        for (i, r) in req.readings.into_iter().enumerate() {
            let ts = match &r.timestamp {
                WireTime::Seconds(s) => seconds_to_micros(*s),
                WireTime::Text(t) => timestamp::parse(t),
            }
            .ok_or_else(|| {
                let shown = match &r.timestamp {
                    WireTime::Seconds(s) => s.to_string(),
                    WireTime::Text(t) => format!("{t:?}"),
                };
                ApiError::bad_request(
                    "invalid_timestamp",
                    format!("reading {i}: bad timestamp {shown} (RFC 3339 or Unix seconds)"),
                )
            })?;
            let values = match (r.value, r.values) {
                (Some(v), None) => vec![v],
                (None, Some(vs)) => vs,
                _ => {
                    return Err(ApiError::bad_request(
                        "invalid_reading",
                        format!("reading {i} needs exactly one of \"value\" and \"values\""),
                    ));
                }
            };
            out.push(Reading {
                stream: stream_of(i, r.stream)?,
                timestamp: ts,
                values,
            });
        }
    }
    Ok(out)
}

/// Decodes an ingest body as the handlers do (`protobuf`: the protobuf
/// `IngestRequest`, else JSON), at most `max` readings. For fuzzing and tests:
/// any input gives readings or an error, never a panic.
pub fn decode_ingest(
    body: &[u8],
    protobuf: bool,
    path_stream: Option<&str>,
    max: usize,
) -> Result<Vec<Reading>, ApiError> {
    let mut headers = HeaderMap::new();
    if protobuf {
        headers.insert(
            header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/x-protobuf"),
        );
    }
    parse_readings(&headers, body, path_stream, max)
}

/// Refuses readings whose timestamp is more than `skew` ahead of this server's clock.
fn check_not_future(readings: Vec<Reading>, skew: Duration) -> Result<Vec<Reading>, ApiError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let latest = now.saturating_add(skew.as_micros() as i64);
    if let Some((i, r)) = readings.iter().enumerate().find(|(_, r)| r.timestamp > latest) {
        return Err(ApiError::bad_request(
            "invalid_timestamp",
            format!(
                "reading {i}: timestamp {} is more than {} s ahead of the server's clock \
                 (Unix time goes in seconds, not milliseconds)",
                timestamp::format_rfc3339(r.timestamp),
                skew.as_secs()
            ),
        ));
    }
    Ok(readings)
}

fn check_count(n: usize, max: usize) -> Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::bad_request("empty_batch", "the request has no readings"));
    }
    if n > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_readings",
            format!("{n} readings in one request, the limit is {max}"),
        ));
    }
    Ok(())
}

fn seconds_to_micros(s: f64) -> Option<i64> {
    timestamp::seconds(s)
}

async fn ingest(
    st: AppState,
    headers: HeaderMap,
    body: Body,
    path_stream: Option<String>,
    history: bool,
) -> Result<Response, ApiError> {
    // Admission first: a flood waits (boundedly) without its bodies in memory.
    let permit = admit(&st).await?;
    let bytes = read_body(body, st.config.max_body_bytes).await?;
    let readings = match parse_readings(
        &headers,
        &bytes,
        path_stream.as_deref(),
        st.config.max_readings_per_request,
    )
    .and_then(|r| check_not_future(r, st.config.max_future_skew))
    {
        Ok(r) => r,
        Err(e) => {
            st.registry
                .metrics()
                .readings_rejected
                .with_label_values(&[e.code])
                .inc();
            return Err(e);
        }
    };
    let registry = st.registry.clone();
    let results = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        if history {
            registry.history(&readings)
        } else {
            registry.ingest(&readings)
        }
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("scoring task failed: {e}"),
        )
    })??;
    let out: Vec<ReadingOut> = results.into_iter().map(|(s, v)| reading_out(s, v)).collect();
    if wants_protobuf(&headers) {
        let resp = pb::IngestResponse {
            results: out
                .into_iter()
                .map(|r| pb::ReadingResult {
                    stream: r.stream,
                    timestamp: r.timestamp,
                    score: r.score,
                    anomaly: r.anomaly,
                    phase: r.phase,
                    model_version: r.model_version,
                    expected: r.expected,
                    event_score: r.event_score,
                    incident: r.incident.unwrap_or(0),
                    event: r.event.unwrap_or_default(),
                    suppressed: r.suppressed.unwrap_or_default(),
                    cause: r.cause.unwrap_or_default(),
                })
                .collect(),
        };
        return Ok(([(header::CONTENT_TYPE, "application/x-protobuf")], resp.encode_to_vec()).into_response());
    }
    Ok(Json(IngestOut { results: out }).into_response())
}

/// Waits up to `queue_wait` for a scoring slot; 429 at once when `max_waiters`
/// requests already wait, 503 when the wait runs out.
async fn admit(st: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    use std::sync::atomic::Ordering;
    if let Ok(p) = st.inflight.clone().try_acquire_owned() {
        return Ok(p);
    }
    struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
    impl Drop for Waiting<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    if st.waiters.fetch_add(1, Ordering::Relaxed) >= st.config.max_waiters {
        st.waiters.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                "too many requests waiting; retry shortly",
            )
        });
    }
    let _waiting = Waiting(&st.waiters);
    tokio::time::timeout(st.config.queue_wait, st.inflight.clone().acquire_owned())
        .await
        .map_err(|_| ApiError::overloaded("too many requests in flight; retry shortly"))?
        .map_err(|_| ApiError::overloaded("shutting down"))
}

fn reading_out(stream: String, v: Verdict) -> ReadingOut {
    ReadingOut {
        stream,
        timestamp: timestamp::format_rfc3339(v.timestamp),
        score: v.score,
        anomaly: v.anomaly,
        event_score: v.event_score,
        phase: v.phase.name().to_string(),
        model_version: v.model_version,
        expected: v.expected,
        incident: v.incident,
        event: v.event.map(|e| {
            match e {
                IncidentEvent::Opened(_) => "opened",
                IncidentEvent::Resolved { .. } => "resolved",
            }
            .to_string()
        }),
        suppressed: v.suppressed.map(|s| s.name().to_string()),
        cause: v.cause,
    }
}

async fn ingest_stream(
    State(st): State<AppState>,
    ApiPath(stream): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    ingest(st, headers, body, Some(stream), false).await
}

/// `POST /v1/streams/{stream}/history`: readings known to be normal, learnt before
/// live scoring; the stream then trains.
async fn history_stream(
    State(st): State<AppState>,
    ApiPath(stream): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    ingest(st, headers, body, Some(stream), true).await
}

/// `POST /v1/streams/{stream}/accept`: the stream's recent behaviour is normal.
async fn accept_stream(State(st): State<AppState>, ApiPath(stream): ApiPath<String>) -> Result<Response, ApiError> {
    let (readings, resolved) = blocking(&st.registry, move |r| r.accept(&stream)).await?;
    Ok(Json(serde_json::json!({"accepted_readings": readings, "resolved_incident": resolved})).into_response())
}

async fn ingest_batch(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    ingest(st, headers, body, None, false).await
}

#[derive(Deserialize)]
struct ListQuery {
    after: Option<String>,
    limit: Option<usize>,
}

async fn list_streams(State(st): State<AppState>, ApiQuery(q): ApiQuery<ListQuery>) -> Json<serde_json::Value> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let ids = st.registry.list(q.after.as_deref(), limit);
    let next = (ids.len() == limit).then(|| ids.last().cloned()).flatten();
    Json(serde_json::json!({"streams": ids, "next_after": next, "total": st.registry.len()}))
}

/// Runs a registry call that takes locks on the blocking pool, never on an async
/// worker (a stream's lock may be held for a whole batch).
async fn blocking<T: Send + 'static>(
    registry: &Arc<Registry>,
    f: impl FnOnce(&Registry) -> Result<T, crate::registry::RegistryError> + Send + 'static,
) -> Result<T, ApiError> {
    let registry = registry.clone();
    tokio::task::spawn_blocking(move || f(&registry))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(ApiError::from)
}

async fn get_stream(State(st): State<AppState>, ApiPath(stream): ApiPath<String>) -> Result<Response, ApiError> {
    Ok(Json(blocking(&st.registry, move |r| r.info(&stream)).await?).into_response())
}

#[derive(Deserialize)]
struct PutQuery {
    /// Allow a change that discards the stream's model and readings.
    #[serde(default)]
    reset: bool,
}

/// `PUT` (or `PATCH`) `/v1/streams/{stream}`: a JSON merge patch of the stream's
/// config (an empty body changes nothing); a change of shape needs `?reset=true`.
async fn put_stream(
    State(st): State<AppState>,
    ApiPath(stream): ApiPath<String>,
    ApiQuery(q): ApiQuery<PutQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, st.config.max_body_bytes).await?;
    let patch: serde_json::Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        serde_json::json!({})
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request("invalid_config", format!("invalid config: {e}")))?
    };
    if !patch.is_object() {
        return Err(ApiError::bad_request(
            "invalid_config",
            "the config must be a JSON object",
        ));
    }
    let (created, info) = blocking(&st.registry, move |r| {
        let created = r.patch(&stream, &patch, q.reset)?;
        Ok((created, r.info(&stream)?))
    })
    .await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(info)).into_response())
}

async fn delete_stream(State(st): State<AppState>, ApiPath(stream): ApiPath<String>) -> Result<StatusCode, ApiError> {
    blocking(&st.registry, move |r| r.delete(&stream)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn retrain_stream(State(st): State<AppState>, ApiPath(stream): ApiPath<String>) -> Result<Response, ApiError> {
    blocking(&st.registry, move |r| r.retrain(&stream)).await?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"status": "queued"}))).into_response())
}

#[derive(Deserialize)]
struct AlertsQuery {
    stream: Option<String>,
    since: Option<u64>,
    limit: Option<usize>,
}

async fn list_alerts(State(st): State<AppState>, ApiQuery(q): ApiQuery<AlertsQuery>) -> Json<serde_json::Value> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let alerts: Vec<protocol::AlertOut> = st
        .registry
        .journal()
        .query(q.stream.as_deref(), q.since, limit)
        .iter()
        .map(|a| ws::alert_out(a))
        .collect();
    Json(serde_json::json!({"alerts": alerts, "latest_seq": st.registry.journal().latest_seq()}))
}

/// Largest WebSocket message a client may send (subscribe messages are small).
pub const WS_MAX_MESSAGE: usize = 64 << 10;

async fn alerts_ws(
    State(st): State<AppState>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|e| ApiError::new(e.status(), "websocket_required", e.body_text()))?;
    let gauge = st.registry.metrics().ws_subscribers.clone();
    let slot =
        st.ws_slots.clone().try_acquire_owned().map_err(|_| {
            ApiError::overloaded(format!("subscriber limit ({}) reached", st.config.max_ws_subscribers))
        })?;
    let registry = st.registry.clone();
    let heartbeat = st.config.heartbeat;
    // Clients only send small subscribe messages.
    let upgrade = upgrade.max_message_size(WS_MAX_MESSAGE).max_frame_size(WS_MAX_MESSAGE);
    Ok(upgrade.on_upgrade(move |socket| async move {
        let _slot = slot;
        gauge.inc();
        let (sink, stream) = socket.split();
        let incoming = stream.filter_map(|m| async move {
            match m {
                Ok(Message::Text(t)) => Some(Some(t.to_string())),
                Ok(Message::Close(_)) | Err(_) => Some(None),
                _ => None,
            }
        });
        let outgoing = sink.with(|s: String| async move { Ok::<_, axum::Error>(Message::Text(s.into())) });
        ws::run_subscriber(registry, Box::pin(incoming), Box::pin(outgoing), heartbeat).await;
        gauge.dec();
    }))
}

/// `GET /readyz`: 200 while the service can keep its promises (the log takes
/// writes, the last snapshot round wrote everything), else 503 with the reason.
async fn readyz(State(st): State<AppState>) -> Response {
    match st.registry.storage_ready() {
        Ok(()) => Json(serde_json::json!({"status": "ready"})).into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "not_ready", "reason": why})),
        )
            .into_response(),
    }
}

/// `POST /api/v1/write`: Prometheus remote_write 1.0. Every series is a stream
/// named by its label set; resent samples are taken once; 204 on success, 400 for
/// what Prometheus should drop, 429/503 (with Retry-After) for it to retry.
async fn remote_write(State(st): State<AppState>, body: Body) -> Result<StatusCode, ApiError> {
    let permit = admit(&st).await?;
    let bytes = read_body(body, st.config.max_body_bytes).await?;
    let max = st.config.max_readings_per_request.saturating_mul(10);
    let write = prom::decode(&bytes, max).inspect_err(|e| {
        st.registry
            .metrics()
            .readings_rejected
            .with_label_values(&[e.code])
            .inc();
    })?;
    let m = st.registry.metrics();
    m.remote_write_samples
        .with_label_values(&["stale"])
        .inc_by(write.stale as u64);
    m.remote_write_samples
        .with_label_values(&["not_finite"])
        .inc_by(write.skipped as u64);
    if write.readings.is_empty() {
        return Ok(StatusCode::NO_CONTENT);
    }
    let (scored, resent) = blocking(&st.registry, move |r| {
        let _permit = permit;
        r.ingest_remote(&write.readings, &write.labels)
    })
    .await?;
    m.remote_write_samples
        .with_label_values(&["scored"])
        .inc_by(scored as u64);
    m.remote_write_samples
        .with_label_values(&["resent"])
        .inc_by(resent as u64);
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /metrics/scores`: per stream its score, state, expected and actual value,
/// with the series' labels; scrape it with `honor_labels: true`.
async fn metrics_scores(State(st): State<AppState>) -> Result<Response, ApiError> {
    let registry = st.registry.clone();
    let text = tokio::task::spawn_blocking(move || prom::render_scores(&registry.exported()))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response())
}

async fn metrics(State(st): State<AppState>) -> Response {
    let registry = st.registry.clone();
    // The map's read lock can wait for a writer: not on an async worker.
    let _ = tokio::task::spawn_blocking(move || registry.update_phase_gauges()).await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        st.registry.metrics().render(),
    )
        .into_response()
}

/// Runs the service on `listener` until SIGINT or SIGTERM (or `shutdown` resolves),
/// then stops accepting, finishes in-flight requests and writes a final snapshot.
pub async fn run(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    config: ServerConfig,
    snapshot_interval: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let snapshotter = registry.spawn_snapshotter(snapshot_interval);
    let notifier = alertmanager::spawn(registry.clone(), config.alertmanager.clone());
    let listener = listener::LimitedListener::new(listener, config.max_connections, config.idle_timeout);
    let app = router(registry.clone(), config);
    let signal = async move {
        tokio::select! {
            _ = shutdown => {}
            _ = shutdown_signal() => {}
        }
        tracing::info!("shutting down: finishing requests, writing snapshots");
    };
    axum::serve(listener, app).with_graceful_shutdown(signal).await?;
    snapshotter.abort();
    if let Some(n) = notifier {
        n.abort();
    }
    let r = registry.clone();
    match tokio::task::spawn_blocking(move || r.snapshot()).await {
        Ok(Ok(n)) => tracing::info!(streams = n, "final snapshot written"),
        Ok(Err(e)) => tracing::error!(error = %e, "final snapshot failed"),
        Err(e) => tracing::error!(error = %e, "final snapshot task failed"),
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
