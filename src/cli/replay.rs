//! `anomalyd replay`: one CSV file through one stream's detector.

use std::path::PathBuf;

use anyhow::Result;

use crate::eval::replay;

/// The arguments of `anomalyd replay`.
#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// Input CSV with a header row.
    pub file: PathBuf,
    /// Name of the timestamp column (RFC 3339, `YYYY-MM-DD HH:MM:SS` or Unix seconds).
    #[arg(long, default_value = "timestamp")]
    pub timestamp_column: String,
    /// Value columns, comma-separated (default: every other column).
    #[arg(long, value_delimiter = ',')]
    pub value_columns: Vec<String>,
    /// Detector config (TOML); defaults otherwise.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Output CSV: timestamp, values, score, anomaly (the state), event
    /// (opened/resolved), suppressed (why an anomalous reading opened nothing),
    /// incident, event_score, cause, phase, readings_needed (score empty while
    /// warming up), model_version, raw_error, expected
    /// values.
    #[arg(long)]
    pub out: PathBuf,
    /// Teach the first N rows as history (known normal: learnt, never flagged)
    /// and train on them before scoring the rest; they are not written.
    #[arg(long, default_value_t = 0)]
    pub train_rows: usize,
    /// Also draw the run as an SVG chart (the console's: values, expected, band,
    /// anomalous readings and incidents shaded, the score below).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// Runs `anomalyd replay`.
pub fn run(a: &ReplayArgs) -> Result<()> {
    // Validated by the detector, once the CSV's columns have named the features.
    let config = super::parse_detector_config(a.config.as_deref())?;
    let (n, backwards) = replay::replay(
        &a.file,
        &a.timestamp_column,
        &a.value_columns,
        &config,
        a.train_rows,
        &a.out,
        a.plot.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    eprintln!("scored {n} rows into {}", a.out.display());
    if let Some(plot) = &a.plot {
        eprintln!("chart written to {}", plot.display());
    }
    if backwards > 0 {
        eprintln!("{backwards} rows had a timestamp older than the row before; scored in file order");
    }
    Ok(())
}
