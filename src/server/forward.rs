//! Requests for a stream another node owns, passed on to it: a router that
//! cannot compute the owner (a GET for a remote_write stream that nginx placed
//! by its id, a client that talks to any node) still reaches the stream, at the
//! cost of one hop, as Thanos receive and Mimir's distributor do. The owner comes
//! from the owner function and the static node list (`--node-urls`, in ordinal
//! order, each node owning its `--node-ordinal` share). A request is passed on
//! once at most (`x-anomalyd-forwarded` counts the hops); without a route to the
//! owner, or on a second hop, the node answers 421 naming the shard.
//!
//! A shard that moved from this node is the exception: this node knows where it
//! went, so requests for it (and the remote_write samples of its series, which
//! Prometheus sends here until its config changes) go there, even as a second
//! hop (a node that still routes by the old layout sent them here).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use std::collections::HashMap;

use super::{ApiError, AppState};
use crate::registry::{Reading, Registry, Route, SeriesLabels};

/// Marks a request one node passed on to another.
pub const FORWARDED: &str = "x-anomalyd-forwarded";

/// Where each node is, for passing requests on.
#[derive(Clone, Debug, Default)]
pub struct NodeMap {
    /// Each node's base URL, in ordinal order (empty: no forwarding).
    pub urls: Vec<String>,
}

/// The HTTP client that passes requests on.
#[derive(Clone)]
pub struct Forwarder {
    client: reqwest::Client,
    urls: Arc<Vec<String>>,
}

impl Forwarder {
    /// A forwarder to `map`'s nodes and to where shards moved.
    pub fn new(map: &NodeMap, timeout: Duration) -> Option<Forwarder> {
        let client = reqwest::Client::builder().timeout(timeout).build().ok()?;
        let urls = map.urls.iter().map(|u| u.trim_end_matches('/').to_string()).collect();
        Some(Forwarder {
            client,
            urls: Arc::new(urls),
        })
    }
}

/// The stream a `/v1/streams/{stream}...` path names (percent-decoded).
fn stream_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v1/streams/")?;
    let raw = rest.split('/').next().filter(|s| !s.is_empty())?;
    percent_decode(raw)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Hops a request took so far.
fn hops(req: &Request) -> u32 {
    req.headers()
        .get(FORWARDED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Passes a request for another node's stream on to it (once; twice when it
/// moved from here), before anything here handles it; others go on.
pub(super) async fn forward(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let Some(stream) = stream_of(req.uri().path()) else {
        return next.run(req).await;
    };
    let Some(f) = &st.forwarder else {
        return next.run(req).await;
    };
    let (shard, target, owner) = match st.registry.route(&stream) {
        Route::Here | Route::Moving(_) => return next.run(req).await,
        Route::Moved(shard, url) if hops(&req) < 2 => (shard, url.clone(), url),
        Route::Elsewhere(shard) if hops(&req) == 0 => {
            let Some(count) = st.registry.config().shards.as_ref().map(|o| o.function.count) else {
                return next.run(req).await;
            };
            let node = crate::shard::node_of(shard, f.urls.len() as u32, count);
            let Some(url) = f.urls.get(node as usize) else {
                return next.run(req).await;
            };
            (shard, url.clone(), format!("node {node}"))
        }
        _ => return next.run(req).await,
    };
    st.registry.metrics().requests_forwarded.inc();
    match pass_on(f, &target, req, st.config.max_body_bytes).await {
        Ok(resp) => resp,
        Err(why) => ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::BAD_GATEWAY,
                "owner_unreachable",
                format!("stream {stream:?} belongs to shard {shard} on {owner}, which did not answer: {why}"),
            )
        }
        .into_response(),
    }
}

/// The samples of a remote_write batch this node does not take itself: those of
/// shards moving away (`moving`, to be sent again) and of shards that moved,
/// by where they went.
#[derive(Default)]
pub(super) struct Away {
    pub moving: usize,
    pub moved: HashMap<String, (Vec<Reading>, SeriesLabels)>,
}

/// Takes out of `write` the samples of series whose shard is moving or moved.
pub(super) fn split_remote(registry: &Registry, write: &mut super::prom::RemoteWrite) -> Away {
    let mut away = Away::default();
    // The common case: no shard on its way anywhere, nothing to look up.
    if !registry.shards_in_motion() {
        return away;
    }
    let routes: HashMap<String, Route> = write
        .labels
        .keys()
        .map(|id| (id.clone(), registry.route(id)))
        .filter(|(_, r)| matches!(r, Route::Moving(_) | Route::Moved(..)))
        .collect();
    if routes.is_empty() {
        return away;
    }
    write.readings.retain(|r| match routes.get(&r.stream) {
        Some(Route::Moving(_)) => {
            away.moving += 1;
            false
        }
        Some(Route::Moved(_, url)) => {
            let (readings, labels) = away.moved.entry(url.clone()).or_default();
            if let Some(l) = write.labels.get(&r.stream) {
                labels.entry(r.stream.clone()).or_insert_with(|| l.clone());
            }
            readings.push(r.clone());
            false
        }
        _ => true,
    });
    write.labels.retain(|id, _| !routes.contains_key(id));
    away
}

/// Sends remote_write samples on to the node their shard moved to; whether it
/// took them.
pub(super) async fn pass_on_samples(f: &Forwarder, base: &str, readings: &[Reading], labels: &SeriesLabels) -> bool {
    let body = super::prom::encode(readings, labels);
    let sent = f
        .client
        .post(format!("{}/api/v1/write", base.trim_end_matches('/')))
        .header(FORWARDED, "1")
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "snappy")
        .header("x-prometheus-remote-write-version", "0.1.0")
        .body(body)
        .send()
        .await;
    matches!(sent, Ok(r) if r.status().is_success())
}

/// Sends `req` to `base` and returns its answer.
async fn pass_on(f: &Forwarder, base: &str, req: Request, max_body: usize) -> Result<Response, String> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, max_body).await.map_err(|e| e.to_string())?;
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).map_err(|e| e.to_string())?;
    let hops = parts
        .headers
        .get(FORWARDED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0);
    let base = base.trim_end_matches('/');
    let mut out = f
        .client
        .request(method, format!("{base}{path}"))
        .header(FORWARDED, (hops + 1).to_string());
    for name in [
        "authorization",
        "content-type",
        "content-encoding",
        "accept",
        "x-request-id",
    ] {
        if let Some(v) = parts.headers.get(name).and_then(|v| v.to_str().ok()) {
            out = out.header(name, v);
        }
    }
    let resp = out.body(bytes).send().await.map_err(|e| e.to_string())?;
    let status = StatusCode::from_u16(resp.status().as_u16()).map_err(|e| e.to_string())?;
    let content_type = resp.headers().get("content-type").cloned();
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    let mut answer = (status, Body::from(body)).into_response();
    if let Some(ct) = content_type.and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()) {
        answer.headers_mut().insert("content-type", ct);
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_comes_from_the_path_decoded() {
        assert_eq!(stream_of("/v1/streams/web-1/readings").as_deref(), Some("web-1"));
        assert_eq!(
            stream_of("/v1/streams/up%7Bjob%3D%22a%22%7D").as_deref(),
            Some("up{job=\"a\"}")
        );
        assert_eq!(stream_of("/v1/streams/"), None);
        assert_eq!(stream_of("/v1/alerts"), None);
        assert_eq!(stream_of("/v1/streams/%zz"), None);
    }
}
