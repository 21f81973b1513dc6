//! Importing a shard archive: every stream is checked first (its shard, its
//! state), then each is logged whole ([`Record::Adopt`]) and put in the map, the
//! log made durable, the shard owned, and the incidents open on its streams
//! journalled again here, so this node's Alertmanager client keeps them firing
//! (the same labels: one alert, not two).

use std::collections::HashSet;

use super::log::Record;
use super::shards::Imported;
use super::stream::Stream;
use super::{Alert, Registry, RegistryError, lock};
use crate::detector::Detector;
use crate::storage::{archive, snapshot};

impl Registry {
    /// Takes shard `shard` from an archive (`overwrite`: an archived stream
    /// replaces one this node already has; else that one is kept). Nothing
    /// changes unless every stream in it is valid and fits. Blocking.
    pub fn import_shard(&self, shard: u32, bytes: &[u8], overwrite: bool) -> Result<Imported, RegistryError> {
        let (ready, alerts) = self.check_archive(shard, bytes)?;
        let s = self.shards()?;
        let present: HashSet<String> = {
            let map = self.streams.read().unwrap_or_else(|p| p.into_inner());
            ready
                .iter()
                .filter(|(id, ..)| map.contains_key(id))
                .map(|(id, ..)| id.clone())
                .collect()
        };
        let new = ready.len() - present.len();
        if self.len() + new > self.config.max_streams {
            return Err(RegistryError::TooManyStreams(self.config.max_streams));
        }
        let mut done = Imported::default();
        let mut taken = HashSet::new();
        let mut last = 0;
        for (id, detector, labels) in ready {
            if present.contains(&id) && !overwrite {
                done.skipped += 1;
                continue;
            }
            let state = snapshot::encode_inline(&id, 0, &detector.snapshot_with(true))
                .map_err(|e| RegistryError::Storage(e.to_string()))?;
            let lsn = self.log(&Record::Adopt(state).encode())?;
            last = lsn;
            let stream = Stream::new(&id, detector, true, lsn);
            lock(&stream.meta).labels = labels.map(Into::into);
            let old = self
                .streams
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.clone(), stream);
            if let Some(old) = old {
                // A batch that resolved the old one resolves again.
                lock(&old.state).deleted = true;
            }
            taken.insert(id);
            done.streams += 1;
        }
        self.make_durable(last)?;
        self.change_table(s, |t| {
            t.owned.insert(shard);
            t.moved.remove(&shard);
        })?;
        let alerts: Vec<Alert> = alerts
            .iter()
            .filter_map(|json| serde_json::from_slice::<Vec<Alert>>(json).ok())
            .flatten()
            .filter(|al| taken.contains(&al.stream))
            .collect();
        done.open_incidents = alerts.len();
        // Journalled as they are (not counted again as new incidents).
        if !alerts.is_empty() {
            let (lsn, _) = self
                .journal
                .push_logged(alerts, |a| self.log(&Record::Alerts(a.to_vec()).encode()))?;
            self.make_durable(lsn)?;
        }
        tracing::info!(shard, streams = done.streams, skipped = done.skipped, "shard imported");
        Ok(done)
    }

    /// Reads and checks an archive for shard `shard`: its streams restored
    /// (id, detector, labels), and the JSON of its open incidents.
    fn check_archive(&self, shard: u32, bytes: &[u8]) -> Result<(Vec<Ready>, Vec<Vec<u8>>), RegistryError> {
        let invalid = |m: String| RegistryError::ShardArchive(m);
        let s = self.shards()?;
        let a = archive::read(bytes).map_err(|e| invalid(e.to_string()))?;
        if a.shard_count != s.function.count || a.shard != shard {
            return Err(invalid(format!(
                "the archive holds shard {} of {}, not shard {shard} of {}",
                a.shard, a.shard_count, s.function.count
            )));
        }
        if s.table().moving.contains(&shard) {
            return Err(RegistryError::ShardState(format!(
                "shard {shard} is being released by this node: reclaim it instead"
            )));
        }
        let mut ready = Vec::with_capacity(a.streams.len());
        for st in a.streams {
            let id = st.decoded.stream;
            super::validate_stream_id(&id).map_err(invalid)?;
            if s.function.of_id(&id) != shard {
                return Err(invalid(format!("stream {id:?} is not of shard {shard}")));
            }
            let detector =
                Detector::restore(st.decoded.snapshot).map_err(|e| invalid(format!("stream {id:?}: {e}")))?;
            ready.push((id, detector, st.labels));
        }
        Ok((ready, a.alerts))
    }
}

/// A stream of an archive, checked: id, detector, series labels.
type Ready = (String, Detector, Option<Vec<(String, String)>>);
