//! Request bodies to readings (JSON or protobuf, checked against the limits and
//! the clock), and verdicts back to wire readings.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use futures_util::StreamExt;
use prost::Message as _;

use super::*;
use crate::detector::{IncidentEvent, Verdict};
use crate::protocol::{IngestIn, ReadingOut, WireTime, pb};
use crate::registry::Reading;
use crate::timestamp;

/// The body as bytes, within the size limit (413 JSON otherwise). Past the limit
/// the rest is read and dropped (up to eight times the limit), so the client
/// finishes sending and reads the 413 instead of a broken connection; memory
/// stays within the limit.
pub(super) async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
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

pub(super) fn wants_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-protobuf"))
}

pub(super) fn is_protobuf(headers: &HeaderMap) -> Result<bool, ApiError> {
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
pub(super) fn parse_readings(
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
pub(super) fn check_not_future(readings: Vec<Reading>, skew: Duration) -> Result<Vec<Reading>, ApiError> {
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

pub(super) fn check_count(n: usize, max: usize) -> Result<(), ApiError> {
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

pub(super) fn seconds_to_micros(s: f64) -> Option<i64> {
    timestamp::seconds(s)
}

pub(super) fn reading_out(stream: String, v: Verdict) -> ReadingOut {
    ReadingOut {
        stream,
        timestamp: timestamp::format_rfc3339(v.timestamp),
        score: v.judged_score(),
        anomaly: v.anomaly,
        event_score: v.event_score,
        phase: v.phase.name().to_string(),
        readings_needed: v.warming_up(),
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
