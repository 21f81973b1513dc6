//! Stuck features: runs of exactly repeated values against the longest run the
//! feature's normal readings showed.

use super::EwStats;

/// Least run of repeated values that can be judged stuck, whatever the normal
/// runs were: a value repeated five times over is not yet a stuck sensor.
pub const MIN_STUCK_RUN: u32 = 5;
/// Tail probability of a stuck run under the feature's own chance of repeating.
const STUCK_TAIL: f64 = 1e-4;
/// Normal readings a feature must have shown before its runs are judged.
pub(super) const STUCK_WARM: u32 = 64;
/// Least share of normal readings that change value for runs to be judged: a
/// feature that often holds its value (a counter that is mostly 0, a flat line, a
/// slowly sampled analyser) has long runs by nature, and its longest one seen is a
/// poor guide to the next.
const STUCK_MOVING: f64 = 0.5;

/// Runs of exactly repeated values, for a stuck sensor or valve: a feature that
/// changes at nearly every normal reading and then repeats one value for far
/// longer than any normal run did is stuck, even inside its normal range (where
/// the level, the AR and often the model see nothing).
///
/// ```text
/// run     readings in a row equal to the one before (0 when it moved)
/// limit   max(2 · longest normal run + 2, MIN_STUCK_RUN, ln 1e-4 / ln(1 − moving))
/// ratio   run / limit, once STUCK_WARM normal readings moved at least
///         STUCK_MOVING of the time
/// ```
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stuck {
    last: Option<f64>,
    run: u32,
    /// The run that the newest reading ended (learnt with it, if it is normal).
    ended: u32,
    /// Longest run that ended on a normal reading and never reached the limit.
    longest: u32,
    /// Share of normal readings that changed value (the mean, over 512).
    pub(super) moving: EwStats,
}

impl Stuck {
    /// Follows the sequence with the newest value (every reading, learnt or not).
    pub fn observe(&mut self, x: f64) {
        if self.last == Some(x) {
            self.run = self.run.saturating_add(1);
            self.ended = 0;
        } else {
            self.ended = self.run;
            self.run = 0;
        }
        self.last = Some(x);
    }

    /// The newest value.
    pub fn last(&self) -> Option<f64> {
        self.last
    }

    /// The run's length that counts as stuck: twice the longest normal run, and
    /// at least as long as a run of independent readings that each repeat with
    /// the feature's own chance would reach once in 10,000 (the tail the other
    /// limits read).
    pub fn limit(&self) -> u32 {
        let repeat = (1.0 - self.moving.mean).clamp(0.0, 1.0);
        let chance = if repeat > 0.0 {
            (STUCK_TAIL.ln() / repeat.ln()).ceil().min(1e6) as u32
        } else {
            0
        };
        self.longest
            .saturating_mul(2)
            .saturating_add(2)
            .max(MIN_STUCK_RUN)
            .max(chance)
    }

    /// The current run over the limit (0 while the feature is not judged).
    pub fn ratio(&self) -> f64 {
        if self.moving.len() < u64::from(STUCK_WARM) || self.moving.mean < STUCK_MOVING {
            return 0.0;
        }
        f64::from(self.run) / f64::from(self.limit())
    }

    /// Learns the newest reading as normal: whether it moved, and the run it ended
    /// (one that reached the limit was stuck, and is never normal).
    pub fn learn(&mut self) {
        let moved = if self.run == 0 { 1.0 } else { 0.0 };
        self.moving.learn(moved, 512);
        if self.run == 0 && self.ended < self.limit() {
            self.longest = self.longest.max(self.ended);
        }
    }

    /// The current run is accepted as normal (the operator or `accept_after`).
    pub fn accept(&mut self) {
        self.longest = self.longest.max(self.run);
    }
}
