//! What the console and charts read: the streams page (a search with a summary
//! of each stream), a stream's recent readings and its chart, the alert journal
//! newest first; and the reset action.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::*;
use crate::chart;
use crate::detector::recent::RECENT_READINGS;
use crate::protocol;

#[derive(Deserialize)]
pub(super) struct ListQuery {
    after: Option<String>,
    limit: Option<usize>,
    /// Only ids holding this text (a glob when it holds `*`).
    q: Option<String>,
    /// A summary of each stream instead of its id alone.
    #[serde(default)]
    detail: bool,
}

/// `GET /v1/streams`: ids in order, a page at a time (`after`, `limit`), those
/// matching `q`; with `detail=true` each with its summary.
pub(super) async fn list_streams(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let pattern = q.q.filter(|p| !p.is_empty());
    blocking(&st.registry, move |r| {
        let (ids, total) = r.search(pattern.as_deref(), q.after.as_deref(), limit);
        let next = (ids.len() == limit).then(|| ids.last().cloned()).flatten();
        let streams = if q.detail {
            serde_json::to_value(r.summaries(&ids)).expect("summaries serialise")
        } else {
            serde_json::to_value(&ids).expect("ids serialise")
        };
        Ok(Json(
            serde_json::json!({"streams": streams, "next_after": next, "total": total}),
        ))
    })
    .await
}

#[derive(Deserialize)]
pub(super) struct RecentQuery {
    limit: Option<usize>,
    /// Chart: the features to draw, comma-separated indices.
    features: Option<String>,
}

impl RecentQuery {
    fn limit(&self) -> usize {
        self.limit.unwrap_or(RECENT_READINGS).clamp(1, RECENT_READINGS)
    }
}

/// `GET /v1/streams/{stream}/recent`: its newest readings (at most 128) with
/// score, state, incident flag and expectation, and the band of its usual.
pub(super) async fn recent_stream(
    State(st): State<AppState>,
    ApiPath(stream): ApiPath<String>,
    ApiQuery(q): ApiQuery<RecentQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit();
    Ok(Json(blocking(&st.registry, move |r| r.recent(&stream, limit)).await?).into_response())
}

/// `GET /v1/streams/{stream}/chart.svg`: its recent readings drawn (the chart of
/// `anomalyd replay --plot`).
pub(super) async fn chart_stream(
    State(st): State<AppState>,
    ApiPath(stream): ApiPath<String>,
    ApiQuery(q): ApiQuery<RecentQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit();
    let view = blocking(&st.registry, move |r| r.recent(&stream, limit)).await?;
    let d = view.band.len();
    let features = match &q.features {
        Some(list) => parse_features(list, d)?,
        None => chart::pick_features(&view.points, &view.band, chart::MAX_PANELS),
    };
    let svg = chart::render(&chart::Chart {
        title: &view.stream,
        points: &view.points,
        band: &view.band,
        threshold: view.threshold,
        names: &[],
        features: &features,
    });
    Ok((
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        svg,
    )
        .into_response())
}

/// Comma-separated feature indices below `d`, at most [`chart::MAX_PANELS`].
fn parse_features(list: &str, d: usize) -> Result<Vec<usize>, ApiError> {
    let bad = |why: String| ApiError::bad_request("invalid_query", why);
    let mut out = Vec::new();
    for part in list.split(',').filter(|p| !p.trim().is_empty()) {
        let f: usize = part
            .trim()
            .parse()
            .map_err(|_| bad(format!("features: {part:?} is not an index")))?;
        if f >= d {
            return Err(bad(format!("features: the stream has {d} features, no feature {f}")));
        }
        if !out.contains(&f) {
            out.push(f);
        }
    }
    if out.len() > chart::MAX_PANELS {
        return Err(bad(format!("features: at most {} at once", chart::MAX_PANELS)));
    }
    Ok(out)
}

/// `POST /v1/streams/{stream}/reset`: starts the stream over under its config.
pub(super) async fn reset_stream(
    State(st): State<AppState>,
    ApiPath(stream): ApiPath<String>,
) -> Result<Response, ApiError> {
    let resolved = blocking(&st.registry, move |r| r.reset(&stream)).await?;
    Ok(Json(serde_json::json!({"status": "reset", "resolved_incident": resolved})).into_response())
}

#[derive(Deserialize)]
pub(super) struct AlertsQuery {
    stream: Option<String>,
    since: Option<u64>,
    limit: Option<usize>,
    /// Newest first, `stream` a glob, `before` a sequence number.
    #[serde(default)]
    newest: bool,
    before: Option<u64>,
}

/// `GET /v1/alerts`: the journal from `since` on (oldest first), or with
/// `newest=true` the newest before `before` (newest first).
pub(super) async fn list_alerts(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<AlertsQuery>,
) -> Json<serde_json::Value> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let journal = st.registry.journal();
    let found = if q.newest {
        journal.newest(q.stream.as_deref(), q.before, limit)
    } else {
        journal.query(q.stream.as_deref(), q.since, limit)
    };
    let alerts: Vec<protocol::AlertOut> = found.iter().map(|a| ws::alert_out(a)).collect();
    Json(serde_json::json!({"alerts": alerts, "latest_seq": journal.latest_seq()}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn chart_features_are_checked_against_the_stream() {
        assert_eq!(parse_features("2, 0,2", 3).unwrap(), vec![2, 0]);
        assert_eq!(parse_features("", 3).unwrap(), Vec::<usize>::new());
        assert_eq!(parse_features("3", 3).unwrap_err().status, StatusCode::BAD_REQUEST);
        assert!(parse_features("x", 3).is_err());
        assert!(parse_features("0,1,2,3,4", 9).is_err());
    }
}
