//! Checkpoint storage, two ways, the same payloads: anomalyd's own files (each
//! stream's state and, once per model version, its weights staged as files, made
//! durable by one `syncfs`, then renamed: `storage::snapshot`) against redb (an
//! embedded, crash-safe B-tree store: one write transaction per round, committed
//! durably). Prints one JSON line per store.
//!
//! ```text
//! cargo bench --bench checkpoint_store            # 10,000 streams
//! STREAMS=100000 cargo bench --bench checkpoint_store
//! ```
//! Payload sizes are those of a default stream with a model (a state file and a
//! model file as `anomalyd bench checkpoint` reports them); the bytes are
//! pseudo-random so neither store can compress them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anomalyd::storage::snapshot;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

const STATE_BYTES: usize = 22_000;
const MODEL_BYTES: usize = 43_712;
const STATES: TableDefinition<&str, &[u8]> = TableDefinition::new("states");
const MODELS: TableDefinition<&str, &[u8]> = TableDefinition::new("models");

fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|es| es.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

/// One checkpoint round over `ids`, with the weights when `models`.
trait Store {
    fn round(&mut self, ids: &[String], state: &[u8], model: Option<&[u8]>);
    /// Reads every state and model back (a restart); returns the bytes read.
    fn read_all(&self) -> usize;
    fn bytes_on_disk(&self) -> u64;
}

struct Files {
    dir: PathBuf,
}

impl Store for Files {
    fn round(&mut self, ids: &[String], state: &[u8], model: Option<&[u8]>) {
        let mut staged = Vec::with_capacity(ids.len() * 2);
        for id in ids {
            if let Some(m) = model {
                let target = snapshot::new_model_file(&self.dir, id, 1);
                staged.push((snapshot::stage(&target, m).expect("stage model"), target));
            }
            let target = snapshot::stream_file(&self.dir, id);
            staged.push((snapshot::stage(&target, state).expect("stage state"), target));
        }
        snapshot::commit(&self.dir, &staged).expect("commit");
    }

    fn read_all(&self) -> usize {
        std::fs::read_dir(&self.dir)
            .expect("dir")
            .flatten()
            .map(|e| std::fs::read(e.path()).expect("read").len())
            .sum()
    }

    fn bytes_on_disk(&self) -> u64 {
        dir_bytes(&self.dir)
    }
}

struct Redb {
    db: redb::Database,
    dir: PathBuf,
}

impl Store for Redb {
    fn round(&mut self, ids: &[String], state: &[u8], model: Option<&[u8]>) {
        let tx = self.db.begin_write().expect("begin");
        {
            let mut states = tx.open_table(STATES).expect("states");
            let mut models = tx.open_table(MODELS).expect("models");
            for id in ids {
                if let Some(m) = model {
                    models.insert(id.as_str(), m).expect("insert model");
                }
                states.insert(id.as_str(), state).expect("insert state");
            }
        }
        tx.commit().expect("commit");
    }

    fn read_all(&self) -> usize {
        let tx = self.db.begin_read().expect("read");
        let mut n = 0;
        for def in [STATES, MODELS] {
            let t = tx.open_table(def).expect("table");
            for row in t.iter().expect("iter") {
                let (_, v) = row.expect("row");
                n += v.value().len();
            }
        }
        n
    }

    fn bytes_on_disk(&self) -> u64 {
        dir_bytes(&self.dir)
    }
}

fn measure(name: &str, store: &mut dyn Store, streams: usize) {
    let ids: Vec<String> = (0..streams).map(|i| format!("host-{i}/cpu")).collect();
    let (state, model) = (payload(STATE_BYTES, 1), payload(MODEL_BYTES, 2));
    let timed = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64()
    };
    let first = timed(&mut || store.round(&ids, &state, Some(&model)));
    let mut all = Vec::new();
    for _ in 0..3 {
        all.push(timed(&mut || store.round(&ids, &state, None)));
    }
    all.sort_by(f64::total_cmp);
    let one_pct: Vec<String> = ids.iter().step_by(100).cloned().collect();
    let mut pct = Vec::new();
    for _ in 0..5 {
        pct.push(timed(&mut || store.round(&one_pct, &state, None)));
    }
    pct.sort_by(f64::total_cmp);
    let mut read = 0;
    let restart = timed(&mut || read = store.read_all());
    println!(
        "{{\"store\":\"{name}\",\"streams\":{streams},\"state_bytes\":{STATE_BYTES},\"model_bytes\":{MODEL_BYTES},\
         \"first_round_s\":{first:.3},\"all_states_round_s_median\":{:.3},\"one_percent_round_s_median\":{:.4},\
         \"read_all_s\":{restart:.3},\"read_mb\":{:.0},\"disk_mb\":{:.0}}}",
        all[1],
        pct[2],
        read as f64 / 1e6,
        store.bytes_on_disk() as f64 / 1e6
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let streams: usize = std::env::var("STREAMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let root = std::env::temp_dir().join(format!("anomalyd-store-bench-{}", std::process::id()));
    let files_dir = root.join("files");
    let redb_dir = root.join("redb");
    std::fs::create_dir_all(&files_dir).expect("dir");
    std::fs::create_dir_all(&redb_dir).expect("dir");
    measure("files", &mut Files { dir: files_dir }, streams);
    let db = redb::Database::create(redb_dir.join("streams.redb")).expect("redb");
    measure("redb", &mut Redb { db, dir: redb_dir }, streams);
    let _ = std::fs::remove_dir_all(&root);
}
