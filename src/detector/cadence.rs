//! The stream's sampling step, so that a gap in a regular stream is seen as one.
//!
//! Every baseline and the model count rows, not seconds: the AR's lags, the seasonal
//! phase (the value one period ago is `period` rows back) and the model's window.
//! When a regular stream misses readings (a scrape failed, a sensor was offline),
//! the rows after the gap would be compared with the wrong phase and the wrong lags.
//! The detector fills the missing rows with what it expected there (never learnt),
//! so the row count stays aligned with time.
//!
//! ```text
//! step      EW mean of the gaps between readings that are on the beat (within
//!           ±10% of the step); restarted from the newest gap when fewer than
//!           half are
//! regular   EW share of gaps on the beat
//! missing   round(gap / step) − 1, when regular ≥ 0.9 and gap ≥ GAP_STEPS · step
//! ```

use serde::{Deserialize, Serialize};

/// A gap of at least this many steps has missing readings (a late or jittered
/// reading is not a gap).
pub const GAP_STEPS: f64 = 2.5;
/// Gaps a stream must have shown before one is judged.
const WARM: u32 = 16;
/// Share of gaps on the beat for the stream to count as regular.
const REGULAR: f64 = 0.9;
/// A gap within this share of the step is on the beat.
const BEAT: f64 = 0.1;

/// A stream's sampling step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cadence {
    /// Microseconds between readings.
    step: f64,
    regular: f64,
    n: u32,
}

impl Cadence {
    /// A cadence whose step is the gap `g`, as yet unproven.
    fn starting_at(g: f64) -> Self {
        Cadence {
            step: g,
            regular: 1.0,
            n: 1,
        }
    }

    /// Learns the gap (microseconds) before the newest reading and returns how many
    /// readings are missing in it: 0 unless the stream is regular and the gap spans
    /// at least [`GAP_STEPS`] steps.
    pub fn observe(&mut self, gap: i64) -> u64 {
        let g = gap.max(0) as f64;
        if self.n == 0 || !(self.step > 0.0 && self.step.is_finite()) {
            *self = Cadence::starting_at(g);
            return 0;
        }
        let missing = if self.n >= WARM && self.regular >= REGULAR && g >= GAP_STEPS * self.step {
            // Saturates far beyond any fill (the caller caps it).
            ((g / self.step).round() - 1.0).min(1e15) as u64
        } else {
            0
        };
        self.n = self.n.saturating_add(1);
        let a = 1.0 / f64::from(self.n.min(64));
        let on_beat = (g - self.step).abs() <= BEAT * self.step;
        self.regular += a * (f64::from(u8::from(on_beat)) - self.regular);
        if on_beat {
            self.step += a * (g - self.step);
        } else if self.regular < 0.5 {
            // The step was wrong (the first gap was itself a gap, or the stream
            // changed its rate): start again from this gap.
            *self = Cadence::starting_at(g);
        }
        missing
    }

    /// Microseconds between readings (0 before two readings).
    pub fn step(&self) -> f64 {
        self.step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000_000;

    #[test]
    fn a_regular_stream_counts_the_readings_a_gap_misses() {
        let mut c = Cadence::default();
        for _ in 0..40 {
            assert_eq!(c.observe(MIN), 0);
        }
        assert_eq!(c.step(), MIN as f64);
        // Jitter and one late reading are not gaps.
        assert_eq!(c.observe(MIN + MIN / 20), 0);
        assert_eq!(c.observe(2 * MIN), 0);
        // Ten minutes between two one-minute readings: nine are missing.
        assert_eq!(c.observe(10 * MIN), 9);
        assert_eq!(c.observe(MIN), 0);
    }

    #[test]
    fn an_irregular_stream_has_no_gaps() {
        let mut c = Cadence::default();
        let mut x = 7u64;
        for _ in 0..200 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let g = MIN / 4 + (x >> 33) as i64 % (3 * MIN);
            assert_eq!(c.observe(g), 0);
        }
        assert_eq!(c.observe(100 * MIN), 0);
    }

    #[test]
    fn a_first_gap_that_was_itself_a_gap_is_unlearnt() {
        let mut c = Cadence::default();
        c.observe(30 * MIN);
        for _ in 0..80 {
            c.observe(MIN);
        }
        assert!((c.step() - MIN as f64).abs() < 0.01 * MIN as f64, "{}", c.step());
        assert_eq!(c.observe(5 * MIN), 4);
    }
}
