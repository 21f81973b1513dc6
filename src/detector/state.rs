//! The anomaly *state*: is this reading abnormal against what the stream has learnt
//! as normal? And the *incidents* built from it: opened when the state turns
//! anomalous, resolved once the stream has been normal for a while.
//!
//! Every surprise the detector computes (per component: the level, its rms over
//! features, the AR residual, the seasonal residual, the model's per-feature and
//! joint residuals, the change model's residual) is
//! judged against a limit learnt from that same statistic on *normal* readings only,
//! never on readings in an anomalous state:
//!
//! ```text
//! instant   s = max over features of the component's |z|
//! smoothed  s̄ = max over features of EWMA_λ(min(|z|, L))  (sustained changes of
//!             spread; each |z| capped at the instant limit L, so one spike cannot
//!             hold it up)
//! drift     s̃ = max over features of |EWMA_λ(clamp(z, ±L))|  (sustained small
//!             shifts to one side: the EWMA control chart; noise averages out,
//!             a shift of δσ moves it by δ)
//! limit     L = q90 + 3 (q99 − q90)  of the statistic on normal readings
//!             (an exponential tail through q90 and q99, read at p ≈ 1e-4,
//!              as in POT/SPOT), floored at `FLOOR_INSTANT` / `FLOOR_SMOOTHED`
//! ratio     ρ = max over components of s / L, s̄ / L̄, s̃ / L̃
//! score     ρ² / (1 + ρ²)       0.5 at the limit, 0.9 at 3×, 0.99 at 10×
//! state     ρ ≥ 1
//! ```
//!
//! The change model's statistic is judged by s̄ alone, each |z| capped at
//! `FLOOR_INSTANT`, against `q50 + 3 (q90 − q50)` floored at `FLOOR_SMOOTHED`
//! ([`TailHistogram::robust_limit`]): it is seeded from every training change, and
//! a limit from the body of the distribution does not climb with the first
//! readings of a slow rise (a tail limit from a few hundred values did, and
//! learnt TEP's fault 19 as normal).
//!
//! The model's per-feature residual is judged by its instant statistic alone. It
//! already reads a window of W readings, so a running average of it counts each
//! reading many times over, and the limits of those averages, seeded from a few
//! hundred held-out windows that overlap, sat low: on SMAP they opened 10 of the
//! 31 false stretches of seed 0 (BENCHMARKS.md, twelfth stop). A sustained shift
//! still moves the baselines' running averages and the joint residual's.
//!
//! The limits come from a decaying log-scale histogram per statistic (a few hundred
//! bytes), so they follow slow changes of normal behaviour without ever learning a
//! fault. The model's statistics are seeded at install time from held-out windows
//! that the model did not train on.

use serde::{Deserialize, Serialize};

use super::baseline::LONG_RUN;
pub use super::tails::TailHistogram;

/// The components judged by their instant statistic alone (a bit per component):
/// the model's residual (see the module docs). Their running averages are neither
/// kept up nor learnt, and have no limit.
const INSTANT_ONLY: u32 = 1 << Component::Model as usize;

/// Least instant limit, in standard deviations: no stream alarms below 4σ.
pub const FLOOR_INSTANT: f64 = 4.0;
/// Least smoothed limit.
pub const FLOOR_SMOOTHED: f64 = 2.0;
/// Least drift limit: four standard deviations of the EWMA of independent unit
/// noise at λ = 0.1 (√(λ / (2 − λ)) ≈ 0.23), the instant floor's equivalent.
pub const FLOOR_DRIFT: f64 = 0.92;

/// Least trend limit: the running average of the trend z must hold 1.5 long-run
/// standard deviations from the long-run level (about 6.5 standard deviations
/// of that average on unit noise; [`FLOOR_DRIFT`] is 4). The trend's reference
/// and limits learn slowly, so it asks for more than the level's drift does, which
/// judges a shift within the level's window.
pub const FLOOR_TREND: f64 = 1.5;

/// The components whose surprises the state judges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// Windowed Gaussian: the level against the recent normal level.
    Level = 0,
    /// AR(p) one-step residual.
    Ar = 1,
    /// Seasonal residual.
    Seasonal = 2,
    /// The model's per-feature residual (in held-out residual sds).
    Model = 3,
    /// The model's joint residual: root mean square over features.
    Joint = 4,
    /// The joint level: root mean square over features of the level z (a diagonal
    /// Hotelling T²), for shifts spread thinly over many features.
    JointLevel = 5,
    /// The change model's per-feature residual ([`super::changes`]): judged by
    /// its running average alone, each |z| capped at `FLOOR_INSTANT` (a single
    /// jump is a spike, which the level and AR statistics judge).
    Change = 6,
    /// Each reading against the long-run normal level ([`super::baseline::LONG_RUN`]
    /// times the level's window), in the long run's standard deviations: judged by
    /// its drift statistic alone, against a limit from the median of its values
    /// ([`TailHistogram::median_limit`], learnt one normal reading in `LONG_RUN`),
    /// so a slow drift the level follows is still seen.
    Trend = 7,
}

/// Number of components.
pub const N_COMPONENTS: usize = 8;

/// The judgement's component when a feature repeats one value for too long
/// ([`super::baseline::Stuck`]; its limit is a run length, not a learnt tail).
pub const STUCK: usize = N_COMPONENTS;

/// The judgement's component when a discrete feature stays on one of its values
/// longer than it ever did ([`super::discrete`]).
pub const RUN: usize = N_COMPONENTS + 1;

/// Lower-case name of component `c` (its index).
pub fn component_name(c: usize) -> &'static str {
    [
        "level",
        "ar",
        "seasonal",
        "model",
        "joint",
        "joint_level",
        "change",
        "trend",
        "stuck",
        "run",
    ]
    .get(c)
    .copied()
    .unwrap_or("unknown")
}

/// The per-component statistics of a stream, their EWMAs and limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateCalibration {
    /// Per component: EWMA of each feature's |z|.
    #[serde(with = "running")]
    ewma: Running,
    /// Per component: EWMA of each feature's signed z.
    #[serde(default, with = "running")]
    signed: Running,
    /// Per component: histograms of the instant, smoothed and drift statistics.
    #[serde(deserialize_with = "per_component")]
    instant: Vec<TailHistogram>,
    #[serde(deserialize_with = "per_component")]
    smoothed: Vec<TailHistogram>,
    #[serde(default = "histograms", deserialize_with = "per_component")]
    drift: Vec<TailHistogram>,
    /// Normal readings the trend has been judged on.
    #[serde(default)]
    trend_seen: u64,
}

fn histograms() -> Vec<TailHistogram> {
    vec![TailHistogram::default(); N_COMPONENTS]
}

/// One entry per component: a snapshot written before a component existed has
/// fewer (the new ones start empty); one from a later build with more is cut.
fn per_component<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default + Clone,
{
    let mut v = Vec::<T>::deserialize(d)?;
    v.resize(N_COMPONENTS, T::default());
    Ok(v)
}

/// Per component, a running average per feature (or none), all in one
/// allocation: a stream holds two of these, and eight vectors each took eight.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Running {
    values: Vec<f64>,
    /// Values each component holds, in component order.
    lens: [u32; N_COMPONENTS],
}

impl Running {
    fn span(&self, c: usize) -> std::ops::Range<usize> {
        let start: usize = self.lens[..c].iter().map(|&n| n as usize).sum();
        start..start + self.lens[c] as usize
    }

    /// Component `c`'s averages (empty: none yet).
    fn get(&self, c: usize) -> &[f64] {
        &self.values[self.span(c)]
    }

    /// Makes component `c`'s averages `new`.
    fn set(&mut self, c: usize, new: &[f64]) {
        let span = self.span(c);
        self.values.splice(span, new.iter().copied());
        self.lens[c] = new.len() as u32;
    }

    /// One EWMA step of component `c` towards `f(z)` per feature (started at
    /// `f(z)` when its width changed).
    fn update(&mut self, c: usize, z: &[f64], lambda: f64, f: impl Fn(f64) -> f64) {
        let span = self.span(c);
        if span.len() != z.len() {
            self.set(c, &z.iter().map(|&v| f(v)).collect::<Vec<_>>());
        } else {
            for (e, &v) in self.values[span].iter_mut().zip(z) {
                *e += lambda * (f(v) - *e);
            }
        }
    }
}

/// Serde for [`Running`] as the list of lists earlier builds wrote (see
/// [`per_component`]).
mod running {
    use serde::{Deserializer, Serialize, Serializer};

    use super::{N_COMPONENTS, Running, per_component};

    pub fn serialize<S: Serializer>(r: &Running, s: S) -> Result<S::Ok, S::Error> {
        let lists: Vec<&[f64]> = (0..N_COMPONENTS).map(|c| r.get(c)).collect();
        lists.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Running, D::Error> {
        let lists: Vec<Vec<f64>> = per_component(d)?;
        let mut r = Running::default();
        for (c, l) in lists.iter().enumerate() {
            r.set(c, l);
        }
        Ok(r)
    }
}

impl Default for StateCalibration {
    fn default() -> Self {
        StateCalibration {
            ewma: Default::default(),
            signed: Default::default(),
            instant: histograms(),
            smoothed: histograms(),
            drift: histograms(),
            trend_seen: 0,
        }
    }
}

/// One reading's judgement by [`StateCalibration::judge`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Judgement {
    /// The largest statistic-to-limit ratio over the components (0 while no limit is
    /// known yet).
    pub ratio: f64,
    /// The component with the largest ratio.
    pub component: Option<usize>,
    /// Whether that ratio came from the smoothed (or drift) statistic.
    pub smoothed: bool,
    /// How far beyond its limit that statistic is strong (`ratio` at least this
    /// is anomalous on one reading; see `pruning.rs`): one decade further down
    /// its tail, 1 for statistics judged by a running average alone and for
    /// readings within their limits.
    pub strong: f64,
    /// Per component: (instant, smoothed, drift) statistics, to learn once the
    /// reading is known to be normal.
    stats: [(f64, f64, f64); N_COMPONENTS],
    present: [bool; N_COMPONENTS],
}

impl Judgement {
    /// The `cause` a verdict names: the deciding component, with ` smoothed` when a
    /// running average decided.
    pub fn cause(&self) -> Option<String> {
        self.component.map(|c| {
            let name = component_name(c);
            if self.smoothed {
                format!("{name} smoothed")
            } else {
                name.to_string()
            }
        })
    }
}

impl StateCalibration {
    /// Forgets a component's history (a new model replaces the old one's errors).
    pub fn reset(&mut self, c: Component) {
        let i = c as usize;
        self.ewma.set(i, &[]);
        self.signed.set(i, &[]);
        self.instant[i] = TailHistogram::default();
        self.smoothed[i] = TailHistogram::default();
        self.drift[i] = TailHistogram::default();
    }

    /// Restarts every smoothed statistic from the next reading (after a change was
    /// accepted, the old EWMAs describe the old normal).
    pub fn restart_smoothing(&mut self) {
        self.ewma = Running::default();
        self.signed = Running::default();
    }

    /// Updates the EWMAs with this reading's signed per-feature z of each component
    /// present (`None`: the component does not score now) and judges the result
    /// against the limits. `min_normal` normal readings must be known before a limit
    /// is used.
    pub fn judge(&mut self, zs: &[Option<&[f64]>; N_COMPONENTS], lambda: f64, min_normal: u32) -> Judgement {
        self.judge_some(zs, lambda, min_normal, 0)
    }

    /// As [`StateCalibration::judge`]; the components in `instant_only` (a bit per
    /// component) are judged by their instant statistic alone and leave their
    /// running averages as they were: their z's this reading are not comparable
    /// with the ones the smoothed and drift limits were learnt from.
    pub fn judge_some(
        &mut self,
        zs: &[Option<&[f64]>; N_COMPONENTS],
        lambda: f64,
        min_normal: u32,
        instant_only: u32,
    ) -> Judgement {
        if self.drift.len() != N_COMPONENTS {
            self.drift = histograms();
        }
        let mut j = Judgement::default();
        let mut winner = 0;
        for (c, z) in zs.iter().enumerate() {
            let Some(z) = z else { continue };
            if z.is_empty() {
                continue;
            }
            // Each reading enters the EWMAs capped at the instant limit: one spike
            // (already judged by the instant statistic) cannot hold the smoothed ones
            // up for many readings; a sustained shift still moves them all the way.
            // (Capping the drift's input at a multiple of its own limit would end
            // incidents sooner, but the limit is learnt from those capped values:
            // it shrank round after round and false alarms grew, TEP seed 1's
            // normal run 0.9% -> 14.8%.) The change and trend statistics, judged
            // by a running average alone, are capped at the instant floor.
            let (li, ls, ld) = self.limits_at(c);
            let cap = if c == Component::Change as usize || c == Component::Trend as usize {
                FLOOR_INSTANT
            } else {
                li
            };
            let only_instant = (instant_only | INSTANT_ONLY) & (1 << c) != 0;
            if !only_instant {
                self.ewma.update(c, z, lambda, |v| v.abs().min(cap));
                self.signed.update(c, z, lambda, |v| v.clamp(-cap, cap));
            }
            let inst = z.iter().fold(0.0, |m: f64, v| m.max(v.abs()));
            let smooth = self.ewma.get(c).iter().cloned().fold(0.0, f64::max);
            let drift = self.signed.get(c).iter().fold(0.0, |m: f64, v| m.max(v.abs()));
            j.stats[c] = (inst, smooth, drift);
            j.present[c] = true;
            if self.instant[c].len() >= min_normal {
                let (ri, r_smooth, r_drift) = (inst / li, smooth / ls, drift / ld);
                let rs = if only_instant { 0.0 } else { r_smooth.max(r_drift) };
                let r = ri.max(rs);
                if r > j.ratio {
                    j.ratio = r;
                    j.component = Some(c);
                    j.smoothed = rs > ri;
                    winner = if ri >= rs {
                        0
                    } else if r_smooth >= r_drift {
                        1
                    } else {
                        2
                    };
                }
            }
        }
        j.strong = match j.component {
            Some(c) if j.ratio >= 1.0 => self.decade_beyond(c, winner),
            _ => 1.0,
        };
        j
    }

    /// How much further than its limit statistic `which` (0 instant, 1 smoothed,
    /// 2 drift) of component `c` is one decade further down its tail.
    fn decade_beyond(&self, c: usize, which: usize) -> f64 {
        if c == Component::Change as usize || c == Component::Trend as usize {
            return 1.0;
        }
        match which {
            0 => self.instant[c].decade_beyond(FLOOR_INSTANT),
            1 => self.smoothed[c].decade_beyond(FLOOR_SMOOTHED),
            _ => self.drift.get(c).map_or(1.0, |h| h.decade_beyond(FLOOR_DRIFT)),
        }
    }

    /// Learns a reading judged normal.
    pub fn learn(&mut self, j: &Judgement) {
        for c in 0..N_COMPONENTS {
            if c == Component::Trend as usize && j.present[c] {
                // The trend's limits learn at its reference's pace: one normal
                // reading in LONG_RUN. Learning every reading, the first few hundred
                // readings of a slow rise filled a tenth of the histogram and
                // lifted the limit out of the rise's reach.
                self.trend_seen += 1;
                if !(self.trend_seen - 1).is_multiple_of(LONG_RUN as u64) {
                    continue;
                }
            }
            if j.present[c] {
                self.instant[c].push(j.stats[c].0);
                if INSTANT_ONLY & (1 << c) == 0 {
                    self.smoothed[c].push(j.stats[c].1);
                    self.drift[c].push(j.stats[c].2);
                }
            }
        }
    }

    /// Seeds a component from a sequence of per-feature z vectors of normal
    /// readings (a new model's held-out residuals), in time order.
    pub fn seed(&mut self, c: Component, rows: &[Vec<f64>], lambda: f64) {
        self.reset(c);
        let i = c as usize;
        for z in rows {
            let mut zs: [Option<&[f64]>; N_COMPONENTS] = [None; N_COMPONENTS];
            zs[i] = Some(z);
            let j = self.judge(&zs, lambda, u32::MAX);
            self.learn(&j);
        }
    }

    /// Normal readings still needed before any statistic has a limit to judge by
    /// (`min_normal` each; 0 once one has): the closest statistic's shortfall,
    /// `min_normal` while none has learnt anything.
    pub fn readings_needed(&self, min_normal: u32) -> u32 {
        let known = self.instant.iter().map(TailHistogram::len).max().unwrap_or(0);
        min_normal.saturating_sub(known)
    }

    /// A component's running average of each feature's signed z (its drift
    /// statistic, per feature), as of the last judgement.
    pub fn running(&self, c: Component) -> &[f64] {
        self.signed.get(c as usize)
    }

    /// Normal readings a component has learnt.
    pub fn known(&self, c: Component) -> u32 {
        self.instant[c as usize].len()
    }

    /// The (instant, smoothed, drift) limits of a component.
    pub fn limits(&self, c: Component) -> (f64, f64, f64) {
        self.limits_at(c as usize)
    }

    /// The limits of component `c`. The change statistic's smoothed limit is
    /// read from the body of its distribution ([`TailHistogram::robust_limit`]),
    /// and its instant and drift statistics never decide (infinite limits).
    fn limits_at(&self, c: usize) -> (f64, f64, f64) {
        if c == Component::Change as usize {
            return (
                f64::INFINITY,
                self.smoothed[c].robust_limit(FLOOR_SMOOTHED),
                f64::INFINITY,
            );
        }
        if c == Component::Trend as usize {
            return (f64::INFINITY, f64::INFINITY, self.drift[c].median_limit(FLOOR_TREND));
        }
        if INSTANT_ONLY & (1 << c) != 0 {
            return (self.instant[c].limit(FLOOR_INSTANT), f64::INFINITY, f64::INFINITY);
        }
        (
            self.instant[c].limit(FLOOR_INSTANT),
            self.smoothed[c].limit(FLOOR_SMOOTHED),
            self.drift.get(c).map_or(FLOOR_DRIFT, |h| h.limit(FLOOR_DRIFT)),
        )
    }
}

/// The score that goes with a ratio to the limit: 0.5 at the limit.
pub fn score_of_ratio(ratio: f64) -> f64 {
    if !ratio.is_finite() {
        return 1.0;
    }
    let r2 = ratio * ratio;
    r2 / (1.0 + r2)
}

/// Why an incident ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// The stream was normal for `incident.resolve_after` readings.
    Normal,
    /// The new behaviour was accepted as normal (by the operator or the
    /// `incident.accept_after` rule).
    Accepted,
    /// The stream was started over (`POST /v1/streams/{id}/reset`).
    Reset,
}

impl Resolution {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Resolution::Normal => "normal",
            Resolution::Accepted => "accepted",
            Resolution::Reset => "reset",
        }
    }
}

/// An incident: a stretch of anomalous state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Per-stream id (1, 2, …; never reused by the stream).
    pub id: u64,
    /// Timestamp of its first anomalous reading.
    pub start: crate::timestamp::Micros,
    /// Timestamp of its last anomalous reading.
    pub last_anomalous: crate::timestamp::Micros,
    /// Highest score seen.
    pub peak_score: f64,
    /// When the peak was seen.
    pub peak_at: crate::timestamp::Micros,
    /// Anomalous readings so far.
    pub anomalous_readings: u64,
    /// Normal readings since the last anomalous one.
    pub normal_run: u64,
    /// Per feature, the summed share of the surprise over its anomalous readings.
    pub contributions: Vec<f64>,
    /// Readings (counted from the stream's start) at which it began.
    pub start_reading: u64,
}

impl Incident {
    /// The features that contributed most, largest first (at most 3, each with its
    /// share of the total).
    pub fn top_features(&self) -> Vec<(usize, f64)> {
        let total: f64 = self.contributions.iter().sum();
        let mut idx: Vec<(usize, f64)> = self
            .contributions
            .iter()
            .enumerate()
            .map(|(i, &c)| (i, if total > 0.0 { c / total } else { 0.0 }))
            .filter(|&(_, s)| s > 0.0)
            .collect();
        idx.sort_by(|a, b| b.1.total_cmp(&a.1));
        idx.truncate(3);
        idx
    }
}

/// What a reading did to the stream's incidents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IncidentEvent {
    /// An incident opened at this reading.
    Opened(Incident),
    /// An incident ended at this reading.
    Resolved {
        /// The incident as it ended.
        incident: Incident,
        /// End timestamp (the last anomalous reading's, or the acceptance time).
        end: crate::timestamp::Micros,
        /// Why it ended.
        resolution: Resolution,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn histogram_limit_matches_the_tail_of_a_half_normal() {
        // |N(0,1)| by inverse CDF over a fine grid: q90 = 1.645, q99 = 2.576.
        let mut h = TailHistogram::default();
        let n = 4000;
        for k in 0..n {
            // Every grid point once, in a scrambled order (1237 is coprime to n):
            // the histogram decays, so sorted input would bias it.
            let i = k * 1237 % n;
            let p = (i as f64 + 0.5) / n as f64;
            // Inverse of the half-normal CDF by bisection on erfc.
            let (mut lo, mut hi) = (0.0, 10.0);
            for _ in 0..60 {
                let mid = 0.5 * (lo + hi);
                if 1.0 - super::super::likelihood::erfc(mid / std::f64::consts::SQRT_2) < p {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            h.push(lo);
        }
        let (q90, q99) = (h.quantile(0.9), h.quantile(0.99));
        assert!((q90 - 1.645).abs() < 0.1, "{q90}");
        assert!((q99 - 2.576).abs() < 0.15, "{q99}");
        let l = h.limit(0.0);
        assert!((4.0..5.0).contains(&l), "{l}");
        // One decade further down a Gaussian tail is about 1.2 times the limit
        // (q90 + 4 (q99 − q90) = 5.37 against 4.44).
        let d = h.decade_beyond(0.0);
        assert!((1.15..1.27).contains(&d), "{d}");
        // A floor far above every value seen leaves no decade to ask for.
        assert_eq!(h.decade_beyond(20.0), 1.0);
    }

    #[test]
    fn a_strong_reading_is_one_decade_further_down_the_tail_of_its_own_statistic() {
        let mut cal = StateCalibration::default();
        // An exponential-like statistic: q90 small against q99 − q90.
        for k in 0..4000 {
            let p = (k * 1237 % 4000) as f64 / 4000.0;
            let z = [-(1.0 - p).ln() * 3.0];
            let mut zs: [Option<&[f64]>; N_COMPONENTS] = [None; N_COMPONENTS];
            zs[0] = Some(&z);
            let j = cal.judge(&zs, 0.1, 64);
            cal.learn(&j);
        }
        let mut zs: [Option<&[f64]>; N_COMPONENTS] = [None; N_COMPONENTS];
        let (li, _, _) = cal.limits(Component::Level);
        // Within the limits, no reading needs to be strong.
        let z = [0.5 * li];
        zs[0] = Some(&z);
        assert_eq!(cal.clone().judge(&zs, 0.1, 64).strong, 1.0);
        let z = [1.1 * li];
        zs[0] = Some(&z);
        let j = cal.judge(&zs, 0.1, 64);
        assert!(j.ratio > 1.0 && j.strong > 1.15 && j.strong <= 4.0 / 3.0, "{j:?}");
    }

    #[test]
    fn the_model_residual_is_judged_per_reading_and_a_baseline_by_its_running_averages_too() {
        // Normal readings of unit noise teach every limit, then a sustained
        // residual of 2.5 (within the instant limit) follows for 200 readings.
        let mut cal = StateCalibration::default();
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..2000 {
            let z = [(0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0];
            let mut zs: [Option<&[f64]>; N_COMPONENTS] = [None; N_COMPONENTS];
            zs[Component::Level as usize] = Some(&z);
            zs[Component::Model as usize] = Some(&z);
            let j = cal.judge(&zs, 0.1, 64);
            cal.learn(&j);
        }
        let shifted = [2.5];
        let mut flagged = [false; 2];
        for (k, c) in [Component::Model, Component::Level].into_iter().enumerate() {
            let mut cal = cal.clone();
            for _ in 0..200 {
                let mut zs: [Option<&[f64]>; N_COMPONENTS] = [None; N_COMPONENTS];
                zs[c as usize] = Some(&shifted);
                flagged[k] |= cal.judge(&zs, 0.1, 64).ratio >= 1.0;
            }
        }
        assert_eq!(flagged, [false, true], "(model, level)");
    }

    #[test]
    fn judge_waits_for_enough_normal_readings_then_flags_beyond_the_limit() {
        let mut cal = StateCalibration::default();
        let mut zs: [Option<&[f64]>; N_COMPONENTS] = [None; N_COMPONENTS];
        let quiet = [1.0];
        zs[0] = Some(&quiet);
        for _ in 0..63 {
            let j = cal.judge(&zs, 0.1, 64);
            assert_eq!(j.ratio, 0.0, "no limit before 64 normal readings");
            cal.learn(&j);
        }
        let j = cal.judge(&zs, 0.1, 64);
        cal.learn(&j);
        let big = [40.0];
        zs[0] = Some(&big);
        let j = cal.judge(&zs, 0.1, 64);
        assert!(j.ratio >= 1.0 && j.component == Some(0), "{j:?}");
        assert!(score_of_ratio(j.ratio) > 0.5);
        assert_eq!(score_of_ratio(1.0), 0.5);
        assert!((score_of_ratio(3.0) - 0.9).abs() < 1e-12);
    }
}
