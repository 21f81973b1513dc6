//! The NAB scorer reproduces the official scorer's results on the dev split: the
//! published outputs of Numenta's HTM and windowedGaussian (tests/fixtures/nab/
//! reference/results) score as in reference/dev_scores.json, per profile: normalized
//! score within 0.01, and the same threshold and row counts.

use std::path::PathBuf;

use anomalyd::eval::nab::{
    ScoredFile, list_corpus, read_csv_column, read_profiles, read_windows, score_corpus, standard_profiles,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nab")
}

fn detector_files(detector: &str) -> Vec<ScoredFile> {
    let names = list_corpus(&root().join("data")).unwrap();
    assert_eq!(names.len(), 34);
    names
        .into_iter()
        .map(|name| {
            let (cat, file) = name.split_once('/').unwrap();
            let path = root().join(format!("reference/results/{detector}/{cat}/{detector}_{file}"));
            let (timestamps, scores) = read_csv_column(&path, "anomaly_score").unwrap();
            let (data_ts, _) = read_csv_column(&root().join("data").join(&name), "value").unwrap();
            assert_eq!(timestamps, data_ts, "{name}: result rows follow the data rows");
            ScoredFile {
                name,
                timestamps,
                scores,
            }
        })
        .collect()
}

#[test]
fn reproduces_the_official_dev_scores() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("reference/dev_scores.json")).unwrap()).unwrap();
    let windows = read_windows(&root().join("combined_windows.json")).unwrap();
    let profiles = read_profiles(&root().join("profiles.json")).unwrap();
    assert_eq!(profiles.len(), 3);
    for p in &standard_profiles() {
        assert!(profiles.contains(p), "profiles.json has {}", p.name);
    }
    for detector in ["numenta", "windowedGaussian"] {
        let files = detector_files(detector);
        for profile in &profiles {
            let r = score_corpus(&files, &windows, profile);
            let e = &expected[detector];
            let want = e["normalized"][&profile.name].as_f64().unwrap();
            let raw = &e["raw"][&profile.name];
            let what = format!("{detector} {}", profile.name);
            assert_eq!(r.windows, e["windows"].as_u64().unwrap() as usize, "{what}: windows");
            assert!(
                (r.normalized - want).abs() < 0.01,
                "{what}: normalized {} vs {want}",
                r.normalized
            );
            assert!(
                (r.best.score - raw["Score"].as_f64().unwrap()).abs() < 1e-6,
                "{what}: raw score"
            );
            assert_eq!(
                r.best.threshold,
                e["threshold"][&profile.name].as_f64().unwrap(),
                "{what}: threshold"
            );
            let counts = [r.best.tp, r.best.fp, r.best.fn_, r.best.tn];
            let want_counts = ["TP", "FP", "FN", "TN"].map(|k| raw[k].as_f64().unwrap() as usize);
            assert_eq!(counts, want_counts, "{what}: TP FP FN TN");
        }
    }
}

#[test]
fn perfect_and_null_detectors_score_100_and_0() {
    let windows = read_windows(&root().join("combined_windows.json")).unwrap();
    let names = list_corpus(&root().join("data")).unwrap();
    let mut perfect = Vec::new();
    let mut null = Vec::new();
    for name in names {
        let (timestamps, _) = read_csv_column(&root().join("data").join(&name), "value").unwrap();
        let ws = windows.get(&name).cloned().unwrap_or_default();
        // A perfect detector fires once, at the first row of each window.
        let scores = timestamps
            .iter()
            .map(|t| if ws.iter().any(|w| w.0 == *t) { 1.0 } else { 0.0 })
            .collect();
        perfect.push(ScoredFile {
            name: name.clone(),
            timestamps: timestamps.clone(),
            scores,
        });
        null.push(ScoredFile {
            name,
            scores: vec![0.5; timestamps.len()],
            timestamps,
        });
    }
    for profile in standard_profiles() {
        let p = score_corpus(&perfect, &windows, &profile);
        let n = score_corpus(&null, &windows, &profile);
        assert!(
            (p.normalized - 100.0).abs() < 1e-9,
            "{}: perfect {}",
            profile.name,
            p.normalized
        );
        assert!(n.normalized.abs() < 1e-9, "{}: null {}", profile.name, n.normalized);
    }
}
