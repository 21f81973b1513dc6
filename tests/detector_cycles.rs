//! Cycles and slow failures on univariate streams (issue 20, point 3): a stream with
//! a day and a week in it, found from the data, where an ordinary Monday is normal
//! and a holiday that breaks the weekly shape is not; and a slow drift towards a
//! failure that no single reading shows.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use anomalyd::detector::{Detector, DetectorConfig, IncidentEvent, Verdict};

fn noise(rng: &mut StdRng) -> f64 {
    (0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0
}

fn config() -> DetectorConfig {
    let mut c = DetectorConfig::default();
    c.model.ensemble = 2;
    c
}

/// A detector whose lasting anomalies are never accepted as the new normal
/// (`accept_after` off), so a drift is held to the end of a test.
fn never_accepting() -> Detector {
    let mut c = config();
    c.alert.accept_after = 0.0;
    Detector::new(c).unwrap()
}

/// Runs `f` for `n` readings, `step_s` seconds apart.
fn run(det: &mut Detector, n: usize, step_s: i64, f: &mut dyn FnMut(usize) -> f64) -> Vec<Verdict> {
    let start = det.readings_seen() as usize;
    (start..start + n)
        .map(|t| det.update_sync(t as i64 * step_s * 1_000_000, &[f(t)]).unwrap())
        .collect()
}

fn opened(vs: &[Verdict]) -> Vec<usize> {
    vs.iter()
        .enumerate()
        .filter(|(_, v)| matches!(v.event, Some(IncidentEvent::Opened(_))))
        .map(|(i, _)| i)
        .collect()
}

fn held(vs: &[Verdict]) -> f64 {
    vs.iter().filter(|v| v.anomaly).count() as f64 / vs.len() as f64
}

/// Readings a day at a half-hour step (NAB's taxi demand has this step).
const DAY: usize = 48;
const WEEK: usize = 7 * DAY;

/// Demand at half-hour `t` of day `day` of the week (0 = Monday), with a holiday
/// that looks like a Sunday: weekdays peak at the morning and evening rush,
/// weekends rise late and lower.
fn demand(t: usize, weekend_shape: bool) -> f64 {
    let h = (t % DAY) as f64 / 2.0;
    let bump = |centre: f64, width: f64| (-((h - centre) / width).powi(2)).exp();
    if weekend_shape {
        20.0 + 25.0 * bump(14.0, 4.0)
    } else {
        20.0 + 40.0 * bump(8.5, 1.5) + 45.0 * bump(18.5, 2.0) + 15.0 * bump(13.0, 3.0)
    }
}

fn weekend(t: usize) -> bool {
    (t % WEEK) / DAY >= 5
}

/// Ten weeks of a daily and weekly cycle at a half-hour step: after warm-up no
/// ordinary day opens an incident (Monday after the weekend included), and a
/// Wednesday with a Sunday's shape (a holiday) does, while it lasts. Neither
/// period is configured.
#[test]
fn a_holiday_that_breaks_the_weekly_shape_is_an_incident_and_ordinary_mondays_are_not() {
    let mut det = Detector::new(config()).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let weeks = 10;
    let normal = run(&mut det, weeks * WEEK, 1800, &mut |t| {
        demand(t, weekend(t)) + noise(&mut rng)
    });
    let warm_up = 4 * WEEK;
    let late: Vec<usize> = opened(&normal[warm_up..]).iter().map(|i| i + warm_up).collect();
    assert!(late.is_empty(), "ordinary days opened incidents at {late:?}");
    // Week 11: Monday, Tuesday as usual, then the holiday on Wednesday.
    let before = run(&mut det, 2 * DAY, 1800, &mut |t| demand(t, false) + noise(&mut rng));
    assert!(opened(&before).is_empty(), "Monday and Tuesday: {:?}", opened(&before));
    let holiday = run(&mut det, DAY, 1800, &mut |t| demand(t, true) + noise(&mut rng));
    assert_eq!(opened(&holiday).len(), 1, "the holiday opens one incident");
    assert!(held(&holiday) >= 0.3, "held {}", held(&holiday));
    let after = run(&mut det, 2 * DAY, 1800, &mut |t| demand(t, false) + noise(&mut rng));
    assert!(opened(&after[DAY..]).is_empty(), "Friday: {:?}", opened(&after));
}

/// A stream that was level for a while starts a slow rise towards a failure:
/// 0.003 standard deviations a reading, nine over 3,000 readings, so no reading
/// stands out from the one before. It is flagged before it has climbed six
/// standard deviations, and from there the state holds to the end. While the
/// rise crosses the line the state may flicker: three incidents at most.
/// (`accept_after` is off here: a week after an incident opens it
/// would take the new level as normal, at this 5-minute step 2,016 readings.)
#[test]
fn a_slow_drift_towards_a_failure_is_flagged_before_it_is_far() {
    let mut det = never_accepting();
    let mut rng = StdRng::seed_from_u64(8);
    let calm = run(&mut det, 4000, 300, &mut |_| 50.0 + noise(&mut rng));
    assert!(opened(&calm[1000..]).is_empty(), "calm: {:?}", opened(&calm[1000..]));
    let start = det.readings_seen() as usize;
    let ramp = run(&mut det, 3000, 300, &mut |t| {
        50.0 + 0.003 * (t - start) as f64 + noise(&mut rng)
    });
    let first = ramp.iter().position(|v| v.anomaly);
    assert!(first.is_some_and(|i| i < 2000), "first flagged at {first:?} of 3000");
    assert!(held(&ramp[2000..]) >= 0.95, "held {}", held(&ramp[2000..]));
    assert!(opened(&ramp).len() <= 3, "opened {:?}", opened(&ramp));
}

/// The same slow rise on one of three sensors: when the trend decides, the
/// incident names that sensor (its share of the trend), not the others.
#[test]
fn a_slow_drift_names_the_feature_that_drifts() {
    let mut det = never_accepting();
    let mut rng = StdRng::seed_from_u64(9);
    let row = |rng: &mut StdRng, rise: f64| vec![50.0 + noise(rng), 20.0 + noise(rng) + rise, 5.0 + noise(rng)];
    for t in 0..4000 {
        det.update_sync(t * 300_000_000, &row(&mut rng, 0.0)).unwrap();
    }
    let by_trend: Vec<Verdict> = (0..3000)
        .map(|i| {
            det.update_sync((4000 + i) * 300_000_000, &row(&mut rng, 0.003 * i as f64))
                .unwrap()
        })
        .filter(|v| v.anomaly && v.cause.as_deref() == Some("trend smoothed"))
        .collect();
    assert!(by_trend.len() > 500, "{} readings flagged by the trend", by_trend.len());
    for v in &by_trend {
        assert!(v.contributions[1] > 0.5, "{:?}", v.contributions);
    }
}
