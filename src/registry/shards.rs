//! A sharded node's shards and their moves. A shard is owned (its streams live
//! here), moving (released: its streams are parked, out of the map, refused with
//! 421 until the move ends), or another node's (with the node it moved to, when
//! it left from here). The table starts from the flags and, once a move changed
//! it, from `shards.json` in the data directory, so a restarted node owns what it
//! owned when it stopped.
//!
//! A move: the source releases the shard (parks its streams and writes their
//! snapshots), exports it ([`crate::storage::archive`]), the target imports it
//! (each stream logged whole, [`Record::Adopt`], then durable before the answer)
//! and owns it, and the source forgets it (its files go). Until the forget the
//! source can take the shard back ([`Registry::reclaim_shard`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use super::stream::Stream;
use super::{Alert, AlertKind, Registry, RegistryError, lock};
use crate::detector::{Detector, DetectorSnapshot};
use crate::shard::ShardFunction;
use crate::storage::{archive, snapshot};

/// Where a stream's shard is, seen from this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// This node owns it.
    Here,
    /// This node is handing it over: refused until the move ends.
    Moving(u32),
    /// It moved from here to the node at this URL.
    Moved(u32, String),
    /// Another node's (by the deployment's layout).
    Elsewhere(u32),
}

/// The shard table as saved (`shards.json`) and shown (`GET /v1/shards`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardTable {
    /// Shards in the deployment.
    pub count: u32,
    /// Shards this node owns.
    pub owned: BTreeSet<u32>,
    /// Shards being handed over.
    #[serde(default)]
    pub moving: BTreeSet<u32>,
    /// Where each shard being handed over goes, when the release said.
    #[serde(default)]
    pub moving_to: BTreeMap<u32, String>,
    /// Shards that moved from here, and where to.
    #[serde(default)]
    pub moved: BTreeMap<u32, String>,
}

/// A stream out of the map while its shard moves: what an export sends.
pub(super) struct Parked {
    id: String,
    snapshot: DetectorSnapshot,
    labels: Option<Arc<[(String, String)]>>,
    /// Its files on this node (state, model), removed when the shard is forgotten.
    files: Vec<PathBuf>,
}

/// The shards of a sharded node.
pub(super) struct Shards {
    pub(super) function: ShardFunction,
    table: RwLock<ShardTable>,
    /// Streams of shards this node does not serve, by shard.
    parked: Mutex<HashMap<u32, Vec<Parked>>>,
}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// What an import did.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Imported {
    /// Streams taken.
    pub streams: usize,
    /// Streams kept as they were (the node had them; no `overwrite`).
    pub skipped: usize,
    /// Open incidents taken with them.
    pub open_incidents: usize,
}

fn state_error(msg: String) -> RegistryError {
    RegistryError::ShardState(msg)
}

impl Shards {
    /// The table from the flags, or from `path` when a move saved one there.
    pub(super) fn open(
        function: ShardFunction,
        owned: &[bool],
        path: Option<&std::path::Path>,
    ) -> Result<Shards, String> {
        let mut table = ShardTable {
            count: function.count,
            owned: (0..function.count).filter(|&s| owned[s as usize]).collect(),
            ..Default::default()
        };
        if let Some(bytes) = path.and_then(|p| std::fs::read(p).ok()) {
            let saved: ShardTable = serde_json::from_slice(&bytes).map_err(|e| format!("shards.json: {e}"))?;
            if saved.count != function.count {
                return Err(format!(
                    "shards.json is of {} shards, --shard-count says {}: the shard count is fixed for a deployment's life",
                    saved.count, function.count
                ));
            }
            if saved.owned != table.owned {
                tracing::info!(flags = ?table.owned, saved = ?saved.owned, "shards as a move left them (shards.json), not as the flags say");
            }
            table = saved;
        }
        Ok(Shards {
            function,
            table: RwLock::new(table),
            parked: Mutex::new(HashMap::new()),
        })
    }

    pub(super) fn route(&self, id: &str) -> Route {
        let shard = self.function.of_id(id);
        let t = self.table.read().unwrap_or_else(|p| p.into_inner());
        if t.owned.contains(&shard) {
            Route::Here
        } else if t.moving.contains(&shard) {
            Route::Moving(shard)
        } else if let Some(to) = t.moved.get(&shard) {
            Route::Moved(shard, to.clone())
        } else {
            Route::Elsewhere(shard)
        }
    }

    pub(super) fn table(&self) -> ShardTable {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Registry {
    pub(super) fn shards(&self) -> Result<&Shards, RegistryError> {
        self.shards
            .as_ref()
            .ok_or_else(|| state_error("this node is not sharded (no --shard-count)".into()))
    }

    /// Where stream `id` lives, seen from here (`Here` when not sharded).
    pub fn route(&self, id: &str) -> Route {
        self.shards.as_ref().map_or(Route::Here, |s| s.route(id))
    }

    /// Whether a shard is moving from here or moved from here (requests for it
    /// may then need passing on).
    pub fn shards_in_motion(&self) -> bool {
        self.shards.as_ref().is_some_and(|s| {
            let t = s.table.read().unwrap_or_else(|p| p.into_inner());
            !t.moving.is_empty() || !t.moved.is_empty()
        })
    }

    /// The shard table and the streams per shard held here (None: not sharded).
    pub fn shard_table(&self) -> Option<(ShardTable, BTreeMap<u32, usize>)> {
        let s = self.shards.as_ref()?;
        let mut counts = BTreeMap::new();
        for id in self.streams.read().unwrap_or_else(|p| p.into_inner()).keys() {
            *counts.entry(s.function.of_id(id)).or_insert(0) += 1;
        }
        for (shard, parked) in lock(&s.parked).iter() {
            *counts.entry(*shard).or_insert(0) += parked.len();
        }
        Some((s.table(), counts))
    }

    fn check_shard(&self, shard: u32) -> Result<&Shards, RegistryError> {
        let s = self.shards()?;
        if shard >= s.function.count {
            return Err(state_error(format!(
                "shard {shard} does not exist (the deployment has {})",
                s.function.count
            )));
        }
        Ok(s)
    }

    /// Saves the table (with a data directory) after `change`.
    pub(super) fn change_table(&self, s: &Shards, change: impl FnOnce(&mut ShardTable)) -> Result<(), RegistryError> {
        let mut t = s.table.write().unwrap_or_else(|p| p.into_inner());
        let mut next = t.clone();
        change(&mut next);
        if let Some(dir) = &self.config.data_dir {
            let json = serde_json::to_vec_pretty(&next).expect("the table serialises");
            crate::storage::write_atomic(&dir.join("shards.json"), &json)
                .map_err(|e| RegistryError::Storage(e.to_string()))?;
        }
        *t = next;
        self.note_owned(&t);
        Ok(())
    }

    /// `anomalyd_shard_owned{shard}`: 1 for each shard owned.
    pub(super) fn note_owned(&self, t: &ShardTable) {
        for shard in 0..t.count {
            let g = self.metrics.shards_owned.with_label_values(&[&shard.to_string()]);
            if t.owned.contains(&shard) {
                g.set(1);
            } else if g.get() != 0 {
                g.set(0);
            }
        }
    }

    /// Stops taking shard `shard` so it can move to the node at `to` (when
    /// given): its streams leave the map (a batch already holding one finishes
    /// first) and are written to disk as they are; requests for them are refused
    /// (421) until the shard is forgotten or reclaimed. Releasing it again is
    /// harmless, unless to another node: a shard moves to one node at a time.
    /// Returns the streams parked.
    pub fn release_shard(&self, shard: u32, to: Option<String>) -> Result<usize, RegistryError> {
        let s = self.check_shard(shard)?;
        let mut refused = None;
        let mut again = false;
        self.change_table(s, |t| {
            if t.moving.contains(&shard) {
                again = true;
                if let (Some(there), Some(to)) = (t.moving_to.get(&shard), &to)
                    && there != to
                {
                    refused = Some(format!("shard {shard} is already moving to {there}"));
                } else if let Some(to) = &to {
                    t.moving_to.insert(shard, to.clone());
                }
            } else if !t.owned.contains(&shard) {
                refused = Some(format!("shard {shard} is not this node's to release"));
            } else {
                t.owned.remove(&shard);
                t.moving.insert(shard);
                if let Some(to) = &to {
                    t.moving_to.insert(shard, to.clone());
                }
            }
        })?;
        if let Some(why) = refused {
            return Err(state_error(why));
        }
        if again {
            return Ok(lock(&s.parked).get(&shard).map_or(0, Vec::len));
        }
        let ids: Vec<String> = self
            .streams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .filter(|id| s.function.of_id(id) == shard)
            .cloned()
            .collect();
        let parked: Vec<Parked> = ids.iter().filter_map(|id| self.park(id)).collect();
        let n = parked.len();
        self.write_parked(&parked)?;
        lock(&s.parked).entry(shard).or_default().extend(parked);
        tracing::info!(
            shard,
            streams = n,
            "shard released: its streams are parked until it moves"
        );
        Ok(n)
    }

    /// Takes stream `id` out of the map, once no batch holds it.
    fn park(&self, id: &str) -> Option<Parked> {
        self.with_exclusive(id, |map, stream, st| {
            map.remove(id);
            st.deleted = true;
            let mut files = Vec::new();
            if let Some(dir) = self.streams_dir() {
                files.push(snapshot::stream_file(&dir, id));
            }
            files.extend(st.model_saved.take().map(|(_, f)| f));
            Parked {
                id: id.to_string(),
                snapshot: st.detector.snapshot_with(true),
                labels: lock(&stream.meta).labels.clone(),
                files,
            }
        })
    }

    /// At start-up, after the log's replay: streams of shards this node does not
    /// serve leave the map. Those of a shard that moved away go with their files
    /// (a crash came between the table's change and their removal); the others
    /// are parked (a move under way, or flags that no longer give this node
    /// their shard: kept aside, to export or reclaim, never deleted).
    pub(super) fn settle_shards(&self) {
        let Some(s) = &self.shards else { return };
        let ids: Vec<String> = self
            .streams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        let mut kept_aside = 0;
        for id in ids {
            let shard = match s.route(&id) {
                Route::Here => continue,
                Route::Moved(..) => {
                    for file in self.park(&id).into_iter().flat_map(|p| p.files) {
                        let _ = std::fs::remove_file(file);
                    }
                    continue;
                }
                Route::Moving(shard) | Route::Elsewhere(shard) => shard,
            };
            if let Some(p) = self.park(&id) {
                kept_aside += 1;
                lock(&s.parked).entry(shard).or_default().push(p);
            }
        }
        if kept_aside > 0 {
            tracing::warn!(
                streams = kept_aside,
                "streams of shards this node does not serve are kept aside (GET /v1/shards/{{n}}/export, POST /v1/shards/{{n}}/reclaim)"
            );
        }
    }

    /// Writes parked streams' snapshots (state and weights in one file): the
    /// log's records of them may go at the next round, which no longer sees them.
    fn write_parked(&self, parked: &[Parked]) -> Result<(), RegistryError> {
        let Some(dir) = self.streams_dir() else { return Ok(()) };
        let _round = lock(&self.round);
        let lsn = self.last_lsn();
        for p in parked {
            let bytes =
                snapshot::encode_inline(&p.id, lsn, &p.snapshot).map_err(|e| RegistryError::Storage(e.to_string()))?;
            crate::storage::write_atomic(&snapshot::stream_file(&dir, &p.id), &bytes)
                .map_err(|e| RegistryError::Storage(e.to_string()))?;
        }
        Ok(())
    }

    /// The newest LSN the log handed out (0 without a log).
    fn last_lsn(&self) -> u64 {
        self.wal.as_ref().map_or(0, crate::storage::wal::Wal::last_lsn)
    }

    /// Takes a released shard back: its parked streams return to the map.
    pub fn reclaim_shard(&self, shard: u32) -> Result<usize, RegistryError> {
        let s = self.check_shard(shard)?;
        let parked = lock(&s.parked).remove(&shard).unwrap_or_default();
        let n = parked.len();
        let mut map = self.streams.write().unwrap_or_else(|p| p.into_inner());
        for p in parked {
            let detector = Detector::restore(p.snapshot)?;
            let stream = Stream::new(&p.id, detector, true, self.last_lsn());
            lock(&stream.meta).labels = p.labels;
            map.insert(p.id, stream);
        }
        drop(map);
        self.change_table(s, |t| {
            t.moving.remove(&shard);
            t.moving_to.remove(&shard);
            t.moved.remove(&shard);
            t.owned.insert(shard);
        })?;
        tracing::info!(shard, streams = n, "shard reclaimed");
        Ok(n)
    }

    /// Ends a move from here: the released shard's parked streams and their
    /// files go; requests for it are passed on to `to` (when given) or refused.
    pub fn forget_shard(&self, shard: u32, to: Option<String>) -> Result<usize, RegistryError> {
        let s = self.check_shard(shard)?;
        if s.table().owned.contains(&shard) {
            return Err(state_error(format!("shard {shard} is owned here: release it first")));
        }
        self.change_table(s, |t| {
            t.moving.remove(&shard);
            t.moving_to.remove(&shard);
            match to {
                Some(url) => t.moved.insert(shard, url),
                None => t.moved.remove(&shard),
            };
        })?;
        let parked = lock(&s.parked).remove(&shard).unwrap_or_default();
        for file in parked.iter().flat_map(|p| &p.files) {
            let _ = std::fs::remove_file(file);
        }
        tracing::info!(shard, streams = parked.len(), "shard forgotten: it lives elsewhere now");
        Ok(parked.len())
    }

    /// Writes shard `shard` as an archive, piece by piece, to `sink` (which
    /// returns false to stop): the parked streams of a released shard, or a
    /// copy of an owned shard's streams taken one by one (a backup). Blocking.
    pub fn export_shard(&self, shard: u32, mut sink: impl FnMut(Vec<u8>) -> bool) -> Result<usize, RegistryError> {
        let s = self.check_shard(shard)?;
        let storage = |e: crate::storage::StorageError| RegistryError::Storage(e.to_string());
        let (mut w, head) = archive::Writer::start(s.function.count, shard);
        if !sink(head) {
            return Ok(0);
        }
        let mut ids = BTreeSet::new();
        if let Some(parked) = lock(&s.parked).get(&shard) {
            for p in parked {
                ids.insert(p.id.clone());
                if !sink(w.stream(&p.id, p.labels.as_deref(), &p.snapshot).map_err(storage)?) {
                    return Ok(ids.len());
                }
            }
        }
        let live: Vec<Arc<Stream>> = self
            .all_streams()
            .into_iter()
            .filter(|st| s.function.of_id(&st.id) == shard)
            .collect();
        for stream in live {
            let snap = {
                let st = lock(&stream.state);
                if st.deleted {
                    continue;
                }
                st.detector.snapshot_with(true)
            };
            let labels = lock(&stream.meta).labels.clone();
            ids.insert(stream.id.clone());
            if !sink(w.stream(&stream.id, labels.as_deref(), &snap).map_err(storage)?) {
                return Ok(ids.len());
            }
        }
        let open = self.open_incidents(&ids);
        sink(w.alerts(&serde_json::to_vec(&open).expect("alerts serialise")));
        sink(w.finish());
        Ok(ids.len())
    }

    /// The events that opened the incidents still open on `ids`, from the journal.
    fn open_incidents(&self, ids: &BTreeSet<String>) -> Vec<Arc<Alert>> {
        let mut open: BTreeMap<(String, u64), Arc<Alert>> = BTreeMap::new();
        for a in self.journal.query(None, None, usize::MAX) {
            if !ids.contains(&a.stream) {
                continue;
            }
            let key = (a.stream.clone(), a.incident);
            match a.kind {
                AlertKind::Opened => {
                    open.insert(key, a);
                }
                AlertKind::Resolved => {
                    open.remove(&key);
                }
            }
        }
        open.into_values().collect()
    }
}

#[cfg(test)]
#[path = "shards_tests.rs"]
mod tests;
