//! The API's handlers: ingest and history, the streams' resources, alerts (JSON
//! and WebSocket), readiness, remote_write and the metrics endpoints.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use serde::Deserialize;

use super::*;
use crate::protocol::{IngestOut, ReadingOut, pb};

pub(super) async fn ingest(
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
                    readings_needed: r.readings_needed.unwrap_or(0),
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

pub(super) async fn ingest_stream(
    State(st): State<AppState>,
    ApiPath(stream): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    ingest(st, headers, body, Some(stream), false).await
}

/// `POST /v1/streams/{stream}/history`: readings known to be normal, learnt before
/// live scoring; the stream then trains.
pub(super) async fn history_stream(
    State(st): State<AppState>,
    ApiPath(stream): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    ingest(st, headers, body, Some(stream), true).await
}

/// `POST /v1/streams/{stream}/accept`: the stream's recent behaviour is normal.
pub(super) async fn accept_stream(
    State(st): State<AppState>,
    ApiPath(stream): ApiPath<String>,
) -> Result<Response, ApiError> {
    let (readings, resolved) = blocking(&st.registry, move |r| r.accept(&stream)).await?;
    Ok(Json(serde_json::json!({"accepted_readings": readings, "resolved_incident": resolved})).into_response())
}

pub(super) async fn ingest_batch(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    ingest(st, headers, body, None, false).await
}

pub(super) async fn get_stream(
    State(st): State<AppState>,
    ApiPath(stream): ApiPath<String>,
) -> Result<Response, ApiError> {
    Ok(Json(blocking(&st.registry, move |r| r.info(&stream)).await?).into_response())
}

#[derive(Deserialize)]
pub(super) struct PutQuery {
    /// Allow a change that discards the stream's model and readings.
    #[serde(default)]
    reset: bool,
}

/// `PUT` (or `PATCH`) `/v1/streams/{stream}`: a JSON merge patch of the stream's
/// config (an empty body changes nothing); a change of shape needs `?reset=true`.
pub(super) async fn put_stream(
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

pub(super) async fn delete_stream(
    State(st): State<AppState>,
    ApiPath(stream): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    blocking(&st.registry, move |r| r.delete(&stream)).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn retrain_stream(
    State(st): State<AppState>,
    ApiPath(stream): ApiPath<String>,
) -> Result<Response, ApiError> {
    blocking(&st.registry, move |r| r.retrain(&stream)).await?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"status": "queued"}))).into_response())
}

/// Largest WebSocket message a client may send (subscribe messages are small).
pub const WS_MAX_MESSAGE: usize = 64 << 10;

pub(super) async fn alerts_ws(
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
    // A browser that offers subprotocols (the console's `anomalyd`, beside its
    // token) must have one chosen, or it drops the connection.
    let upgrade = upgrade
        .protocols(["anomalyd"])
        .max_message_size(WS_MAX_MESSAGE)
        .max_frame_size(WS_MAX_MESSAGE);
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
pub(super) async fn readyz(State(st): State<AppState>) -> Response {
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
pub(super) async fn remote_write(State(st): State<AppState>, body: Body) -> Result<StatusCode, ApiError> {
    let permit = admit(&st).await?;
    let bytes = read_body(body, st.config.max_body_bytes).await?;
    let max = st.config.max_readings_per_request.saturating_mul(10);
    let mut write = prom::decode(&bytes, max).inspect_err(|e| {
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
    let away = forward::split_remote(&st.registry, &mut write);
    if write.readings.is_empty() && write.ended.is_empty() {
        return send_away(&st, away).await;
    }
    let wants_past = st.backfill.is_some();
    let (taken, new_streams) = blocking(&st.registry, move |r| {
        let _permit = permit;
        let taken = if write.readings.is_empty() {
            Default::default()
        } else {
            r.ingest_remote(&write.readings, &write.labels)?
        };
        r.mark_stale(write.ended.iter().map(String::as_str));
        // New series learn their past from Prometheus while they warm up.
        let ids = write.labels.keys().map(String::as_str);
        let new_streams = if wants_past {
            r.backfill_candidates(ids)
        } else {
            Vec::new()
        };
        Ok((taken, new_streams))
    })
    .await?;
    if let Some(b) = &st.backfill {
        b.offer(new_streams);
    }
    let outcomes = [
        ("scored", taken.scored),
        ("resent", taken.resent),
        ("stream_limit", taken.refused),
        ("not_owned", taken.not_owned),
    ];
    for (outcome, n) in outcomes {
        m.remote_write_samples.with_label_values(&[outcome]).inc_by(n as u64);
    }
    if taken.not_owned > 0 {
        tracing::warn!(
            samples = taken.not_owned,
            "series of shards this node does not own left out (check the write_relabel_configs)"
        );
    }
    if taken.refused > 0 {
        // Take what fits, refuse the rest: a 4xx would make Prometheus drop the
        // samples of the streams that fit too, a 5xx resend the batch forever.
        tracing::warn!(
            samples = taken.refused,
            max_streams = st.registry.config().max_streams,
            "new series left out at the stream limit"
        );
    }
    send_away(&st, away).await
}

/// The end of a remote_write batch whose series were all taken here, or whose
/// moved shards' samples are passed on: 204 once every sample is taken, else
/// 503 so that Prometheus sends the batch again (what was taken is then
/// skipped as resent, here and where the samples went).
async fn send_away(st: &AppState, away: forward::Away) -> Result<StatusCode, ApiError> {
    let m = st.registry.metrics();
    let mut again = away.moving > 0;
    m.remote_write_samples
        .with_label_values(&["shard_moving"])
        .inc_by(away.moving as u64);
    for (url, (readings, labels)) in &away.moved {
        let sent = match &st.forwarder {
            Some(f) => forward::pass_on_samples(f, url, readings, labels).await,
            None => false,
        };
        again |= !sent;
        let outcome = if sent { "forwarded" } else { "forward_failed" };
        m.remote_write_samples
            .with_label_values(&[outcome])
            .inc_by(readings.len() as u64);
    }
    if again {
        return Err(ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shard_moving",
                "samples of a shard that is moving (or of one that moved, whose new node did not answer) were not taken; send them again",
            )
        });
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /metrics/scores`: per stream its score, state, expected and actual value,
/// with the series' labels; scrape it with `honor_labels: true`.
pub(super) async fn metrics_scores(State(st): State<AppState>) -> Result<Response, ApiError> {
    let registry = st.registry.clone();
    let text = tokio::task::spawn_blocking(move || {
        let shards = registry.config().shards.as_ref().map(|o| &o.function);
        prom::render_scores(&registry.exported(), shards)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response())
}

pub(super) async fn metrics(State(st): State<AppState>) -> Response {
    let registry = st.registry.clone();
    // The map's read lock can wait for a writer: not on an async worker.
    let _ = tokio::task::spawn_blocking(move || registry.update_phase_gauges()).await;
    let m = st.registry.metrics();
    let free = st.inflight.available_permits();
    m.scoring_slots_in_use
        .set(st.config.max_inflight.max(1).saturating_sub(free) as i64);
    m.scoring_waiters
        .set(st.waiters.load(std::sync::atomic::Ordering::Relaxed) as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        st.registry.metrics().render(),
    )
        .into_response()
}
