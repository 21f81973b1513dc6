//! The Tennessee Eastman process benchmark (`anomalyd tep`): one stream learns
//! `train/normal.csv` as history (known normal), then each test file is scored by a
//! copy of that stream, as `../shared/data/tep/README.md` prescribes. Faults are
//! sustained states, so the measure is per sample: the share of samples from the
//! onset on that are in the anomaly state (detection rate), the share of flagged
//! samples in `test/normal.csv` and before each onset (false alarms), and the delay
//! to the first flag that stays.

use std::path::Path;

use serde::Serialize;

use crate::detector::{Detector, DetectorConfig, IncidentEvent};
use crate::eval::replay::{Series, read_series, score_rest, teach};

/// Samples before each fault's onset in a test file.
pub const ONSET: usize = 160;
/// Faults widely held to be undetectable from the data; means leave them out.
pub const UNDETECTABLE: [usize; 3] = [3, 9, 15];
/// Consecutive flags that make a detection "stay" (for the delay).
pub const STAYS: usize = 6;

/// One test file's result.
#[derive(Clone, Debug, Serialize)]
pub struct TepFile {
    /// `normal` or `faultNN`.
    pub name: String,
    /// Fault number (0 for the normal run).
    pub fault: usize,
    /// Share of samples from the onset on in the anomaly state (fault files).
    pub detection_rate: f64,
    /// Share of flagged samples before the onset (the whole file for `normal`).
    pub false_alarm_rate: f64,
    /// Samples from the onset to the first flag that starts a run of `STAYS` flags.
    pub delay: Option<usize>,
    /// Incidents opened in the file.
    pub incidents: usize,
}

/// The whole benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct TepRun {
    /// Per test file, `normal` first, then faults 1..=21.
    pub files: Vec<TepFile>,
    /// Mean detection rate over the detectable faults.
    pub mean_detection_rate: f64,
    /// False-alarm rate on `test/normal.csv`.
    pub normal_false_alarm_rate: f64,
    /// Mean false-alarm rate over the faults' pre-onset samples.
    pub pre_onset_false_alarm_rate: f64,
    /// Median delay over the detectable faults that were detected.
    pub median_delay: Option<usize>,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// Shifts `series` to start one sampling step after `after`.
fn shift_after(series: &mut Series, after: i64) {
    let step = match series.timestamps.as_slice() {
        [a, b, ..] => (b - a).max(1),
        _ => 1,
    };
    let offset = after + step - series.timestamps.first().copied().unwrap_or(0);
    for t in &mut series.timestamps {
        *t += offset;
    }
}

fn score_file(
    taught: &Detector,
    dir: &Path,
    (name, fault): (&str, usize),
    history_end: i64,
    plots: Option<&Path>,
) -> Result<TepFile, String> {
    let mut series = read_series(&dir.join("test").join(format!("{name}.csv")), "timestamp", &[])?;
    if let Some(label) = series.columns.iter().position(|c| c == "label") {
        series.columns.remove(label);
        for row in &mut series.rows {
            row.remove(label);
        }
    }
    shift_after(&mut series, history_end);
    let mut det = taught.clone();
    let scored = score_rest(&mut det, &series, 0, &|_| {})?;
    if let Some(plots) = plots {
        let svg = super::replay::chart_of(name, &series, &scored.verdicts, 0, taught.config().alert.threshold);
        let path = plots.join(format!("{name}.svg"));
        std::fs::create_dir_all(plots)
            .and_then(|()| std::fs::write(&path, svg))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let flags: Vec<bool> = scored.verdicts.iter().map(|v| v.anomaly).collect();
    let incidents = scored
        .verdicts
        .iter()
        .filter(|v| matches!(v.event, Some(IncidentEvent::Opened(_))))
        .count();
    let rate = |xs: &[bool]| xs.iter().filter(|&&f| f).count() as f64 / xs.len().max(1) as f64;
    if fault == 0 {
        return Ok(TepFile {
            name: name.into(),
            fault,
            detection_rate: 0.0,
            false_alarm_rate: rate(&flags),
            delay: None,
            incidents,
        });
    }
    let onset = ONSET.min(flags.len());
    let after = &flags[onset..];
    let delay = (0..after.len()).find(|&i| after[i..].iter().take(STAYS).all(|&f| f) && i + STAYS <= after.len());
    Ok(TepFile {
        name: name.into(),
        fault,
        detection_rate: rate(after),
        false_alarm_rate: rate(&flags[..onset]),
        delay,
        incidents,
    })
}

/// A detector that learnt `train/normal.csv` as history (and trained), and
/// the timestamp its history ends at.
fn taught(dir: &Path, config: &DetectorConfig) -> Result<(Detector, i64), String> {
    let train = read_series(&dir.join("train").join("normal.csv"), "timestamp", &[])?;
    let mut taught = Detector::new(config.clone()).map_err(|e| e.to_string())?;
    teach(&mut taught, &train, train.rows.len())?;
    let end = taught.last_timestamp().unwrap_or(0);
    Ok((taught, end))
}

/// Scores one test file (`normal`, `fault01`, …) as [`run_tep`] does.
pub fn run_tep_file(dir: &Path, config: &DetectorConfig, name: &str) -> Result<TepFile, String> {
    let (taught, history_end) = taught(dir, config)?;
    let fault = name.strip_prefix("fault").and_then(|k| k.parse().ok()).unwrap_or(0);
    score_file(&taught, dir, (name, fault), history_end, None)
}

/// Runs the benchmark under `dir` (`train/normal.csv`, `test/normal.csv`,
/// `test/faultNN.csv`), test files in parallel on `threads` threads; with
/// `plots`, each test file's chart goes there (`<name>.svg`).
pub fn run_tep(dir: &Path, config: &DetectorConfig, threads: usize, plots: Option<&Path>) -> Result<TepRun, String> {
    let start = std::time::Instant::now();
    let (taught, history_end) = taught(dir, config)?;
    let mut names = vec![("normal".to_string(), 0)];
    names.extend((1..=21).map(|k| (format!("fault{k:02}"), k)));
    let files = super::parallel_map(
        &names,
        threads,
        |(name, fault)| score_file(&taught, dir, (name, *fault), history_end, plots),
        |_| {},
    )
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    let detectable: Vec<&TepFile> = files
        .iter()
        .filter(|f| f.fault > 0 && !UNDETECTABLE.contains(&f.fault))
        .collect();
    let faults: Vec<&TepFile> = files.iter().filter(|f| f.fault > 0).collect();
    let mut delays: Vec<usize> = detectable.iter().filter_map(|f| f.delay).collect();
    delays.sort_unstable();
    Ok(TepRun {
        mean_detection_rate: detectable.iter().map(|f| f.detection_rate).sum::<f64>() / detectable.len().max(1) as f64,
        normal_false_alarm_rate: files.first().map_or(0.0, |f| f.false_alarm_rate),
        pre_onset_false_alarm_rate: faults.iter().map(|f| f.false_alarm_rate).sum::<f64>() / faults.len().max(1) as f64,
        median_delay: delays.get(delays.len() / 2).copied(),
        files,
        seconds: start.elapsed().as_secs_f64(),
    })
}
