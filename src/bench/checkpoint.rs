//! `anomalyd bench checkpoint`: snapshot rounds and a restart with many streams.

use std::time::Instant;

use serde::Serialize;

use super::trained_detector;
use crate::detector::Detector;
use crate::registry::{Reading, Registry, RegistryConfig};

/// `anomalyd bench checkpoint`: how long snapshot rounds and a restart take with
/// `streams` streams, each a copy of one stream that has a model.
#[derive(Clone, Debug, Serialize)]
pub struct CheckpointBenchReport {
    /// Streams held.
    pub streams: usize,
    /// Bytes of one stream's state file (rewritten when the stream changed).
    pub state_bytes: usize,
    /// Bytes of one stream's model file (written once per model version).
    pub model_bytes: usize,
    /// Most streams a round writes (`checkpoint_max_streams`).
    pub max_streams_per_round: usize,
    /// The first round after every stream changed, seconds.
    pub first_round_s: f64,
    /// Rounds until every stream was written.
    pub rounds_to_write_all: usize,
    /// Those rounds together, seconds.
    pub write_all_s: f64,
    /// A round after 1% of the streams took a reading, seconds.
    pub one_percent_round_s: f64,
    /// A round after every stream took a reading (no new model), seconds: the
    /// steady state of a busy node.
    pub all_changed_round_s: f64,
    /// A round with nothing changed, seconds.
    pub idle_round_s: f64,
    /// Opening the data directory again (snapshots + log replay), seconds.
    pub restart_s: f64,
    /// Streams found after the restart.
    pub restarted_streams: usize,
}

/// Builds `streams` streams in a temporary data directory and times checkpoints.
pub fn run_checkpoint_bench(
    config: &crate::detector::DetectorConfig,
    streams: usize,
    readings: usize,
) -> Result<CheckpointBenchReport, String> {
    let dir = std::env::temp_dir().join(format!("anomalyd-bench-checkpoint-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let open = || {
        Registry::open(
            RegistryConfig {
                default_detector: config.clone(),
                data_dir: Some(dir.clone()),
                max_streams: streams.max(1),
                ..Default::default()
            },
            std::sync::Arc::new(crate::metrics::Metrics::new()),
        )
    };
    let template = trained_detector(config, readings)?;
    let snap = template.snapshot();
    let state_bytes = crate::storage::snapshot::encode("s0", 0, &snap, Some("s0.v1.model"))
        .map_err(|e| e.to_string())?
        .len();
    let model_bytes = crate::storage::snapshot::encode_model(&snap.members)
        .map_err(|e| e.to_string())?
        .len();
    let reg = open()?;
    for s in 0..streams {
        reg.adopt(&format!("s{s}"), template.clone())
            .map_err(|e| e.to_string())?;
    }
    let rounds = time_rounds(&reg, &template, streams)?;
    drop(reg);
    let t = Instant::now();
    let back = open()?;
    let restart_s = t.elapsed().as_secs_f64();
    let restarted_streams = back.len();
    drop(back);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(CheckpointBenchReport {
        streams,
        state_bytes,
        model_bytes,
        max_streams_per_round: crate::registry::RegistryConfig::default().checkpoint_max_streams,
        first_round_s: rounds.first_round_s,
        rounds_to_write_all: rounds.rounds_to_write_all,
        write_all_s: rounds.write_all_s,
        one_percent_round_s: rounds.one_percent_round_s,
        all_changed_round_s: rounds.all_changed_round_s,
        idle_round_s: rounds.idle_round_s,
        restart_s,
        restarted_streams,
    })
}

/// How long the rounds took.
struct Rounds {
    first_round_s: f64,
    rounds_to_write_all: usize,
    write_all_s: f64,
    one_percent_round_s: f64,
    all_changed_round_s: f64,
    idle_round_s: f64,
}

/// Times the rounds over `streams` copies of `template`: the first, until every
/// stream is written, after 1% changed, idle, after all changed; then leaves
/// readings after the last round for the restart to replay.
fn time_rounds(reg: &Registry, template: &Detector, streams: usize) -> Result<Rounds, String> {
    let timed = |f: &dyn Fn() -> Result<usize, String>| -> Result<f64, String> {
        let t = Instant::now();
        f()?;
        Ok(t.elapsed().as_secs_f64())
    };
    let round = || reg.snapshot().map_err(|e| e.to_string());
    let start = Instant::now();
    let first_round_s = timed(&round)?;
    let mut rounds_to_write_all = 1;
    while reg.dirty_streams() > 0 {
        round()?;
        rounds_to_write_all += 1;
    }
    let write_all_s = start.elapsed().as_secs_f64();
    let last = template.last_timestamp().unwrap_or(0);
    let width = template.n_features().unwrap_or(1);
    let touched: Vec<Reading> = (0..streams.div_ceil(100))
        .map(|s| Reading {
            stream: format!("s{}", s * 100),
            timestamp: last + 1,
            values: vec![0.5; width],
        })
        .collect();
    reg.ingest(&touched).map_err(|e| e.to_string())?;
    let one_percent_round_s = timed(&round)?;
    let idle_round_s = timed(&round)?;
    let every: Vec<Reading> = (0..streams)
        .map(|s| Reading {
            stream: format!("s{s}"),
            timestamp: last + 1,
            values: vec![0.5; width],
        })
        .collect();
    for chunk in every.chunks(1000) {
        reg.ingest(chunk).map_err(|e| e.to_string())?;
    }
    let all_changed_round_s = timed(&round)?;
    while reg.dirty_streams() > 0 {
        round()?;
    }
    // Readings after the last round are replayed from the log on restart.
    let more: Vec<Reading> = touched
        .iter()
        .map(|r| Reading {
            timestamp: last + 2,
            ..r.clone()
        })
        .collect();
    reg.ingest(&more).map_err(|e| e.to_string())?;
    Ok(Rounds {
        first_round_s,
        rounds_to_write_all,
        write_all_s,
        one_percent_round_s,
        all_changed_round_s,
        idle_round_s,
    })
}
