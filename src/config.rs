//! The service's configuration: `anomalyd.toml` (optional), `ANOMALYD_*` environment
//! variables and command-line flags, in rising precedence, checked into a
//! [`ServeConfig`] with clear messages.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::detector::DetectorConfig;
use crate::registry::RegistryConfig;
use crate::server::ServerConfig;

/// The file's layout (every field optional); flags and environment fill the same
/// type, and win.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeFile {
    /// Address to listen on.
    pub listen: Option<String>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// File holding the bearer token.
    pub auth_token_file: Option<PathBuf>,
    /// Largest request body.
    pub max_body_bytes: Option<usize>,
    /// Most readings per request.
    pub max_readings_per_request: Option<usize>,
    /// Most streams.
    pub max_streams: Option<usize>,
    /// Most WebSocket subscribers.
    pub max_ws_subscribers: Option<usize>,
    /// Seconds between snapshots (checkpoints of the write-ahead log).
    pub snapshot_interval_secs: Option<f64>,
    /// When the write-ahead log is synced: `always` (before each answer) or `never`.
    pub wal_sync: Option<crate::storage::wal::SyncPolicy>,
    /// Most streams one snapshot round writes [default: 10000].
    pub checkpoint_max_streams: Option<usize>,
    /// How far ahead of the server's clock a reading's timestamp may be, in seconds.
    pub max_future_skew_secs: Option<f64>,
    /// Training threads.
    pub training_threads: Option<usize>,
    /// Scoring requests in flight at once [default: 4 per core].
    pub max_inflight: Option<usize>,
    /// Requests that may wait for a scoring slot [default: 16 per core]; more get 429.
    pub max_waiters: Option<usize>,
    /// Open connections at once [default: 4096].
    pub max_connections: Option<usize>,
    /// Alertmanagers that receive incidents (`http://host:9093`).
    pub alertmanager_urls: Option<Vec<String>>,
    /// Seconds between re-sends of firing alerts [default: 60].
    pub alertmanager_resend_secs: Option<f64>,
    /// This service's URL as Alertmanager's users reach it (links in alerts).
    pub external_url: Option<String>,
    /// `human` or `json`.
    pub log_format: Option<String>,
    /// Default detector config of new streams.
    pub detector: Option<DetectorConfig>,
}

/// The checked configuration.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Address to listen on.
    pub listen: String,
    /// Seconds between snapshots.
    pub snapshot_interval: Duration,
    /// `human` or `json`.
    pub log_format: String,
    /// The registry's settings.
    pub registry: RegistryConfig,
    /// The HTTP layer's settings.
    pub server: ServerConfig,
}

/// Reads the file (when given, or `./anomalyd.toml` when present), lets every field
/// set in `o` (flags and environment) win over it, and checks the result.
pub fn load(file: Option<&Path>, o: ServeFile) -> Result<ServeConfig, String> {
    let default_path = Path::new("anomalyd.toml");
    let path = file.or_else(|| default_path.exists().then_some(default_path));
    let f: ServeFile = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            toml::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => ServeFile::default(),
    };
    let listen = o.listen.or(f.listen).unwrap_or_else(|| "127.0.0.1:8080".into());
    let data_dir = o.data_dir.or(f.data_dir).unwrap_or_else(|| PathBuf::from("./data"));
    let token_file = o.auth_token_file.or(f.auth_token_file);
    let auth_token = match token_file {
        Some(p) => {
            let t = std::fs::read_to_string(&p).map_err(|e| format!("auth token file {}: {e}", p.display()))?;
            let t = t.trim().to_string();
            if t.len() < 16 {
                return Err(format!("auth token in {} must be at least 16 characters", p.display()));
            }
            Some(t)
        }
        None => None,
    };
    let positive = |name: &str, v: Option<usize>, default: usize| -> Result<usize, String> {
        match v {
            Some(0) => Err(format!("{name} must be at least 1")),
            Some(n) => Ok(n),
            None => Ok(default),
        }
    };
    let snapshot_secs = o.snapshot_interval_secs.or(f.snapshot_interval_secs).unwrap_or(60.0);
    if !(0.01..=86_400.0).contains(&snapshot_secs) {
        return Err(format!(
            "snapshot_interval_secs must be in [0.01, 86400], got {snapshot_secs}"
        ));
    }
    let log_format = o.log_format.or(f.log_format).unwrap_or_else(|| "human".into());
    if !["human", "json"].contains(&log_format.as_str()) {
        return Err(format!("log_format must be human or json, got {log_format:?}"));
    }
    let detector = o.detector.or(f.detector).unwrap_or_default();
    detector.validate().map_err(|e| format!("[detector]: {e}"))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let registry = RegistryConfig {
        default_detector: detector,
        max_streams: positive("max_streams", o.max_streams.or(f.max_streams), 100_000)?,
        training_threads: positive(
            "training_threads",
            o.training_threads.or(f.training_threads),
            cores.div_ceil(2),
        )?,
        data_dir: Some(data_dir),
        wal_sync: o
            .wal_sync
            .or(f.wal_sync)
            .unwrap_or(crate::storage::wal::SyncPolicy::Always),
        ..RegistryConfig::default()
    };
    let server = ServerConfig {
        max_body_bytes: positive("max_body_bytes", o.max_body_bytes.or(f.max_body_bytes), 4 << 20)?,
        max_readings_per_request: positive(
            "max_readings_per_request",
            o.max_readings_per_request.or(f.max_readings_per_request),
            10_000,
        )?,
        max_ws_subscribers: positive(
            "max_ws_subscribers",
            o.max_ws_subscribers.or(f.max_ws_subscribers),
            1024,
        )?,
        max_future_skew: {
            let s = o.max_future_skew_secs.or(f.max_future_skew_secs).unwrap_or(86_400.0);
            if !(s > 0.0 && s <= 3.2e9) {
                return Err(format!("max_future_skew_secs must be in (0, 3.2e9], got {s}"));
            }
            Duration::from_secs_f64(s)
        },
        max_inflight: positive("max_inflight", o.max_inflight.or(f.max_inflight), 4 * cores)?,
        max_waiters: positive("max_waiters", o.max_waiters.or(f.max_waiters), 16 * cores)?,
        max_connections: positive("max_connections", o.max_connections.or(f.max_connections), 4096)?,
        alertmanager: {
            let urls = o.alertmanager_urls.or(f.alertmanager_urls).unwrap_or_default();
            if let Some(u) = urls.iter().find(|u| !u.starts_with("http://")) {
                return Err(format!(
                    "alertmanager_urls: {u:?} must start with http:// (TLS is not built in)"
                ));
            }
            let resend = o
                .alertmanager_resend_secs
                .or(f.alertmanager_resend_secs)
                .unwrap_or(60.0);
            if !(1.0..=3600.0).contains(&resend) {
                return Err(format!("alertmanager_resend_secs must be in [1, 3600], got {resend}"));
            }
            crate::server::alertmanager::AlertmanagerConfig {
                urls,
                resend: Duration::from_secs_f64(resend),
                external_url: o
                    .external_url
                    .or(f.external_url)
                    .unwrap_or_else(|| format!("http://{listen}")),
                ..Default::default()
            }
        },
        auth_token,
        ..ServerConfig::default()
    };
    Ok(ServeConfig {
        listen,
        snapshot_interval: Duration::from_secs_f64(snapshot_secs),
        log_format,
        registry,
        server,
    })
}
