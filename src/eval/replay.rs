//! Running recorded series through the detector, as the service would score them,
//! with training inline (deterministic): `anomalyd replay` and `anomalyd nab`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use crate::chart;
use crate::detector::context::check_names;
use crate::detector::recent::{self, RecentPoint};
use crate::detector::{Detector, DetectorConfig, IncidentEvent, MAX_FEATURES, Verdict};
use crate::eval::nab::{self, Profile, ProfileResult, ScoredFile, Windows};
use crate::timestamp::{self, Micros};

/// A recorded series: timestamps and rows of values.
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// Names of the value columns.
    pub columns: Vec<String>,
    /// One timestamp per row.
    pub timestamps: Vec<Micros>,
    /// One row of values per timestamp.
    pub rows: Vec<Vec<f64>>,
}

/// Reads a CSV with a header (gzipped when its name ends in `.gz`). `value_columns`
/// empty means every column but the timestamp.
pub fn read_series(path: &Path, timestamp_column: &str, value_columns: &[String]) -> Result<Series, String> {
    let ctx = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(|e| ctx(&e))?;
    // A `.gz` file is read through gzip (the SMAP corpus is stored so).
    let input: Box<dyn std::io::Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut rdr = csv::Reader::from_reader(input);
    let headers: Vec<String> = rdr
        .headers()
        .map_err(|e| ctx(&e))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let find = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| ctx(&format!("no column {name:?}")))
    };
    let ti = find(timestamp_column)?;
    let columns: Vec<String> = if value_columns.is_empty() {
        headers.iter().filter(|h| *h != timestamp_column).cloned().collect()
    } else {
        value_columns.to_vec()
    };
    if columns.is_empty() {
        return Err(ctx(&"no value columns"));
    }
    let idx = columns.iter().map(|c| find(c)).collect::<Result<Vec<_>, _>>()?;
    let mut s = Series {
        columns,
        ..Default::default()
    };
    for (line, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| ctx(&e))?;
        let row = line + 2;
        let t = rec.get(ti).unwrap_or("");
        let t = timestamp::parse(t).ok_or_else(|| ctx(&format!("row {row}: bad timestamp {t:?}")))?;
        let vals = idx
            .iter()
            .zip(&s.columns)
            .map(|(&i, c)| {
                let v = rec.get(i).unwrap_or("").trim();
                v.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| ctx(&format!("row {row}: bad {c} {v:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        s.timestamps.push(t);
        s.rows.push(vals);
    }
    Ok(s)
}

/// A series scored by one detector.
#[derive(Clone, Debug, Default)]
pub struct ScoredSeries {
    /// One verdict per scored row (history rows excluded).
    pub verdicts: Vec<Verdict>,
    /// Rows whose timestamp stepped back; they were scored at the previous row's time,
    /// in file order (the service refuses such readings with 409).
    pub backwards: usize,
}

/// Scores a whole series with one detector, training inline. The first
/// `train_rows` rows are taught as history (known normal; see
/// [`Detector::update_history`]) and a model is trained on them before scoring the
/// rest. `progress` is called with the number of rows done.
pub fn run_series(
    series: &Series,
    config: &DetectorConfig,
    train_rows: usize,
    progress: &dyn Fn(usize),
) -> Result<ScoredSeries, String> {
    let mut config = config.clone();
    // The columns name the features, so `context` may list them by name.
    if config.features.is_empty() && check_names(&series.columns, MAX_FEATURES).is_ok() {
        config.features = series.columns.clone();
    }
    let mut det = Detector::new(config).map_err(|e| e.to_string())?;
    teach(&mut det, series, train_rows)?;
    score_rest(&mut det, series, train_rows, progress)
}

/// Teaches `det` the first `rows` rows as history and trains on them.
pub fn teach(det: &mut Detector, series: &Series, rows: usize) -> Result<(), String> {
    let rows = rows.min(series.rows.len());
    if rows == 0 {
        return Ok(());
    }
    for (i, (t, row)) in series.timestamps[..rows].iter().zip(&series.rows[..rows]).enumerate() {
        det.update_history(*t, row).map_err(|e| format!("row {}: {e}", i + 2))?;
        det.train_if_due_sync();
    }
    det.request_retrain();
    det.train_if_due_sync();
    Ok(())
}

/// Scores rows `from..` of `series` with `det`, training inline.
pub fn score_rest(
    det: &mut Detector,
    series: &Series,
    from: usize,
    progress: &dyn Fn(usize),
) -> Result<ScoredSeries, String> {
    let mut out = ScoredSeries::default();
    for (i, (t, row)) in series.timestamps.iter().zip(&series.rows).enumerate().skip(from) {
        let t = match det.last_timestamp() {
            Some(last) if *t < last => {
                out.backwards += 1;
                last
            }
            _ => *t,
        };
        out.verdicts
            .push(det.update_sync(t, row).map_err(|e| format!("row {}: {e}", i + 2))?);
        if i % 256 == 0 {
            progress(i);
        }
    }
    progress(series.rows.len());
    Ok(out)
}

/// `anomalyd replay`: writes timestamp, values, score, anomaly (the state), event
/// (`opened`/`resolved`), suppressed, incident, event_score, cause, phase,
/// readings_needed (the score is empty while warming up),
/// model_version, raw_error and
/// the expected value of each column, for every row after the first `train_rows`
/// (taught as history). Returns (rows scored, rows whose timestamp stepped back).
pub fn replay(
    input: &Path,
    timestamp_column: &str,
    value_columns: &[String],
    config: &DetectorConfig,
    train_rows: usize,
    out: &Path,
    plot: Option<&Path>,
) -> Result<(usize, usize), String> {
    let series = read_series(input, timestamp_column, value_columns)?;
    let tty = std::io::stderr().is_terminal();
    let n = series.rows.len();
    let progress = |done: usize| {
        if tty {
            let pct = (done * 100).checked_div(n).unwrap_or(100);
            let bar = "#".repeat(pct / 4);
            eprint!("\r[{bar:<25}] {pct:3}% {done}/{n} rows");
            if done == n {
                eprintln!();
            }
        }
    };
    let scored = run_series(&series, config, train_rows, &progress)?;
    let mut w = csv::Writer::from_path(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut header = vec!["timestamp".to_string()];
    header.extend(series.columns.iter().cloned());
    header.extend(
        [
            "score",
            "anomaly",
            "event",
            "suppressed",
            "incident",
            "event_score",
            "cause",
            "phase",
            "readings_needed",
            "model_version",
            "raw_error",
        ]
        .map(String::from),
    );
    header.extend(series.columns.iter().map(|c| format!("expected_{c}")));
    w.write_record(&header).map_err(|e| e.to_string())?;
    let skip = train_rows.min(n);
    for ((v, row), t) in scored
        .verdicts
        .iter()
        .zip(&series.rows[skip..])
        .zip(&series.timestamps[skip..])
    {
        let mut rec = vec![timestamp::format_rfc3339(*t)];
        rec.extend(row.iter().map(|x| x.to_string()));
        rec.extend([
            v.judged_score().map_or(String::new(), |s| s.to_string()),
            v.anomaly.to_string(),
            match &v.event {
                Some(IncidentEvent::Opened(_)) => "opened".to_string(),
                Some(IncidentEvent::Resolved { .. }) => "resolved".to_string(),
                None => String::new(),
            },
            v.suppressed.map_or("", |s| s.name()).to_string(),
            v.incident.map_or(String::new(), |i| i.to_string()),
            v.event_score.to_string(),
            v.cause.clone().unwrap_or_default(),
            v.phase.name().to_string(),
            v.readings_needed.to_string(),
            v.model_version.to_string(),
            v.raw_error.to_string(),
        ]);
        rec.extend(v.expected.iter().map(|x| x.to_string()));
        w.write_record(&rec).map_err(|e| e.to_string())?;
    }
    w.flush().map_err(|e| e.to_string())?;
    if let Some(plot) = plot {
        let title = input
            .file_name()
            .map_or(String::new(), |f| f.to_string_lossy().into_owned());
        let svg = chart_of(&title, &series, &scored.verdicts, skip, config.alert.threshold);
        std::fs::write(plot, svg).map_err(|e| format!("{}: {e}", plot.display()))?;
    }
    Ok((n - skip, scored.backwards))
}

/// The chart of a replay (the console's, over every scored row): the features
/// that moved most at the anomalous readings, named by their columns.
pub fn chart_of(title: &str, series: &Series, verdicts: &[Verdict], skip: usize, threshold: f64) -> String {
    let points: Vec<RecentPoint> = verdicts
        .iter()
        .zip(&series.rows[skip..])
        .map(|(v, row)| RecentPoint::of(v, row, false))
        .collect();
    let band = recent::band(&points);
    let features = chart::pick_features(&points, &band, chart::MAX_PANELS);
    chart::render(&chart::Chart {
        title,
        points: &points,
        band: &band,
        threshold,
        names: &series.columns,
        features: &features,
    })
}

/// The result of `anomalyd nab`.
#[derive(Clone, Debug)]
pub struct NabRun {
    /// Per-file scores, in corpus order.
    pub files: Vec<ScoredFile>,
    /// Per-profile results, when windows were given.
    pub results: Vec<ProfileResult>,
    /// Rows whose timestamp stepped back (scored in file order at the previous time).
    pub backwards: usize,
}

/// Runs every `<category>/<file>.csv` under `data` through its own detector (files in
/// parallel on `threads` threads), writes NAB result files under `out`, and scores
/// them when `windows` are given.
pub fn run_nab(
    data: &Path,
    out: &Path,
    config: &DetectorConfig,
    windows: Option<&Windows>,
    profiles: &[Profile],
    threads: usize,
    output: NabOutput,
) -> Result<NabRun, String> {
    let names = nab::list_corpus(data)?;
    if names.is_empty() {
        return Err(format!("{}: no <category>/<file>.csv files", data.display()));
    }
    let tty = std::io::stderr().is_terminal();
    let scored = super::parallel_map(
        &names,
        threads,
        |name| score_file(data, out, name, config, output),
        |d| {
            if tty {
                eprint!("\r{d}/{} files", names.len());
                let _ = std::io::stderr().flush();
            }
        },
    );
    if tty {
        eprintln!();
    }
    let scored = scored.into_iter().collect::<Result<Vec<_>, _>>()?;
    let backwards = scored.iter().map(|(_, b)| b).sum();
    let files: Vec<ScoredFile> = scored.into_iter().map(|(f, _)| f).collect();
    let results = match windows {
        Some(w) => profiles.iter().map(|p| nab::score_corpus(&files, w, p)).collect(),
        None => Vec::new(),
    };
    Ok(NabRun {
        files,
        results,
        backwards,
    })
}

/// Scores result files already under `out` (from anomalyd or any NAB detector)
/// without running a detector.
pub fn score_existing(data: &Path, out: &Path, windows: &Windows, profiles: &[Profile]) -> Result<NabRun, String> {
    let names = nab::list_corpus(data)?;
    let files = names
        .iter()
        .map(|name| {
            let (timestamps, _) = nab::read_csv_column(&data.join(name), "value")?;
            let (_, scores) = nab::read_csv_column(&out.join(name), "anomaly_score")?;
            if scores.len() != timestamps.len() {
                return Err(format!(
                    "{name}: {} result rows for {} data rows",
                    scores.len(),
                    timestamps.len()
                ));
            }
            Ok(ScoredFile {
                name: name.clone(),
                timestamps,
                scores,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let results = profiles.iter().map(|p| nab::score_corpus(&files, windows, p)).collect();
    Ok(NabRun {
        files,
        results,
        backwards: 0,
    })
}

/// What `anomalyd nab` writes per file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NabOutput {
    /// Which score goes in the result file.
    pub score: NabScore,
    /// Also the file's chart (`<out>/<category>/<file>.svg`, as `replay --plot`).
    pub plots: bool,
}

/// Which verdict score NAB judges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum NabScore {
    /// The state's score (against the learnt normal).
    State,
    /// The event score (anomaly likelihood: how new a reading is).
    Event,
    /// The larger of the two.
    Max,
    /// The alert events: the score of each reading that opens an incident, 0
    /// elsewhere (one detection per incident, as the service alerts).
    Incident,
}

impl NabScore {
    /// The chosen score of a verdict.
    pub fn of(self, v: &Verdict) -> f64 {
        match self {
            NabScore::State => v.score,
            NabScore::Event => v.event_score,
            NabScore::Max => v.score.max(v.event_score),
            NabScore::Incident => match v.event {
                Some(IncidentEvent::Opened(_)) => v.score,
                _ => 0.0,
            },
        }
    }
}

fn score_file(
    data: &Path,
    out: &Path,
    name: &str,
    config: &DetectorConfig,
    output: NabOutput,
) -> Result<(ScoredFile, usize), String> {
    let pick = output.score;
    let series = read_series(&data.join(name), "timestamp", &["value".to_string()])?;
    let scored = run_series(&series, config, 0, &|_| {})?;
    let path: PathBuf = out.join(name);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    if output.plots {
        let svg = chart_of(name, &series, &scored.verdicts, 0, config.alert.threshold);
        let plot = path.with_extension("svg");
        std::fs::write(&plot, svg).map_err(|e| format!("{}: {e}", plot.display()))?;
    }
    let mut w = csv::Writer::from_path(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    w.write_record(["timestamp", "anomaly_score"])
        .map_err(|e| e.to_string())?;
    // The file's own timestamps, also where one stepped back (scored in file order).
    for (v, t) in scored.verdicts.iter().zip(&series.timestamps) {
        w.write_record([timestamp::format_nab(*t), pick.of(v).to_string()])
            .map_err(|e| e.to_string())?;
    }
    w.flush().map_err(|e| e.to_string())?;
    Ok((
        ScoredFile {
            name: name.to_string(),
            timestamps: series.timestamps,
            scores: scored.verdicts.iter().map(|v| pick.of(v)).collect(),
        },
        scored.backwards,
    ))
}
