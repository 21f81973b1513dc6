//! The `anomalyd` command line.

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

use anomalyd::bench::{Measure, ModelBenchConfig, run_model_bench};
use anomalyd::nn::CellKind;

/// Streaming anomaly detection with a recurrent autoencoder per stream.
#[derive(Parser, Debug)]
#[command(name = "anomalyd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Measure performance.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
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

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
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
