//! `/v1/shards`: a sharded node's shard table, and the steps of moving a shard
//! (release, export, import, forget, reclaim) that `anomalyd shards move` takes.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiPath, ApiQuery, AppState, blocking, read_body};

/// `GET /v1/shards`: the shards owned, moving and moved, and the streams held
/// per shard.
pub(super) async fn list(State(st): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let (table, streams) = blocking(&st.registry, |r| {
        r.shard_table().ok_or_else(|| {
            crate::registry::RegistryError::ShardState("this node is not sharded (no --shard-count)".into())
        })
    })
    .await?;
    Ok(Json(json!({
        "count": table.count,
        "owned": table.owned,
        "moving": table.moving,
        "moved": table.moved,
        "streams": streams,
    })))
}

/// `POST /v1/shards/{n}/release` (`{"to": "http://node:8080"}`, optional):
/// stop taking shard n (421 for its streams from now on) so that it can be
/// exported and moved; a second release to another node is refused (409).
pub(super) async fn release(
    State(st): State<AppState>,
    ApiPath(shard): ApiPath<u32>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let to = target(body).await?;
    let n = blocking(&st.registry, move |r| r.release_shard(shard, to)).await?;
    Ok(Json(json!({"shard": shard, "state": "moving", "streams": n})))
}

/// `POST /v1/shards/{n}/reclaim`: take a released shard back.
pub(super) async fn reclaim(
    State(st): State<AppState>,
    ApiPath(shard): ApiPath<u32>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let n = blocking(&st.registry, move |r| r.reclaim_shard(shard)).await?;
    Ok(Json(json!({"shard": shard, "state": "owned", "streams": n})))
}

#[derive(Deserialize, Default)]
struct TargetBody {
    /// The base URL of the node the shard goes (or went) to.
    to: Option<String>,
}

/// The optional `{"to": "http://node:8080"}` of a release or a forget.
async fn target(body: Body) -> Result<Option<String>, ApiError> {
    let bytes = read_body(body, 64 * 1024).await?;
    let b: TargetBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        TargetBody::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?
    };
    if let Some(to) = &b.to
        && !(to.starts_with("http://") || to.starts_with("https://"))
    {
        return Err(ApiError::bad_request(
            "invalid_url",
            format!("to: {to:?} must start with http://"),
        ));
    }
    Ok(b.to.map(|u| u.trim_end_matches('/').to_string()))
}

/// `POST /v1/shards/{n}/forget` (`{"to": "http://node:8080"}`): end a move
/// from here; the shard's parked streams and files go, requests for it are
/// passed on to `to`.
pub(super) async fn forget(
    State(st): State<AppState>,
    ApiPath(shard): ApiPath<u32>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let to = target(body).await?;
    let n = blocking(&st.registry, move |r| r.forget_shard(shard, to)).await?;
    Ok(Json(json!({"shard": shard, "state": "moved", "streams": n})))
}

/// `GET /v1/shards/{n}/export`: the shard as one checksummed archive, streamed
/// (a released shard's parked streams, or a copy of an owned one's).
pub(super) async fn export(State(st): State<AppState>, ApiPath(shard): ApiPath<u32>) -> Result<Response, ApiError> {
    let (table, _) = st.registry.shard_table().ok_or_else(|| {
        ApiError::from(crate::registry::RegistryError::ShardState(
            "this node is not sharded (no --shard-count)".into(),
        ))
    })?;
    if shard >= table.count {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("shard {shard} does not exist (the deployment has {})", table.count),
        ));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(8);
    let registry = st.registry.clone();
    tokio::task::spawn_blocking(move || {
        let sent = registry.export_shard(shard, |chunk| tx.blocking_send(Ok(chunk)).is_ok());
        if let Err(e) = sent {
            // The body ends early: the archive's checksum tells the reader.
            tracing::error!(shard, error = %e, "shard export failed");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let body = Body::from_stream(chunks);
    Ok((
        [
            (header::CONTENT_TYPE, "application/vnd.anomalyd.shard".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"shard-{shard}.anomshard\""),
            ),
        ],
        body,
    )
        .into_response())
}

#[derive(Deserialize, Default)]
pub(super) struct ImportQuery {
    /// An archived stream replaces one this node already has.
    #[serde(default)]
    overwrite: bool,
}

/// `POST /v1/shards/{n}/import[?overwrite=true]`: take shard n from an archive;
/// its streams are durable here before the answer, and the node owns it. One
/// import at a time (429 `import_busy` for another).
pub(super) async fn import(
    State(st): State<AppState>,
    ApiPath(shard): ApiPath<u32>,
    ApiQuery(q): ApiQuery<ImportQuery>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    // An archive is held whole: one import at a time bounds the memory.
    let Ok(_one) = st.imports.clone().try_acquire_owned() else {
        return Err(ApiError {
            retry_after: Some(5),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "import_busy",
                "another shard import is running on this node; send this one when it is done",
            )
        });
    };
    let bytes = read_body(body, st.config.max_import_bytes).await?;
    let done = blocking(&st.registry, move |r| r.import_shard(shard, &bytes, q.overwrite)).await?;
    Ok(Json(json!({
        "shard": shard,
        "state": "owned",
        "streams": done.streams,
        "skipped": done.skipped,
        "open_incidents": done.open_incidents,
    })))
}

/// The routes, under the API's auth.
pub(super) fn routes() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/v1/shards", get(list))
        .route("/v1/shards/{shard}/release", post(release))
        .route("/v1/shards/{shard}/reclaim", post(reclaim))
        .route("/v1/shards/{shard}/forget", post(forget))
        .route("/v1/shards/{shard}/export", get(export))
        .route("/v1/shards/{shard}/import", post(import))
}
