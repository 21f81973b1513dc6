//! `anomalyd smap`: the SMAP spacecraft telemetry benchmark, one run per seed,
//! telemetry alone or with the command flags as features.

use std::path::PathBuf;

use anyhow::Result;

use crate::eval::smap::{self, Counts, SmapRun};

/// The arguments of `anomalyd smap`.
#[derive(clap::Args, Debug)]
pub struct SmapArgs {
    /// Data root (labels.csv, train/<channel>.csv.gz, test/<channel>.csv.gz).
    #[arg(long)]
    pub data: PathBuf,
    /// Detector config (TOML); defaults otherwise.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Give the detector the command flags (cmd1..cmdN) as features beside the
    /// telemetry (default: the telemetry alone).
    #[arg(long)]
    pub flags: bool,
    /// Training seeds (comma-separated); each is a full run.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub seeds: Vec<u64>,
    /// Channels processed at once (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Also print each channel's counts.
    #[arg(short, long)]
    pub verbose: bool,
    /// Print the runs as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `anomalyd smap`.
pub fn run(a: &SmapArgs) -> Result<()> {
    let config = super::load_detector_config(a.config.as_deref())?;
    let threads = super::threads_or_cores(a.threads);
    let mut runs = Vec::new();
    for &seed in &a.seeds {
        let mut config = config.clone();
        config.training.seed = seed;
        let run = smap::run_smap(&a.data, &config, a.flags, threads).map_err(anyhow::Error::msg)?;
        if !a.json {
            print_run(seed, &run, a.verbose);
        }
        runs.push(run);
    }
    if a.json {
        println!("{}", serde_json::json!({"seeds": a.seeds, "runs": runs}));
    } else if runs.len() > 1 {
        let mean = |f: &dyn Fn(&Counts) -> f64| runs.iter().map(|r| f(&r.total)).sum::<f64>() / runs.len() as f64;
        println!(
            "over {} seeds: precision {:.1}%, recall {:.1}%, F1 {:.3}",
            runs.len(),
            100.0 * mean(&Counts::precision),
            100.0 * mean(&Counts::recall),
            mean(&Counts::f1)
        );
    }
    Ok(())
}

fn line(name: &str, c: &Counts) -> String {
    format!(
        "{name:<12} precision {:5.1}%  recall {:5.1}%  F1 {:.3}   (TP {} FP {} FN {})",
        100.0 * c.precision(),
        100.0 * c.recall(),
        c.f1(),
        c.tp,
        c.fp,
        c.fn_
    )
}

fn print_run(seed: u64, run: &SmapRun, verbose: bool) {
    let what = if run.with_flags {
        "telemetry and command flags"
    } else {
        "telemetry alone"
    };
    println!("seed {seed}, {what}: {:.1} s", run.seconds);
    println!("{}", line("all", &run.total));
    for (kind, c) in &run.per_kind {
        println!("  {}", line(&format!("kind {kind}"), c));
    }
    for (kind, c) in &run.leave_one_kind_out {
        println!("  {}", line(&format!("without {kind}"), c));
    }
    if verbose {
        for c in &run.channels {
            let name = format!("{} ({}/{} rows)", c.channel, c.flagged_rows, c.rows);
            println!("    {}", line(&name, &c.counts));
        }
    }
}
