//! `anomalyd bench ...`: the measurements, each printed as one JSON object.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Subcommand;

use crate::bench::{self, Measure, ModelBenchConfig, loadgen};
use crate::nn::CellKind;
use crate::storage::wal::SyncPolicy;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// The registry without HTTP: readings/s and per-reading latency of ingest calls
    /// (after every stream has its first model), optionally with continuous retraining.
    Ingest {
        /// Detector config (TOML); defaults otherwise.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Streams, written round-robin.
        #[arg(long, default_value_t = 1)]
        streams: usize,
        /// Readings per call.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Seconds to measure.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Retrain every this many readings per stream (small: retraining never stops).
        #[arg(long, default_value_t = 768)]
        retrain_every: usize,
        /// Threads calling ingest at once, each on its own streams.
        #[arg(long, default_value_t = 1)]
        clients: usize,
        /// Durability: `none` (no data directory) or the write-ahead log's sync
        /// policy (`always`, `never`) in a temporary data directory.
        #[arg(long, default_value = "none")]
        wal: String,
    },
    /// Load a running service over HTTP: remote_write (snappy protobuf) or JSON
    /// batches from several connections, every sample new; prints samples/s.
    Http {
        /// The service.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Body format.
        #[arg(long, value_enum, default_value = "remote-write")]
        format: loadgen::Format,
        /// Series (streams) in all.
        #[arg(long, default_value_t = 1000)]
        series: usize,
        /// Samples per series per request.
        #[arg(long, default_value_t = 1)]
        samples: usize,
        /// Connections posting at once.
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// Snapshot rounds (checkpoints) and a restart with --streams streams, each a
    /// copy of one stream fed --readings readings (with a model by default).
    Checkpoint {
        /// Detector config (TOML); defaults otherwise.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Streams held.
        #[arg(long, default_value_t = 10_000)]
        streams: usize,
        /// Readings fed to the template stream.
        #[arg(long, default_value_t = 1200)]
        readings: usize,
    },
    /// Resident memory per stream: one stream fed --readings readings (training
    /// inline), then --streams copies of it held at once.
    Memory {
        /// Detector config (TOML); defaults otherwise.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Streams held.
        #[arg(long, default_value_t = 10_000)]
        streams: usize,
        /// Readings fed first (≥ 384 trains a model with the default config).
        #[arg(long, default_value_t = 1200)]
        readings: usize,
    },
    /// One stream's detector: per-reading scoring time once a model exists, and the
    /// time of a retraining job, with the given (or default) detector config.
    Detector {
        /// Detector config (TOML); defaults otherwise.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Retraining jobs to time.
        #[arg(long, default_value_t = 5)]
        jobs: usize,
    },
    /// The reference autoencoder: encoder RNN(d→H) over W steps, its last state
    /// repeated as the decoder input, decoder RNN(H→H), linear(H→d) on every step.
    Model {
        /// Cell kind: rnn, lstm, gru or gru-reset-before.
        #[arg(long, default_value = "lstm")]
        cell: String,
        /// Features per step.
        #[arg(long, default_value_t = 1)]
        d_input: usize,
        /// Window length in steps.
        #[arg(long, default_value_t = 32)]
        window: usize,
        /// Hidden units.
        #[arg(long, default_value_t = 32)]
        hidden: usize,
        /// Worker threads for the throughput figures.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Figures to measure, comma-separated: latency, batch, train (others print 0).
        #[arg(long, default_value = "latency,batch,train")]
        measure: String,
        /// Print one JSON line (otherwise a readable summary).
        #[arg(long)]
        json: bool,
    },
}

/// Runs one benchmark and prints its report.
pub fn run(what: BenchCommand) -> Result<()> {
    let load = |c: &Option<PathBuf>| super::load_detector_config(c.as_deref());
    let report = match what {
        BenchCommand::Ingest {
            config,
            streams,
            batch,
            seconds,
            retrain_every,
            clients,
            wal,
        } => {
            if streams == 0 || batch == 0 || retrain_every == 0 || clients == 0 {
                bail!("--streams, --batch, --clients and --retrain-every must be at least 1");
            }
            let wal = match wal.as_str() {
                "none" => None,
                "always" => Some(SyncPolicy::Always),
                "never" => Some(SyncPolicy::Never),
                other => bail!("--wal must be none, always or never, got {other:?}"),
            };
            let b = bench::IngestBenchConfig {
                streams,
                batch,
                seconds,
                retrain_every,
                clients,
                wal,
            };
            serde_json::to_value(bench::run_ingest_bench(&load(&config)?, &b).map_err(anyhow::Error::msg)?)?
        }
        BenchCommand::Http {
            url,
            format,
            series,
            samples,
            connections,
            seconds,
        } => {
            if series == 0 || samples == 0 || connections == 0 {
                bail!("--series, --samples and --connections must be at least 1");
            }
            let cfg = loadgen::LoadConfig {
                url,
                format,
                series,
                samples,
                connections,
                seconds,
            };
            let report = tokio::runtime::Runtime::new()?
                .block_on(loadgen::run(cfg))
                .map_err(anyhow::Error::msg)?;
            serde_json::to_value(report)?
        }
        BenchCommand::Checkpoint {
            config,
            streams,
            readings,
        } => serde_json::to_value(
            bench::run_checkpoint_bench(&load(&config)?, streams, readings).map_err(anyhow::Error::msg)?,
        )?,
        BenchCommand::Memory {
            config,
            streams,
            readings,
        } => serde_json::to_value(
            bench::run_memory_bench(&load(&config)?, streams, readings).map_err(anyhow::Error::msg)?,
        )?,
        BenchCommand::Detector { config, jobs } => {
            serde_json::to_value(bench::run_detector_bench(&load(&config)?, jobs).map_err(anyhow::Error::msg)?)?
        }
        BenchCommand::Model {
            cell,
            d_input,
            window,
            hidden,
            threads,
            seconds,
            measure,
            json,
        } => {
            let config = model_bench_config(&cell, d_input, window, hidden, threads, seconds, &measure)?;
            let report = bench::run_model_bench(&config);
            if !json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            serde_json::to_value(report)?
        }
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// `anomalyd bench model`'s arguments, checked.
fn model_bench_config(
    cell: &str,
    d_input: usize,
    window: usize,
    hidden: usize,
    threads: usize,
    seconds: f64,
    measure: &str,
) -> Result<ModelBenchConfig> {
    let Some(kind) = CellKind::parse(cell) else {
        bail!("unknown cell {cell:?}: expected rnn, lstm, gru or gru-reset-before");
    };
    if d_input == 0 || window == 0 || hidden == 0 || threads == 0 {
        bail!("--d-input, --window, --hidden and --threads must be at least 1");
    }
    if !(seconds > 0.0 && seconds.is_finite()) {
        bail!("--seconds must be a positive number");
    }
    let measure = measure
        .split(',')
        .map(|m| {
            Measure::parse(m.trim())
                .ok_or_else(|| anyhow::anyhow!("unknown measure {m:?}: expected latency, batch or train"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ModelBenchConfig {
        kind,
        d_input,
        window,
        d_hidden: hidden,
        threads,
        seconds,
        measure,
    })
}
