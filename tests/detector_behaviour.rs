//! Behaviour of the streaming detector on synthetic series, through the same code the
//! service uses (`Detector::update_sync`: scoring plus inline retraining).
//!
//! Each scenario is a seasonal series with seeded noise and one anomaly from reading
//! `ONSET`. The verdicts are rendered as one line per scenario: when the state first
//! turned anomalous relative to the onset, how many incidents opened in the clean
//! stretch before it, and for faults that last, whether the state held through ≥ 90%
//! of the fault with one incident. The lines are compared with the expected text.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use anomalyd::detector::{
    Detector, DetectorConfig, DetectorKind, IncidentEvent, Objective, Phase, ReadingError, TrainOutcome,
};

const N: usize = 1600;
const ONSET: usize = 1300;
/// Readings before which alerts are not judged: the likelihood learns for 128, the
/// range rule waits for 288.
const WARM: usize = 300;
/// An anomaly must be flagged within this many readings of its onset.
const WITHIN: usize = 10;

fn noise(rng: &mut StdRng) -> f64 {
    // Sum of uniforms: roughly Gaussian with sd 1.
    (0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0
}

fn seasonal(t: usize) -> f64 {
    100.0 + 20.0 * (2.0 * std::f64::consts::PI * t as f64 / 48.0).sin()
}

/// A series: the value at reading t, drawing noise from the rng.
type Series = Box<dyn Fn(usize, &mut StdRng) -> f64>;

/// The scenarios: name and series.
fn scenarios() -> Vec<(&'static str, Series)> {
    vec![
        ("clean seasonal", Box::new(|t, r| seasonal(t) + noise(r))),
        (
            "spike",
            Box::new(|t, r| seasonal(t) + noise(r) + if t == ONSET { 60.0 } else { 0.0 }),
        ),
        (
            "level shift",
            Box::new(|t, r| seasonal(t) + noise(r) + if t >= ONSET { 45.0 } else { 0.0 }),
        ),
        (
            "flatline",
            Box::new(|t, r| if t >= ONSET { 100.0 } else { seasonal(t) + noise(r) }),
        ),
        (
            "frequency change",
            Box::new(|t, r| {
                if t >= ONSET {
                    100.0 + 20.0 * (2.0 * std::f64::consts::PI * t as f64 / 12.0).sin() + noise(r)
                } else {
                    seasonal(t) + noise(r)
                }
            }),
        ),
        (
            "noise burst",
            Box::new(|t, r| seasonal(t) + noise(r) * if (ONSET..ONSET + 60).contains(&t) { 8.0 } else { 1.0 }),
        ),
        (
            // Context only: every value is ordinary, but not at this phase of the cycle.
            "damped cycle",
            Box::new(|t, r| {
                let damp = if (ONSET..ONSET + 48).contains(&t) { 0.5 } else { 1.0 };
                100.0 + damp * (seasonal(t) - 100.0) + noise(r)
            }),
        ),
    ]
}

fn fast_config() -> DetectorConfig {
    let mut c = DetectorConfig::default();
    c.model.ensemble = 2;
    c
}

/// Feeds readings `from..to` of the daily cycle with noise through `update` (no
/// inline training: jobs are left to the test); returns the last value.
fn feed(det: &mut Detector, from: usize, to: usize, rng: &mut StdRng) -> f64 {
    let mut v = 0.0;
    for t in from..to {
        v = seasonal(t) + noise(rng);
        det.update(t as i64, &[v]).unwrap();
    }
    v
}

/// What a run showed: the readings that opened an incident and the state of each.
struct Run {
    opened: Vec<usize>,
    state: Vec<bool>,
    phases: Vec<Phase>,
}

/// Scenarios whose fault lasts to the end of the series.
const SUSTAINED: [&str; 3] = ["level shift", "flatline", "frequency change"];

fn render(name: &str, run: &Run) -> String {
    let clean = run.opened.iter().filter(|&&i| (WARM..ONSET).contains(&i)).count();
    let first = (ONSET..N).find(|&i| run.state[i]).map(|i| i - ONSET);
    let flagged = match first {
        Some(d) if name == "clean seasonal" => format!("anomalous {d} after the mark"),
        Some(d) if d <= WITHIN => "flagged in time".to_string(),
        Some(d) => format!("flagged late (+{d})"),
        None if name == "clean seasonal" => "quiet".to_string(),
        None => "missed".to_string(),
    };
    let mut line = format!("{name}: {flagged}, {clean} clean incidents");
    if SUSTAINED.contains(&name) {
        let held = run.state[ONSET..].iter().filter(|&&s| s).count() as f64 / (N - ONSET) as f64;
        let incidents = run.opened.iter().filter(|&&i| i >= ONSET).count();
        if held >= 0.9 && incidents == 1 {
            line += ", state held, one incident";
        } else {
            line += &format!(", state held {:.0}%, {incidents} incidents", 100.0 * held);
        }
    }
    line
}

fn run(config: &DetectorConfig, f: &dyn Fn(usize, &mut StdRng) -> f64, seed: u64) -> Run {
    let mut det = Detector::new(config.clone()).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut r = Run {
        opened: Vec::new(),
        state: Vec::new(),
        phases: Vec::new(),
    };
    for t in 0..N {
        let v = det.update_sync(t as i64 * 300_000_000, &[f(t, &mut rng)]).unwrap();
        if matches!(v.event, Some(IncidentEvent::Opened(_))) {
            r.opened.push(t);
        }
        r.state.push(v.anomaly);
        r.phases.push(v.phase);
    }
    r
}

#[test]
fn autoencoder_flags_each_anomaly_in_time_and_stays_quiet_otherwise() {
    let config = fast_config();
    // A frequency change keeps every value in range; the drift statistic (residuals
    // that keep one sign) holds it.
    assert_eq!(every_scenario_with_a_model(&config), EVERY_ANOMALY_IN_TIME);
}

/// What the default model shows on the scenarios.
const EVERY_ANOMALY_IN_TIME: &str = "\
clean seasonal: quiet, 0 clean incidents
spike: flagged in time, 0 clean incidents
level shift: flagged in time, 0 clean incidents, state held, one incident
flatline: flagged in time, 0 clean incidents, state held, one incident
frequency change: flagged in time, 0 clean incidents, state held, one incident
noise burst: flagged in time, 0 clean incidents
damped cycle: flagged in time, 0 clean incidents";

/// Every scenario rendered, each checked to be scored by the model at its onset.
fn every_scenario_with_a_model(config: &DetectorConfig) -> String {
    let got: Vec<String> = scenarios()
        .iter()
        .map(|(name, f)| {
            let r = run(config, f.as_ref(), 7);
            assert_eq!(r.phases[ONSET], Phase::Model, "{name}: the model scores by then");
            render(name, &r)
        })
        .collect();
    got.join("\n")
}

/// The forecasting objective (`model.objective = "forecast"`): the newest step is
/// hidden from the model, so its residual there is a one-step forecast error.
/// The same faults are flagged in time, and held as long.
#[test]
fn a_forecasting_model_flags_each_anomaly_in_time() {
    let mut config = fast_config();
    config.model.objective = Objective::Forecast;
    assert_eq!(every_scenario_with_a_model(&config), EVERY_ANOMALY_IN_TIME);
}

/// A frequency change is held for its whole length whichever seed trained the
/// model. The model, retrained while the incident is open, scores the faster
/// cycle near its limit, so its hold alone depends on the seed (two incidents
/// and 87% on seed 4 before); the state's seasonal expectation comes from the
/// normal periods before the fault, which the fault does not become.
#[test]
fn a_frequency_change_is_held_whatever_the_training_seed() {
    let (name, f) = scenarios().into_iter().find(|(n, _)| *n == "frequency change").unwrap();
    for seed in 0..6 {
        let mut config = fast_config();
        config.training.seed = seed;
        let line = render(name, &run(&config, f.as_ref(), 7));
        assert_eq!(
            line, "frequency change: flagged in time, 0 clean incidents, state held, one incident",
            "training seed {seed}"
        );
    }
}

/// A snapshot written before the objective existed restores as a reconstructing
/// model, and a forecasting model's objective survives a snapshot.
#[test]
fn a_model_keeps_its_objective_through_a_snapshot() {
    let mut c = fast_config();
    c.retrain.first_after = 200;
    c.model.objective = Objective::Forecast;
    let mut det = Detector::new(c).unwrap();
    let mut rng = StdRng::seed_from_u64(4);
    for t in 0..260usize {
        det.update_sync(t as i64, &[seasonal(t) + noise(&mut rng)]).unwrap();
    }
    let snap = det.snapshot();
    let restored = Detector::restore(snap.clone()).unwrap();
    assert_eq!(restored.model().map(|m| m.objective), Some(Objective::Forecast));
    let mut state = serde_json::to_value(&snap.state).unwrap();
    assert!(state["model"].as_object_mut().unwrap().remove("objective").is_some());
    let old = anomalyd::detector::DetectorSnapshot {
        state: serde_json::from_value(state).unwrap(),
        members: snap.members,
    };
    let restored = Detector::restore(old).unwrap();
    assert_eq!(restored.model().map(|m| m.objective), Some(Objective::Reconstruct));
}

#[test]
fn the_seasonal_baseline_alone_flags_anomalies_of_context() {
    let config = DetectorConfig {
        detector: DetectorKind::Seasonal,
        ..DetectorConfig::default()
    };
    let got: Vec<String> = scenarios()
        .iter()
        .filter(|(name, _)| ["clean seasonal", "flatline", "damped cycle"].contains(name))
        .map(|(name, f)| render(name, &run(&config, f.as_ref(), 5)))
        .collect();
    // Alone, the seasonal residual holds a flatline through the readings where it
    // crosses the cycle too: what is expected there comes from the normal periods
    // before it, never from the flatline's own.
    let expected = "\
clean seasonal: quiet, 0 clean incidents
flatline: flagged in time, 0 clean incidents, state held, one incident
damped cycle: flagged in time, 0 clean incidents";
    assert_eq!(got.join("\n"), expected);
    // Without the seasonal baseline, nothing else sees the damped cycle in time.
    let mut blind = DetectorConfig {
        detector: DetectorKind::Gaussian,
        ..DetectorConfig::default()
    };
    blind.baseline.seasonal = false;
    let damped = scenarios().into_iter().find(|(n, _)| *n == "damped cycle").unwrap().1;
    assert_eq!(
        render("damped cycle", &run(&blind, damped.as_ref(), 5)),
        "damped cycle: missed, 0 clean incidents"
    );
}

#[test]
fn baselines_alone_flag_the_simple_anomalies() {
    for kind in [DetectorKind::Ar, DetectorKind::Gaussian] {
        let config = DetectorConfig {
            detector: kind,
            ..DetectorConfig::default()
        };
        let got: Vec<String> = scenarios()
            .iter()
            .filter(|(name, _)| ["clean seasonal", "spike", "level shift"].contains(name))
            .map(|(name, f)| {
                let r = run(&config, f.as_ref(), 11);
                assert!(
                    r.phases[WARM..].iter().all(|p| *p == Phase::Baseline),
                    "{kind:?} never trains a model"
                );
                render(name, &r)
            })
            .collect();
        // The level alone and the AR residual (judged against where the series
        // would be had it stayed normal) both hold the shift.
        let held = "state held, one incident";
        let expected = format!(
            "\
clean seasonal: quiet, 0 clean incidents
spike: flagged in time, 0 clean incidents
level shift: flagged in time, 0 clean incidents, {held}"
        );
        assert_eq!(got.join("\n"), expected, "{kind:?}");
    }
}

#[test]
fn the_same_input_gives_the_same_scores_bit_for_bit() {
    let config = fast_config();
    let series = |seed| {
        let mut det = Detector::new(config.clone()).unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        (0..1250)
            .map(|t| det.update_sync(t as i64, &[seasonal(t) + noise(&mut rng)]).unwrap())
            .map(|v| (v.score.to_bits(), v.event_score.to_bits(), v.model_version))
            .collect::<Vec<_>>()
    };
    let (a, b) = (series(3), series(3));
    assert!(a.iter().any(|x| x.2 >= 2), "models were trained and retrained");
    assert_eq!(a, b);
    assert_ne!(a, series(4), "and the check can fail");
}

#[test]
fn multivariate_readings_attribute_the_anomaly_to_its_feature() {
    let mut det = Detector::new(fast_config()).unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    let mut last = None;
    for t in 0..1000 {
        let a = seasonal(t) + noise(&mut rng);
        let b = 50.0 + 5.0 * (t as f64 / 30.0).cos() + noise(&mut rng) * 0.5;
        let b = if t == 990 { b + 40.0 } else { b };
        let v = det.update_sync(t as i64, &[a, b]).unwrap();
        assert_eq!((v.expected.len(), v.contributions.len()), (2, 2));
        if t == 990 {
            last = Some(v);
        }
    }
    let v = last.unwrap();
    assert!(v.anomaly && v.score >= 0.5, "{v:?}");
    assert!(
        v.contributions[1] > 0.8,
        "feature 1 carries the anomaly: {:?}",
        v.contributions
    );
    assert_eq!(
        det.update(2000, &[1.0]),
        Err(ReadingError::WrongWidth { got: 1, expected: 2 })
    );
}

#[test]
fn bad_readings_are_rejected_and_change_nothing() {
    let mut det = Detector::new(fast_config()).unwrap();
    for t in 0..50 {
        det.update(t, &[t as f64]).unwrap();
    }
    let before = (det.readings_seen(), det.last_timestamp());
    assert_eq!(det.update(60, &[f64::NAN]), Err(ReadingError::NotFinite { index: 0 }));
    assert_eq!(
        det.update(60, &[f64::INFINITY]),
        Err(ReadingError::NotFinite { index: 0 })
    );
    assert_eq!(det.update(60, &[]), Err(ReadingError::Empty));
    assert_eq!(
        det.update(60, &[1.0, 2.0]),
        Err(ReadingError::WrongWidth { got: 2, expected: 1 })
    );
    assert_eq!(
        det.update(10, &[1.0]),
        Err(ReadingError::OutOfOrder { got: 10, last: 49 })
    );
    assert_eq!((det.readings_seen(), det.last_timestamp()), before);
    // Equal timestamps are allowed (NAB has them).
    det.update(49, &[3.0]).unwrap();
}

#[test]
fn scoring_goes_on_while_a_job_trains_and_the_model_swaps_in_whole() {
    let mut det = Detector::new(fast_config()).unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    let mut t = 0;
    while !det.training_due() {
        det.update(t, &[seasonal(t as usize) + noise(&mut rng)]).unwrap();
        t += 1;
    }
    let job = det.training_job();
    assert!(!det.training_due(), "one job at a time");
    // The stream keeps scoring with the baselines while the job runs elsewhere.
    let handle = std::thread::spawn(move || anomalyd::detector::train::train(&job, &|| false));
    for _ in 0..20 {
        let v = det.update(t, &[seasonal(t as usize) + noise(&mut rng)]).unwrap();
        assert_eq!((v.phase, v.model_version), (Phase::Baseline, 0));
        t += 1;
    }
    det.install(handle.join().unwrap());
    let v = det.update(t, &[seasonal(t as usize) + noise(&mut rng)]).unwrap();
    assert_eq!((v.phase, v.model_version), (Phase::Model, 1));
    let m = det.model().unwrap();
    let first_members = fast_config().training.first_model_members(2);
    assert!(m.report.val_loss.is_finite() && m.report.epochs >= 1 && m.scorers.len() == first_members);
}

#[test]
fn a_diverging_job_keeps_the_old_model() {
    let mut det = Detector::new(fast_config()).unwrap();
    let mut rng = StdRng::seed_from_u64(2);
    for t in 0..500 {
        det.update_sync(t, &[seasonal(t as usize) + noise(&mut rng)]).unwrap();
    }
    let version = det.model().unwrap().version;
    let mut job = det.training_job();
    // Poisoned starting weights: the first loss is not finite.
    for m in job.warm_start.as_mut().unwrap() {
        for t in m.tensors_mut() {
            t.iter_mut().for_each(|v| *v = 1e30);
        }
    }
    let outcome = anomalyd::detector::train::train(&job, &|| false);
    assert!(matches!(outcome, TrainOutcome::Diverged(_)), "{outcome:?}");
    det.install(outcome);
    assert_eq!((det.model().unwrap().version, det.failed_jobs()), (version, 1));
    let v = det.update(600, &[100.0]).unwrap();
    assert!(v.score.is_finite() && v.model_version == version);
}

#[test]
fn a_first_model_trains_fewer_epochs_than_the_jobs_that_go_on_from_it() {
    // No early stop: each member runs its whole epoch budget.
    let mut config = fast_config();
    config.training.patience = 1000;
    config.training.first_epochs = 3;
    let mut det = Detector::new(config.clone()).unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    let mut t = 0;
    while !det.training_due() {
        det.update(t, &[seasonal(t as usize) + noise(&mut rng)]).unwrap();
        t += 1;
    }
    let members = config.model.ensemble;
    let first_members = config.training.first_model_members(members);
    let first = det.training_job();
    assert!(first.warm_start.is_none(), "a first model starts from scratch");
    let outcome = anomalyd::detector::train::train(&first, &|| false);
    let TrainOutcome::Trained(m) = &outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        m.report.epochs,
        first_members * config.training.first_epochs,
        "{:?}",
        m.report
    );
    det.install(outcome);
    let next = det.training_job();
    assert!(next.warm_start.is_some());
    let TrainOutcome::Trained(m) = anomalyd::detector::train::train(&next, &|| false) else {
        panic!()
    };
    // The next job goes on from the first model's members and trains the rest of
    // the ensemble from scratch.
    let (warm, fresh) = (first_members, members - first_members);
    assert_eq!(
        m.report.epochs,
        warm * config.training.epochs + fresh * config.training.first_epochs
    );
    assert_eq!(m.members.len(), members);
    assert!(config.training.first_epochs < config.training.epochs);
}

/// With `training.first_members = 1` a first model trains one member, so a burst
/// of new streams is on a model sooner; the ensemble is completed two windows
/// later.
#[test]
fn a_first_model_of_one_member_is_completed_two_windows_later() {
    let mut config = fast_config();
    config.model.ensemble = 3;
    config.training.first_members = 1;
    let mut det = Detector::new(config.clone()).unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    let mut members = Vec::new();
    for t in 0..config.retrain.first_after + 3 * config.window {
        det.update_sync(t as i64, &[seasonal(t) + noise(&mut rng)]).unwrap();
        members.push(det.model().map_or(0, |m| m.scorers.len()));
    }
    let first = members.iter().position(|&n| n > 0).unwrap();
    let whole = members.iter().position(|&n| n == 3).unwrap();
    assert_eq!((members[first], first + 1), (1, config.retrain.first_after));
    assert_eq!(whole - first, 2 * config.window);
    // One job completed the ensemble, and the schedule's next is not due yet.
    assert_eq!(det.model().unwrap().version, 2);
}

#[test]
fn a_first_job_taken_late_trains_on_the_readings_that_made_it_due() {
    // A burst of new streams waits in the training queue while readings go on
    // arriving; each first model should cost what one alone costs.
    let mut config = fast_config();
    config.training.first_members = 1;
    let (first_after, w) = (config.retrain.first_after, config.window);
    let mut det = Detector::new(config).unwrap();
    let mut rng = StdRng::seed_from_u64(6);
    let newest = feed(&mut det, 0, first_after + 300, &mut rng);
    let job = det.training_job();
    assert_eq!(job.readings.len(), first_after, "the readings that made it due");
    assert_eq!(job.readings.last().unwrap()[0], newest, "the newest of them");
    let outcome = anomalyd::detector::train::train(&job, &|| false);
    det.install(outcome);
    // The job completing the ensemble, late too: the first job's readings and two windows.
    feed(&mut det, first_after + 300, first_after + 2 * w + 500, &mut rng);
    assert!(det.training_due());
    assert_eq!(det.training_job().readings.len(), first_after + 2 * w);
}

#[test]
fn a_job_out_when_the_snapshot_was_taken_is_asked_for_again_after_a_restore() {
    // A crash while a job trains loses the job; the restored stream must not
    // take it as done and wait a whole retrain interval on its old model.
    let mut det = Detector::new(fast_config()).unwrap();
    feed(&mut det, 0, 450, &mut StdRng::seed_from_u64(7));
    let _lost = det.training_job();
    assert!(!det.training_due(), "one job at a time");
    let restored = Detector::restore(det.snapshot()).unwrap();
    assert!(restored.training_due(), "the lost job is due again");
}

#[test]
fn a_wall_time_budget_cuts_training_short() {
    let mut det = Detector::new(fast_config()).unwrap();
    feed(&mut det, 0, 500, &mut StdRng::seed_from_u64(4));
    let job = det.training_job();
    let calls = std::cell::Cell::new(0);
    let outcome = anomalyd::detector::train::train(&job, &|| {
        calls.set(calls.get() + 1);
        calls.get() >= 3
    });
    match outcome {
        TrainOutcome::Trained(m) => {
            assert!(m.report.budget_exhausted && m.report.epochs == 1, "{:?}", m.report);
            assert_eq!(m.members.len(), 1, "the budget ends the job, not just one member");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_snapshot_from_before_the_seasonal_baseline_still_restores() {
    let mut det = Detector::new(DetectorConfig {
        detector: DetectorKind::Gaussian,
        ..DetectorConfig::default()
    })
    .unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    for t in 0..400usize {
        det.update(t as i64, &[seasonal(t) + noise(&mut rng)]).unwrap();
    }
    let snap = det.snapshot();
    let mut state = serde_json::to_value(&snap.state).unwrap();
    assert!(state.as_object_mut().unwrap().remove("seasonals").is_some());
    let old = anomalyd::detector::DetectorSnapshot {
        state: serde_json::from_value(state).unwrap(),
        members: snap.members,
    };
    let mut restored = Detector::restore(old).unwrap();
    for t in 400..700usize {
        let v = restored.update(t as i64, &[seasonal(t) + noise(&mut rng)]).unwrap();
        assert_eq!(v.phase, Phase::Baseline);
    }
}

/// A snapshot written before the change model (no change model in the model's
/// metadata, six components in the state's calibration) restores and scores; the
/// next model brings a change model.
#[test]
fn a_snapshot_from_before_the_change_model_still_restores() {
    let mut c = fast_config();
    c.retrain.first_after = 200;
    c.retrain.every_readings = 300;
    let mut det = Detector::new(c).unwrap();
    let mut rng = StdRng::seed_from_u64(4);
    let row = |t: usize, rng: &mut StdRng| {
        let a = seasonal(t) + noise(rng);
        vec![a, 2.0 * a + noise(rng)]
    };
    for t in 0..260usize {
        det.update_sync(t as i64, &row(t, &mut rng)).unwrap();
    }
    assert!(det.model().is_some_and(|m| m.changes.is_some()));
    let snap = det.snapshot();
    let mut state = serde_json::to_value(&snap.state).unwrap();
    assert!(state["model"].as_object_mut().unwrap().remove("changes").is_some());
    for key in ["ewma", "signed", "instant", "smoothed", "drift"] {
        let list = state["state"][key].as_array_mut().unwrap();
        assert_eq!(list.len(), 8, "{key}");
        list.truncate(6);
    }
    let old = anomalyd::detector::DetectorSnapshot {
        state: serde_json::from_value(state).unwrap(),
        members: snap.members,
    };
    let mut restored = Detector::restore(old).unwrap();
    assert!(restored.model().is_some_and(|m| m.changes.is_none()));
    for t in 260..600usize {
        let v = restored.update_sync(t as i64, &row(t, &mut rng)).unwrap();
        assert_eq!(v.phase, Phase::Model);
    }
    assert!(restored.model().is_some_and(|m| m.version > 1 && m.changes.is_some()));
}

/// Hardening finding 11: a baseline or likelihood change applies to the running
/// detector (rebuilt from its learnt buffer) instead of being shown but ignored;
/// a training change keeps the model.
#[test]
fn a_config_change_of_the_same_shape_is_applied_not_just_shown() {
    let mut c = fast_config();
    c.retrain.first_after = 200;
    let mut det = Detector::new(c.clone()).unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    for t in 0..300 {
        det.update_sync(t, &[seasonal(t as usize) + noise(&mut rng)]).unwrap();
    }
    let version = det.model().expect("trained").version;
    let state = |d: &Detector| serde_json::to_value(&d.snapshot().state).unwrap();
    assert_eq!(state(&det)["ars"][0]["p"], 4);
    let mut changed = c.clone();
    changed.baseline.ar_order = 8;
    changed.training.epochs = 3;
    let next = det.reconfigure(changed.clone()).unwrap();
    let s = state(&next);
    assert_eq!(s["ars"][0]["p"], 8, "the event AR runs at the new order");
    assert_eq!(next.readings_seen(), 300, "the stream keeps its identity");
    assert_eq!(next.last_timestamp(), Some(299));
    assert_eq!(next.config(), &changed);
    assert_eq!(next.model().map(|m| m.version), Some(version), "the model is kept");
    assert!(next.training_due(), "and retrained against the new baselines");
    // A training-only change keeps everything learnt.
    let mut training_only = c.clone();
    training_only.training.epochs = 3;
    let same = det.reconfigure(training_only).unwrap();
    assert_eq!(state(&same)["ars"], state(&det)["ars"]);
    assert!(!same.training_due());
}

/// A model that does not drift is retrained less and less often: after the first
/// model, the interval is `every_readings` (a job that completes a first model's
/// ensemble two windows later does not move the schedule), then doubles with
/// each model up to `max_every_readings`. Each retrain restarts the model's
/// limits from its held-out residuals, and a tail of one in 10,000 needs
/// thousands of normal readings to read.
#[test]
fn a_model_that_does_not_drift_is_retrained_less_and_less_often() {
    for first_members in [0, 1] {
        let mut c = fast_config();
        c.training.first_members = first_members;
        let (every, max) = (c.retrain.every_readings, c.retrain.max_every_readings);
        let complete = 2 * c.window;
        let mut det = Detector::new(c).unwrap();
        let mut rng = StdRng::seed_from_u64(9);
        let mut swaps = Vec::new();
        let mut version = 0;
        for t in 0..12_000usize {
            det.update_sync(t as i64 * 60_000_000, &[seasonal(t) + noise(&mut rng)])
                .unwrap();
            let v = det.model().map_or(0, |m| m.version);
            if v != version {
                swaps.push(t);
                version = v;
            }
        }
        let mut gaps: Vec<usize> = swaps.windows(2).map(|w| w[1] - w[0]).collect();
        if first_members == 1 {
            assert_eq!(gaps[0], complete, "models at {swaps:?}");
            let completion = gaps.remove(0);
            gaps[0] += completion;
        }
        assert_eq!(
            gaps[..4],
            [every, 2 * every, (4 * every).min(max), (8 * every).min(max)],
            "first_members {first_members}: models at {swaps:?}"
        );
        assert_eq!(det.retrain_interval(), max as u64);
    }
}
