//! The `anomalyd` command line: one module per command, each with its arguments
//! (clap) and its `run`. `main.rs` only parses and dispatches; this is the one
//! place that uses `anyhow` and prints.

mod bench;
mod nab;
mod replay;
mod serve;
mod shard_move;
mod shards;
mod smap;
mod tep;

use std::path::Path;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::config::ServeSettings;
use crate::detector::DetectorConfig;
use crate::nn::isa::{self, Isa};

/// Streaming anomaly detection with a recurrent autoencoder per stream.
#[derive(Parser, Debug)]
#[command(name = "anomalyd", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the service: HTTP and WebSocket API, Prometheus metrics, snapshots in the
    /// data directory. Settings come from anomalyd.toml (--config, or ./anomalyd.toml
    /// when present), ANOMALYD_* environment variables and these flags, in rising
    /// precedence.
    Serve(Box<ServeSettings>),
    /// Probe a running service's readiness (for container health checks, which
    /// then need no shell or curl): exit 0 when GET /readyz answers 200.
    Healthcheck(serve::HealthcheckArgs),
    /// Score a CSV file through the detector, one stream, training inline
    /// (deterministic: the same input and config give the same scores).
    Replay(replay::ReplayArgs),
    /// Run the Tennessee Eastman benchmark: learn train/normal.csv as history, score
    /// each test file with a copy of that stream, print detection and false-alarm
    /// rates per fault.
    Tep(tep::TepArgs),
    /// Run the Numenta Anomaly Benchmark: every <category>/<file>.csv under --data
    /// through its own detector, NAB result files under --out, and the three NAB
    /// scores when --windows is given.
    Nab(nab::NabArgs),
    /// Run the SMAP spacecraft telemetry benchmark (the KDD 2018 paper's event-level
    /// protocol): each channel learns its training run as history, then scores its
    /// test run; prints event-level precision and recall, per channel kind and with
    /// each kind left out.
    Smap(smap::SmapArgs),
    /// A sharded deployment: `anomalyd shards config prometheus|nginx
    /// --shard-count 16 --nodes ...` prints the routers' config from the owner
    /// function the nodes use; `anomalyd shards move --from A --to B --shards 3`
    /// moves shards with their models.
    Shards {
        #[command(subcommand)]
        what: ShardsCommand,
    },
    /// Measure performance.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
}

#[derive(Subcommand, Debug)]
enum ShardsCommand {
    /// Print a router's config (Prometheus remote_write blocks, nginx routing).
    Config(shards::ConfigArgs),
    /// Move shards from one node to another with their models (release,
    /// export, import, forget), printing how long each was unavailable.
    Move(shard_move::MoveArgs),
}

/// Parses the command line and runs the command.
pub fn run() -> Result<()> {
    serve::tune_malloc();
    limit_kernels(std::env::var("ANOMALYD_ISA").ok().as_deref())?;
    match Cli::parse().command {
        Command::Serve(settings) => serve::run(*settings),
        Command::Healthcheck(a) => serve::healthcheck(&a),
        Command::Replay(a) => replay::run(&a),
        Command::Tep(a) => tep::run(&a),
        Command::Nab(a) => nab::run(&a),
        Command::Smap(a) => smap::run(&a),
        Command::Bench { what } => bench::run(what),
        Command::Shards {
            what: ShardsCommand::Config(a),
        } => shards::config(&a),
        Command::Shards {
            what: ShardsCommand::Move(a),
        } => shard_move::run(&a),
    }
}

/// Caps the kernels' instruction set at `ANOMALYD_ISA` (`portable`, `avx2`,
/// `avx512`), for comparisons and tests; unset or empty, the widest the CPU has.
fn limit_kernels(env: Option<&str>) -> Result<()> {
    let Some(name) = env.filter(|n| !n.trim().is_empty()) else {
        return Ok(());
    };
    let names: Vec<_> = Isa::ALL.iter().map(|i| i.name()).collect();
    let isa =
        Isa::parse(name).ok_or_else(|| anyhow::anyhow!("ANOMALYD_ISA={name:?} is not one of {}", names.join(", ")))?;
    isa::limit(isa);
    Ok(())
}

/// The kernels' path, for logs and benchmarks: `avx2 (cpu: avx512, capped by ANOMALYD_ISA)`.
pub(crate) fn kernels_shown() -> String {
    let (active, widest) = (isa::active(), isa::widest());
    if active == widest {
        active.name().to_string()
    } else {
        format!("{} (cpu: {}, capped by ANOMALYD_ISA)", active.name(), widest.name())
    }
}

/// The detector config in `path` (TOML), or the defaults; checked.
fn load_detector_config(path: Option<&Path>) -> Result<DetectorConfig> {
    let config = parse_detector_config(path)?;
    config.validate()?;
    Ok(config)
}

/// The detector config (TOML) at `path`, or the defaults, parsed but not yet
/// validated (`replay` names the features from its columns first).
fn parse_detector_config(path: Option<&Path>) -> Result<DetectorConfig> {
    let config: DetectorConfig = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
        }
        None => DetectorConfig::default(),
    };
    Ok(config)
}

/// `threads`, or every core.
fn threads_or_cores(threads: Option<usize>) -> usize {
    threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
