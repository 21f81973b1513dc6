//! The only module that knows HTTP: the axum router, handlers, WebSocket, metrics
//! endpoint, auth and limits. It converts wire DTOs to domain types and back, runs
//! scoring off the async workers (`spawn_blocking`, bounded by a semaphore), and
//! answers overload with 503 + Retry-After.

pub mod alertmanager;
pub mod backfill;
pub mod error;
pub mod forward;
pub mod listener;
pub mod prom;
pub mod ws;

mod console;
mod decode;
mod handlers;
mod layers;
mod shards;
mod views;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::{get, post};
use axum::{Json, Router};

use tokio::sync::Semaphore;

pub use error::ApiError;

use crate::registry::Registry;

pub use decode::decode_ingest;
use decode::*;
pub use handlers::WS_MAX_MESSAGE;
use handlers::*;
use layers::*;
use views::*;

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
    /// Where new remote_write streams fetch their past (no URL: nowhere).
    pub backfill: backfill::BackfillConfig,
    /// The nodes of a sharded deployment, for passing requests on to a stream's
    /// owner (empty: never; a request for another node's stream is then 421).
    pub nodes: forward::NodeMap,
    /// Largest shard archive `POST /v1/shards/{n}/import` takes, in bytes.
    pub max_import_bytes: usize,
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
            max_import_bytes: 1 << 30,
            alertmanager: alertmanager::AlertmanagerConfig::default(),
            backfill: backfill::BackfillConfig::default(),
            nodes: forward::NodeMap::default(),
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
    /// The backfill queue, when a Prometheus URL is set and the service runs.
    backfill: Option<backfill::Backfill>,
    /// Passes requests for other nodes' streams on, when the nodes are known.
    forwarder: Option<forward::Forwarder>,
    /// One shard import at a time (each holds its archive in memory).
    imports: Arc<Semaphore>,
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
    app(registry, config, None)
}

fn app(registry: Arc<Registry>, config: ServerConfig, backfill: Option<backfill::Backfill>) -> Router {
    let state = AppState {
        backfill,
        forwarder: forward::Forwarder::new(&config.nodes, config.request_timeout / 2),
        inflight: Arc::new(Semaphore::new(config.max_inflight.max(1))),
        ws_slots: Arc::new(Semaphore::new(config.max_ws_subscribers)),
        imports: Arc::new(Semaphore::new(1)),
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
        .route("/v1/streams/{stream}/reset", post(reset_stream))
        .route("/v1/streams/{stream}/recent", get(recent_stream))
        .route("/v1/streams/{stream}/chart.svg", get(chart_stream))
        .route("/v1/readings", post(ingest_batch))
        .route("/v1/alerts", get(list_alerts))
        .route("/v1/alerts/ws", get(alerts_ws))
        .route("/api/v1/write", post(remote_write))
        .merge(shards::routes())
        // Inner first: a request is authenticated before it is passed on.
        .route_layer(middleware::from_fn_with_state(state.clone(), forward::forward))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(v1)
        .merge(console::routes())
        .route("/metrics", get(metrics))
        .route("/metrics/scores", get(metrics_scores))
        .route("/healthz", get(|| async { Json(serde_json::json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .with_state(state)
}

/// How often, at most, streams whose series ended are looked for.
const RETIRE_EVERY: Duration = Duration::from_secs(30);

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
    // Often enough to retire a stream within a quarter of its delay past it.
    let delay = [
        registry.config().retire_stale_after,
        registry.config().retire_idle_after,
    ];
    let every = delay
        .into_iter()
        .flatten()
        .min()
        .map_or(RETIRE_EVERY, |d| (d / 4).clamp(Duration::from_secs(1), RETIRE_EVERY));
    let retirer = registry.spawn_retirer(every);
    let notifier = alertmanager::spawn(registry.clone(), config.alertmanager.clone());
    let (backfill, backfiller) = backfill::spawn(registry.clone(), config.backfill.clone()).unzip();
    let listener = listener::LimitedListener::new(listener, config.max_connections, config.idle_timeout);
    let app = app(registry.clone(), config, backfill);
    let signal = async move {
        tokio::select! {
            _ = shutdown => {}
            _ = shutdown_signal() => {}
        }
        tracing::info!("shutting down: finishing requests, writing snapshots");
    };
    axum::serve(listener, app).with_graceful_shutdown(signal).await?;
    snapshotter.abort();
    retirer.abort();
    for task in notifier.into_iter().chain(backfiller) {
        task.abort();
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
