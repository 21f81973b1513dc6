//! What every request passes through: request ids and counting, the bearer token,
//! and admission to a scoring slot.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;

use super::*;

/// Request ids: a per-process prefix and a counter (or the client's own
/// `x-request-id`, when it is short and printable).
pub(super) fn request_id(headers: &HeaderMap) -> String {
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

pub(super) async fn count_requests(State(st): State<AppState>, req: Request, next: Next) -> Response {
    use tracing::Instrument;
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let id = request_id(req.headers());
    let in_flight = &st.registry.metrics().http_requests_in_flight;
    in_flight.inc();
    let _served = scopeguard(|| in_flight.dec());
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

pub(super) async fn auth(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &st.config.auth_token {
        let header_ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
        // Browsers cannot set headers on WebSockets: there the token may come as
        // a subprotocol (`bearer.<base64url of the token>`, as the console sends
        // it) or as `?access_token=`, and only there (elsewhere a query would end
        // up in proxies' access logs).
        let ws = req.uri().path() == "/v1/alerts/ws";
        let query_ok = ws
            && req.uri().query().is_some_and(|q| {
                q.split('&').any(|kv| {
                    kv.strip_prefix("access_token=")
                        .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()))
                })
            });
        let protocol_ok =
            ws && subprotocol_token(req.headers()).is_some_and(|t| constant_time_eq(&t, token.as_bytes()));
        if !header_ok && !query_ok && !protocol_ok {
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

/// The token a WebSocket client offers as the subprotocol `bearer.<base64url>`.
fn subprotocol_token(headers: &HeaderMap) -> Option<Vec<u8>> {
    use base64::Engine;
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix("bearer."))
        .and_then(|b| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b).ok())
}

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Waits up to `queue_wait` for a scoring slot; 429 at once when `max_waiters`
/// requests already wait, 503 when the wait runs out.
pub(super) async fn admit(st: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    use std::sync::atomic::Ordering;
    if let Ok(p) = st.inflight.clone().try_acquire_owned() {
        return Ok(p);
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
    let _waiting = scopeguard(|| {
        st.waiters.fetch_sub(1, Ordering::Relaxed);
    });
    tokio::time::timeout(st.config.queue_wait, st.inflight.clone().acquire_owned())
        .await
        .map_err(|_| ApiError::overloaded("too many requests in flight; retry shortly"))?
        .map_err(|_| ApiError::overloaded("shutting down"))
}

/// Runs `f` when dropped (on every way out of the scope, cancellation included).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
