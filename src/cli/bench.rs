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
    Ingest(IngestArgs),
    /// Load a running service over HTTP: remote_write (snappy protobuf) or JSON
    /// batches from several connections, every sample new; prints samples/s.
    Http(HttpArgs),
    /// Snapshot rounds (checkpoints) and a restart with --streams streams, each a
    /// copy of one stream fed --readings readings (with a model by default).
    Checkpoint(HeldStreamsArgs),
    /// The console's requests (its pages, a stream's chart) timed over HTTP with
    /// --streams streams held.
    Console {
        /// Streams held.
        #[arg(long, default_value_t = 100_000)]
        streams: usize,
        /// Requests of each kind.
        #[arg(long, default_value_t = 21)]
        rounds: usize,
    },
    /// Resident memory per stream: one stream fed --readings readings (training
    /// inline), then --streams copies of it held at once.
    Memory(HeldStreamsArgs),
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
    Model(ModelArgs),
}

/// Runs one benchmark and prints its report.
pub fn run(what: BenchCommand) -> Result<()> {
    let load = |c: &Option<PathBuf>| super::load_detector_config(c.as_deref());
    let report = match what {
        BenchCommand::Ingest(a) => {
            let b = a.checked()?;
            serde_json::to_value(bench::run_ingest_bench(&load(&a.config)?, &b).map_err(anyhow::Error::msg)?)?
        }
        BenchCommand::Http(a) => {
            let runtime = tokio::runtime::Runtime::new()?;
            serde_json::to_value(
                runtime
                    .block_on(loadgen::run(a.checked()?))
                    .map_err(anyhow::Error::msg)?,
            )?
        }
        BenchCommand::Checkpoint(a) => serde_json::to_value(
            bench::run_checkpoint_bench(&load(&a.config)?, a.streams, a.readings).map_err(anyhow::Error::msg)?,
        )?,
        BenchCommand::Memory(a) => serde_json::to_value(
            bench::run_memory_bench(&load(&a.config)?, a.streams, a.readings).map_err(anyhow::Error::msg)?,
        )?,
        BenchCommand::Console { streams, rounds } => {
            serde_json::to_value(bench::run_console_bench(streams, rounds).map_err(anyhow::Error::msg)?)?
        }
        BenchCommand::Detector { config, jobs } => {
            serde_json::to_value(bench::run_detector_bench(&load(&config)?, jobs).map_err(anyhow::Error::msg)?)?
        }
        BenchCommand::Model(a) => {
            let report = bench::run_model_bench(&a.checked()?);
            if !a.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            serde_json::to_value(report)?
        }
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

impl IngestArgs {
    /// The benchmark's settings, checked.
    fn checked(&self) -> Result<bench::IngestBenchConfig> {
        if self.streams == 0 || self.batch == 0 || self.retrain_every == 0 || self.clients == 0 {
            bail!("--streams, --batch, --clients and --retrain-every must be at least 1");
        }
        let wal = match self.wal.as_str() {
            "none" => None,
            "always" => Some(SyncPolicy::Always),
            "never" => Some(SyncPolicy::Never),
            other => bail!("--wal must be none, always or never, got {other:?}"),
        };
        Ok(bench::IngestBenchConfig {
            streams: self.streams,
            batch: self.batch,
            seconds: self.seconds,
            retrain_every: self.retrain_every,
            clients: self.clients,
            wal,
            training_threads: super::threads_or_cores(self.training_threads),
        })
    }
}

impl HttpArgs {
    /// The load's settings, checked.
    fn checked(&self) -> Result<loadgen::LoadConfig> {
        if self.series == 0 || self.samples == 0 || self.connections == 0 {
            bail!("--series, --samples and --connections must be at least 1");
        }
        Ok(loadgen::LoadConfig {
            url: self.url.clone(),
            format: self.format,
            series: self.series,
            samples: self.samples,
            connections: self.connections,
            seconds: self.seconds,
        })
    }
}

impl ModelArgs {
    /// The benchmark's settings, checked.
    fn checked(&self) -> Result<ModelBenchConfig> {
        let Some(kind) = CellKind::parse(&self.cell) else {
            bail!(
                "unknown cell {:?}: expected rnn, lstm, gru or gru-reset-before",
                self.cell
            );
        };
        if self.d_input == 0 || self.window == 0 || self.hidden == 0 || self.threads == 0 {
            bail!("--d-input, --window, --hidden and --threads must be at least 1");
        }
        if !(self.seconds > 0.0 && self.seconds.is_finite()) {
            bail!("--seconds must be a positive number");
        }
        let measure = self
            .measure
            .split(',')
            .map(|m| {
                Measure::parse(m.trim())
                    .ok_or_else(|| anyhow::anyhow!("unknown measure {m:?}: expected latency, batch or train"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ModelBenchConfig {
            kind,
            d_input: self.d_input,
            window: self.window,
            d_hidden: self.hidden,
            threads: self.threads,
            seconds: self.seconds,
            measure,
        })
    }
}

/// The arguments of `anomalyd bench ingest`.
#[derive(clap::Args, Debug)]
pub struct IngestArgs {
    /// Detector config (TOML); defaults otherwise.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Streams, written round-robin.
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// Readings per call.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Seconds to measure.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Retrain every this many readings per stream (small: retraining never stops).
    #[arg(long, default_value_t = 768)]
    pub retrain_every: usize,
    /// Threads calling ingest at once, each on its own streams.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Durability: `none` (no data directory) or the write-ahead log's sync
    /// policy (`always`, `never`) in a temporary data directory.
    #[arg(long, default_value = "none")]
    pub wal: String,
    /// Training threads (at the service's lower priority) [default: one per
    /// core, as `anomalyd serve`].
    #[arg(long)]
    pub training_threads: Option<usize>,
}

/// The arguments of `anomalyd bench http`.
#[derive(clap::Args, Debug)]
pub struct HttpArgs {
    /// The service.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Body format.
    #[arg(long, value_enum, default_value = "remote-write")]
    pub format: loadgen::Format,
    /// Series (streams) in all.
    #[arg(long, default_value_t = 1000)]
    pub series: usize,
    /// Samples per series per request.
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// Connections posting at once.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
}

/// The arguments of `anomalyd bench model`.
#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// Cell kind: rnn, lstm, gru or gru-reset-before.
    #[arg(long, default_value = "lstm")]
    pub cell: String,
    /// Features per step.
    #[arg(long, default_value_t = 1)]
    pub d_input: usize,
    /// Window length in steps.
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Hidden units.
    #[arg(long, default_value_t = 32)]
    pub hidden: usize,
    /// Worker threads for the throughput figures.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Figures to measure, comma-separated: latency, batch, train (others print 0).
    #[arg(long, default_value = "latency,batch,train")]
    pub measure: String,
    /// Print one JSON line (otherwise a readable summary).
    #[arg(long)]
    pub json: bool,
}

/// The arguments of `anomalyd bench checkpoint` and `bench memory`: `streams`
/// copies of one stream fed `readings` readings.
#[derive(clap::Args, Debug)]
pub struct HeldStreamsArgs {
    /// Detector config (TOML); defaults otherwise.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Streams held.
    #[arg(long, default_value_t = 10_000)]
    pub streams: usize,
    /// Readings fed to the stream that is copied (≥ 384 trains a model with the
    /// default config).
    #[arg(long, default_value_t = 1200)]
    pub readings: usize,
}
