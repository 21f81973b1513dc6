//! The `anomalyd` command line.

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

use anomalyd::bench::{Measure, ModelBenchConfig, run_model_bench};
use std::path::{Path, PathBuf};

use anomalyd::detector::DetectorConfig;
use anomalyd::eval::{nab, replay};
use anomalyd::nn::CellKind;

fn load_config(path: Option<&Path>) -> Result<DetectorConfig> {
    let config: DetectorConfig = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
        }
        None => DetectorConfig::default(),
    };
    config.validate()?;
    Ok(config)
}

/// Streaming anomaly detection with a recurrent autoencoder per stream.
#[derive(Parser, Debug)]
#[command(name = "anomalyd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the service: HTTP and WebSocket API, Prometheus metrics, snapshots in the
    /// data directory. Settings come from anomalyd.toml (--config, or ./anomalyd.toml
    /// when present), ANOMALYD_* environment variables and these flags, in rising
    /// precedence.
    Serve(Box<ServeArgs>),
    /// Probe a running service's readiness (for container health checks, which
    /// then need no shell or curl): exit 0 when GET /readyz answers 200.
    Healthcheck {
        /// Address of the service.
        #[arg(long, env = "ANOMALYD_LISTEN", default_value = "127.0.0.1:8080")]
        listen: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 3.0)]
        timeout: f64,
    },
    /// Score a CSV file through the detector, one stream, training inline
    /// (deterministic: the same input and config give the same scores).
    Replay {
        /// Input CSV with a header row.
        file: PathBuf,
        /// Name of the timestamp column (RFC 3339, `YYYY-MM-DD HH:MM:SS` or Unix seconds).
        #[arg(long, default_value = "timestamp")]
        timestamp_column: String,
        /// Value columns, comma-separated (default: every other column).
        #[arg(long, value_delimiter = ',')]
        value_columns: Vec<String>,
        /// Detector config (TOML); defaults otherwise.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Output CSV: timestamp, values, score, anomaly (the state), event
        /// (opened/resolved), suppressed (why an anomalous reading opened nothing),
        /// incident, event_score, cause, phase, model_version, raw_error, expected
        /// values.
        #[arg(long)]
        out: PathBuf,
        /// Teach the first N rows as history (known normal: learnt, never flagged)
        /// and train on them before scoring the rest; they are not written.
        #[arg(long, default_value_t = 0)]
        train_rows: usize,
    },
    /// Run the Tennessee Eastman benchmark: learn train/normal.csv as history, score
    /// each test file with a copy of that stream, print detection and false-alarm
    /// rates per fault.
    Tep {
        /// Data root (train/normal.csv, test/normal.csv, test/faultNN.csv).
        #[arg(long)]
        data: PathBuf,
        /// Detector config (TOML); defaults otherwise.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Training seeds (comma-separated); each is a full run, and the mean is
        /// reported.
        #[arg(long, value_delimiter = ',', default_value = "0")]
        seeds: Vec<u64>,
        /// Test files processed at once (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the Numenta Anomaly Benchmark: every <category>/<file>.csv under --data
    /// through its own detector, NAB result files under --out, and the three NAB
    /// scores when --windows is given.
    Nab {
        /// Corpus root (<category>/<file>.csv, columns timestamp,value).
        #[arg(long)]
        data: PathBuf,
        /// Where result files go (<out>/<category>/<file>.csv: timestamp,anomaly_score).
        #[arg(long)]
        out: PathBuf,
        /// NAB label windows (combined_windows.json) to score against.
        #[arg(long)]
        windows: Option<PathBuf>,
        /// NAB profiles (profiles.json); NAB's three standard ones otherwise.
        #[arg(long)]
        profiles: Option<PathBuf>,
        /// Detector config (TOML); defaults otherwise.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Files processed at once (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Print the scores as one JSON object.
        #[arg(long)]
        json: bool,
        /// Do not run the detector: score the result files already under --out.
        #[arg(long, requires = "windows", conflicts_with = "seeds")]
        score_only: bool,
        /// Run the corpus once per training seed (comma-separated; results under
        /// <out>/seed-<n>) and print each run's scores and their mean and spread: a
        /// score that hinges on one seed's luck shows here.
        #[arg(long, value_delimiter = ',')]
        seeds: Vec<u64>,
        /// Which verdict score NAB judges.
        #[arg(long, value_enum, default_value = "event")]
        score: replay::NabScore,
        /// Also print each category's (and with -vv each file's) share under the
        /// standard profile: raw score, windows detected, false positives.
        #[arg(short, long, action = clap::ArgAction::Count)]
        verbose: u8,
    },
    /// Measure performance.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Config file (TOML): the keys below plus a [detector] table for new streams.
    #[arg(long, env = "ANOMALYD_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "ANOMALYD_LISTEN")]
    listen: Option<String>,
    /// Data directory for snapshots [default: ./data].
    #[arg(long, env = "ANOMALYD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// File with a bearer token (16+ characters); when set, every /v1 endpoint needs
    /// `Authorization: Bearer <token>` (or `?access_token=` on the WebSocket).
    #[arg(long, env = "ANOMALYD_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,
    /// Largest request body in bytes [default: 4194304].
    #[arg(long, env = "ANOMALYD_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// Most readings in one request [default: 10000].
    #[arg(long, env = "ANOMALYD_MAX_READINGS_PER_REQUEST")]
    max_readings_per_request: Option<usize>,
    /// Most streams [default: 100000].
    #[arg(long, env = "ANOMALYD_MAX_STREAMS")]
    max_streams: Option<usize>,
    /// Most WebSocket subscribers [default: 1024].
    #[arg(long, env = "ANOMALYD_MAX_WS_SUBSCRIBERS")]
    max_ws_subscribers: Option<usize>,
    /// Seconds between snapshots (checkpoints): what a restart replays from the
    /// write-ahead log [default: 60]. A crash loses nothing acknowledged either way.
    #[arg(long, env = "ANOMALYD_SNAPSHOT_INTERVAL_SECS")]
    snapshot_interval_secs: Option<f64>,
    /// When the write-ahead log is synced [default: always]: `always` answers a
    /// request only once its readings are on disk (group commit; survives a power
    /// cut); `never` leaves syncing to checkpoints (survives kill -9, not a power cut).
    #[arg(long, env = "ANOMALYD_WAL_SYNC", value_enum)]
    wal_sync: Option<anomalyd::storage::wal::SyncPolicy>,
    /// Most streams one snapshot round writes, those changed longest ago first
    /// [default: 10000]; the write-ahead log keeps what the others need.
    #[arg(long, env = "ANOMALYD_CHECKPOINT_MAX_STREAMS")]
    checkpoint_max_streams: Option<usize>,
    /// How far ahead of the server's clock a reading's timestamp may be, in seconds
    /// [default: 86400]; later ones are refused (400), so one wrong timestamp cannot
    /// lock its stream.
    #[arg(long, env = "ANOMALYD_MAX_FUTURE_SKEW_SECS")]
    max_future_skew_secs: Option<f64>,
    /// Threads that retrain models [default: half the cores].
    #[arg(long, env = "ANOMALYD_TRAINING_THREADS")]
    training_threads: Option<usize>,
    /// Scoring requests in flight at once [default: 4 per core]; more wait.
    #[arg(long, env = "ANOMALYD_MAX_INFLIGHT")]
    max_inflight: Option<usize>,
    /// Requests that may wait for a scoring slot (up to 200 ms) [default: 16 per
    /// core]; more are answered 429 at once, before their body is read.
    #[arg(long, env = "ANOMALYD_MAX_WAITERS")]
    max_waiters: Option<usize>,
    /// Open connections at once [default: 4096]; more wait in the accept backlog.
    #[arg(long, env = "ANOMALYD_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// An Alertmanager that receives incidents (`http://host:9093`); repeat it (or
    /// separate with commas) for an HA pair.
    #[arg(long = "alertmanager-url", env = "ANOMALYD_ALERTMANAGER_URL", value_delimiter = ',')]
    alertmanager_urls: Option<Vec<String>>,
    /// Seconds between re-sends of firing alerts to Alertmanager [default: 60].
    #[arg(long, env = "ANOMALYD_ALERTMANAGER_RESEND_SECS")]
    alertmanager_resend_secs: Option<f64>,
    /// This service's URL as users reach it, for the links in alerts
    /// [default: http://<listen>].
    #[arg(long, env = "ANOMALYD_EXTERNAL_URL")]
    external_url: Option<String>,
    /// Log format: human or json [default: human]. Level from RUST_LOG (default info).
    #[arg(long, env = "ANOMALYD_LOG_FORMAT")]
    log_format: Option<String>,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
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
        format: anomalyd::server::loadgen::Format,
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

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colours only on a terminal: a log file or a collector gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Caps glibc's malloc arenas at one per core (glibc's default is eight per core):
/// with many request threads, per-thread arenas let freed memory pile up in each,
/// so resident memory grew by a fifth under a 10× overload; capped, it stays
/// within a few percent (BENCHMARKS.md). Must run before threads start.
fn cap_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2);
        // SAFETY: mallopt only changes allocator tuning; called once, before any
        // other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, cores as libc::c_int);
        }
    }
}

/// `GET /readyz` over a plain TCP connection; returns the status code.
fn healthcheck(listen: &str, timeout: std::time::Duration) -> Result<u16> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    // A wildcard listen address is reached on loopback.
    let target = listen.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]");
    let addr = target
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow::anyhow!("no address for {target}"))?;
    let mut conn = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    write!(conn, "GET /readyz HTTP/1.0\r\nHost: {target}\r\n\r\n")?;
    let mut head = [0u8; 12];
    conn.read_exact(&mut head)?;
    let text = std::str::from_utf8(&head)?;
    Ok(text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0))
}

fn main() -> Result<()> {
    cap_malloc_arenas();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(a) => {
            let overrides = anomalyd::config::ServeFile {
                listen: a.listen,
                data_dir: a.data_dir,
                auth_token_file: a.auth_token_file,
                max_body_bytes: a.max_body_bytes,
                max_readings_per_request: a.max_readings_per_request,
                max_streams: a.max_streams,
                max_ws_subscribers: a.max_ws_subscribers,
                snapshot_interval_secs: a.snapshot_interval_secs,
                wal_sync: a.wal_sync,
                checkpoint_max_streams: a.checkpoint_max_streams,
                max_future_skew_secs: a.max_future_skew_secs,
                training_threads: a.training_threads,
                max_inflight: a.max_inflight,
                max_waiters: a.max_waiters,
                max_connections: a.max_connections,
                alertmanager_urls: a.alertmanager_urls,
                alertmanager_resend_secs: a.alertmanager_resend_secs,
                external_url: a.external_url,
                log_format: a.log_format,
                detector: None,
            };
            let cfg = anomalyd::config::load(a.config.as_deref(), overrides).map_err(anyhow::Error::msg)?;
            init_logging(&cfg.log_format);
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async move {
                let metrics = std::sync::Arc::new(anomalyd::metrics::Metrics::new());
                let registry = anomalyd::registry::Registry::open(cfg.registry.clone(), metrics).map_err(anyhow::Error::msg)?;
                let listener = tokio::net::TcpListener::bind(&cfg.listen)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen))?;
                tracing::info!(addr = %listener.local_addr()?, data_dir = ?cfg.registry.data_dir, streams = registry.len(), "anomalyd listening");
                anomalyd::server::run(listener, registry, cfg.server, cfg.snapshot_interval, std::future::pending()).await?;
                Ok::<_, anyhow::Error>(())
            })?;
        }
        Command::Healthcheck { listen, timeout } => {
            let status = healthcheck(&listen, std::time::Duration::from_secs_f64(timeout.clamp(0.1, 60.0)))?;
            if status != 200 {
                bail!("GET /readyz answered {status}");
            }
        }
        Command::Bench {
            what:
                BenchCommand::Ingest {
                    config,
                    streams,
                    batch,
                    seconds,
                    retrain_every,
                    clients,
                    wal,
                },
        } => {
            let config = load_config(config.as_deref())?;
            if streams == 0 || batch == 0 || retrain_every == 0 || clients == 0 {
                bail!("--streams, --batch, --clients and --retrain-every must be at least 1");
            }
            use anomalyd::storage::wal::SyncPolicy;
            let wal = match wal.as_str() {
                "none" => None,
                "always" => Some(SyncPolicy::Always),
                "never" => Some(SyncPolicy::Never),
                other => bail!("--wal must be none, always or never, got {other:?}"),
            };
            let b = anomalyd::bench::IngestBenchConfig {
                streams,
                batch,
                seconds,
                retrain_every,
                clients,
                wal,
            };
            let report = anomalyd::bench::run_ingest_bench(&config, &b).map_err(anyhow::Error::msg)?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::Bench {
            what:
                BenchCommand::Http {
                    url,
                    format,
                    series,
                    samples,
                    connections,
                    seconds,
                },
        } => {
            if series == 0 || samples == 0 || connections == 0 {
                bail!("--series, --samples and --connections must be at least 1");
            }
            let cfg = anomalyd::server::loadgen::LoadConfig {
                url,
                format,
                series,
                samples,
                connections,
                seconds,
            };
            let report = tokio::runtime::Runtime::new()?
                .block_on(anomalyd::server::loadgen::run(cfg))
                .map_err(anyhow::Error::msg)?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::Bench {
            what:
                BenchCommand::Checkpoint {
                    config,
                    streams,
                    readings,
                },
        } => {
            let config = load_config(config.as_deref())?;
            let report =
                anomalyd::bench::run_checkpoint_bench(&config, streams, readings).map_err(anyhow::Error::msg)?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::Bench {
            what:
                BenchCommand::Memory {
                    config,
                    streams,
                    readings,
                },
        } => {
            let config = load_config(config.as_deref())?;
            let report = anomalyd::bench::run_memory_bench(&config, streams, readings).map_err(anyhow::Error::msg)?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::Bench {
            what: BenchCommand::Detector { config, jobs },
        } => {
            let config = load_config(config.as_deref())?;
            let report = anomalyd::bench::run_detector_bench(&config, jobs).map_err(anyhow::Error::msg)?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::Replay {
            file,
            timestamp_column,
            value_columns,
            config,
            out,
            train_rows,
        } => {
            let config = load_config(config.as_deref())?;
            let (n, backwards) = replay::replay(&file, &timestamp_column, &value_columns, &config, train_rows, &out)
                .map_err(anyhow::Error::msg)?;
            eprintln!("scored {n} rows into {}", out.display());
            if backwards > 0 {
                eprintln!("{backwards} rows had a timestamp older than the row before; scored in file order");
            }
        }
        Command::Tep {
            data,
            config,
            seeds,
            threads,
            json,
        } => {
            let config = load_config(config.as_deref())?;
            let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            run_tep_command(&data, &config, &seeds, threads, json)?;
        }
        Command::Nab {
            data,
            out,
            windows,
            profiles,
            config,
            threads,
            json,
            score_only,
            seeds,
            score,
            verbose,
        } => {
            let mut config = load_config(config.as_deref())?;
            let windows = windows
                .map(|w| nab::read_windows(&w))
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let profiles = match profiles {
                Some(p) => nab::read_profiles(&p).map_err(anyhow::Error::msg)?,
                None => nab::standard_profiles(),
            };
            if profiles.is_empty() {
                bail!("no NAB profiles to score with");
            }
            let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            if seeds.len() > 1 {
                let Some(windows) = windows else {
                    bail!("--seeds needs --windows to score the runs");
                };
                let mut per_seed = Vec::new();
                for &seed in &seeds {
                    let mut config = config.clone();
                    config.training.seed = seed;
                    let dir = out.join(format!("seed-{seed}"));
                    let start = std::time::Instant::now();
                    let run = replay::run_nab(&data, &dir, &config, Some(&windows), &profiles, threads, score)
                        .map_err(anyhow::Error::msg)?;
                    let mut scores: Vec<f64> = run.results.iter().map(|r| r.normalized).collect();
                    // The first profile again, each category at the threshold of the others.
                    let (loco, _) = nab::leave_one_category_out(&run.files, &windows, &profiles[0]);
                    scores.push(loco);
                    if !json {
                        let mut cells: Vec<String> = run
                            .results
                            .iter()
                            .map(|r| format!("{} {:.2}", r.profile, r.normalized))
                            .collect();
                        cells.push(format!("leave-one-category-out {loco:.2}"));
                        println!(
                            "seed {seed:<4} {}   ({:.1} s)",
                            cells.join("  "),
                            start.elapsed().as_secs_f64()
                        );
                    }
                    per_seed.push(scores);
                }
                let names = profiles
                    .iter()
                    .map(|p| p.name.clone())
                    .chain([format!("{}_loco", profiles[0].name)]);
                let summary: Vec<(String, f64, f64, f64)> = names
                    .enumerate()
                    .map(|(i, name)| {
                        let xs: Vec<f64> = per_seed.iter().map(|s| s[i]).collect();
                        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
                        let lo = xs.iter().cloned().fold(f64::INFINITY, f64::min);
                        let hi = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        (name, mean, lo, hi)
                    })
                    .collect();
                if json {
                    let obj: serde_json::Map<String, serde_json::Value> = summary
                        .iter()
                        .enumerate()
                        .map(|(i, (name, mean, lo, hi))| {
                            let runs: Vec<f64> = per_seed.iter().map(|s| s[i]).collect();
                            (
                                name.clone(),
                                serde_json::json!({"mean": mean, "min": lo, "max": hi, "runs": runs}),
                            )
                        })
                        .collect();
                    println!("{}", serde_json::json!({"seeds": seeds, "scores": obj}));
                } else {
                    for (name, mean, lo, hi) in summary {
                        println!(
                            "{name:<20} mean {mean:7.2}   (min {lo:.2}, max {hi:.2}, spread {:.2})",
                            hi - lo
                        );
                    }
                }
                return Ok(());
            }
            if let Some(&seed) = seeds.first() {
                config.training.seed = seed;
            }
            let start = std::time::Instant::now();
            let run = match (&windows, score_only) {
                (Some(w), true) => replay::score_existing(&data, &out, w, &profiles),
                _ => replay::run_nab(&data, &out, &config, windows.as_ref(), &profiles, threads, score),
            }
            .map_err(anyhow::Error::msg)?;
            let secs = start.elapsed().as_secs_f64();
            let rows: usize = run.files.iter().map(|f| f.scores.len()).sum();
            if json {
                let scores: serde_json::Map<String, serde_json::Value> = run
                    .results
                    .iter()
                    .map(|r| (r.profile.clone(), serde_json::json!(r.normalized)))
                    .collect();
                let obj =
                    serde_json::json!({"files": run.files.len(), "rows": rows, "seconds": secs, "scores": scores});
                println!("{obj}");
            } else {
                println!(
                    "{} files, {rows} rows in {secs:.1} s; results in {}",
                    run.files.len(),
                    out.display()
                );
                for r in &run.results {
                    println!(
                        "{:<20} {:7.2}   (threshold {:.4}, TP {} FP {} FN {}, {} windows)",
                        r.profile, r.normalized, r.best.threshold, r.best.tp, r.best.fp, r.best.fn_, r.windows
                    );
                }
                if let (Some(w), Some(p)) = (windows.as_ref(), profiles.first()) {
                    let (loco, parts) = nab::leave_one_category_out(&run.files, w, p);
                    println!(
                        "{:<20} {loco:7.2}   (leave one category out: each category at the threshold of the others)",
                        p.name
                    );
                    for h in &parts {
                        println!(
                            "  {:<24} threshold {:.4}  raw {:8.3}  {} windows",
                            h.category, h.threshold, h.score, h.windows
                        );
                    }
                }
                if run.backwards > 0 {
                    println!(
                        "{} rows had a timestamp older than the row before; scored in file order",
                        run.backwards
                    );
                }
                if let (true, Some(w), Some(std)) = (verbose > 0, windows.as_ref(), run.results.first()) {
                    let costs = profiles[0].costs;
                    let rows = nab::breakdown(&run.files, w, costs, std.best.threshold);
                    let mut by_cat: std::collections::BTreeMap<&str, (f64, usize, usize, usize)> = Default::default();
                    for b in &rows {
                        let e = by_cat.entry(b.name.split('/').next().unwrap_or("")).or_default();
                        *e = (
                            e.0 + b.score,
                            e.1 + b.detected,
                            e.2 + b.windows,
                            e.3 + b.false_positives,
                        );
                        if verbose > 1 {
                            println!(
                                "  {:<60} {:7.3}  {}/{} windows  {} FP",
                                b.name, b.score, b.detected, b.windows, b.false_positives
                            );
                        }
                    }
                    for (cat, (score, det, win, fp)) in by_cat {
                        println!("  {cat:<24} raw {score:7.3}  {det}/{win} windows  {fp} FP");
                    }
                }
            }
        }
        Command::Bench {
            what:
                BenchCommand::Model {
                    cell,
                    d_input,
                    window,
                    hidden,
                    threads,
                    seconds,
                    measure,
                    json,
                },
        } => {
            let Some(kind) = CellKind::parse(&cell) else {
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
            let report = run_model_bench(&ModelBenchConfig {
                kind,
                d_input,
                window,
                d_hidden: hidden,
                threads,
                seconds,
                measure,
            });
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
        }
    }
    Ok(())
}

/// `anomalyd tep`: one run per seed, per-file rows, means over seeds.
fn run_tep_command(data: &Path, config: &DetectorConfig, seeds: &[u64], threads: usize, json: bool) -> Result<()> {
    let mut runs = Vec::new();
    for &seed in seeds {
        let mut config = config.clone();
        config.training.seed = seed;
        let run = anomalyd::eval::tep::run_tep(data, &config, threads).map_err(anyhow::Error::msg)?;
        if !json {
            println!("seed {seed}: {:.1} s", run.seconds);
            println!(
                "{:<8} {:>9} {:>11} {:>6} {:>9}",
                "file", "detected", "false_alarm", "delay", "incidents"
            );
            for f in &run.files {
                let delay = f.delay.map_or("-".to_string(), |d| d.to_string());
                let det = if f.fault == 0 {
                    "-".to_string()
                } else {
                    format!("{:.1}%", 100.0 * f.detection_rate)
                };
                println!(
                    "{:<8} {:>9} {:>10.1}% {:>6} {:>9}",
                    f.name,
                    det,
                    100.0 * f.false_alarm_rate,
                    delay,
                    f.incidents
                );
            }
            println!(
                "mean detection (18 detectable faults) {:.1}%   false alarms: test/normal {:.1}%, pre-onset {:.1}%   median delay {}",
                100.0 * run.mean_detection_rate,
                100.0 * run.normal_false_alarm_rate,
                100.0 * run.pre_onset_false_alarm_rate,
                run.median_delay.map_or("-".into(), |d| d.to_string())
            );
        }
        runs.push(run);
    }
    let mean = |f: &dyn Fn(&anomalyd::eval::tep::TepRun) -> f64| runs.iter().map(f).sum::<f64>() / runs.len() as f64;
    let (det, fa, pre) = (
        mean(&|r| r.mean_detection_rate),
        mean(&|r| r.normal_false_alarm_rate),
        mean(&|r| r.pre_onset_false_alarm_rate),
    );
    if json {
        println!(
            "{}",
            serde_json::json!({"seeds": seeds, "mean_detection_rate": det, "normal_false_alarm_rate": fa,
                "pre_onset_false_alarm_rate": pre, "runs": runs})
        );
    } else if runs.len() > 1 {
        println!(
            "over {} seeds: mean detection {:.1}%, false alarms test/normal {:.1}%, pre-onset {:.1}%",
            runs.len(),
            100.0 * det,
            100.0 * fa,
            100.0 * pre
        );
    }
    Ok(())
}
