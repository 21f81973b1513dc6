//! The service's configuration. Every setting is defined once, in
//! [`ServeSettings`]: clap reads it from flags and `ANOMALYD_*` environment
//! variables, serde from `anomalyd.toml`; [`load`] merges the two (flags and
//! environment win) and checks the result into a [`ServeConfig`] with clear
//! messages. Defaults are applied in one place, the checks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::detector::DetectorConfig;
use crate::registry::{Ownership, RegistryConfig};
use crate::server::ServerConfig;
use crate::server::alertmanager::AlertmanagerConfig;
use crate::server::backfill::BackfillConfig;
use crate::server::forward::NodeMap;
use crate::storage::wal::SyncPolicy;

/// The settings of `anomalyd serve`, each one optional: a flag (or its
/// environment variable) set wins over the file's value, which wins over the
/// default named in the help.
#[derive(Clone, Debug, Default, Deserialize, Serialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ServeSettings {
    /// Config file (TOML): the keys below plus a [detector] table for new streams.
    #[arg(long, env = "ANOMALYD_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "ANOMALYD_LISTEN")]
    pub listen: Option<String>,
    /// Data directory for snapshots [default: ./data].
    #[arg(long, env = "ANOMALYD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// File with a bearer token (16+ characters); when set, every /v1 endpoint needs
    /// `Authorization: Bearer <token>` (or `?access_token=` on the WebSocket).
    #[arg(long, env = "ANOMALYD_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Largest request body in bytes [default: 4194304].
    #[arg(long, env = "ANOMALYD_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Most readings in one request [default: 10000].
    #[arg(long, env = "ANOMALYD_MAX_READINGS_PER_REQUEST")]
    pub max_readings_per_request: Option<usize>,
    /// Most streams [default: 100000].
    #[arg(long, env = "ANOMALYD_MAX_STREAMS")]
    pub max_streams: Option<usize>,
    /// Most WebSocket subscribers [default: 1024].
    #[arg(long, env = "ANOMALYD_MAX_WS_SUBSCRIBERS")]
    pub max_ws_subscribers: Option<usize>,
    /// Seconds between snapshots (checkpoints): what a restart replays from the
    /// write-ahead log [default: 60]. A crash loses nothing acknowledged either way.
    #[arg(long, env = "ANOMALYD_SNAPSHOT_INTERVAL_SECS")]
    pub snapshot_interval_secs: Option<f64>,
    /// When the write-ahead log is synced [default: always]: `always` answers a
    /// request only once its readings are on disk (group commit; survives a power
    /// cut); `never` leaves syncing to checkpoints (survives kill -9, not a power cut).
    #[arg(long, env = "ANOMALYD_WAL_SYNC", value_enum)]
    pub wal_sync: Option<SyncPolicy>,
    /// Most streams one snapshot round writes, those changed longest ago first
    /// [default: 10000]; the write-ahead log keeps what the others need.
    #[arg(long, env = "ANOMALYD_CHECKPOINT_MAX_STREAMS")]
    pub checkpoint_max_streams: Option<usize>,
    /// How far ahead of the server's clock a reading's timestamp may be, in seconds
    /// [default: 86400]; later ones are refused (400), so one wrong timestamp cannot
    /// lock its stream.
    #[arg(long, env = "ANOMALYD_MAX_FUTURE_SKEW_SECS")]
    pub max_future_skew_secs: Option<f64>,
    /// Threads that retrain models [default: one per core], each at a lower CPU
    /// priority (nice 10) than scoring, so training takes what scoring leaves.
    #[arg(long, env = "ANOMALYD_TRAINING_THREADS")]
    pub training_threads: Option<usize>,
    /// Scoring requests in flight at once [default: 4 per core]; more wait.
    #[arg(long, env = "ANOMALYD_MAX_INFLIGHT")]
    pub max_inflight: Option<usize>,
    /// Requests that may wait for a scoring slot (up to 200 ms) [default: 16 per
    /// core]; more are answered 429 at once, before their body is read.
    #[arg(long, env = "ANOMALYD_MAX_WAITERS")]
    pub max_waiters: Option<usize>,
    /// Open connections at once [default: 4096]; more wait in the accept backlog.
    #[arg(long, env = "ANOMALYD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// An Alertmanager that receives incidents (`http://host:9093`); repeat it (or
    /// separate with commas) for an HA pair.
    #[arg(long = "alertmanager-url", env = "ANOMALYD_ALERTMANAGER_URL", value_delimiter = ',')]
    pub alertmanager_urls: Option<Vec<String>>,
    /// Seconds between re-sends of firing alerts to Alertmanager [default: 60].
    #[arg(long, env = "ANOMALYD_ALERTMANAGER_RESEND_SECS")]
    pub alertmanager_resend_secs: Option<f64>,
    /// This service's URL as users reach it, for the links in alerts
    /// [default: http://<listen>].
    #[arg(long, env = "ANOMALYD_EXTERNAL_URL")]
    pub external_url: Option<String>,
    /// Shards in the deployment (fixed for its life; must divide 10000, e.g. 16 or
    /// 80) [default: none: one node holds every stream]. See README, scale-out.
    #[arg(long, env = "ANOMALYD_SHARD_COUNT")]
    pub shard_count: Option<u32>,
    /// The shards this node owns, e.g. `0-15,32` (or use --node-ordinal and --nodes);
    /// `""`: none yet (a new node that shards will move to).
    #[arg(long, env = "ANOMALYD_SHARDS")]
    pub shards: Option<String>,
    /// This node's number, from 0 (a StatefulSet's pod ordinal): with --nodes, it
    /// owns its contiguous share of the shards.
    #[arg(long, env = "ANOMALYD_NODE_ORDINAL")]
    pub node_ordinal: Option<u32>,
    /// Nodes in the deployment (with --node-ordinal).
    #[arg(long, env = "ANOMALYD_NODES")]
    pub nodes: Option<u32>,
    /// Every node's base URL in ordinal order (with --node-ordinal and --nodes): a
    /// request for another node's stream is passed on to it (one hop) instead of
    /// answered 421.
    #[arg(long, env = "ANOMALYD_NODE_URLS", value_delimiter = ',')]
    pub node_urls: Option<Vec<String>>,
    /// The labels whose values place a remote_write series on a shard, as in the
    /// Prometheus `hashmod` rule [default: __name__,instance,job].
    #[arg(long, env = "ANOMALYD_SHARD_LABELS", value_delimiter = ',')]
    pub shard_labels: Option<Vec<String>>,
    /// Seconds after Prometheus ended a series (a staleness marker) with no reading
    /// since that its stream is retired (deleted) [default: 3600; 0: never].
    #[arg(long, env = "ANOMALYD_RETIRE_STALE_AFTER_SECS")]
    pub retire_stale_after_secs: Option<f64>,
    /// Seconds without a reading after which any stream is retired (deleted)
    /// [default: 0: never]. For series churn (pods that come and go).
    #[arg(long, env = "ANOMALYD_RETIRE_IDLE_AFTER_SECS")]
    pub retire_idle_after_secs: Option<f64>,
    /// The Prometheus that sends remote_write (`http://host:9090`): a new series
    /// asks it for its past and learns it as history while it warms up.
    #[arg(long, env = "ANOMALYD_PROMETHEUS_URL")]
    pub prometheus_url: Option<String>,
    /// How far back a new series' past is asked for, seconds [default: 604800].
    #[arg(long, env = "ANOMALYD_BACKFILL_LOOKBACK_SECS")]
    pub backfill_lookback_secs: Option<f64>,
    /// Most past readings learnt per series, the newest [default: 10000].
    #[arg(long, env = "ANOMALYD_BACKFILL_MAX_POINTS")]
    pub backfill_max_points: Option<usize>,
    /// Queries per second to Prometheus at most (two per series) [default: 10].
    #[arg(long, env = "ANOMALYD_BACKFILL_RATE")]
    pub backfill_rate: Option<f64>,
    /// Longest a query to Prometheus may take, seconds [default: 10].
    #[arg(long, env = "ANOMALYD_BACKFILL_TIMEOUT_SECS")]
    pub backfill_timeout_secs: Option<f64>,
    /// Log format: human or json [default: human]. Level from RUST_LOG (default info).
    #[arg(long, env = "ANOMALYD_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Default detector config of new streams (the file's `[detector]` table).
    #[arg(skip)]
    pub detector: Option<DetectorConfig>,
}

impl ServeSettings {
    /// These settings with every field `over` sets replacing this one's.
    fn overridden_by(self, over: &ServeSettings) -> Result<ServeSettings, String> {
        let mut base = serde_json::to_value(&self).map_err(|e| e.to_string())?;
        let over = serde_json::to_value(over).map_err(|e| e.to_string())?;
        if let (Some(base), Some(over)) = (base.as_object_mut(), over.as_object()) {
            for (key, value) in over.iter().filter(|(_, v)| !v.is_null()) {
                base.insert(key.clone(), value.clone());
            }
        }
        serde_json::from_value(base).map_err(|e| e.to_string())
    }
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

/// Reads the file (`flags.config`, or `./anomalyd.toml` when present), lets every
/// setting in `flags` (flags and environment) win over it, and checks the result.
pub fn load(flags: ServeSettings) -> Result<ServeConfig, String> {
    let default_path = Path::new("anomalyd.toml");
    let path = flags
        .config
        .as_deref()
        .or_else(|| default_path.exists().then_some(default_path));
    let file = match path {
        Some(p) => read_file(p)?,
        None => ServeSettings::default(),
    };
    check(file.overridden_by(&flags)?)
}

/// The file's settings.
fn read_file(path: &Path) -> Result<ServeSettings, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Checks merged settings and fills in the defaults.
pub fn check(s: ServeSettings) -> Result<ServeConfig, String> {
    let listen = s.listen.clone().unwrap_or_else(|| "127.0.0.1:8080".into());
    let snapshot_secs = s.snapshot_interval_secs.unwrap_or(60.0);
    if !(0.01..=86_400.0).contains(&snapshot_secs) {
        return Err(format!(
            "snapshot_interval_secs must be in [0.01, 86400], got {snapshot_secs}"
        ));
    }
    let log_format = s.log_format.clone().unwrap_or_else(|| "human".into());
    if !["human", "json"].contains(&log_format.as_str()) {
        return Err(format!("log_format must be human or json, got {log_format:?}"));
    }
    Ok(ServeConfig {
        registry: registry_config(&s)?,
        server: server_config(&s, &listen)?,
        listen,
        snapshot_interval: Duration::from_secs_f64(snapshot_secs),
        log_format,
    })
}

/// `v`, or `default` when unset; 0 is refused.
fn positive(name: &str, v: Option<usize>, default: usize) -> Result<usize, String> {
    match v {
        Some(0) => Err(format!("{name} must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The registry's part.
fn registry_config(s: &ServeSettings) -> Result<RegistryConfig, String> {
    let detector = s.detector.clone().unwrap_or_default();
    detector.validate().map_err(|e| format!("[detector]: {e}"))?;
    Ok(RegistryConfig {
        default_detector: detector,
        max_streams: positive("max_streams", s.max_streams, 100_000)?,
        training_threads: positive("training_threads", s.training_threads, cores())?,
        data_dir: Some(s.data_dir.clone().unwrap_or_else(|| PathBuf::from("./data"))),
        wal_sync: s.wal_sync.unwrap_or(SyncPolicy::Always),
        checkpoint_max_streams: positive("checkpoint_max_streams", s.checkpoint_max_streams, 10_000)?,
        retire_stale_after: retire_after("retire_stale_after_secs", s.retire_stale_after_secs, 3600.0)?,
        retire_idle_after: retire_after("retire_idle_after_secs", s.retire_idle_after_secs, 0.0)?,
        shards: ownership(s)?,
        ..RegistryConfig::default()
    })
}

/// The shards this node owns, when the deployment is sharded.
fn ownership(s: &ServeSettings) -> Result<Option<Ownership>, String> {
    let Some(count) = s.shard_count else {
        if s.shards.is_some() || s.node_ordinal.is_some() || s.nodes.is_some() {
            return Err("shards, node_ordinal and nodes need shard_count".into());
        }
        return Ok(None);
    };
    let labels = s
        .shard_labels
        .clone()
        .unwrap_or_else(|| crate::shard::DEFAULT_LABELS.map(String::from).to_vec());
    let function = crate::shard::ShardFunction::new(count, labels)?;
    let owned = match (&s.shards, s.node_ordinal, s.nodes) {
        (Some(list), None, None) => crate::shard::parse_list(list, count)?,
        (None, Some(i), Some(n)) if n > 0 && i < n && n <= count => crate::shard::of_node(i, n, count),
        (None, Some(i), Some(n)) => {
            return Err(format!(
                "node_ordinal {i} of nodes {n}: needs 0 <= node_ordinal < nodes <= shard_count"
            ));
        }
        _ => return Err("with shard_count, give either shards or both node_ordinal and nodes".into()),
    };
    // No shard (`--shards ""`): a new node waiting for shards to move to it.
    Ok(Some(Ownership::new(function, &owned)))
}

/// The nodes requests are passed on to.
fn node_map(s: &ServeSettings) -> Result<NodeMap, String> {
    let urls = s.node_urls.clone().unwrap_or_default();
    if urls.is_empty() {
        return Ok(NodeMap::default());
    }
    if s.nodes != Some(urls.len() as u32) || s.shard_count.is_none() {
        return Err(format!(
            "node_urls lists {} nodes: it needs shard_count, node_ordinal and nodes = {}",
            urls.len(),
            urls.len()
        ));
    }
    if let Some(u) = urls.iter().find(|u| !u.starts_with("http://")) {
        return Err(format!("node_urls: {u:?} must start with http://"));
    }
    Ok(NodeMap { urls })
}

/// A retirement delay: 0 is never, else at least a minute.
fn retire_after(name: &str, secs: Option<f64>, default: f64) -> Result<Option<Duration>, String> {
    let s = secs.unwrap_or(default);
    if s == 0.0 {
        Ok(None)
    } else if (60.0..=3.2e8).contains(&s) {
        Ok(Some(Duration::from_secs_f64(s)))
    } else {
        Err(format!("{name} must be 0 (never) or in [60, 3.2e8], got {s}"))
    }
}

/// The HTTP layer's part.
fn server_config(s: &ServeSettings, listen: &str) -> Result<ServerConfig, String> {
    let skew = s.max_future_skew_secs.unwrap_or(86_400.0);
    if !(skew > 0.0 && skew <= 3.2e9) {
        return Err(format!("max_future_skew_secs must be in (0, 3.2e9], got {skew}"));
    }
    Ok(ServerConfig {
        max_body_bytes: positive("max_body_bytes", s.max_body_bytes, 4 << 20)?,
        max_readings_per_request: positive("max_readings_per_request", s.max_readings_per_request, 10_000)?,
        max_ws_subscribers: positive("max_ws_subscribers", s.max_ws_subscribers, 1024)?,
        max_future_skew: Duration::from_secs_f64(skew),
        max_inflight: positive("max_inflight", s.max_inflight, 4 * cores())?,
        max_waiters: positive("max_waiters", s.max_waiters, 16 * cores())?,
        max_connections: positive("max_connections", s.max_connections, 4096)?,
        alertmanager: alertmanager_config(s, listen)?,
        backfill: backfill_config(s)?,
        nodes: node_map(s)?,
        auth_token: s.auth_token_file.as_deref().map(read_token).transpose()?,
        ..ServerConfig::default()
    })
}

/// The bearer token in `path` (at least 16 characters, surrounding space trimmed).
fn read_token(path: &Path) -> Result<String, String> {
    let t = std::fs::read_to_string(path).map_err(|e| format!("auth token file {}: {e}", path.display()))?;
    let t = t.trim().to_string();
    if t.len() < 16 {
        return Err(format!(
            "auth token in {} must be at least 16 characters",
            path.display()
        ));
    }
    Ok(t)
}

/// The backfill's part.
fn backfill_config(s: &ServeSettings) -> Result<BackfillConfig, String> {
    if let Some(u) = s.prometheus_url.as_deref().filter(|u| !u.starts_with("http://")) {
        return Err(format!(
            "prometheus_url: {u:?} must start with http:// (TLS is not built in)"
        ));
    }
    let within = |name: &str, v: Option<f64>, default: f64, lo: f64, hi: f64| {
        let v = v.unwrap_or(default);
        if (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(format!("{name} must be in [{lo}, {hi}], got {v}"))
        }
    };
    let d = BackfillConfig::default();
    Ok(BackfillConfig {
        url: s.prometheus_url.clone(),
        lookback: Duration::from_secs_f64(within(
            "backfill_lookback_secs",
            s.backfill_lookback_secs,
            604_800.0,
            60.0,
            3.2e8,
        )?),
        max_points: positive("backfill_max_points", s.backfill_max_points, d.max_points)?,
        rate: within("backfill_rate", s.backfill_rate, d.rate, 0.01, 10_000.0)?,
        timeout: Duration::from_secs_f64(within(
            "backfill_timeout_secs",
            s.backfill_timeout_secs,
            10.0,
            0.1,
            600.0,
        )?),
        ..d
    })
}

/// The Alertmanager client's part.
fn alertmanager_config(s: &ServeSettings, listen: &str) -> Result<AlertmanagerConfig, String> {
    let urls = s.alertmanager_urls.clone().unwrap_or_default();
    if let Some(u) = urls.iter().find(|u| !u.starts_with("http://")) {
        return Err(format!(
            "alertmanager_urls: {u:?} must start with http:// (TLS is not built in)"
        ));
    }
    let resend = s.alertmanager_resend_secs.unwrap_or(60.0);
    if !(1.0..=3600.0).contains(&resend) {
        return Err(format!("alertmanager_resend_secs must be in [1, 3600], got {resend}"));
    }
    Ok(AlertmanagerConfig {
        urls,
        resend: Duration::from_secs_f64(resend),
        external_url: s.external_url.clone().unwrap_or_else(|| format!("http://{listen}")),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml_text: &str) -> ServeSettings {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn a_flag_wins_over_the_file_and_the_file_over_the_default() {
        let file = settings("listen = \"0.0.0.0:9000\"\nmax_streams = 7\n");
        let flags = ServeSettings {
            max_streams: Some(9),
            ..Default::default()
        };
        let c = check(file.overridden_by(&flags).unwrap()).unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000");
        assert_eq!(c.registry.max_streams, 9);
        assert_eq!(c.server.max_body_bytes, 4 << 20);
    }

    #[test]
    fn the_files_detector_table_survives_the_merge() {
        let file = settings("[detector]\nwindow = 16\n");
        let c = check(file.overridden_by(&ServeSettings::default()).unwrap()).unwrap();
        assert_eq!(c.registry.default_detector.window, 16);
    }

    #[test]
    fn bad_settings_are_named() {
        for (text, field) in [
            ("max_streams = 0", "max_streams"),
            ("snapshot_interval_secs = 0.0", "snapshot_interval_secs"),
            ("log_format = \"xml\"", "log_format"),
            ("alertmanager_urls = [\"https://a\"]", "alertmanager_urls"),
            ("prometheus_url = \"https://p\"", "prometheus_url"),
            ("backfill_rate = 0", "backfill_rate"),
            ("retire_idle_after_secs = 5", "retire_idle_after_secs"),
            ("shard_count = 64\nshards = \"0\"", "shard count 64"),
            ("shard_count = 16\nshards = \"0-16\"", "shards"),
            ("shards = \"0\"", "need shard_count"),
            ("shard_count = 16\nnode_ordinal = 3\nnodes = 3", "node_ordinal 3"),
            ("shard_count = 16", "either shards"),
            ("node_urls = [\"http://a\"]", "node_urls"),
            ("backfill_max_points = 0", "backfill_max_points"),
            ("max_future_skew_secs = -1.0", "max_future_skew_secs"),
        ] {
            let err = check(settings(text)).unwrap_err();
            assert!(err.contains(field), "{text}: {err}");
        }
        assert!(toml::from_str::<ServeSettings>("no_such_key = 1").is_err());
        assert!(
            toml::from_str::<ServeSettings>("config = \"x.toml\"").is_err(),
            "the file names no file"
        );
    }
}
