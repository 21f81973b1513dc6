//! What the console and charts read: a page of streams matching a search with a
//! summary of each, and one stream's recent readings with their verdicts.

use serde::Serialize;

use super::journal::glob_match;
use super::{Registry, RegistryError, lock};
use crate::detector::Phase;
use crate::detector::recent::{self, RecentPoint};

/// Scores in a stream summary's sparkline.
pub const SPARKLINE: usize = 32;

/// What `GET /v1/streams/{id}/recent` shows.
#[derive(Clone, Debug, Serialize)]
pub struct RecentView {
    /// The stream.
    pub stream: String,
    /// Its phase now.
    pub phase: Phase,
    /// The score at which a reading is anomalous.
    pub threshold: f64,
    /// The model scoring now (0: none).
    pub model_version: u64,
    /// Per feature, the half-width around the expectation that held 99% of the
    /// normal judged readings shown (`null`: too few).
    pub band: Vec<Option<f64>>,
    /// The readings, oldest first.
    pub points: Vec<RecentPoint>,
}

/// One line of the console's streams page (`GET /v1/streams?detail=true`).
#[derive(Clone, Debug, Serialize)]
pub struct StreamSummary {
    /// The stream.
    pub stream: String,
    /// `warmup` (not judged yet), `baseline` or `model`.
    pub phase: Phase,
    /// Normal readings still needed before it judges.
    pub readings_needed: u64,
    /// Its newest reading is anomalous.
    pub anomalous: bool,
    /// Its newest score (`null`: not judged).
    pub last_score: Option<f64>,
    /// The model scoring (0: none yet).
    pub model_version: u64,
    /// The open incident.
    pub incident: Option<u64>,
    /// Its newest scores, oldest first (`null`: not judged).
    pub scores: Vec<Option<f64>>,
}

/// Whether `id` matches a search: a glob when it holds `*`, else a substring.
fn matches(pattern: &str, id: &str) -> bool {
    if pattern.contains('*') {
        glob_match(pattern, id)
    } else {
        id.contains(pattern)
    }
}

impl Registry {
    /// Stream ids matching `pattern` (all when None), in sorted order from after
    /// `after`, at most `limit`; and how many match in all.
    pub fn search(&self, pattern: Option<&str>, after: Option<&str>, limit: usize) -> (Vec<String>, usize) {
        let map = self.streams.read().unwrap_or_else(|p| p.into_inner());
        let hits: Vec<&String> = map.keys().filter(|k| pattern.is_none_or(|p| matches(p, k))).collect();
        let total = hits.len();
        let mut page: Vec<&String> = hits
            .into_iter()
            .filter(|k| after.is_none_or(|a| k.as_str() > a))
            .collect();
        let limit = limit.min(page.len());
        if limit < page.len() {
            page.select_nth_unstable(limit);
            page.truncate(limit);
        }
        page.sort_unstable();
        (page.into_iter().cloned().collect(), total)
    }

    /// A summary of each stream of `ids` that exists (each lock taken briefly).
    pub fn summaries(&self, ids: &[String]) -> Vec<StreamSummary> {
        ids.iter()
            .filter_map(|id| self.get(id))
            .map(|s| {
                let st = lock(&s.state);
                let d = &st.detector;
                let scores = d.recent().points(SPARKLINE).iter().map(|p| p.score).collect();
                StreamSummary {
                    stream: s.id.clone(),
                    phase: d.phase(),
                    readings_needed: d.readings_needed(),
                    anomalous: d.recent().last().is_some_and(|(_, anomaly)| anomaly),
                    last_score: d.recent().last().and_then(|(score, _)| score),
                    model_version: d.model().map_or(0, |m| m.version),
                    incident: d.incident().map(|i| i.id),
                    scores,
                }
            })
            .collect()
    }

    /// A stream's newest `limit` readings with their verdicts, and the band its
    /// normal readings kept to lately (`GET /v1/streams/{id}/recent`).
    pub fn recent(&self, id: &str, limit: usize) -> Result<RecentView, RegistryError> {
        let stream = self.get(id).ok_or_else(|| self.missing(id))?;
        let st = lock(&stream.state);
        let d = &st.detector;
        let points = d.recent().points(limit);
        Ok(RecentView {
            stream: stream.id.clone(),
            phase: d.phase(),
            threshold: d.config().alert.threshold,
            model_version: d.model().map_or(0, |m| m.version),
            band: recent::band(&points),
            points,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::registry::RegistryConfig;
    use std::sync::Arc;

    #[test]
    fn a_search_pages_through_the_matching_ids_in_order() {
        let reg = Registry::open(RegistryConfig::default(), Arc::new(Metrics::new())).unwrap();
        for id in ["web-3", "web-1", "db-1", "web-2", "cache-web"] {
            reg.put(id, Default::default()).unwrap();
        }
        assert_eq!(
            reg.search(Some("web-*"), None, 2),
            (vec!["web-1".into(), "web-2".into()], 3)
        );
        assert_eq!(reg.search(Some("web-*"), Some("web-2"), 2), (vec!["web-3".into()], 3));
        assert_eq!(reg.search(Some("web"), None, 10).1, 4);
        assert_eq!(reg.search(None, Some("db-1"), 1).0, vec!["web-1".to_string()]);
        assert_eq!(reg.search(Some("nothing"), None, 10), (vec![], 0));
    }
}
