//! What a stream judged lately: its newest readings with their verdicts, kept
//! compact (values and expectations as `f32` offsets from a per-feature `f64`
//! anchor, so a counter at 10^12 shows its small steps; the score in 16 bits) and bounded
//! per stream, for charts (`GET /v1/streams/{id}/recent`, the console, `replay
//! --plot`). It travels with the detector's snapshot, so a restart keeps it.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::Verdict;
use super::anchored::narrow;
use crate::timestamp::Micros;

/// Most readings kept per stream.
pub const RECENT_READINGS: usize = 128;
/// Bytes a stream's recent readings may hold: a stream of many features keeps
/// fewer of them (52 features: 19), never fewer than [`MIN_READINGS`].
const RECENT_BYTES: usize = 8 * 1024;
/// Fewest readings kept, however many features.
const MIN_READINGS: usize = 16;
/// The stored score of a reading that was not judged (warm-up).
const NOT_JUDGED: u16 = u16::MAX;
const SCORE_STEPS: f64 = (u16::MAX - 1) as f64;

const ANOMALY: u8 = 1;
const INCIDENT: u8 = 2;
const HISTORY: u8 = 4;

/// A stream's newest readings and verdicts, oldest first (columns, so a
/// univariate reading costs 15 bytes).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Recent {
    times: Times,
    scores: VecDeque<u16>,
    flags: VecDeque<u8>,
    /// `[n][d]`, offsets from `anchors`.
    values: VecDeque<f32>,
    /// `[n][d]`, offsets from `anchors`.
    expected: VecDeque<f32>,
    /// `[d]`: what each feature's offsets are from, moved to the newest reading
    /// once a capacity's worth came since (absent in snapshots from before
    /// them: the values are their own).
    #[serde(default)]
    anchors: Vec<f64>,
    /// Readings pushed since the anchors last moved.
    #[serde(default)]
    since_anchored: usize,
}

/// Timestamps, oldest first, in about four bytes each: the oldest and newest
/// in full, the others as their steps from the one before (a step that does
/// not fit 32 bits of microseconds, over 71 minutes or backwards, is kept in
/// full beside them). Snapshots hold the timestamps themselves.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "Vec<Micros>", into = "Vec<Micros>")]
struct Times {
    /// The oldest and the newest (`None`: empty).
    ends: Option<(Micros, Micros)>,
    /// Per timestamp after the oldest: its step from the one before, or `WIDE`.
    steps: VecDeque<u32>,
    /// The steps marked `WIDE`, oldest first.
    wide: VecDeque<i64>,
}

/// A step kept in `Times::wide`.
const WIDE: u32 = u32::MAX;

impl Times {
    fn len(&self) -> usize {
        self.ends.map_or(0, |_| self.steps.len() + 1)
    }

    fn front(&self) -> Option<Micros> {
        self.ends.map(|(first, _)| first)
    }

    fn push_back(&mut self, t: Micros) {
        let Some((first, last)) = self.ends else {
            self.ends = Some((t, t));
            return;
        };
        let step = i128::from(t) - i128::from(last);
        match u32::try_from(step) {
            Ok(s) if s != WIDE => self.steps.push_back(s),
            _ => {
                self.steps.push_back(WIDE);
                self.wide.push_back(t.wrapping_sub(last));
            }
        }
        self.ends = Some((first, t));
    }

    /// The step into the next timestamp (one after the oldest), dropped.
    fn pop_step(&mut self) -> Option<i64> {
        let s = self.steps.pop_front()?;
        Some(if s == WIDE {
            self.wide.pop_front().unwrap_or(0)
        } else {
            i64::from(s)
        })
    }

    fn pop_front(&mut self) {
        self.ends = match (self.ends, self.pop_step()) {
            (Some((first, last)), Some(step)) => Some((first.wrapping_add(step), last)),
            _ => None,
        };
    }

    fn iter(&self) -> impl Iterator<Item = Micros> + '_ {
        let mut wide = self.wide.iter();
        self.front()
            .into_iter()
            .chain(self.steps.iter().scan(self.front().unwrap_or(0), move |t, &s| {
                let step = if s == WIDE {
                    wide.next().copied().unwrap_or(0)
                } else {
                    i64::from(s)
                };
                *t = t.wrapping_add(step);
                Some(*t)
            }))
    }
}

impl From<Vec<Micros>> for Times {
    fn from(v: Vec<Micros>) -> Times {
        let mut t = Times::default();
        v.into_iter().for_each(|x| t.push_back(x));
        t
    }
}

impl From<Times> for Vec<Micros> {
    fn from(t: Times) -> Vec<Micros> {
        t.iter().collect()
    }
}

/// One recent reading as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecentPoint {
    /// The reading's timestamp (RFC 3339 in JSON).
    #[serde(serialize_with = "rfc3339")]
    pub timestamp: Micros,
    /// Its score (`None`: not judged, the stream was warming up).
    pub score: Option<f64>,
    /// The anomaly state.
    pub anomaly: bool,
    /// An incident was open at it (or resolved by it).
    pub incident: bool,
    /// Taught as history (learnt as normal, never judged anomalous).
    pub history: bool,
    /// The reading's values.
    pub values: Vec<f64>,
    /// What the detector expected, per feature.
    pub expected: Vec<f64>,
}

impl RecentPoint {
    /// The point of a verdict on `values` (`history`: taught as history).
    pub fn of(v: &Verdict, values: &[f64], history: bool) -> RecentPoint {
        RecentPoint {
            timestamp: v.timestamp,
            score: v.judged_score(),
            anomaly: v.anomaly,
            incident: v.incident.is_some(),
            history,
            values: values.to_vec(),
            expected: v.expected.clone(),
        }
    }
}

fn rfc3339<S: serde::Serializer>(t: &Micros, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::timestamp::format_rfc3339(*t))
}

/// Readings kept for a stream of `d` features.
pub fn capacity(d: usize) -> usize {
    let per_reading = 4 + 2 + 1 + 8 * d;
    (RECENT_BYTES / per_reading).clamp(MIN_READINGS, RECENT_READINGS)
}

impl Recent {
    /// Readings held.
    pub fn len(&self) -> usize {
        self.times.len()
    }

    /// Nothing held yet.
    pub fn is_empty(&self) -> bool {
        self.times.ends.is_none()
    }

    /// Adds a verdict on `values` (dropping the oldest when full); `history`: the
    /// reading was taught as history.
    pub fn push(&mut self, v: &Verdict, values: &[f64], history: bool) {
        let d = values.len();
        if d == 0 || v.expected.len() != d {
            return;
        }
        if self.times.len() >= capacity(d) {
            self.times.pop_front();
            self.scores.pop_front();
            self.flags.pop_front();
            self.values.drain(..d);
            self.expected.drain(..d);
        }
        if self.anchors.len() != d || self.since_anchored >= capacity(d) {
            self.move_anchors(values);
        }
        self.since_anchored += 1;
        self.times.push_back(v.timestamp);
        let score = v
            .judged_score()
            .map_or(NOT_JUDGED, |s| (s.clamp(0.0, 1.0) * SCORE_STEPS).round() as u16);
        self.scores.push_back(score);
        let flags = (if v.anomaly { ANOMALY } else { 0 })
            | (if v.incident.is_some() { INCIDENT } else { 0 })
            | (if history { HISTORY } else { 0 });
        self.flags.push_back(flags);
        let anchors = &self.anchors;
        self.values
            .extend(values.iter().zip(anchors).map(|(&x, a)| narrow(x - a)));
        self.expected
            .extend(v.expected.iter().zip(anchors).map(|(&x, a)| narrow(x - a)));
    }

    /// Feature `j`'s anchor (0 in a snapshot from before anchors).
    fn anchor(&self, j: usize) -> f64 {
        self.anchors.get(j).copied().unwrap_or(0.0)
    }

    /// Makes `to` the anchors (finite values as they are, others 0), the
    /// offsets held re-expressed from them.
    fn move_anchors(&mut self, to: &[f64]) {
        let to: Vec<f64> = to.iter().map(|&x| if x.is_finite() { x } else { 0.0 }).collect();
        let d = to.len();
        let old: Vec<f64> = (0..d).map(|j| self.anchor(j)).collect();
        for column in [&mut self.values, &mut self.expected] {
            for (i, o) in column.iter_mut().enumerate() {
                *o = narrow(old[i % d] + f64::from(*o) - to[i % d]);
            }
        }
        self.anchors = to;
        self.since_anchored = 0;
    }

    /// The oldest reading's timestamp.
    pub fn first_timestamp(&self) -> Option<Micros> {
        self.times.front()
    }

    /// The newest reading's score (`None`: not judged) and anomaly state.
    pub fn last(&self) -> Option<(Option<f64>, bool)> {
        let i = self.times.len().checked_sub(1)?;
        let score = (self.scores[i] != NOT_JUDGED).then(|| f64::from(self.scores[i]) / SCORE_STEPS);
        Some((score, self.flags[i] & ANOMALY != 0))
    }

    /// The newest `limit` readings, oldest first.
    pub fn points(&self, limit: usize) -> Vec<RecentPoint> {
        let n = self.times.len();
        let d = self.values.len().checked_div(n).unwrap_or(0);
        let times: Vec<Micros> = self.times.iter().collect();
        let column = |c: &VecDeque<f32>, i: usize| {
            (c.range(i * d..(i + 1) * d).enumerate())
                .map(|(j, &x)| self.anchor(j) + f64::from(x))
                .collect()
        };
        (n.saturating_sub(limit)..n)
            .map(|i| RecentPoint {
                timestamp: times[i],
                score: (self.scores[i] != NOT_JUDGED).then(|| f64::from(self.scores[i]) / SCORE_STEPS),
                anomaly: self.flags[i] & ANOMALY != 0,
                incident: self.flags[i] & INCIDENT != 0,
                history: self.flags[i] & HISTORY != 0,
                values: column(&self.values, i),
                expected: column(&self.expected, i),
            })
            .collect()
    }

    /// Drops what a reset or a change of shape makes meaningless.
    pub fn clear(&mut self) {
        *self = Recent::default();
    }

    /// Checks the columns agree with each other and with `d` features (a
    /// snapshot from disk).
    pub(super) fn check(&self, d: usize) -> Result<(), String> {
        let n = self.times.len();
        let ok = self.scores.len() == n
            && self.flags.len() == n
            && self.values.len() == n * d
            && self.expected.len() == n * d
            && (self.anchors.is_empty() || self.anchors.len() == d)
            && self.anchors.iter().all(|a| a.is_finite())
            && n <= capacity(d.max(1));
        ok.then_some(())
            .ok_or_else(|| "recent readings' columns disagree".into())
    }
}

/// Per feature, the half-width of the band around the expectation that held 99% of
/// the points' normal judged readings (`None` for a feature with fewer than 8):
/// what "usual" looked like lately, for charts, not a limit the detector applies.
pub fn band(points: &[RecentPoint]) -> Vec<Option<f64>> {
    let d = points.first().map_or(0, |p| p.values.len());
    (0..d)
        .map(|f| {
            let mut gaps: Vec<f64> = points
                .iter()
                .filter(|p| p.score.is_some() && !p.anomaly && !p.incident)
                .map(|p| (p.values[f] - p.expected[f]).abs())
                .filter(|g| g.is_finite())
                .collect();
            if gaps.len() < 8 {
                return None;
            }
            gaps.sort_unstable_by(f64::total_cmp);
            let at = ((gaps.len() - 1) as f64 * 0.99).round() as usize;
            Some(gaps[at])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::{Detector, DetectorConfig};

    #[test]
    fn a_stream_keeps_its_newest_verdicts_up_to_its_share_of_memory() {
        assert_eq!(capacity(1), RECENT_READINGS);
        assert_eq!(capacity(52), 19);
        assert_eq!(capacity(10_000), MIN_READINGS);
        let mut det = Detector::new(DetectorConfig::default()).unwrap();
        for t in 0..300i64 {
            let v = if t == 299 { 1e4 } else { 10.0 + (t % 7) as f64 };
            det.update(t * 1_000_000, &[v]).unwrap();
        }
        let points = det.recent().points(usize::MAX);
        assert_eq!(points.len(), RECENT_READINGS);
        assert_eq!(points[0].timestamp, (300 - RECENT_READINGS as i64) * 1_000_000);
        let last = points.last().unwrap();
        assert_eq!(last.values, vec![1e4]);
        assert!(last.anomaly && last.score.unwrap() > 0.5, "{last:?}");
        assert!(points[..RECENT_READINGS - 1].iter().all(|p| !p.anomaly));
        assert_eq!(det.recent().points(3).len(), 3);
    }

    #[test]
    fn a_counter_far_from_zero_shows_its_small_steps() {
        // A plain f32 holds 10^12 in steps of 2^16: every reading of this
        // counter showed as the same value.
        let mut det = Detector::new(DetectorConfig::default()).unwrap();
        let value = |t: i64| 1e12 + 0.25 * t as f64;
        for t in 0..700i64 {
            det.update(t * 60_000_000, &[value(t)]).unwrap();
        }
        let points = det.recent().points(usize::MAX);
        for p in &points {
            let t = p.timestamp / 60_000_000;
            assert_eq!(p.values, vec![value(t)], "reading {t}");
            assert!(
                (p.expected[0] - value(t)).abs() < 1e3,
                "reading {t}: expected {:?}",
                p.expected
            );
        }
        // An older snapshot's values are their own (no anchors): they read as
        // they were, and the next push anchors them.
        let mut old = Recent::default();
        old.values.extend([1.5f32, 2.5]);
        old.expected.extend([1.0f32, 2.0]);
        old.times = vec![0, 1].into();
        old.scores.extend([0, 0]);
        old.flags.extend([0, 0]);
        old.check(1).unwrap();
        assert_eq!(old.points(9)[1].values, vec![2.5]);
        let mut small = Detector::new(DetectorConfig::default()).unwrap();
        let v = small.update(2, &[3.25]).unwrap();
        old.push(&v, &[3.25], false);
        let points = old.points(9);
        assert_eq!((points[0].values[0], points[2].values[0]), (1.5, 3.25));
    }

    #[test]
    fn a_warming_up_reading_has_no_score_and_the_band_needs_judged_readings() {
        let mut det = Detector::new(DetectorConfig::default()).unwrap();
        det.update(0, &[1.0]).unwrap();
        let points = det.recent().points(10);
        assert_eq!(points.len(), 1);
        assert_eq!(points[0].score, None);
        assert_eq!(band(&points), vec![None]);
        let judged: Vec<RecentPoint> = (0..20)
            .map(|i| RecentPoint {
                timestamp: i,
                score: Some(0.1),
                anomaly: i == 19,
                incident: false,
                history: false,
                values: vec![i as f64],
                expected: vec![0.0],
            })
            .collect();
        // The anomalous reading (19 away) is not part of what was usual.
        assert_eq!(band(&judged), vec![Some(18.0)]);
    }

    #[test]
    fn timestamps_read_back_exactly_whatever_their_steps() {
        // Regular steps, a step of days, one backwards, the extremes.
        let ts: Vec<Micros> = vec![
            5,
            15_000_000,
            30_000_000,
            30_000_000 + 86_400_000_000 * 3,
            29_000_000,
            i64::MIN,
            i64::MAX,
            i64::MAX,
            7,
        ];
        let mut times = Times::default();
        for (i, &t) in ts.iter().enumerate() {
            times.push_back(t);
            assert_eq!(times.iter().collect::<Vec<_>>(), ts[..=i]);
        }
        let json = serde_json::to_string(&times).unwrap();
        assert_eq!(json, serde_json::to_string(&ts).unwrap());
        assert_eq!(serde_json::from_str::<Times>(&json).unwrap(), times);
        for i in 1..=ts.len() {
            times.pop_front();
            assert_eq!(times.iter().collect::<Vec<_>>(), ts[i..]);
            assert_eq!((times.len(), times.front()), (ts.len() - i, ts.get(i).copied()));
        }
        assert!(times.steps.is_empty() && times.wide.is_empty());
    }
}
