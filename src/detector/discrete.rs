//! Discrete features: a sensor that takes a handful of values (a mode, a square
//! wave, a quantised switch position) judged by what its values do, not by how
//! far they move.
//!
//! Judged as a continuous value, such a feature jumps by its whole range at every
//! switch, and a switch a little early or late (a short run, a pulse out of
//! phase) is far beyond every continuous limit: on SMAP the discrete channels gave
//! a third of the false stretches. Its normal behaviour is better told by which
//! values it takes and how long it stays on each:
//!
//! ```text
//! discrete   at most MAX_LEVELS distinct values among its first MIN_LEARNT
//!            learnt readings, and ever since, counting values seen only at
//!            anomalous readings (one more makes it continuous for good)
//! the same   once discrete, a reading within LEVEL_TOLERANCE of the span of the
//!            known values from one of them is that value (1.0 and 0.991 are
//!            one switch position); values that close are merged then
//! known      a value learnt before (a normal reading had it), or one first
//!            seen at anomalous readings that the stream held SETTLED_RUN
//!            readings or more and then left (a level it dwells at)
//! longest_v  the longest run of value v that ended while normal, shortest_v
//!            the shortest, once MIN_RUNS such runs have ended (before: runs
//!            of v are not judged; the first run, begun before the stream was
//!            seen, is a lower bound: it may raise longest_v, nothing else)
//! reach_v    (longest_v − shortest_v) / (runs_v − 1): how far beyond its
//!            extremes the value's runs may go (the unbiased estimate of a
//!            uniform's ends from a sample's)
//! long_v     max((1 + RUN_MARGIN) · (longest_v + reach_v), longest_v + reach_v + 2):
//!            the shortest run of v that is news for its length
//! short_u    min((shortest_u − reach_u) / (1 + RUN_MARGIN), shortest_u − reach_u − 2):
//!            the longest run of u that is news for ending so soon
//! ratio      max(length of the current run of v / long_v,
//!            on a switch from u: short_u / its length)
//! ```
//!
//! A run's length is known to a reading (a value that lasts two readings may be
//! read for three, or one, as the switches fall between readings), so a run one
//! reading beyond the longest or shortest is never news, whatever the margin
//! says: SMAP's G-4 rests at 0.98 for 2 to 26 readings, and one read for a
//! single reading opened a false incident.
//!
//! Few runs of a wide spread leave the extremes far inside it: after two lows
//! of a valve that rests 30 to 90 readings, the next is beyond both limits about
//! one time in three, and new valves opened `run` incidents soon after they were
//! found discrete. Five runs and the reach keep new streams within the false
//! alarm budget; a value whose runs hardly vary (a pulse of 14 to 16 readings)
//! keeps limits as tight as before.
//!
//! A gauge that walks one step at a time (a pod count among 3…8) shows each new
//! value at anomalous readings: the first step is news, and the incident it
//! opens sees the next values too. Were they never learnt, the stream would stay
//! anomalous at each of them for good, and every later visit would open an
//! incident (seven in 6,000 readings of such a walk). A value the stream held
//! for a model window's length and then left is one of its values, its first
//! run a lower bound on how long it may last; a brief visit (a spike to a new
//! height) teaches nothing, and its value stays a measurement.
//!
//! A known value is judged by its runs alone: a run `RUN_MARGIN` longer than any
//! seen is anomalous (component `run`) for as long as it lasts, and so is the
//! switch that ends a run far shorter than any seen; a switch between known
//! values within that spread, early or late, is not news. A value never learnt is judged
//! as a measurement by the continuous statistics, as every reading of a
//! continuous feature is. Runs that held an anomalous reading teach nothing.
//! A feature one of whose values never lasts beyond a reading (spikes between
//! rests) is judged as a measurement throughout: a spike's height and hour say
//! more than the rest between two, and the continuous statistics learn the
//! rests too.
//!
//! On by default (`discrete_runs = false` turns it off): on SMAP it finds more
//! labelled anomalies, with the command flags at better precision too; NAB's
//! spikes are measurements (BENCHMARKS.md, sixteenth stop).

use serde::{Deserialize, Serialize};

/// The most distinct values a discrete feature takes.
pub const MAX_LEVELS: usize = 8;

/// Learnt readings before a feature may be judged as discrete.
pub const MIN_LEARNT: u64 = 256;

/// Runs of a value that must have ended normally before its run length is judged.
pub const MIN_RUNS: u32 = 5;

/// How much longer than the longest normal run a run must be to be anomalous.
pub const RUN_MARGIN: f64 = 0.3;

/// A value first seen at anomalous readings that the stream then held this many
/// readings (the default model window) before leaving it is one of its values
/// from then on.
pub const SETTLED_RUN: u32 = 32;

/// How near a known value, as a share of the span of the known values, a
/// reading must be to be that value: a switch position read as 0.991 one minute
/// and 1.0 the next is one position. Half the spacing of `MAX_LEVELS` evenly
/// spread values is 1/14 of the span; this stays well inside it.
pub const LEVEL_TOLERANCE: f64 = 0.05;

/// One value of a discrete feature.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct Level {
    value: f64,
    /// Runs of it that ended normally, the longest and the shortest of them.
    runs: u32,
    longest: u32,
    #[serde(default)]
    shortest: u32,
    /// The longest of the runs that ended (`longest` may be the first run's,
    /// which began before the stream was seen).
    #[serde(default)]
    longest_ended: u32,
}

impl Level {
    /// A value with no runs learnt yet.
    fn fresh(value: f64) -> Level {
        Level {
            value,
            runs: 0,
            longest: 0,
            shortest: 0,
            longest_ended: 0,
        }
    }

    /// How far beyond its shortest and longest runs the value's runs may reach:
    /// the spread of the `runs` that ended over `runs − 1` (the unbiased estimate of a
    /// uniform's ends from a sample's extremes). Few runs of a wide spread
    /// (lows of 30 to 90 readings) leave the extremes far inside it.
    fn reach(&self) -> f64 {
        if self.shortest == 0 || self.runs < 2 {
            return 0.0;
        }
        f64::from(self.longest_ended.saturating_sub(self.shortest)) / f64::from(self.runs - 1)
    }

    /// The shortest run that is news for being long: `RUN_MARGIN` beyond the
    /// reach, and two readings beyond it at least (a run's length is known to a
    /// reading: a value that lasts two readings may be read for three).
    fn longest_normal(&self) -> f64 {
        let reach = f64::from(self.longest) + self.reach();
        ((1.0 + RUN_MARGIN) * reach).max(reach + 2.0)
    }

    /// The longest run that is news for being short, likewise (0: none is).
    fn shortest_normal(&self) -> f64 {
        let reach = (f64::from(self.shortest) - self.reach()).max(0.0);
        (reach / (1.0 + RUN_MARGIN)).min(reach - 2.0).max(0.0)
    }
}

/// A feature's values and runs (about 140 bytes while discrete, 40 after).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Runs {
    levels: Vec<Level>,
    /// More than `MAX_LEVELS` distinct values were learnt: continuous for good.
    continuous: bool,
    /// Readings learnt.
    learnt: u64,
    /// The run in progress: its value, length, and whether every reading of it
    /// was learnt.
    value: f64,
    length: u32,
    clean: bool,
    /// The run in progress is the first: it began before the stream was seen.
    #[serde(default)]
    first: bool,
    /// Values seen only at readings not learnt (anomalous ones): they count
    /// towards `MAX_LEVELS` too.
    #[serde(default)]
    strangers: Vec<f64>,
}

impl Runs {
    /// The run ratio `x` would have (see the module docs) when the feature is
    /// discrete and `x` a known value; `None` when `x` is judged as a measurement.
    pub fn judge(&self, x: f64) -> Option<f64> {
        if self.continuous || self.learnt < MIN_LEARNT {
            return None;
        }
        let level = &self.levels[self.level_of(x, self.tolerance())?];
        let judged = |l: &Level| l.runs >= MIN_RUNS;
        if self.levels.iter().any(|l| judged(l) && l.longest <= 1) {
            // A value that never lasts: spikes between rests, which are judged
            // as measurements (how high and at what hour a spike comes says more
            // than the rest's run between two).
            return None;
        }
        let continues = self.length > 0 && self.value == level.value;
        let length = if continues { self.length.saturating_add(1) } else { 1 };
        let long = if judged(level) {
            f64::from(length) / level.longest_normal()
        } else {
            0.0
        };
        // A switch ends the run in progress: far shorter than any normal run of
        // its value, it is news too (a pulse, or pulses coming faster).
        let ended = (self.levels.iter().find(|l| l.value == self.value))
            .filter(|l| !continues && self.length > 0 && !self.first && judged(l) && l.shortest > 0);
        let short = ended.map_or(0.0, |l| l.shortest_normal() / f64::from(self.length));
        Some(long.max(short))
    }

    /// Takes the reading `x`: extends or ends the run in progress; `learnt`, the
    /// reading was judged normal (or taught as history).
    pub fn step(&mut self, x: f64, learnt: bool) {
        if self.continuous {
            return;
        }
        let tolerance = self.tolerance();
        let level = self.level_of(x, tolerance);
        let known = level.is_some();
        let x = level.map_or(x, |i| self.levels[i].value);
        if self.length > 0 && x == self.value {
            self.length = self.length.saturating_add(1);
            self.clean &= learnt;
        } else {
            if self.length > 0 && self.clean {
                self.finish();
            } else if self.length >= SETTLED_RUN {
                self.settle_stranger();
            }
            self.first = self.length == 0;
            (self.value, self.length, self.clean) = (x, 1, learnt);
        }
        let stranger = !known && self.strangers.iter().any(|v| (v - x).abs() <= tolerance);
        // A feature that shows more values than a discrete one may have is a
        // measurement, whether or not they were normal (a finely quantised
        // sensor that wanders, spikes of every height).
        if !known && !stranger && self.levels.len() + self.strangers.len() == MAX_LEVELS {
            self.become_continuous();
            return;
        }
        if !learnt {
            if !known && !stranger {
                self.strangers.push(x);
            }
            return;
        }
        self.learnt += 1;
        if !known {
            if stranger {
                self.strangers.retain(|v| (v - x).abs() > tolerance);
            }
            self.levels.push(Level::fresh(x));
        }
        if self.learnt == MIN_LEARNT {
            self.settle();
        }
    }

    /// The run that just ended was of a value seen only at anomalous readings,
    /// held `SETTLED_RUN` readings or more: the value is known from now on.
    fn settle_stranger(&mut self) {
        let tolerance = self.tolerance();
        let Some(i) = self.strangers.iter().position(|v| (v - self.value).abs() <= tolerance) else {
            return;
        };
        let value = self.strangers.swap_remove(i);
        // Its first run is a lower bound on how long it may last.
        self.levels.push(Level {
            longest: self.length,
            ..Level::fresh(value)
        });
    }

    fn become_continuous(&mut self) {
        *self = Runs {
            continuous: true,
            ..Runs::default()
        };
    }

    /// Once discrete: values within `LEVEL_TOLERANCE` of each other become one,
    /// whose runs are learnt afresh (the runs learnt so far were of each apart).
    fn settle(&mut self) {
        let tolerance = self.tolerance();
        let mut merged: Vec<Level> = Vec::with_capacity(self.levels.len());
        for l in &self.levels {
            if !merged.iter().any(|m| (m.value - l.value).abs() <= tolerance) {
                merged.push(*l);
            }
        }
        if merged.len() == self.levels.len() {
            return;
        }
        self.levels = (merged.into_iter()).map(|l| Level::fresh(l.value)).collect();
        self.value = (self.level_of(self.value, self.tolerance())).map_or(self.value, |i| self.levels[i].value);
        self.first = true;
    }

    /// `LEVEL_TOLERANCE` of the span of the known values once the feature is
    /// discrete; before, 0 (a continuous feature must show its distinct values).
    fn tolerance(&self) -> f64 {
        if self.learnt < MIN_LEARNT {
            return 0.0;
        }
        let (lo, hi) = (self.levels.iter()).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), l| {
            (lo.min(l.value), hi.max(l.value))
        });
        LEVEL_TOLERANCE * (hi - lo).max(0.0)
    }

    /// The known value `x` is (the nearest within `tolerance`).
    fn level_of(&self, x: f64, tolerance: f64) -> Option<usize> {
        (self.levels.iter().enumerate())
            .map(|(i, l)| (i, (l.value - x).abs()))
            .filter(|&(_, d)| d <= tolerance)
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i)
    }

    /// Records the run in progress as ended normally. The first run began before
    /// the stream was seen: its length is only a lower bound, which says how
    /// long a normal run may last but not how short, and it is not counted.
    fn finish(&mut self) {
        if let Some(l) = self.levels.iter_mut().find(|l| l.value == self.value) {
            l.longest = l.longest.max(self.length);
            if self.first {
                return;
            }
            l.shortest = if l.runs == 0 {
                self.length
            } else {
                l.shortest.min(self.length)
            };
            l.longest_ended = l.longest_ended.max(self.length);
            l.runs = l.runs.saturating_add(1);
        }
    }

    /// Whether a restored value is well formed.
    pub fn check(&self) -> Result<(), String> {
        if self.levels.len() + self.strangers.len() > MAX_LEVELS
            || self.levels.iter().any(|l| !l.value.is_finite())
            || self.strangers.iter().any(|v| !v.is_finite())
        {
            return Err(format!("runs: {} levels", self.levels.len()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A square wave: `high` readings of 1, `low` of 0, `cycles` times.
    fn wave(r: &mut Runs, high: usize, low: usize, cycles: usize) {
        for _ in 0..cycles {
            (0..high).for_each(|_| r.step(1.0, true));
            (0..low).for_each(|_| r.step(0.0, true));
        }
    }

    #[test]
    fn a_new_value_held_long_at_anomalous_readings_becomes_known_and_a_brief_one_does_not() {
        let mut r = Runs::default();
        (0..300).for_each(|_| r.step(5.0, true));
        // 9 for a few readings, 6 for a long stretch, both anomalous.
        (0..SETTLED_RUN - 1).for_each(|_| r.step(9.0, false));
        (0..300).for_each(|_| r.step(5.0, true));
        (0..SETTLED_RUN).for_each(|_| r.step(6.0, false));
        assert_eq!(r.judge(6.0), None, "not known while its first run lasts");
        (0..100).for_each(|_| r.step(5.0, true));
        assert_eq!(r.judge(9.0), None, "a brief visit teaches nothing");
        assert_eq!(
            r.judge(6.0),
            Some(0.0),
            "held long, then left: one of the stream's values"
        );
        assert_eq!(r.strangers, vec![9.0]);
    }

    #[test]
    fn a_switch_between_known_values_is_not_news_and_a_run_too_long_or_too_short_is() {
        let mut r = Runs::default();
        wave(&mut r, 10, 30, 10);
        // Low for 30 readings so far: a switch to high is ordinary.
        assert!(r.judge(1.0).unwrap() < 1.0);
        for _ in 0..12 {
            assert!(r.judge(1.0).unwrap() < 1.0);
            r.step(1.0, true);
        }
        // 13 = 1.3 × the longest high run: from the 14th reading on it is too long.
        assert!(r.judge(1.0).unwrap() <= 1.0);
        r.step(1.0, false);
        assert!(r.judge(1.0).unwrap() > 1.0);
        // Low for 24 readings, a little under the shortest low (30): not news.
        (0..24).for_each(|_| r.step(0.0, true));
        assert!(r.judge(1.0).unwrap() < 1.0);
        r.step(1.0, true);
        // The shortest low is 24 now; one of 15 ends far too soon.
        (0..15).for_each(|_| r.step(0.0, true));
        assert!(r.judge(1.0).unwrap() > 1.0);
        // A value never learnt is a measurement's business.
        assert_eq!(r.judge(0.5), None);
    }

    #[test]
    fn few_runs_of_a_wide_spread_reach_beyond_their_extremes() {
        let mut r = Runs::default();
        for low in [48, 84, 60, 70, 55].repeat(2) {
            (0..15).for_each(|_| r.step(1.0, true));
            (0..low).for_each(|_| r.step(0.0, true));
        }
        (0..15).for_each(|_| r.step(1.0, true));
        // Ten lows of 48 to 84 reach 36 / 9 = 4 further: 44 and 88.
        let mut lows = r.clone();
        (0..34).for_each(|_| lows.step(0.0, true));
        assert!(lows.judge(1.0).unwrap() < 1.0, "44 / (1.3 × 34) ends no low too soon");
        let mut short = r.clone();
        (0..33).for_each(|_| short.step(0.0, true));
        assert!(short.judge(1.0).unwrap() > 1.0, "44 / (1.3 × 33) does");
        // Judged as the next reading: the 114th is within 1.3 × 88 = 114.4.
        (0..113).for_each(|_| r.step(0.0, true));
        assert!(r.judge(0.0).unwrap() < 1.0);
        r.step(0.0, true);
        assert!(r.judge(0.0).unwrap() > 1.0);
        // Highs that never vary keep their limit: 1.3 × 15.
        let mut high = Runs::default();
        wave(&mut high, 15, 60, 10);
        (0..18).for_each(|_| high.step(1.0, true));
        assert!(high.judge(1.0).unwrap() < 1.0);
        high.step(1.0, true);
        assert!(high.judge(1.0).unwrap() > 1.0);
    }

    #[test]
    fn a_run_a_reading_off_its_shortest_or_longest_is_not_news() {
        // A toggle: pulses of 2 readings between rests of 4 to 9.
        let mut r = Runs::default();
        for rest in [4, 9, 6, 7].repeat(20) {
            (0..2).for_each(|_| r.step(1.0, true));
            (0..rest).for_each(|_| r.step(0.0, true));
        }
        // A pulse read for three readings, or for one, is a reading off.
        let mut pulse = r.clone();
        (0..2).for_each(|_| pulse.step(1.0, true));
        assert!(pulse.judge(1.0).unwrap() < 1.0, "a third reading (1.3 × 2 = 2.6)");
        pulse.step(1.0, true);
        assert!(pulse.judge(1.0).unwrap() >= 1.0, "a fourth is news");
        let mut one = r.clone();
        one.step(1.0, true);
        assert!(one.judge(0.0).unwrap() < 1.0, "a pulse of one reading (2 / 1.3 = 1.5)");
        // A rest of 3 ends a reading short (4 / 1.3 = 3.1); one of 1 is news
        // (2 short: the reach, 5 / 79 readings, keeps a rest of 2 in).
        (0..2).for_each(|_| r.step(1.0, true));
        let mut rest = r.clone();
        (0..3).for_each(|_| rest.step(0.0, true));
        assert!(rest.judge(1.0).unwrap() < 1.0);
        r.step(0.0, true);
        assert!(r.judge(1.0).unwrap() >= 1.0);
    }

    #[test]
    fn a_run_with_an_anomalous_reading_teaches_nothing() {
        let mut r = Runs::default();
        wave(&mut r, 10, 30, 10);
        (0..40).for_each(|_| r.step(1.0, false));
        r.step(0.0, true);
        r.step(1.0, true);
        assert!(r.judge(1.0).unwrap() < 0.2, "the longest high run is still 10");
    }

    #[test]
    fn a_constant_or_a_rarely_ending_value_has_no_run_limit() {
        let mut r = Runs::default();
        (0..1000).for_each(|_| r.step(-1.0, true));
        assert_eq!(r.judge(-1.0), Some(0.0), "its one run never ended");
    }

    #[test]
    fn the_first_run_says_how_long_a_run_may_last_but_not_how_short() {
        let mut r = Runs::default();
        (0..500).for_each(|_| r.step(1.0, true));
        wave(&mut r, 10, 30, 10);
        (0..15).for_each(|_| r.step(0.0, true));
        // A high run of 400: shorter than the first, which began before the
        // stream was seen and lasted at least 500.
        for _ in 0..400 {
            assert!(r.judge(1.0).unwrap() < 1.0);
            r.step(1.0, true);
        }
    }

    #[test]
    fn no_run_in_progress_gives_a_finite_ratio() {
        let mut r = Runs::default();
        wave(&mut r, 10, 30, 10);
        r.length = 0;
        assert!(r.judge(1.0).unwrap().is_finite());
        assert!(r.judge(0.0).unwrap().is_finite());
    }

    #[test]
    fn a_value_read_a_hair_apart_is_the_same_value() {
        let mut r = Runs::default();
        // The high half of a square wave read as 1.0 or 0.991 in turn.
        let high = |r: &mut Runs, n: usize| (0..n).for_each(|i| r.step(if i % 2 == 0 { 1.0 } else { 0.991 }, true));
        for _ in 0..20 {
            high(&mut r, 10);
            (0..30).for_each(|_| r.step(-1.0, true));
        }
        // Held high twice as long: too long from the 14th reading on.
        high(&mut r, 12);
        assert!(r.judge(1.0).unwrap() <= 1.0);
        high(&mut r, 8);
        assert!(r.judge(1.0).unwrap() > 1.0, "{:?}", r.judge(1.0));
    }

    #[test]
    fn spikes_between_rests_are_judged_as_measurements() {
        let mut r = Runs::default();
        for i in 0..300 {
            r.step(if i % 7 == 0 { 20.0 } else { 0.0 }, true);
        }
        assert_eq!(
            r.judge(20.0),
            None,
            "a spike's height and hour are a measurement's business"
        );
        assert_eq!(r.judge(0.0), None, "and so is the rest between two");
    }

    #[test]
    fn values_seen_only_at_anomalous_readings_count_towards_the_levels() {
        let mut r = Runs::default();
        wave(&mut r, 10, 30, 10);
        assert!(r.judge(1.0).is_some());
        // Seven more values, none of them learnt: nine in all.
        (2..9).for_each(|i| r.step(f64::from(i), false));
        assert_eq!(r.judge(1.0), None, "a feature of nine values is a measurement");
        assert!(r.check().is_ok());
    }

    #[test]
    fn many_values_make_a_measurement_for_good() {
        let mut r = Runs::default();
        (0..300).for_each(|i| r.step(f64::from(i % 9), true));
        assert_eq!(r.judge(1.0), None);
        assert!(r.check().is_ok());
        let mut few = Runs::default();
        (0..100).for_each(|i| few.step(f64::from(i % 2), true));
        assert_eq!(few.judge(1.0), None, "too few readings to tell");
    }
}
