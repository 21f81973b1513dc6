//! Requests for a stream another node owns, passed on to it: a router that
//! cannot compute the owner (a GET for a remote_write stream that nginx placed
//! by its id, a client that talks to any node) still reaches the stream, at the
//! cost of one hop, as Thanos receive and Mimir's distributor do. The owner comes
//! from the owner function and the static node list (`--node-urls`, in ordinal
//! order, each node owning its `--node-ordinal` share). A request is passed on
//! once at most (`x-anomalyd-forwarded`); without a route to the owner, or on a
//! second hop, the node answers 421 naming the shard.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};

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
    /// A forwarder to `map`'s nodes (None when it lists none).
    pub fn new(map: &NodeMap, timeout: Duration) -> Option<Forwarder> {
        if map.urls.is_empty() {
            return None;
        }
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

/// Passes a request for another node's stream on to it (once), before anything
/// here handles it; others go on.
pub(super) async fn forward(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let Some(ownership) = st.registry.config().shards.as_ref() else {
        return next.run(req).await;
    };
    let Some(stream) = stream_of(req.uri().path()) else {
        return next.run(req).await;
    };
    let Some(shard) = ownership.foreign(&stream) else {
        return next.run(req).await;
    };
    let (Some(f), false) = (&st.forwarder, req.headers().contains_key(FORWARDED)) else {
        return next.run(req).await;
    };
    let owner = crate::shard::node_of(shard, f.urls.len() as u32, ownership.function.count);
    let Some(url) = f.urls.get(owner as usize) else {
        return next.run(req).await;
    };
    st.registry.metrics().requests_forwarded.inc();
    match pass_on(f, url, req, st.config.max_body_bytes).await {
        Ok(resp) => resp,
        Err(why) => ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::BAD_GATEWAY,
                "owner_unreachable",
                format!("stream {stream:?} belongs to shard {shard} on node {owner}, which did not answer: {why}"),
            )
        }
        .into_response(),
    }
}

/// Sends `req` to `base` and returns its answer.
async fn pass_on(f: &Forwarder, base: &str, req: Request, max_body: usize) -> Result<Response, String> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, max_body).await.map_err(|e| e.to_string())?;
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).map_err(|e| e.to_string())?;
    let mut out = f.client.request(method, format!("{base}{path}")).header(FORWARDED, "1");
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
