//! The `replay`, `nab` and `smap` commands, run as a user runs them: the real binary on files.

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_anomalyd"))
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("anomalyd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn replay_scores_a_multivariate_csv() {
    let dir = temp_dir("replay");
    let input = dir.join("in.csv");
    let mut text = String::from("time,cpu,mem,ignored\n");
    for t in 0..700 {
        let cpu = 50.0 + 10.0 * (t as f64 / 20.0).sin() + ((t * 7919) % 17) as f64 / 17.0;
        let mem = if t == 650 {
            400.0
        } else {
            200.0 + 5.0 * (t as f64 / 33.0).cos()
        };
        text += &format!("2024-01-01T{:02}:{:02}:00Z,{cpu},{mem},x\n", t / 60 % 24, t % 60);
    }
    // Unix seconds are accepted too; make the timestamps increase across the day wrap.
    let text: String = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                l.to_string()
            } else {
                format!("{}{}", 1_700_000_000 + i * 60, &l[l.find(',').unwrap()..])
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&input, text).unwrap();
    let out = dir.join("scores.csv");
    let status = bin()
        .args([
            "replay",
            input.to_str().unwrap(),
            "--timestamp-column",
            "time",
            "--value-columns",
            "cpu,mem",
        ])
        .args(["--out", out.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rdr = csv::Reader::from_path(&out).unwrap();
    let headers: Vec<String> = rdr.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(
        headers,
        [
            "timestamp",
            "cpu",
            "mem",
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
            "expected_cpu",
            "expected_mem"
        ]
    );
    let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 700);
    assert_eq!(&rows[0][0], "2023-11-14T22:14:20Z");
    // Not judged yet: no score, the phase says so, with the readings still needed.
    assert_eq!((&rows[0][3], &rows[0][10]), ("", "warmup"));
    assert!(rows[0][11].parse::<u64>().unwrap() > 0);
    let judged = rows.iter().position(|r| &r[10] != "warmup").unwrap();
    assert!((2..=64).contains(&judged), "judged from reading {judged}");
    assert_eq!(&rows[judged][11], "0");
    assert_eq!(&rows[699][10], "model");
    assert!(rows[699][12].parse::<u64>().unwrap() >= 1);
    assert_eq!(&rows[650][4], "true", "the memory jump is anomalous");
    assert_eq!(&rows[650][5], "opened", "and opens an incident");
    let id = &rows[650][7];
    assert!(
        rows[651..].iter().any(|r| &r[5] == "resolved" && &r[7] == id),
        "the one-reading fault resolves"
    );
    for r in &rows {
        // score (once judged) and event_score
        for col in [3, 8].into_iter().filter(|&c| c != 3 || &r[10] != "warmup") {
            let s: f64 = r[col].parse().unwrap();
            assert!((0.0..=1.0).contains(&s));
        }
    }
}

#[test]
fn replay_teaches_history_rows_and_skips_them() {
    let dir = temp_dir("replay-history");
    let input = dir.join("in.csv");
    let mut text = String::from("timestamp,value\n");
    for t in 0..400 {
        let v = 10.0 + (t as f64 / 7.0).sin() + ((t * 7919) % 13) as f64 / 26.0;
        text += &format!("{},{v}\n", 1_700_000_000 + t * 60);
    }
    std::fs::write(&input, text).unwrap();
    let out = dir.join("scores.csv");
    let status = bin()
        .args(["replay", input.to_str().unwrap(), "--train-rows", "300"])
        .args(["--out", out.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let rows: Vec<csv::StringRecord> = csv::Reader::from_path(&out)
        .unwrap()
        .records()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 100, "history rows are not written");
    // A model was trained on the history before the first scored row.
    assert_eq!(&rows[0][9], "model");
    assert_eq!(&rows[0][10], "0", "history is what it needed: nothing to wait for");
    assert_eq!(&rows[0][11], "1");
    assert!(
        rows.iter().all(|r| &r[3] == "false"),
        "clean data after history raises nothing"
    );
}

#[test]
fn replay_reports_bad_input_clearly() {
    let dir = temp_dir("replay-bad");
    let input = dir.join("in.csv");
    std::fs::write(
        &input,
        "timestamp,value\n2024-01-01 00:00:00,1\n2024-01-01 00:05:00,oops\n",
    )
    .unwrap();
    let out = bin()
        .args([
            "replay",
            input.to_str().unwrap(),
            "--out",
            dir.join("o.csv").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("row 3") && err.contains("oops"), "{err}");
    let cfg = dir.join("bad.toml");
    std::fs::write(&cfg, "[model]\ncell = \"transformer\"\n").unwrap();
    let out = bin()
        .args([
            "replay",
            input.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            "/dev/null",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("model.cell"));
}

#[test]
fn nab_smoke_run_writes_results_and_prints_three_scores() {
    // Two real NAB files (with and without anomalies), the default detector.
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nab");
    let dir = temp_dir("nab");
    let data = dir.join("data");
    for f in [
        "realAdExchange/exchange-3_cpc_results.csv",
        "artificialNoAnomaly/art_noisy.csv",
    ] {
        let dst = data.join(f);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(fixtures.join("data").join(f), dst).unwrap();
    }
    let out = dir.join("out");
    let run = bin()
        .args(["nab", "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .args([
            "--windows",
            fixtures.join("combined_windows.json").to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(v["files"], 2);
    // Not just a range: on these two files a detector that flags nothing scores 0
    // and one that flags everything scores far below; ours finds exchange-3's
    // anomalies and stays quiet on the noise (95.4 when this was written).
    for p in ["standard", "reward_low_FP_rate", "reward_low_FN_rate"] {
        let s = v["scores"][p].as_f64().unwrap();
        assert!((60.0..=100.0).contains(&s), "{p}: {s}");
    }
    // NAB's layout: one row per input row, in order, scores in [0, 1].
    let (ts_in, _) =
        anomalyd::eval::nab::read_csv_column(&data.join("artificialNoAnomaly/art_noisy.csv"), "value").unwrap();
    let (ts_out, scores) =
        anomalyd::eval::nab::read_csv_column(&out.join("artificialNoAnomaly/art_noisy.csv"), "anomaly_score").unwrap();
    assert_eq!(ts_in, ts_out);
    assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)));
    // And the results can be scored again later without rerunning the detector.
    let again = bin()
        .args([
            "nab",
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--score-only",
        ])
        .args([
            "--windows",
            fixtures.join("combined_windows.json").to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    let w: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(w["scores"], v["scores"]);

    // --seeds: one run per training seed, each in its own directory, and the mean.
    let seeds_out = dir.join("seeds");
    let run = bin()
        .args([
            "nab",
            "--data",
            data.to_str().unwrap(),
            "--out",
            seeds_out.to_str().unwrap(),
        ])
        .args([
            "--windows",
            fixtures.join("combined_windows.json").to_str().unwrap(),
            "--seeds",
            "0,1",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let s: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let std = &s["scores"]["standard"];
    let runs: Vec<f64> = std["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(runs.len(), 2);
    assert_eq!(
        runs[0],
        v["scores"]["standard"].as_f64().unwrap(),
        "seed 0 is the default run"
    );
    assert!((std["mean"].as_f64().unwrap() - (runs[0] + runs[1]) / 2.0).abs() < 1e-9);
    assert_eq!(std["min"].as_f64().unwrap(), runs[0].min(runs[1]));
    for seed in ["seed-0", "seed-1"] {
        assert!(
            seeds_out.join(seed).join("artificialNoAnomaly/art_noisy.csv").is_file(),
            "{seed}"
        );
    }
}

#[test]
fn serve_logs_without_colours_when_not_on_a_terminal() {
    // Hardening finding 14 (part): a log file carried ANSI escape codes.
    let dir = temp_dir("serve-log");
    let log = std::fs::File::create(dir.join("serve.log")).unwrap();
    let mut child = bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .stderr(log)
        .spawn()
        .unwrap();
    let path = dir.join("serve.log");
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.contains("anomalyd listening") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(text.contains("anomalyd listening"), "{text}");
    assert!(!text.contains('\u{1b}'), "escape codes in a log file: {text:?}");
}

/// Writes `rows` as a gzipped SMAP channel file (timestamp, telemetry, one flag).
fn smap_file(path: &std::path::Path, start: u64, values: &[f64]) {
    use std::io::Write;
    let mut text = String::from("timestamp,telemetry,cmd1\n");
    for (i, v) in values.iter().enumerate() {
        text.push_str(&format!("{},{v:.4},{}\n", start + 60 * i as u64, u8::from(i % 97 == 0)));
    }
    let file = std::fs::File::create(path).unwrap();
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    gz.write_all(text.as_bytes()).unwrap();
    gz.finish().unwrap();
}

#[test]
fn smap_smoke_run_counts_every_labelled_sequence_once() {
    // Two channels of a quiet wave; each test run holds one labelled level shift.
    let dir = temp_dir("smap");
    for sub in ["train", "test"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let wave = |i: usize| 0.3 * (i as f64 / 9.0).sin() + 0.01 * ((i * 7919) % 13) as f64;
    for channel in ["A-1", "T-1"] {
        let train: Vec<f64> = (0..700).map(wave).collect();
        let test: Vec<f64> = (700..1300)
            .map(|i| wave(i) + if (1000..1060).contains(&i) { 0.8 } else { 0.0 })
            .collect();
        smap_file(
            &dir.join("train").join(format!("{channel}.csv.gz")),
            1_500_000_000,
            &train,
        );
        smap_file(
            &dir.join("test").join(format!("{channel}.csv.gz")),
            1_500_000_000 + 60 * 700,
            &test,
        );
    }
    std::fs::write(
        dir.join("labels.csv"),
        "channel,anomaly_sequences,classes,test_rows\nA-1,\"[[300, 359]]\",[point],600\nT-1,\"[[300, 359]]\",[point],600\n",
    )
    .unwrap();
    let out = bin()
        .args(["smap", "--data", dir.to_str().unwrap(), "--json", "--threads", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let run = &v["runs"][0];
    let total = &run["total"];
    assert_eq!(
        total["tp"].as_u64().unwrap() + total["fn_"].as_u64().unwrap(),
        2,
        "{total}"
    );
    assert_eq!(run["channels"].as_array().unwrap().len(), 2);
    assert_eq!(run["per_kind"].as_object().unwrap().len(), 2, "kinds A and T");
    assert_eq!(run["with_flags"], false);
    // A level shift of several spreads on a quiet wave is found.
    assert_eq!(total["tp"], 2, "{total}");
}

/// `ANOMALYD_ISA` caps the kernels' instruction set, `bench model` shows the path
/// taken, and a name that is not a path is refused with the names that are.
#[test]
fn the_kernel_path_can_be_capped_and_is_shown() {
    let bench = |isa: &str| {
        bin()
            .env("ANOMALYD_ISA", isa)
            .args(["bench", "model", "--cell", "gru", "--window", "4", "--hidden", "3"])
            .args(["--seconds", "0.01", "--measure", "latency", "--json"])
            .output()
            .unwrap()
    };
    let out = bench("portable");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["kernels"], "portable", "{report}");
    assert!(["portable", "avx2", "avx512"].contains(&report["cpu_kernels"].as_str().unwrap()));
    let out = bench("");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["kernels"], report["cpu_kernels"], "unset: the widest");
    let out = bench("sse9");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ANOMALYD_ISA=\"sse9\" is not one of portable, avx2, avx512"),
        "{err}"
    );
}
