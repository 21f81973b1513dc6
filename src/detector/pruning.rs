//! Pruning: an excursion must stand out against the stream's own recent past.
//!
//! The limits say how rare a reading is among the stream's *normal readings*; a
//! stream whose normal behaviour includes an excursion every few hundred readings
//! (a periodic dip, a burst of noise after each command) crosses them again and
//! again, and each crossing is a false incident. Telemanom (Hundman et al., KDD
//! 2018) prunes such anomalies: one is kept only if its peak exceeds the largest
//! error of the surrounding window by a margin (13% on its error scale; 30% of
//! the ratio to the limit here, `alert.prune_margin`). The streaming form of that
//! rule here:
//!
//! ```text
//! M    the largest ratio to the limit of the excursions among the last `window`
//!      readings before this one began (pruned excursions, and incidents that
//!      were blips; long incidents do not count), and on a stream of one
//!      measured feature of its normal readings too
//! bar  max(1, (1 + margin) · M), fixed when the excursion begins and held while
//!      it lasts and while its incident is open; for the first `CONFIRM − 1`
//!      (2) crossings of an excursion, until one of them is anomalous, at least
//!      the deciding statistic's `strong` ratio (one decade further down its
//!      own tail: about 1.2 for a Gaussian tail, at most `STRONG`, 4/3)
//! ρ'   ρ / bar: the ratio that decides the state, the score and incidents
//! ```
//!
//! On a stream of one measured feature, normal readings count as Telemanom's
//! largest normal error does: a crossing no more than `margin` beyond the
//! stream's recent normal peaks is its own noise (SMAP telemetry: 26 false
//! stretches to 18 on seed 0, the same 53 anomalies found). Not the readings a
//! discrete feature's runs decided: a run limit is already a margin beyond the
//! longest normal run, and counted, a low half near its shortest delayed a
//! pulse held too long by five readings (SMAP: E-1's labelled pulse missed). With many features
//! they do not: hundreds of statistics are judged at once and one of them is
//! always near its limit (a third of the Tennessee Eastman normal readings
//! against 0.6% of SMAP's), so the largest says nothing of the stream, and
//! counted it hides weak onsets (fault 16 was missed on four training seeds
//! of six).
//!
//! The confirmation is for the many statistics judged at once: each limit is
//! read at p ≈ 1e-4, and with a dozen statistics per feature a single reading
//! just beyond one of them is the tails' own noise a few times in every 10,000
//! readings. A fault is either strong (one decade further down the tail) or
//! lasting (three crossings, at most `CONFIRM_GAP` readings apart, as the
//! smoothed statistics of a small shift are); a weak onset is flagged two
//! readings late.
//!
//! So the first of a kind of excursion is an anomaly, and the same again within
//! `window` readings is not, unless it goes `margin` beyond everything recent or
//! lasts longer than a blip (`sustained` readings beyond the limit: then the
//! bar drops to the limit, and a sustained fault is held for as long as it
//! lasts). A blip is as long as it echoes: `SHORT_INCIDENT` readings, and the
//! model's window more once a model judges, since one odd reading keeps the
//! model's residuals high for as long as it is in the window the model reads.
//! Readings of a pruned excursion are not learnt by the baselines (they stay
//! beyond the limit); they teach the limits as a blip does. An anomalous
//! episode joins the window only if it was a blip: a long fault that pauses and
//! returns is judged afresh. On a stream of one measured feature a blip the
//! model's residual decided is as long as it echoes, so one that echoed is
//! pruned when it comes again (SMAP telemetry: G-7's dips, each echoing for
//! 32 readings, opened three false stretches on seed 2). Otherwise a blip is
//! `SHORT_INCIDENT` anomalous readings: a run or a baseline's residual does not
//! echo (a pulse held 40 readings too long must not hide the next fault), and
//! with many features a fault that comes and goes (the Tennessee Eastman
//! random-variation faults) returns in episodes as long as an echo; counted as
//! blips, its returns were pruned (mean detection 93.7% to 90.8% on seeds 0, 1).
//!
//! The maximum is kept over blocks of readings (`BLOCKS` of them): the window is
//! `window` readings rounded up to whole blocks, in about 100 bytes per stream.

use serde::{Deserialize, Serialize};

use super::incident::SHORT_INCIDENT;

/// Blocks the window is kept in.
pub const BLOCKS: usize = 16;

/// Crossings after which a new excursion is anomalous at the bar itself;
/// before, it must reach its statistic's `strong` ratio too.
pub const CONFIRM: usize = 3;

/// Normal readings that may separate the crossings of one unconfirmed excursion.
pub const CONFIRM_GAP: usize = 10;

/// The most a `strong` ratio asks: one decade further down the limits'
/// exponential tail (`q90 + 4 (q99 − q90)` against the limit's `q90 + 3 (q99 −
/// q90)`) is at most 4/3 of the limit ([`super::state::TailHistogram::decade_beyond`]).
pub const STRONG: f64 = 4.0 / 3.0;

/// The running maximum of recent ratios and the bar of the open excursion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pruning {
    /// Largest ratio of each finished block, a ring.
    blocks: [f32; BLOCKS],
    /// Largest ratio of the block being filled.
    current: f32,
    /// Readings in the block being filled.
    filled: u32,
    /// Ring position of the next block to finish.
    next: u8,
    /// The open excursion's bar (0: none open).
    bar: f32,
    /// Readings beyond the limit since the open excursion began.
    beyond: u32,
    /// Readings since the last one beyond the limit.
    #[serde(default = "far")]
    quiet: u32,
    /// The open anomalous episode's largest ratio and its anomalous readings.
    episode: f32,
    episode_len: u32,
    /// The fewest anomalous readings a blip of the open episode may have (the
    /// least `blip` of its anomalous readings; 0: `SHORT_INCIDENT`).
    #[serde(default)]
    episode_blip: u32,
    /// Whether the open excursion has had an anomalous reading (it is confirmed).
    #[serde(default)]
    confirmed: bool,
}

fn far() -> u32 {
    u32::MAX
}

impl Default for Pruning {
    fn default() -> Self {
        Pruning {
            blocks: [0.0; BLOCKS],
            current: 0.0,
            filled: 0,
            next: 0,
            bar: 0.0,
            beyond: 0,
            quiet: far(),
            episode: 0.0,
            episode_len: 0,
            episode_blip: 0,
            confirmed: false,
        }
    }
}

impl Pruning {
    /// The largest ratio of the window.
    fn recent_max(&self) -> f64 {
        f64::from(self.blocks.iter().fold(self.current, |a, &b| a.max(b)))
    }

    /// Whether a reading beyond the limit (anomalous or pruned) was among the
    /// last `readings` (as an incident stays open for `alert.resolve_after`).
    pub fn recently_beyond(&self, readings: usize) -> bool {
        (self.quiet as usize) < readings
    }

    /// The bar of a reading: `excursion`, it is beyond the limit; `held`, an
    /// incident is open. `window` readings (0: pruning off), `margin` a fraction;
    /// an excursion longer than `sustained` readings is a fault by its length.
    /// `strong`: the ratio at which this reading alone is anomalous (see `CONFIRM`;
    /// 1 or less asks nothing more).
    pub fn bar(
        &mut self,
        excursion: bool,
        held: bool,
        window: usize,
        margin: f64,
        sustained: usize,
        strong: f64,
    ) -> f64 {
        if window == 0 {
            return 1.0;
        }
        self.quiet = if excursion { 0 } else { self.quiet.saturating_add(1) };
        if excursion || held {
            if self.bar == 0.0 {
                self.bar = ((1.0 + margin) * self.recent_max()).max(1.0) as f32;
                self.beyond = 0;
                self.confirmed = false;
            }
            self.beyond = self.beyond.saturating_add(u32::from(excursion));
            if self.beyond as usize > sustained {
                // It has lasted longer than a blip: a sustained fault stands out by
                // its length.
                self.bar = 1.0;
            }
        } else if self.confirmed || self.bar > 1.0 || self.quiet as usize > CONFIRM_GAP {
            self.bar = 0.0;
        }
        // (An excursion held back only by its weakness stays open across short
        // gaps: crossings that recur close together confirm each other. One
        // held back by pruning ends as before, and the next meets a new bar.)
        let bar = f64::from(self.bar).max(1.0);
        if excursion && !held && !self.confirmed && (self.beyond as usize) < CONFIRM {
            // A new excursion stands out by its strength or by lasting a few
            // readings; one weak crossing alone is the tail's own noise.
            return bar.max(strong);
        }
        bar
    }

    /// Notes a reading's ratio to the limit. An anomalous episode's (`anomalous`
    /// readings, and every reading while `held` by an open incident) joins the
    /// window when it ends, if it was a blip: at most as many anomalous readings
    /// as the least `blip` given with them (`SHORT_INCIDENT`, or with the echo in
    /// the model's window when the model's residual decided). A kind of blip seen
    /// again is pruned, while a long fault does not hide its own return.
    /// `near`: a normal reading's ratio counts too (a stream of one measured
    /// feature; see the module's note).
    pub fn note(&mut self, ratio: f64, anomalous: bool, held: bool, window: usize, near: bool, blip: usize) {
        if window == 0 {
            return;
        }
        // Kept finite: snapshots are JSON.
        let r = if ratio.is_nan() { 0.0 } else { ratio.clamp(0.0, 1e12) } as f32;
        self.confirmed |= anomalous;
        if anomalous || held {
            self.episode = self.episode.max(r);
            self.episode_len = self.episode_len.saturating_add(u32::from(anomalous));
            if anomalous {
                let blip = blip.min(u32::MAX as usize) as u32;
                self.episode_blip = if self.episode_blip == 0 {
                    blip
                } else {
                    self.episode_blip.min(blip)
                };
            }
            return;
        }
        let blip = if self.episode_blip == 0 {
            SHORT_INCIDENT
        } else {
            self.episode_blip as usize
        };
        if self.episode_len as usize <= blip {
            self.current = self.current.max(self.episode);
        }
        (self.episode, self.episode_len, self.episode_blip) = (0.0, 0, 0);
        if r >= 1.0 || near {
            self.current = self.current.max(r);
        }
        self.filled += 1;
        let per_block = window.div_ceil(BLOCKS).max(1) as u32;
        if self.filled >= per_block {
            self.blocks[usize::from(self.next) % BLOCKS] = self.current;
            self.next = ((usize::from(self.next) + 1) % BLOCKS) as u8;
            self.current = 0.0;
            self.filled = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: usize = 160;
    const M: f64 = 0.13;

    /// One reading as the detector takes it: its bar, then its ratio noted;
    /// returns whether it is anomalous.
    fn take(p: &mut Pruning, ratio: f64, held: bool) -> bool {
        let bar = p.bar(ratio >= 1.0, held, W, M, SHORT_INCIDENT, STRONG);
        let anomalous = ratio >= 1.0 && ratio / bar >= 1.0;
        p.note(ratio, anomalous, held, W, false, SHORT_INCIDENT);
        anomalous
    }

    #[test]
    fn the_first_excursion_meets_the_plain_limit() {
        let mut p = Pruning::default();
        for _ in 0..500 {
            assert!(!take(&mut p, 0.5, false));
        }
        // It must be strong until it has lasted `CONFIRM` readings; then the
        // limit itself is the bar.
        for _ in 1..CONFIRM {
            assert_eq!(p.bar(true, false, W, M, SHORT_INCIDENT, STRONG), STRONG);
        }
        assert_eq!(p.bar(true, false, W, M, SHORT_INCIDENT, STRONG), 1.0);
    }

    #[test]
    fn a_new_weak_crossing_is_anomalous_only_once_it_lasts_and_a_strong_one_at_once() {
        let mut p = Pruning::default();
        for _ in 0..500 {
            take(&mut p, 0.5, false);
        }
        // One or two readings just beyond the limit: the tail's own noise.
        assert!(!take(&mut p, 1.2, false));
        assert!(!take(&mut p, 1.2, false));
        // The third in a row confirms it, and it holds while it lasts.
        assert!(take(&mut p, 1.2, false));
        assert!(take(&mut p, 1.05, false));
        for _ in 0..W + W / BLOCKS {
            take(&mut p, 0.5, false);
        }
        // Strong enough alone: anomalous at once, and the weaker readings after
        // it in the same excursion stay anomalous.
        assert!(take(&mut p, STRONG, false));
        assert!(take(&mut p, 1.1, false));
        // While an incident is open, no confirmation is needed.
        for _ in 0..W + W / BLOCKS {
            take(&mut p, 0.5, false);
        }
        assert!(take(&mut p, 1.1, true));
    }

    #[test]
    fn a_blip_like_a_recent_one_is_pruned_unless_it_goes_beyond_by_the_margin() {
        let mut p = Pruning::default();
        assert!(take(&mut p, 3.0, false));
        for _ in 0..50 {
            take(&mut p, 0.5, false);
        }
        assert!(!take(&mut p, 3.3, false));
        // It holds while the excursion lasts.
        assert!(!take(&mut p, 3.3, false));
        take(&mut p, 0.5, false);
        assert!(!take(&mut p, 3.5, false), "3.5 is within 13% of the 3.3 just seen");
        take(&mut p, 0.5, false);
        assert!(take(&mut p, 4.0, false));
        // And while an incident is open, though the reading is normal.
        let bar = p.bar(false, true, W, M, SHORT_INCIDENT, STRONG);
        assert!((bar - 3.5 * 1.13).abs() < 1e-5, "{bar}");
    }

    #[test]
    fn an_excursion_that_lasts_longer_than_a_blip_is_anomalous() {
        let mut p = Pruning::default();
        assert!(take(&mut p, 3.0, false));
        take(&mut p, 0.5, false);
        let held: Vec<bool> = (0..100).map(|_| take(&mut p, 2.0, false)).collect();
        assert!(held[..SHORT_INCIDENT].iter().all(|&a| !a));
        assert!(held[SHORT_INCIDENT..].iter().all(|&a| a));
    }

    #[test]
    fn the_echo_of_a_blip_seen_before_is_not_taken_for_a_sustained_fault() {
        // A blip like a recent one, then its echo in a window-reading model: the
        // residuals stay just beyond the limit while the blip is in the window.
        let window = 32;
        let take = |p: &mut Pruning, ratio: f64, sustained: usize| {
            let bar = p.bar(ratio >= 1.0, false, W, M, sustained, STRONG);
            let anomalous = ratio >= 1.0 && ratio / bar >= 1.0;
            p.note(ratio, anomalous, false, W, false, sustained);
            anomalous
        };
        for sustained in [SHORT_INCIDENT, SHORT_INCIDENT + window] {
            let mut p = Pruning::default();
            take(&mut p, 5.0, sustained);
            take(&mut p, 0.5, sustained);
            let echo: Vec<bool> = std::iter::once(5.0)
                .chain(std::iter::repeat_n(1.5, window + 5))
                .map(|r| take(&mut p, r, sustained))
                .collect();
            let flagged = echo.iter().any(|&a| a);
            // Counted as long as a plain blip, the echo outlasts it; allowed for, not.
            assert_eq!(flagged, sustained == SHORT_INCIDENT, "sustained {sustained}");
        }
    }

    #[test]
    fn a_blip_that_echoed_in_the_model_is_pruned_when_it_comes_again() {
        // One odd reading keeps a window-reading model's residuals beyond the
        // limit for the window: 34 anomalous readings, a blip all the same.
        let sustained = SHORT_INCIDENT + 32;
        let mut p = Pruning::default();
        let episode = |p: &mut Pruning| -> usize {
            let mut flagged = 0;
            for ratio in std::iter::once(5.0).chain(std::iter::repeat_n(1.5, 33)) {
                let bar = p.bar(true, false, W, M, sustained, STRONG);
                let anomalous = ratio / bar >= 1.0;
                p.note(ratio, anomalous, false, W, false, sustained);
                flagged += usize::from(anomalous);
            }
            for _ in 0..20 {
                p.bar(false, false, W, M, sustained, STRONG);
                p.note(0.5, false, false, W, false, sustained);
            }
            flagged
        };
        assert_eq!(episode(&mut p), 34, "the first of its kind");
        assert_eq!(episode(&mut p), 0, "the same again");
    }

    #[test]
    fn on_one_series_a_crossing_no_larger_than_recent_normal_peaks_is_pruned() {
        // The same normal readings, one just within the limit, then the same
        // lasting crossing a little beyond it: counted (a stream of one measured
        // feature), the normal peak prunes it; not counted, it is anomalous once
        // confirmed.
        for near in [false, true] {
            let mut p = Pruning::default();
            for i in 0..100 {
                let ratio = if i == 50 { 0.95 } else { 0.5 };
                p.bar(false, false, W, M, SHORT_INCIDENT, STRONG);
                p.note(ratio, false, false, W, near, SHORT_INCIDENT);
            }
            let flagged = (0..CONFIRM + 2)
                .filter(|_| {
                    let bar = p.bar(true, false, W, M, SHORT_INCIDENT, STRONG);
                    let anomalous = 1.05 / bar >= 1.0;
                    p.note(1.05, anomalous, false, W, near, SHORT_INCIDENT);
                    anomalous
                })
                .count();
            assert_eq!(flagged > 0, !near, "near {near}: {flagged} anomalous");
        }
    }

    #[test]
    fn a_long_fault_that_pauses_and_returns_is_judged_afresh() {
        let mut p = Pruning::default();
        for _ in 0..100 {
            assert!(take(&mut p, 5.0, true));
        }
        for _ in 0..10 {
            take(&mut p, 0.5, true);
        }
        take(&mut p, 0.5, false);
        assert!(take(&mut p, 4.0, false));
    }

    #[test]
    fn the_window_forgets_old_excursions() {
        let mut p = Pruning::default();
        take(&mut p, 3.0, false);
        for _ in 0..W + W / BLOCKS {
            take(&mut p, 0.5, false);
        }
        assert!(take(&mut p, 2.0, false));
    }

    #[test]
    fn a_window_of_zero_turns_it_off() {
        let mut p = Pruning::default();
        p.note(3.0, false, false, 0, false, SHORT_INCIDENT);
        assert_eq!(p.bar(true, false, 0, M, SHORT_INCIDENT, STRONG), 1.0);
    }

    #[test]
    fn infinite_ratios_stay_finite() {
        let mut p = Pruning::default();
        take(&mut p, f64::INFINITY, false);
        take(&mut p, f64::NAN, false);
        let json = serde_json::to_string(&p).unwrap();
        assert!(!json.contains("null"), "{json}");
    }

    #[test]
    fn by_default_a_blip_a_fifth_stronger_than_the_last_is_pruned() {
        let margin = crate::detector::config::AlertConfig::default().prune_margin;
        let mut p = Pruning::default();
        let mut take = |ratio: f64| {
            let bar = p.bar(ratio >= 1.0, false, W, margin, SHORT_INCIDENT, 1.0);
            let anomalous = ratio >= 1.0 && ratio / bar >= 1.0;
            p.note(ratio, anomalous, false, W, false, SHORT_INCIDENT);
            anomalous
        };
        let quiet = |take: &mut dyn FnMut(f64) -> bool| (0..40).for_each(|_| assert!(!take(0.5)));
        quiet(&mut take);
        assert!(take(2.0), "the first blip of its kind");
        quiet(&mut take);
        assert!(!take(2.4), "a fifth stronger is the same kind again");
        quiet(&mut take);
        assert!(take(3.2), "a third beyond everything recent stands out");
    }
}
