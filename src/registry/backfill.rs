//! A new remote_write stream's past, learnt from the Prometheus that sends it:
//! which streams may still learn it, and learning it. While a stream warms up
//! (nothing judged, no model) and every reading it took is among its recent
//! ones, it can start over having learnt its past and then its own readings as
//! history; after that, it is too late and the backfill is dropped.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::log;
use super::stream::{backfill_before, backfill_into};
use super::{Reading, Registry, RegistryError, lock};
use crate::timestamp::Micros;

/// A stream whose past is wanted.
#[derive(Clone, Debug)]
pub struct BackfillJob {
    /// The stream.
    pub stream: String,
    /// Its series' labels, `__name__` included.
    pub labels: Arc<[(String, String)]>,
    /// Its first reading's time: the past ends before it.
    pub before: Micros,
}

/// What a backfill did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackfillOutcome {
    /// The stream learnt this many past readings and trains.
    Learnt(usize),
    /// Prometheus had nothing before the stream's first reading.
    Empty,
    /// The stream judged, trained or took more readings than it keeps meanwhile.
    TooLate,
}

impl BackfillOutcome {
    /// Its name in `anomalyd_backfill_jobs_total`.
    pub fn name(self) -> &'static str {
        match self {
            BackfillOutcome::Learnt(_) => "learnt",
            BackfillOutcome::Empty => "empty",
            BackfillOutcome::TooLate => "too_late",
        }
    }
}

impl Registry {
    /// The remote_write streams of `ids` that warm up and were not offered a
    /// backfill yet; each is marked offered and returned once.
    pub fn backfill_candidates<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Vec<BackfillJob> {
        let mut out = Vec::new();
        for id in ids {
            let Some(s) = self.get(id) else { continue };
            // Cheap checks first: most streams are long past their warm-up.
            if s.phase.load(Ordering::Relaxed) != 0 || s.backfill_offered.load(Ordering::Relaxed) {
                continue;
            }
            let Some(labels) = lock(&s.meta).labels.clone() else {
                continue;
            };
            let Some(before) = backfill_before(&lock(&s.state).detector) else {
                continue;
            };
            if !s.backfill_offered.swap(true, Ordering::AcqRel) {
                out.push(BackfillJob {
                    stream: s.id.clone(),
                    labels,
                    before,
                });
            }
        }
        out
    }

    /// Whether stream `id` may still learn its past.
    pub fn backfill_wanted(&self, id: &str) -> bool {
        self.get(id).is_some_and(|s| {
            s.phase.load(Ordering::Relaxed) == 0 && backfill_before(&lock(&s.state).detector).is_some()
        })
    }

    /// Offers stream `id` a backfill again at its next batch (its job was dropped).
    pub fn backfill_forget(&self, id: &str) {
        if let Some(s) = self.get(id) {
            s.backfill_offered.store(false, Ordering::Release);
        }
    }

    /// Teaches stream `id` its past (`(time, value)`, oldest first; what is not
    /// before its first reading, or not finite, is left out): logged, then the
    /// stream starts over having learnt it and its own readings as history, and
    /// trains. Blocking.
    pub fn backfill(&self, id: &str, past: &[(Micros, f64)]) -> Result<BackfillOutcome, RegistryError> {
        let stream = self.get(id).ok_or_else(|| self.missing(id))?;
        let mut st = lock(&stream.state);
        if st.deleted {
            return Err(self.missing(id));
        }
        let Some(before) = backfill_before(&st.detector) else {
            return Ok(BackfillOutcome::TooLate);
        };
        let past: Vec<Reading> = past
            .iter()
            .filter(|(t, v)| *t < before && v.is_finite())
            .map(|&(timestamp, v)| Reading {
                stream: id.to_string(),
                timestamp,
                values: vec![v],
            })
            .collect();
        if past.is_empty() {
            return Ok(BackfillOutcome::Empty);
        }
        st.lsn = self.log(&log::encode_backfill(&past))?;
        backfill_into(&mut st, &past);
        if st.detector.training_due() {
            self.submit_job(&stream, &mut st.detector);
        }
        let lsn = st.lsn;
        st.touch(lsn);
        stream.note_phase(&st);
        drop(st);
        self.make_durable(lsn)?;
        self.metrics.backfill_points.inc_by(past.len() as u64);
        Ok(BackfillOutcome::Learnt(past.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::registry::RegistryConfig;

    fn reading(t: i64) -> Reading {
        Reading {
            stream: "s".into(),
            timestamp: t * 1_000_000,
            values: vec![(t % 7) as f64],
        }
    }

    fn labels() -> crate::registry::SeriesLabels {
        let l: Arc<[(String, String)]> = Arc::from(vec![("__name__".to_string(), "s".to_string())]);
        [("s".to_string(), l)].into_iter().collect()
    }

    #[test]
    fn a_warming_up_stream_learns_its_past_once_and_a_crash_keeps_it() {
        let dir = std::env::temp_dir().join(format!("anomalyd-backfill-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = || RegistryConfig {
            data_dir: Some(dir.clone()),
            ..Default::default()
        };
        let reg = Registry::open(config(), Arc::new(Metrics::new())).unwrap();
        reg.ingest_remote(&[reading(1000), reading(1001)], &labels()).unwrap();
        let jobs = reg.backfill_candidates(["s", "nope"]);
        assert_eq!(jobs.len(), 1);
        assert_eq!((jobs[0].stream.as_str(), jobs[0].before), ("s", 1_000_000_000));
        assert!(reg.backfill_candidates(["s"]).is_empty(), "offered once");
        reg.backfill_forget("s");
        assert_eq!(reg.backfill_candidates(["s"]).len(), 1, "offered again once forgotten");

        let later: Vec<(Micros, f64)> = vec![(1_000_000_000, 1.0), (2_000_000_000, 1.0)];
        assert_eq!(reg.backfill("s", &later).unwrap(), BackfillOutcome::Empty);
        let past: Vec<(Micros, f64)> = (0..200).map(|t| (t * 1_000_000, (t % 7) as f64)).collect();
        assert_eq!(reg.backfill("s", &past).unwrap(), BackfillOutcome::Learnt(200));
        let info = reg.info("s").unwrap();
        assert_eq!((info.readings_seen, info.readings_needed), (202, 0));
        assert_eq!(
            reg.backfill("s", &past).unwrap(),
            BackfillOutcome::TooLate,
            "it judges now"
        );
        assert!(!reg.backfill_wanted("s"));
        drop(reg); // a crash: the log alone holds the backfill

        let reg = Registry::open(config(), Arc::new(Metrics::new())).unwrap();
        let back = reg.info("s").unwrap();
        assert_eq!((back.readings_seen, back.readings_needed), (202, 0));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
