use super::stuck::STUCK_WARM;
use super::*;

/// A column of buffered values and the Gaussian over it, moved along as the
/// detector moves it: the buffer keeps `keep` rows.
fn slide(g: &mut WindowedGaussian, buffer: &mut Vec<f64>, keep: usize, x: f64) {
    if buffer.len() == keep {
        buffer.remove(0);
    }
    buffer.push(x);
    let column = buffer.clone();
    g.advance(column.len(), |i| column[i], false);
}

#[test]
fn the_window_is_the_rows_before_the_newest_and_its_sums_hold_as_it_moves() {
    let value = |i: usize| (i as f64 * 0.7).sin() * 10.0 + 1e6;
    for keep in [7, 8, 40] {
        let (mut g, mut buffer) = (WindowedGaussian::new(5), Vec::new());
        for i in 0..23 {
            slide(&mut g, &mut buffer, keep, value(i));
        }
        // Rows 17..22: the five before the newest (22).
        let vals: Vec<f64> = (17..22).map(value).collect();
        let m = vals.iter().sum::<f64>() / 5.0;
        let s = (vals.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / 5.0).sqrt();
        assert_eq!(g.len(), 5);
        assert!(
            (g.mean() - m).abs() < 1e-6 && (g.std() - s).abs() < 1e-4,
            "{} {}",
            g.std(),
            s
        );
        let mut again = g.clone();
        again.resum(buffer.len(), |i| buffer[i]);
        assert!((again.mean() - g.mean()).abs() < 1e-6 && (again.std() - g.std()).abs() < 1e-4);
    }
    // A buffer shorter than the window: as many rows as it holds before the newest.
    let (mut g, mut buffer) = (WindowedGaussian::new(50), Vec::new());
    for i in 0..30 {
        slide(&mut g, &mut buffer, 10, value(i));
    }
    assert_eq!(g.len(), 9);
}

#[test]
fn gaussian_flags_a_spike_not_noise() {
    let (mut g, mut buffer) = (WindowedGaussian::new(100), Vec::new());
    let mut max_quiet: f64 = 0.0;
    for i in 0..300 {
        let x = ((i * 7919) % 13) as f64 / 13.0;
        let (z, _) = g.score(x);
        slide(&mut g, &mut buffer, 102, x);
        if i > 10 {
            max_quiet = max_quiet.max(z);
        }
    }
    assert!(max_quiet < 2.5, "{max_quiet}");
    assert!(g.score(5.0).0 > 10.0);
}

fn lcg_noise(state: &mut u64) -> f64 {
    // Deterministic roughly-Gaussian noise (sum of 4 uniforms, sd ≈ 0.58).
    (0..4)
        .map(|_| {
            *state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (*state >> 11) as f64 / (1u64 << 53) as f64
        })
        .sum::<f64>()
        - 2.0
}

#[test]
fn find_period_sees_cycles_but_not_noise_or_trends() {
    let mut s = 1u64;
    let cycle: Vec<f64> = (0..1024)
        .map(|t| (2.0 * std::f64::consts::PI * t as f64 / 48.0).sin() * 3.0 + lcg_noise(&mut s))
        .collect();
    let (p, r) = find_period(&cycle, 4, 0.3).expect("a period");
    assert!((47..=49).contains(&p) && r > 0.5, "{p} {r}");
    // A square wave with period 288 (a daily on/off pattern at 5-minute readings).
    let square: Vec<f64> = (0..1024)
        .map(|t| if t % 288 < 144 { 10.0 } else { 0.0 } + lcg_noise(&mut s))
        .collect();
    assert_eq!(find_period(&square, 4, 0.3).map(|(p, _)| p), Some(288));
    let noise: Vec<f64> = (0..1024).map(|_| lcg_noise(&mut s)).collect();
    assert_eq!(find_period(&noise, 4, 0.3), None);
    let trend: Vec<f64> = (0..1024).map(|t| t as f64 * 0.1 + lcg_noise(&mut s)).collect();
    assert_eq!(find_period(&trend, 4, 0.3), None);
    assert_eq!(find_period(&[5.0; 100], 4, 0.3), None, "constant");
    assert_eq!(find_period(&cycle[..60], 4, 0.3), None, "under two periods");
}

/// A day of 48 readings whose last two days of each seven are quieter: the
/// day is the dominant cycle, the week the longer one. A plain daily cycle keeps
/// its day, and so does one that also wanders.
#[test]
fn longer_period_finds_the_week_of_a_daily_cycle_only_when_the_days_differ() {
    let mut s = 7u64;
    let day = |t: usize| (2.0 * std::f64::consts::PI * t as f64 / 48.0).sin();
    let weekly: Vec<f64> = (0..1024)
        .map(|t| {
            let amplitude = if (t / 48) % 7 >= 5 { 2.0 } else { 10.0 };
            amplitude * day(t) + lcg_noise(&mut s)
        })
        .collect();
    let (p, _) = find_period(&weekly, 4, 0.3).expect("the day");
    assert_eq!(p, 48);
    assert_eq!(longer_period(&weekly, p), Some(336));
    let daily: Vec<f64> = (0..1024).map(|t| 10.0 * day(t) + lcg_noise(&mut s)).collect();
    assert_eq!(longer_period(&daily, 48), None);
    let mut walk = 0.0;
    let wandering: Vec<f64> = (0..1024)
        .map(|t| {
            walk += 0.3 * lcg_noise(&mut s);
            10.0 * day(t) + walk
        })
        .collect();
    assert_eq!(longer_period(&wandering, 48), None);
    assert_eq!(longer_period(&weekly[..600], 48), None, "under two weeks");
    assert_eq!(longer_period(&[1.0; 200], 48), None, "constant");
}

#[test]
fn seasonal_residual_uses_the_median_of_earlier_periods() {
    let mut s = Seasonal::new(64);
    s.set_period(Some(10));
    let mut st = 7u64;
    for _ in 0..100 {
        let (z, _) = s.update(lcg_noise(&mut st), &mut [0.0, 0.0, 0.0], 1e-6);
        assert!(z < 5.0, "{z}");
    }
    // One anomalous earlier period does not move the expectation.
    let (z, expected) = s.update(0.1, &mut [50.0, 0.0, 0.0], 1e-6);
    assert_eq!(expected, 0.0);
    assert!(z < 5.0, "{z}");
    let (z, expected) = s.update(10.0, &mut [0.0, 0.2, -0.2], 1e-6);
    assert_eq!(expected, 0.0);
    assert!(z > 10.0, "{z}");
    // A new period starts a new residual scale (silent until it has one).
    s.set_period(Some(20));
    assert_eq!(s.update(10.0, &mut [0.0], 1e-6).0, 0.0);
    assert_eq!(s.update(3.0, &mut [], 1e-6), (0.0, 3.0), "no history: silent");
}

#[test]
fn ar_learns_a_sine_and_flags_a_break_in_it() {
    let mut ar = OnlineAr::new(4, 0.999);
    let mut late = Vec::new();
    for t in 0..600 {
        let (z, pred) = ar.update((t as f64 * 0.2).sin() * 50.0 + 1000.0);
        if t > 500 {
            late.push((z, (pred - ((t as f64 * 0.2).sin() * 50.0 + 1000.0)).abs()));
        }
    }
    assert!(late.iter().all(|(_, e)| *e < 1.0), "prediction error stays small");
    let (z, _) = ar.update(1100.0);
    assert!(z > 10.0, "a jump is many residual sds: {z}");
}

#[test]
fn ar_refills_skipped_lags_before_it_learns_again() {
    let sine = |t: usize| (t as f64 * 0.2).sin() * 50.0 + 1000.0;
    let mut ar = OnlineAr::new(4, 0.999);
    for t in 0..600 {
        ar.update(sine(t));
    }
    // Ten readings stepped past (a fault), then the series as before: the first
    // four readings only refill the lags (the fit and residual scale keep what
    // they knew), and the forecast after them is as good as before the fault.
    for _ in 600..610 {
        ar.skip();
    }
    let (theta, var) = (ar.theta.clone(), ar.resid_var);
    for t in 610..614 {
        ar.learn_value(sine(t));
    }
    assert_eq!((&ar.theta, ar.resid_var), (&theta, var));
    let (z, pred) = ar.score(sine(614));
    assert!((pred - sine(614)).abs() < 1.0 && z < 4.0, "{pred} {z}");
    ar.learn_value(sine(614));
    assert_ne!(ar.theta, theta, "learning resumes once the lags are real");
}

/// Feeds `xs` to `stuck`, every reading learnt as normal while it is not
/// judged stuck (as the detector does); returns the last ratio.
fn feed(stuck: &mut Stuck, xs: impl IntoIterator<Item = f64>) -> f64 {
    let mut r = 0.0;
    for x in xs {
        stuck.observe(x);
        r = stuck.ratio();
        if r < 1.0 {
            stuck.learn();
        }
    }
    r
}

#[test]
fn stuck_judges_a_run_against_the_longest_normal_one() {
    let mut s = Stuck::default();
    // A feature that moves at every reading: nothing is judged before it is warm.
    assert_eq!(feed(&mut s, (0..STUCK_WARM - 1).map(f64::from)), 0.0);
    feed(&mut s, (100..200).map(f64::from));
    assert_eq!(s.limit(), MIN_STUCK_RUN);
    // Frozen: the fifth repeat reaches the limit.
    assert_eq!(feed(&mut s, [7.0; 5]), 4.0 / 5.0);
    assert_eq!(feed(&mut s, [7.0]), 1.0);
    // Once it moves again, the stuck run taught nothing.
    feed(&mut s, (300..400).map(f64::from));
    assert_eq!(s.limit(), MIN_STUCK_RUN);

    // Normal runs of three repeats (every tenth value held) raise the limit to 8.
    let held = (0..400).flat_map(|i| {
        let n = if i % 10 == 0 { 4 } else { 1 };
        std::iter::repeat_n(f64::from(1000 + i), n)
    });
    feed(&mut s, held);
    assert_eq!(s.limit(), 8);
    assert_eq!(feed(&mut s, [5.0; 9]), 1.0);
    // Accepted: the run is normal now.
    s.accept();
    assert_eq!(s.limit(), 18);
    assert!(s.ratio() < 1.0);
}

#[test]
fn stuck_needs_a_run_that_the_features_own_repeats_would_rarely_make() {
    // Three moves in five readings, runs of one repeat: twice the longest run
    // is 4, but a reading repeats with chance 0.4, and 0.4^11 < 1e-4 < 0.4^10.
    let mut s = Stuck::default();
    let pattern = (0..600).flat_map(|i| {
        let b = f64::from(3 * i);
        [b, b, b + 1.0, b + 2.0, b + 2.0]
    });
    feed(&mut s, pattern);
    assert!((s.moving.mean - 0.6).abs() < 0.01, "{}", s.moving.mean);
    assert_eq!(s.limit(), 11);
    assert!(feed(&mut s, [-1.0; 11]) < 1.0);
    assert_eq!(feed(&mut s, [-1.0]), 1.0);
}

#[test]
fn stuck_never_judges_a_feature_that_mostly_holds_its_value() {
    // A slow analyser: a new value every fifth reading.
    let mut s = Stuck::default();
    let sampled = (0..1000).flat_map(|i| std::iter::repeat_n(f64::from(i), 5));
    feed(&mut s, sampled);
    assert_eq!(feed(&mut s, [1.0; 100]), 0.0);
    // A flat line.
    let mut s = Stuck::default();
    assert_eq!(feed(&mut s, [3.0; 1000]), 0.0);
}
