//! The incident lifecycle: an anomalous state opens an incident (after
//! `alert.min_duration`, unless the stretch recurs with the stream's period), a run
//! of `alert.resolve_after` normal readings resolves it, and `accept` (or
//! `alert.accept_after`) makes what it saw the new normal.

use serde::{Deserialize, Serialize};

use super::baseline::{Seasonal, StateBaselines};
use super::state::Judgement;
use super::{Accepted, Detector, Incident, IncidentEvent, Resolution, Suppressed};
use crate::timestamp::Micros;

/// Anomalous readings an incident may have and still teach its statistics to the
/// limits when it resolves by itself.
pub const SHORT_INCIDENT: usize = 32;

/// Earlier anomalous stretches, each begun one period after the one before, that
/// make a stretch recurring (see [`Suppressed::Recurring`]).
pub(super) const RECURRENCES: usize = 2;

/// Anomalous stretches kept for [`Detector::recurs`].
pub(super) const MAX_STRETCHES: usize = 8;

/// A recurring stretch whose ratio to the limit exceeds this multiple of the
/// largest the stretches it recurs reached is a fault (an incident opens).
pub(super) const RECURRING_ESCALATION: f64 = 2.0;

/// One anomalous stretch: reading numbers of its first and last anomalous
/// readings, and its largest ratio to the limit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Stretch {
    start: u64,
    end: u64,
    peak: f64,
}

/// An open recurring stretch.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Recurring {
    /// Normal readings since its last anomalous one.
    normal_run: u64,
    /// The reading number after which it has lasted half again as long as the
    /// stretches it recurs.
    until: u64,
    /// The largest ratio those stretches reached.
    peak: f64,
}

impl Detector {
    /// Advances the incident lifecycle by one reading. Returns the event it raised
    /// and, for an anomalous reading that opened nothing, why.
    pub(super) fn step_incident(
        &mut self,
        timestamp: Micros,
        anomalous: bool,
        (score, ratio): (f64, f64),
        contributions: &[f64],
    ) -> (Option<IncidentEvent>, Option<Suppressed>) {
        if !anomalous {
            self.anomalous_run = 0;
            return (self.step_normal(), None);
        }
        self.anomalous_run += 1;
        // Kept finite: stretches are saved in snapshots (JSON has no infinity).
        let ratio = if ratio.is_finite() { ratio.min(1e12) } else { 1e12 };
        // The stretch goes on (a new one begins below).
        let begins = self.anomalous_run == 1 && self.incident.is_none() && self.recurring.is_none();
        if let Some(last) = self.stretches.back_mut()
            && !begins
        {
            last.end = self.seen;
            last.peak = last.peak.max(ratio);
        }
        if let Some(inc) = self.incident.as_mut() {
            inc.last_anomalous = timestamp;
            inc.anomalous_readings += 1;
            inc.normal_run = 0;
            if score > inc.peak_score {
                (inc.peak_score, inc.peak_at) = (score, timestamp);
            }
            for (c, &v) in inc.contributions.iter_mut().zip(contributions) {
                *c += v;
            }
            return (None, Some(Suppressed::IncidentOpen));
        }
        match self.recurring.as_mut() {
            // Still the recurring stretch (it ends as an incident would), unless it
            // outlasts the stretches it recurs, or goes far beyond them: then it
            // is a fault.
            Some(r) => {
                r.normal_run = 0;
                if self.seen > r.until || ratio > RECURRING_ESCALATION * r.peak {
                    self.recurring = None;
                }
            }
            None if begins => self.begin_stretch(ratio),
            None => {}
        }
        if self.recurring.is_some() {
            return (None, Some(Suppressed::Recurring));
        }
        if self.anomalous_run < self.config.alert.min_duration as u64 {
            return (None, Some(Suppressed::MinDuration));
        }
        self.incidents += 1;
        let inc = Incident {
            id: self.incidents,
            start: timestamp,
            last_anomalous: timestamp,
            peak_score: score,
            peak_at: timestamp,
            anomalous_readings: 1,
            normal_run: 0,
            contributions: contributions.to_vec(),
            start_reading: self.seen,
        };
        self.incident = Some(Box::new(inc.clone()));
        (Some(IncidentEvent::Opened(inc)), None)
    }

    /// A normal reading: counts towards ending the open incident (or recurring
    /// stretch) after `alert.resolve_after` of them.
    pub(super) fn step_normal(&mut self) -> Option<IncidentEvent> {
        let resolve_after = self.config.alert.resolve_after as u64;
        if let Some(r) = self.recurring.as_mut() {
            r.normal_run += 1;
            if r.normal_run >= resolve_after {
                self.recurring = None;
            }
        }
        let inc = self.incident.as_mut()?;
        inc.normal_run += 1;
        if inc.normal_run < resolve_after {
            return None;
        }
        let inc = self.incident.take().expect("open");
        let end = inc.last_anomalous;
        Some(IncidentEvent::Resolved {
            incident: *inc,
            end,
            resolution: Resolution::Normal,
        })
    }

    /// An anomalous stretch begins (no incident or recurring stretch is open):
    /// notes where, and whether it recurs.
    pub(super) fn begin_stretch(&mut self, ratio: f64) {
        self.recurring = self.recurs().and_then(|(longest, peak)| {
            (ratio <= RECURRING_ESCALATION * peak).then_some(Recurring {
                normal_run: 0,
                until: self.seen.saturating_add(longest.saturating_add(longest / 2)),
                peak,
            })
        });
        if self.stretches.len() >= MAX_STRETCHES {
            self.stretches.pop_front();
        }
        self.stretches.push_back(Stretch {
            start: self.seen,
            end: self.seen,
            peak: ratio,
        });
    }

    /// Whether an anomalous stretch beginning now recurs: for some feature's period
    /// p, earlier stretches began 1, 2, … `RECURRENCES` periods ago (give or take
    /// p/50 readings). Stretches are separated by normal readings, so a fault that
    /// lasts across the periods never recurs. Returns the longest of those
    /// stretches (in readings) and the largest ratio they reached.
    pub(super) fn recurs(&self) -> Option<(u64, f64)> {
        let n = self.seen;
        self.seasonals.iter().filter_map(Seasonal::period).find_map(|p| {
            let (p, tol) = (p as u64, (p as u64 / 50).max(1));
            (1..=RECURRENCES as u64).try_fold((0, 0.0), |(longest, peak): (u64, f64), k| {
                let at = n.checked_sub(k.saturating_mul(p))?;
                let s = self.stretches.iter().find(|s| s.start.abs_diff(at) <= tol)?;
                Some((longest.max(s.end.saturating_sub(s.start) + 1), peak.max(s.peak)))
            })
        })
    }

    /// Keeps the statistics of the current anomalous stretch; when it ends as a
    /// short incident that resolved by itself (or a blip that opened none), they
    /// join the limits: a kind of blip the stream shows again and again stops
    /// opening incidents, while a long fault teaches them nothing.
    pub(super) fn track_stretch(
        &mut self,
        anomalous: bool,
        was_recurring: bool,
        judgement: &Judgement,
        event: &Option<IncidentEvent>,
    ) {
        if anomalous {
            if self.stretch.len() < SHORT_INCIDENT {
                self.stretch.push(*judgement);
            }
            return;
        }
        match event {
            Some(IncidentEvent::Resolved { incident, .. }) => {
                if incident.anomalous_readings as usize <= SHORT_INCIDENT {
                    self.end_stretch();
                } else {
                    self.stretch = Vec::new();
                }
            }
            // A blip that never became an incident (alert.min_duration); a
            // recurring stretch is not a blip and teaches the limits nothing.
            _ if self.incident.is_none() && !self.stretch.is_empty() => {
                if was_recurring {
                    self.stretch = Vec::new();
                } else {
                    self.end_stretch();
                }
            }
            _ => {}
        }
    }

    /// Teaches the limits what the last short stretch looked like (it resolved by
    /// itself, or it was accepted).
    pub(super) fn end_stretch(&mut self) {
        for j in &self.stretch {
            self.state.learn(j);
        }
        self.stretch = Vec::new();
    }

    /// The `alert.accept_after` rule: an incident that has lasted that long in
    /// stream time is the new normal.
    pub(super) fn accept_if_lasting(&mut self, now: Micros) -> Option<IncidentEvent> {
        let after = self.config.alert.accept_after;
        let inc = self.incident.as_ref()?;
        if after > 0.0 && (now.saturating_sub(inc.start)) as f64 / 1e6 >= after {
            self.accept().event
        } else {
            None
        }
    }

    /// Accepts the stream's recent behaviour as normal: every buffered reading that
    /// was not learnt (an open incident's, or a past false alarm's) is learnt now,
    /// in order, by the state's baselines; an open incident resolves as
    /// `accepted`; the smoothed statistics restart and a retraining job is wanted.
    pub fn accept(&mut self) -> Accepted {
        let d = self.n_features.unwrap_or(1).max(1);
        let first = self.seen + 1 - (self.history.len() / d) as u64;
        let readings = self.unlearnt.len();
        // The learnt level restarts from the accepted readings: the old level is
        // what no longer holds.
        if readings > 0 {
            self.state_baselines.iter_mut().for_each(StateBaselines::restart_level);
        }
        self.state_baselines.iter_mut().for_each(|b| b.stuck.accept());
        let window = self.config.baseline.gaussian_window;
        for n in std::mem::take(&mut self.unlearnt) {
            let row = (n - first) as usize;
            for j in 0..d {
                // The seasonal residual is not replayed: its expectation for an old
                // row is not at hand.
                self.state_baselines[j].learn(self.history.get(row * d + j), None, window);
            }
        }
        // Accepted (or a false alarm): what the stretch looked like is normal.
        self.end_stretch();
        self.state.restart_smoothing();
        self.anomalous_run = 0;
        if readings > 0 {
            self.retrain_requested = true;
            self.model_stale = self.model.is_some();
        }
        let event = self.incident.take().map(|incident| IncidentEvent::Resolved {
            end: self.last_ts.unwrap_or(incident.last_anomalous),
            incident: *incident,
            resolution: Resolution::Accepted,
        });
        Accepted { readings, event }
    }
}
