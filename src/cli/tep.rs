//! `anomalyd tep`: the Tennessee Eastman benchmark, one run per seed.

use std::path::PathBuf;

use anyhow::Result;

use crate::eval::tep::{self, TepRun};

/// The arguments of `anomalyd tep`.
#[derive(clap::Args, Debug)]
pub struct TepArgs {
    /// Data root (train/normal.csv, test/normal.csv, test/faultNN.csv).
    #[arg(long)]
    pub data: PathBuf,
    /// Detector config (TOML); defaults otherwise.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Training seeds (comma-separated); each is a full run, and the mean is
    /// reported.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub seeds: Vec<u64>,
    /// Test files processed at once (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also draw each test file (`<DIR>/seed-<n>/<file>.svg`: the console's
    /// chart of the four features that moved most, as `replay --plot`).
    #[arg(long)]
    pub plots: Option<PathBuf>,
}

/// `anomalyd tep`: one run per seed, per-file rows, means over seeds.
pub fn run(a: &TepArgs) -> Result<()> {
    let config = super::load_detector_config(a.config.as_deref())?;
    let (seeds, threads, json) = (&a.seeds, super::threads_or_cores(a.threads), a.json);
    let mut runs = Vec::new();
    for &seed in seeds {
        let mut config = config.clone();
        config.training.seed = seed;
        let plots = a.plots.as_ref().map(|d| d.join(format!("seed-{seed}")));
        let run = tep::run_tep(&a.data, &config, threads, plots.as_deref()).map_err(anyhow::Error::msg)?;
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
    let mean = |f: &dyn Fn(&TepRun) -> f64| runs.iter().map(f).sum::<f64>() / runs.len() as f64;
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
