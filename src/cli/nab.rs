//! `anomalyd nab`: the Numenta Anomaly Benchmark, once or once per seed, with
//! NAB's scores, leave one category out, and per-category (or per-file) shares.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::detector::DetectorConfig;
use crate::eval::nab::{self, Profile, Windows};
use crate::eval::replay::{self, NabOutput, NabRun, NabScore};

/// The arguments of `anomalyd nab`.
#[derive(clap::Args, Debug)]
pub struct NabArgs {
    /// Corpus root (<category>/<file>.csv, columns timestamp,value).
    #[arg(long)]
    pub data: PathBuf,
    /// Where result files go (<out>/<category>/<file>.csv: timestamp,anomaly_score).
    #[arg(long)]
    pub out: PathBuf,
    /// NAB label windows (combined_windows.json) to score against.
    #[arg(long)]
    pub windows: Option<PathBuf>,
    /// NAB profiles (profiles.json); NAB's three standard ones otherwise.
    #[arg(long)]
    pub profiles: Option<PathBuf>,
    /// Detector config (TOML); defaults otherwise.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Files processed at once (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the scores as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Do not run the detector: score the result files already under --out.
    #[arg(long, requires = "windows", conflicts_with = "seeds")]
    pub score_only: bool,
    /// Run the corpus once per training seed (comma-separated; results under
    /// <out>/seed-<n>) and print each run's scores and their mean and spread: a
    /// score that hinges on one seed's luck shows here.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Which verdict score NAB judges.
    #[arg(long, value_enum, default_value = "event")]
    pub score: NabScore,
    /// Also draw each file (`<out>/<category>/<file>.svg`: the console's chart,
    /// as `replay --plot`).
    #[arg(long)]
    pub plots: bool,
    /// Also print each category's (and with -vv each file's) share under the
    /// standard profile: raw score, windows detected, false positives.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl NabArgs {
    fn output(&self) -> NabOutput {
        NabOutput {
            score: self.score,
            plots: self.plots,
        }
    }
}

/// Runs `anomalyd nab`.
pub fn run(a: &NabArgs) -> Result<()> {
    let mut config = super::load_detector_config(a.config.as_deref())?;
    let windows = a
        .windows
        .as_ref()
        .map(|w| nab::read_windows(w))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let profiles = match &a.profiles {
        Some(p) => nab::read_profiles(p).map_err(anyhow::Error::msg)?,
        None => nab::standard_profiles(),
    };
    if profiles.is_empty() {
        bail!("no NAB profiles to score with");
    }
    if a.seeds.len() > 1 {
        let Some(windows) = windows else {
            bail!("--seeds needs --windows to score the runs");
        };
        return run_seeds(a, &config, &windows, &profiles);
    }
    if let Some(&seed) = a.seeds.first() {
        config.training.seed = seed;
    }
    run_once(a, &config, windows.as_ref(), &profiles)
}

/// One run per seed, each under `<out>/seed-<n>`: every profile's score and leave
/// one category out per run, then their mean and spread.
fn run_seeds(a: &NabArgs, config: &DetectorConfig, windows: &Windows, profiles: &[Profile]) -> Result<()> {
    let threads = super::threads_or_cores(a.threads);
    let mut per_seed = Vec::new();
    for &seed in &a.seeds {
        let mut config = config.clone();
        config.training.seed = seed;
        let dir = a.out.join(format!("seed-{seed}"));
        let start = std::time::Instant::now();
        let run = replay::run_nab(&a.data, &dir, &config, Some(windows), profiles, threads, a.output())
            .map_err(anyhow::Error::msg)?;
        let mut scores: Vec<f64> = run.results.iter().map(|r| r.normalized).collect();
        // The first profile again, each category at the threshold of the others.
        let (loco, _) = nab::leave_one_category_out(&run.files, windows, &profiles[0]);
        scores.push(loco);
        if !a.json {
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
    let names: Vec<String> = profiles
        .iter()
        .map(|p| p.name.clone())
        .chain([format!("{}_loco", profiles[0].name)])
        .collect();
    print_seed_summary(a, &names, &per_seed)
}

/// Each score's mean, min and max over the seeds.
fn print_seed_summary(a: &NabArgs, names: &[String], per_seed: &[Vec<f64>]) -> Result<()> {
    let column = |i: usize| -> Vec<f64> { per_seed.iter().map(|s| s[i]).collect() };
    let summary: Vec<(&String, f64, f64, f64)> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let xs = column(i);
            let mean = xs.iter().sum::<f64>() / xs.len() as f64;
            let lo = xs.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            (name, mean, lo, hi)
        })
        .collect();
    if a.json {
        let obj: serde_json::Map<String, serde_json::Value> = summary
            .iter()
            .enumerate()
            .map(|(i, (name, mean, lo, hi))| {
                let runs = column(i);
                (
                    (*name).clone(),
                    serde_json::json!({"mean": mean, "min": lo, "max": hi, "runs": runs}),
                )
            })
            .collect();
        println!("{}", serde_json::json!({"seeds": a.seeds, "scores": obj}));
    } else {
        for (name, mean, lo, hi) in summary {
            println!(
                "{name:<20} mean {mean:7.2}   (min {lo:.2}, max {hi:.2}, spread {:.2})",
                hi - lo
            );
        }
    }
    Ok(())
}

/// One run (or, with `--score-only`, the result files already under `--out`).
fn run_once(a: &NabArgs, config: &DetectorConfig, windows: Option<&Windows>, profiles: &[Profile]) -> Result<()> {
    let start = std::time::Instant::now();
    let run = match (windows, a.score_only) {
        (Some(w), true) => replay::score_existing(&a.data, &a.out, w, profiles),
        _ => replay::run_nab(
            &a.data,
            &a.out,
            config,
            windows,
            profiles,
            super::threads_or_cores(a.threads),
            a.output(),
        ),
    }
    .map_err(anyhow::Error::msg)?;
    let secs = start.elapsed().as_secs_f64();
    let rows: usize = run.files.iter().map(|f| f.scores.len()).sum();
    if a.json {
        let scores: serde_json::Map<String, serde_json::Value> = run
            .results
            .iter()
            .map(|r| (r.profile.clone(), serde_json::json!(r.normalized)))
            .collect();
        let obj = serde_json::json!({"files": run.files.len(), "rows": rows, "seconds": secs, "scores": scores});
        println!("{obj}");
        return Ok(());
    }
    println!(
        "{} files, {rows} rows in {secs:.1} s; results in {}",
        run.files.len(),
        a.out.display()
    );
    for r in &run.results {
        println!(
            "{:<20} {:7.2}   (threshold {:.4}, TP {} FP {} FN {}, {} windows)",
            r.profile, r.normalized, r.best.threshold, r.best.tp, r.best.fp, r.best.fn_, r.windows
        );
    }
    if let (Some(w), Some(p)) = (windows, profiles.first()) {
        print_loco(&run, w, p);
    }
    if run.backwards > 0 {
        println!(
            "{} rows had a timestamp older than the row before; scored in file order",
            run.backwards
        );
    }
    if let (true, Some(w), Some(std)) = (a.verbose > 0, windows, run.results.first()) {
        print_breakdown(&run, w, &profiles[0], std.best.threshold, a.verbose);
    }
    Ok(())
}

/// Leave one category out under profile `p`, with each category's part.
fn print_loco(run: &NabRun, windows: &Windows, p: &Profile) {
    let (loco, parts) = nab::leave_one_category_out(&run.files, windows, p);
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

/// Each category's (with `verbose > 1` each file's) share under `profile` at
/// `threshold`: raw score, windows detected, false positives.
fn print_breakdown(run: &NabRun, windows: &Windows, profile: &Profile, threshold: f64, verbose: u8) {
    let rows = nab::breakdown(&run.files, windows, profile.costs, threshold);
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
