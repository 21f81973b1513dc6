//! The SMAP spacecraft telemetry benchmark (`anomalyd smap`), by the event-level
//! protocol of Hundman et al. (KDD 2018) that `../shared/data/smap/README.md`
//! gives: one stream per channel learns `train/` as history, then scores `test/`;
//! a predicted stretch is a run of anomalous readings (runs fewer than
//! [`JOIN_GAP`] normal readings apart joined into one); a labelled sequence any
//! stretch overlaps is found (TP), else missed (FN); a stretch that overlaps no
//! labelled sequence is a false positive. Precision and recall are over every
//! channel together, and per channel kind (the channel's first letter), and with
//! each kind left out in turn.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::detector::{Detector, DetectorConfig};
use crate::eval::replay::{read_series, score_rest, teach};

/// Normal readings that still join two anomalous runs into one stretch.
pub const JOIN_GAP: usize = 10;

/// One row of `labels.csv`: a channel and its labelled sequences (inclusive
/// row ranges counted from the first test row).
#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    /// Channel name (`P-1`); its first letter is its kind.
    pub channel: String,
    /// Labelled anomalous sequences, `(first, last)` test rows, inclusive.
    pub sequences: Vec<(usize, usize)>,
}

/// Reads `labels.csv` (`channel,anomaly_sequences,classes,test_rows`); a channel
/// labelled twice gives two rows, as the paper keeps them.
pub fn read_labels(path: &Path) -> Result<Vec<Label>, String> {
    let ctx = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let mut rdr = csv::Reader::from_path(path).map_err(|e| ctx(&e))?;
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| ctx(&e))?;
        let channel = rec.get(0).unwrap_or("").trim().to_string();
        let text = rec.get(1).unwrap_or("");
        let sequences = parse_ranges(text).ok_or_else(|| ctx(&format!("row {}: bad sequences {text:?}", i + 2)))?;
        if channel.is_empty() {
            return Err(ctx(&format!("row {}: no channel", i + 2)));
        }
        out.push(Label { channel, sequences });
    }
    Ok(out)
}

/// `[[a, b], [c, d]]` as `[(a, b), (c, d)]` (each `a ≤ b`).
fn parse_ranges(text: &str) -> Option<Vec<(usize, usize)>> {
    let numbers: Vec<usize> = text
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().ok())
        .collect::<Option<_>>()?;
    if !numbers.len().is_multiple_of(2) {
        return None;
    }
    numbers
        .chunks(2)
        .map(|p| (p[0] <= p[1]).then_some((p[0], p[1])))
        .collect()
}

/// Runs of flagged rows, `(first, last)` inclusive, runs fewer than `join` rows
/// apart joined into one.
pub fn stretches(flags: &[bool], join: usize) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (i, _) in flags.iter().enumerate().filter(|(_, f)| **f) {
        match out.last_mut() {
            Some(last) if i - last.1 - 1 < join => last.1 = i,
            _ => out.push((i, i)),
        }
    }
    out
}

/// Event-level counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Counts {
    /// Labelled sequences found.
    pub tp: usize,
    /// Predicted stretches that overlap no labelled sequence.
    pub fp: usize,
    /// Labelled sequences missed.
    pub fn_: usize,
}

impl Counts {
    /// Matches predicted `stretches` against labelled `sequences`.
    pub fn of(stretches: &[(usize, usize)], sequences: &[(usize, usize)]) -> Counts {
        let overlaps = |a: &(usize, usize), b: &(usize, usize)| a.0 <= b.1 && b.0 <= a.1;
        let tp = sequences
            .iter()
            .filter(|s| stretches.iter().any(|p| overlaps(p, s)))
            .count();
        let fp = stretches
            .iter()
            .filter(|p| !sequences.iter().any(|s| overlaps(p, s)))
            .count();
        Counts {
            tp,
            fp,
            fn_: sequences.len() - tp,
        }
    }

    /// TP / (TP + FP), 0 with no stretch.
    pub fn precision(&self) -> f64 {
        self.tp as f64 / (self.tp + self.fp).max(1) as f64
    }

    /// TP / (TP + FN), 0 with no sequence.
    pub fn recall(&self) -> f64 {
        self.tp as f64 / (self.tp + self.fn_).max(1) as f64
    }

    /// The harmonic mean of precision and recall.
    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r > 0.0 { 2.0 * p * r / (p + r) } else { 0.0 }
    }

    fn add(&mut self, o: &Counts) {
        self.tp += o.tp;
        self.fp += o.fp;
        self.fn_ += o.fn_;
    }
}

/// One labelled channel's result.
#[derive(Clone, Debug, Serialize)]
pub struct SmapChannel {
    /// Channel name.
    pub channel: String,
    /// Its kind (first letter).
    pub kind: String,
    /// Event counts.
    pub counts: Counts,
    /// Test rows in the anomaly state.
    pub flagged_rows: usize,
    /// Test rows.
    pub rows: usize,
}

/// A whole run.
#[derive(Clone, Debug, Serialize)]
pub struct SmapRun {
    /// Whether the command flags were features (else the telemetry alone).
    pub with_flags: bool,
    /// Every channel's result, in label order.
    pub channels: Vec<SmapChannel>,
    /// All channels together.
    pub total: Counts,
    /// Per channel kind.
    pub per_kind: BTreeMap<String, Counts>,
    /// All channels but one kind's, per kind left out.
    pub leave_one_kind_out: BTreeMap<String, Counts>,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// Scores one channel: learns `train/<channel>.csv.gz` as history, scores
/// `test/<channel>.csv.gz`, and matches its stretches against `label`.
pub fn score_channel(
    dir: &Path,
    label: &Label,
    config: &DetectorConfig,
    with_flags: bool,
) -> Result<SmapChannel, String> {
    let columns: Vec<String> = if with_flags {
        Vec::new()
    } else {
        vec!["telemetry".into()]
    };
    let file = format!("{}.csv.gz", label.channel);
    let train = read_series(&dir.join("train").join(&file), "timestamp", &columns)?;
    let test = read_series(&dir.join("test").join(&file), "timestamp", &columns)?;
    let mut det = Detector::new(config.clone()).map_err(|e| e.to_string())?;
    teach(&mut det, &train, train.rows.len())?;
    let scored = score_rest(&mut det, &test, 0, &|_| {})?;
    let flags: Vec<bool> = scored.verdicts.iter().map(|v| v.anomaly).collect();
    Ok(SmapChannel {
        channel: label.channel.clone(),
        kind: label.channel.chars().next().map_or_else(String::new, |c| c.to_string()),
        counts: Counts::of(&stretches(&flags, JOIN_GAP), &label.sequences),
        flagged_rows: flags.iter().filter(|&&f| f).count(),
        rows: flags.len(),
    })
}

/// Runs the benchmark under `dir` (`labels.csv`, `train/`, `test/`), channels in
/// parallel on `threads` threads; `with_flags` makes the command flags features.
pub fn run_smap(dir: &Path, config: &DetectorConfig, with_flags: bool, threads: usize) -> Result<SmapRun, String> {
    let start = std::time::Instant::now();
    let labels = read_labels(&dir.join("labels.csv"))?;
    let channels = super::parallel_map(
        &labels,
        threads,
        |label| score_channel(dir, label, config, with_flags),
        |_| {},
    )
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    let mut total = Counts::default();
    let mut per_kind: BTreeMap<String, Counts> = BTreeMap::new();
    for c in &channels {
        total.add(&c.counts);
        per_kind.entry(c.kind.clone()).or_default().add(&c.counts);
    }
    let leave_one_kind_out = per_kind
        .iter()
        .map(|(kind, k)| {
            let rest = Counts {
                tp: total.tp - k.tp,
                fp: total.fp - k.fp,
                fn_: total.fn_ - k.fn_,
            };
            (kind.clone(), rest)
        })
        .collect();
    Ok(SmapRun {
        with_flags,
        channels,
        total,
        per_kind,
        leave_one_kind_out,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_closer_than_the_gap_join_into_one_stretch() {
        let f = |s: &str| s.chars().map(|c| c == '1').collect::<Vec<_>>();
        assert_eq!(stretches(&f("0110000000000110"), 10), [(1, 2), (13, 14)]);
        assert_eq!(stretches(&f("011000000000110"), 10), [(1, 13)]);
        assert_eq!(stretches(&f("1"), 10), [(0, 0)]);
        assert!(stretches(&f("000"), 10).is_empty());
    }

    #[test]
    fn events_match_by_overlap() {
        let c = Counts::of(&[(0, 5), (10, 12), (30, 31)], &[(4, 8), (11, 11), (20, 25)]);
        assert_eq!((c.tp, c.fp, c.fn_), (2, 1, 1));
        assert!((c.precision() - 2.0 / 3.0).abs() < 1e-12 && (c.recall() - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn labels_parse_as_the_paper_writes_them() {
        assert_eq!(
            parse_ranges("[[2149, 2349], [4536, 4844]]"),
            Some(vec![(2149, 2349), (4536, 4844)])
        );
        assert_eq!(parse_ranges("[[5, 3]]"), None);
        assert_eq!(parse_ranges("[[5]]"), None);
    }
}
