//! The Numenta Anomaly Benchmark's scoring rules, written from its documentation
//! (`../shared/data/nab/README.md`) and checked against the official scorer's results
//! on the dev split (`tests/nab_scorer.rs`).
//!
//! ```text
//! probation  first min(⌊0.15·n⌋, 750) rows of a file: never scored
//! in window  reward A_TP · σ̃(−(right − i + 1)/width) / σ̃(−1) for the earliest detection
//! missed     −A_FN per window with no detection
//! outside    A_FP · σ̃(|i − prev_right| / (prev_width − 1)) per detection (−A_FP before any window)
//!            σ̃(x) = 2·sigmoid(−5x) − 1, and −1 for x ≥ 3
//! threshold  one for the whole corpus: the score-maximising one (ties: the highest)
//! normalised 100 · (S − S_null) / (S_perfect − S_null), S_perfect = A_TP·windows, S_null = −A_FN·windows
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::timestamp::{self, Micros};

/// Weights of one scoring profile.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
pub struct CostMatrix {
    /// A_TP.
    #[serde(rename = "tpWeight")]
    pub tp: f64,
    /// A_FP.
    #[serde(rename = "fpWeight")]
    pub fp: f64,
    /// A_FN.
    #[serde(rename = "fnWeight")]
    pub fn_: f64,
}

/// A named profile.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// `standard`, `reward_low_FP_rate`, `reward_low_FN_rate`.
    pub name: String,
    /// Its weights.
    pub costs: CostMatrix,
}

/// NAB's three profiles (its `config/profiles.json`).
pub fn standard_profiles() -> Vec<Profile> {
    [
        ("standard", 1.0, 0.11, 1.0),
        ("reward_low_FP_rate", 1.0, 0.22, 1.0),
        ("reward_low_FN_rate", 1.0, 0.11, 2.0),
    ]
    .into_iter()
    .map(|(name, tp, fp, fn_)| Profile {
        name: name.into(),
        costs: CostMatrix { tp, fp, fn_ },
    })
    .collect()
}

/// Reads profiles from a file in the layout of NAB's `config/profiles.json`.
pub fn read_profiles(path: &Path) -> Result<Vec<Profile>, String> {
    #[derive(Deserialize)]
    struct Entry {
        #[serde(rename = "CostMatrix")]
        cost_matrix: CostMatrix,
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let map: BTreeMap<String, Entry> = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(map
        .into_iter()
        .map(|(name, e)| Profile {
            name,
            costs: e.cost_matrix,
        })
        .collect())
}

/// Label windows per file (`"<category>/<file>.csv"` → `[start, end]` pairs).
pub type Windows = BTreeMap<String, Vec<(Micros, Micros)>>;

/// Reads NAB's `combined_windows.json`.
pub fn read_windows(path: &Path) -> Result<Windows, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let raw: BTreeMap<String, Vec<[String; 2]>> =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    raw.into_iter()
        .map(|(file, ws)| {
            let ws = ws
                .iter()
                .map(|[a, b]| match (timestamp::parse(a), timestamp::parse(b)) {
                    (Some(a), Some(b)) => Ok((a, b)),
                    _ => Err(format!("{file}: bad window [{a}, {b}]")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((file, ws))
        })
        .collect()
}

/// Where a row stands for scoring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowKind {
    /// In the probationary period: ignored.
    Probationary,
    /// Outside every window.
    Outside,
    /// Inside window number `n` (numbered across the corpus).
    Window(usize),
}

/// One row's anomaly score and what a detection there is worth.
#[derive(Clone, Copy, Debug)]
pub struct SweepRow {
    /// The detector's anomaly score.
    pub score: f64,
    /// The weighted reward (window) or penalty (outside) of a detection here.
    pub sweep: f64,
    /// Where the row stands.
    pub kind: RowKind,
}

fn scaled_sigmoid(x: f64) -> f64 {
    if x >= 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * x).exp()) - 1.0
    }
}

/// Length of a file's probationary period.
pub fn probationary_length(n_rows: usize) -> f64 {
    ((0.15 * n_rows as f64).floor()).min(0.15 * 5000.0)
}

/// Scores every row of one file. Windows are numbered from `first_window`; returns
/// the rows and the number of windows used.
///
/// A window opens at the first row whose timestamp equals its start and closes at the
/// first row equal to its end, as NAB matches them (duplicate timestamps resolve to
/// their first occurrence).
pub fn sweep_file(
    timestamps: &[Micros],
    scores: &[f64],
    windows: &[(Micros, Micros)],
    costs: CostMatrix,
    first_window: usize,
) -> (Vec<SweepRow>, usize) {
    assert_eq!(timestamps.len(), scores.len(), "one score per row");
    let max_tp = scaled_sigmoid(-1.0);
    let probation = probationary_length(timestamps.len());
    let first_index = |ts: Micros| timestamps.iter().position(|&t| t == ts);
    let mut pending = windows.iter().copied().peekable();
    let mut rows = Vec::with_capacity(scores.len());
    // (window number, end timestamp, right index, width)
    let mut current: Option<(usize, Micros, usize, f64)> = None;
    let mut previous: Option<(usize, f64)> = None; // (right index, width)
    let mut n_windows = 0;
    for (i, (&t, &score)) in timestamps.iter().zip(scores).enumerate() {
        if let Some(&(start, end)) = pending.peek()
            && t == start
        {
            pending.next();
            let right = first_index(end).unwrap_or(timestamps.len() - 1);
            let left = first_index(start).unwrap_or(i);
            current = Some((first_window + n_windows, end, right, (right as f64 - left as f64) + 1.0));
            n_windows += 1;
        }
        let (sweep, kind) = match current {
            Some((n, _, right, width)) => {
                let position = -((right as f64) - i as f64 + 1.0) / width;
                (scaled_sigmoid(position) * costs.tp / max_tp, RowKind::Window(n))
            }
            None => {
                let position = match previous {
                    None => 3.0,
                    Some((right, width)) => (right as f64 - i as f64).abs() / (width - 1.0),
                };
                (scaled_sigmoid(position) * costs.fp, RowKind::Outside)
            }
        };
        let kind = if (i as f64) < probation {
            RowKind::Probationary
        } else {
            kind
        };
        rows.push(SweepRow { score, sweep, kind });
        if let Some((_, end, _, width)) = current
            && t == end
        {
            previous = Some((i, width));
            current = None;
        }
    }
    (rows, n_windows)
}

/// The result at one threshold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ThresholdScore {
    /// Rows scoring at or above this are detections.
    pub threshold: f64,
    /// The raw score.
    pub score: f64,
    /// Detected rows inside windows.
    pub tp: usize,
    /// Undetected rows outside windows.
    pub tn: usize,
    /// Detected rows outside windows.
    pub fp: usize,
    /// Undetected rows inside windows.
    pub fn_: usize,
}

/// The score at every distinct threshold, from above the highest score down.
pub fn scores_by_threshold(rows: &[SweepRow], costs: CostMatrix) -> Vec<ThresholdScore> {
    let mut scorable: Vec<&SweepRow> = rows.iter().filter(|r| r.kind != RowKind::Probationary).collect();
    scorable.sort_by(|a, b| b.score.total_cmp(&a.score));
    let n_windows = scorable
        .iter()
        .filter_map(|r| {
            if let RowKind::Window(n) = r.kind {
                Some(n + 1)
            } else {
                None
            }
        })
        .max()
        .unwrap_or(0);
    // Windows never entered after probation do not count, as in NAB.
    let mut present = vec![false; n_windows];
    for r in &scorable {
        if let RowKind::Window(n) = r.kind {
            present[n] = true;
        }
    }
    let mut best = vec![-costs.fn_; n_windows];
    let mut total = -costs.fn_ * present.iter().filter(|p| **p).count() as f64;
    let mut tn = scorable.iter().filter(|r| r.kind == RowKind::Outside).count();
    let mut fn_ = scorable.len() - tn;
    let (mut tp, mut fp) = (0, 0);
    let mut threshold = 1.1;
    let mut out = Vec::new();
    // One row past the last (`None`) closes the last threshold's score.
    for r in scorable.iter().map(Some).chain([None]) {
        if r.is_none_or(|r| r.score != threshold) {
            out.push(ThresholdScore {
                threshold,
                score: total,
                tp,
                tn,
                fp,
                fn_,
            });
        }
        let Some(r) = r else { break };
        threshold = r.score;
        match r.kind {
            RowKind::Window(n) => {
                tp += 1;
                fn_ -= 1;
                if r.sweep > best[n] {
                    total += r.sweep - best[n];
                    best[n] = r.sweep;
                }
            }
            _ => {
                fp += 1;
                tn -= 1;
                total += r.sweep;
            }
        }
    }
    out
}

/// The threshold NAB's optimiser picks: the highest score, ties to the highest threshold.
pub fn optimise(rows: &[SweepRow], costs: CostMatrix) -> ThresholdScore {
    let all = scores_by_threshold(rows, costs);
    let mut best = all[0];
    for s in &all[1..] {
        if s.score > best.score {
            best = *s;
        }
    }
    best
}

/// One file's input to the scorer.
#[derive(Clone, Debug)]
pub struct ScoredFile {
    /// `"<category>/<file>.csv"`.
    pub name: String,
    /// Row timestamps, from the data file.
    pub timestamps: Vec<Micros>,
    /// The detector's anomaly scores, one per row.
    pub scores: Vec<f64>,
}

/// A corpus's result under one profile.
#[derive(Clone, Debug)]
pub struct ProfileResult {
    /// Profile name.
    pub profile: String,
    /// The optimised threshold and raw counts.
    pub best: ThresholdScore,
    /// 100 · (S − S_null) / (S_perfect − S_null).
    pub normalized: f64,
    /// Windows in the corpus.
    pub windows: usize,
}

/// Scores a corpus under a profile: sweep every file, optimise one threshold for all.
pub fn score_corpus(files: &[ScoredFile], windows: &Windows, profile: &Profile) -> ProfileResult {
    let mut rows = Vec::new();
    let mut n_windows = 0;
    for f in files {
        let ws = windows.get(&f.name).map(Vec::as_slice).unwrap_or(&[]);
        let (r, n) = sweep_file(&f.timestamps, &f.scores, ws, profile.costs, n_windows);
        rows.extend(r);
        n_windows += n;
    }
    let best = optimise(&rows, profile.costs);
    let c = profile.costs;
    let (perfect, null) = (c.tp * n_windows as f64, -c.fn_ * n_windows as f64);
    let normalized = if perfect > null {
        100.0 * (best.score - null) / (perfect - null)
    } else {
        0.0
    };
    ProfileResult {
        profile: profile.name.clone(),
        best,
        normalized,
        windows: n_windows,
    }
}

/// Reads the `timestamp` column and one numeric column of a CSV, in row order.
pub fn read_csv_column(path: &Path, column: &str) -> Result<(Vec<Micros>, Vec<f64>), String> {
    let mut rdr = csv::Reader::from_path(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let headers = rdr.headers().map_err(|e| format!("{}: {e}", path.display()))?.clone();
    let find = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| format!("{}: no column {name:?}", path.display()))
    };
    let (ti, vi) = (find("timestamp")?, find(column)?);
    let (mut ts, mut vs) = (Vec::new(), Vec::new());
    for (line, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| format!("{}: {e}", path.display()))?;
        let bad = |what: &str| format!("{}: row {}: bad {what}", path.display(), line + 2);
        ts.push(timestamp::parse(rec.get(ti).unwrap_or("")).ok_or_else(|| bad("timestamp"))?);
        vs.push(
            rec.get(vi)
                .unwrap_or("")
                .trim()
                .parse::<f64>()
                .map_err(|_| bad(column))?,
        );
    }
    Ok((ts, vs))
}

/// Every `<category>/<file>.csv` under `dir`, sorted.
pub fn list_corpus(dir: &Path) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let cats = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for cat in cats {
        let cat = cat.map_err(|e| e.to_string())?;
        if !cat.file_type().map_err(|e| e.to_string())?.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(cat.path()).map_err(|e| e.to_string())? {
            let f = f.map_err(|e| e.to_string())?;
            let name = f.file_name().to_string_lossy().to_string();
            if name.ends_with(".csv") {
                out.push(format!("{}/{}", cat.file_name().to_string_lossy(), name));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// One file's share of a corpus result at a given threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct FileBreakdown {
    /// `"<category>/<file>.csv"`.
    pub name: String,
    /// Raw score of the file.
    pub score: f64,
    /// Windows with a detection.
    pub detected: usize,
    /// Windows in the file.
    pub windows: usize,
    /// Detections outside windows.
    pub false_positives: usize,
}

/// Each file's raw score at `threshold` (detections are scores ≥ threshold).
pub fn breakdown(files: &[ScoredFile], windows: &Windows, costs: CostMatrix, threshold: f64) -> Vec<FileBreakdown> {
    files
        .iter()
        .map(|f| {
            let ws = windows.get(&f.name).map(Vec::as_slice).unwrap_or(&[]);
            let (rows, n) = sweep_file(&f.timestamps, &f.scores, ws, costs, 0);
            let mut best = vec![None::<f64>; n];
            let mut fp_score = 0.0;
            let mut fps = 0;
            for r in rows.iter().filter(|r| r.score >= threshold) {
                match r.kind {
                    RowKind::Window(k) => best[k] = Some(best[k].map_or(r.sweep, |b: f64| b.max(r.sweep))),
                    RowKind::Outside => {
                        fp_score += r.sweep;
                        fps += 1;
                    }
                    RowKind::Probationary => {}
                }
            }
            let in_play: Vec<usize> = (0..n)
                .filter(|k| rows.iter().any(|r| r.kind == RowKind::Window(*k)))
                .collect();
            let score = fp_score + in_play.iter().map(|&k| best[k].unwrap_or(-costs.fn_)).sum::<f64>();
            FileBreakdown {
                name: f.name.clone(),
                score,
                detected: in_play.iter().filter(|&&k| best[k].is_some()).count(),
                windows: in_play.len(),
                false_positives: fps,
            }
        })
        .collect()
}

/// One category's share of a leave-one-category-out run.
#[derive(Clone, Debug)]
pub struct HeldOutCategory {
    /// Category (the directory).
    pub category: String,
    /// The threshold optimised on the other categories.
    pub threshold: f64,
    /// This category's raw score at that threshold.
    pub score: f64,
    /// Its windows.
    pub windows: usize,
}

/// Leave one category out: each category is scored at the threshold NAB's optimiser
/// picks on the *other* categories; the raw scores are summed and normalised like
/// the corpus score. It predicts the score on data the threshold never saw.
pub fn leave_one_category_out(
    files: &[ScoredFile],
    windows: &Windows,
    profile: &Profile,
) -> (f64, Vec<HeldOutCategory>) {
    let category = |f: &ScoredFile| f.name.split('/').next().unwrap_or("").to_string();
    let mut cats: Vec<String> = files.iter().map(category).collect();
    cats.sort();
    cats.dedup();
    let mut parts = Vec::new();
    for c in &cats {
        let (held, rest): (Vec<ScoredFile>, Vec<ScoredFile>) = files.iter().cloned().partition(|f| &category(f) == c);
        let threshold = if rest.is_empty() {
            1.1
        } else {
            score_corpus(&rest, windows, profile).best.threshold
        };
        let per_file = breakdown(&held, windows, profile.costs, threshold);
        parts.push(HeldOutCategory {
            category: c.clone(),
            threshold,
            score: per_file.iter().map(|b| b.score).sum(),
            windows: per_file.iter().map(|b| b.windows).sum(),
        });
    }
    let n: usize = parts.iter().map(|p| p.windows).sum();
    let total: f64 = parts.iter().map(|p| p.score).sum();
    let c = profile.costs;
    let (perfect, null) = (c.tp * n as f64, -c.fn_ * n as f64);
    let normalized = if perfect > null {
        100.0 * (total - null) / (perfect - null)
    } else {
        0.0
    };
    (normalized, parts)
}
