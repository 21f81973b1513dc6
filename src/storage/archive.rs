//! A shard archive: the streams of one shard (state, weights, series labels)
//! and the incident events still open on them, in one checksummed file, for
//! moving a shard to another node or restoring a wiped one.
//!
//! ```text
//! archive  "ANOMSHRD" | u32 format version (1) | u32 shard count | u32 shard
//!          entries: u8 kind | u64 n | n bytes
//!            kind 1, a stream:  u32 m | m bytes of JSON {"labels"} | a state
//!                               file in format 1 (state and weights, with
//!                               its own CRC; see [`super::snapshot`])
//!            kind 2, alerts:    JSON [Alert] of the incidents open on them
//!          end: u8 0 | u64 entries | u32 CRC-32 of everything before it
//! ```
//! Little-endian. Written piece by piece ([`Writer`]), so a node sends a shard
//! of any size without holding it whole; read back whole ([`read`]), every
//! length and both checksums checked, never panicking.

use super::StorageError;
use super::bytes::Cursor;
use super::snapshot::{self, Decoded};
use crate::detector::DetectorSnapshot;

const MAGIC: &[u8; 8] = b"ANOMSHRD";
const VERSION: u32 = 1;
const STREAM: u8 = 1;
const ALERTS: u8 = 2;
const END: u8 = 0;

/// One stream of an archive.
pub struct ArchivedStream {
    /// Its state and weights (`lsn` is the exporting node's, meaningless here).
    pub decoded: Decoded,
    /// Its Prometheus series labels (remote_write streams).
    pub labels: Option<Vec<(String, String)>>,
}

/// An archive read back.
pub struct Archive {
    /// The deployment's shard count it was written under.
    pub shard_count: u32,
    /// The shard.
    pub shard: u32,
    /// Its streams.
    pub streams: Vec<ArchivedStream>,
    /// The JSON of the open incidents' events (each an array of alerts).
    pub alerts: Vec<Vec<u8>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StreamHeader {
    #[serde(default)]
    labels: Option<Vec<(String, String)>>,
}

/// Writes an archive in pieces: [`Writer::start`], then any number of
/// [`Writer::stream`] and [`Writer::alerts`], then [`Writer::finish`]; each
/// returns the bytes to send next.
pub struct Writer {
    crc: crc32fast::Hasher,
    entries: u64,
}

impl Writer {
    /// The archive's first bytes, for `shard` of `shard_count`.
    pub fn start(shard_count: u32, shard: u32) -> (Writer, Vec<u8>) {
        let mut out = Vec::with_capacity(20);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&shard_count.to_le_bytes());
        out.extend_from_slice(&shard.to_le_bytes());
        let mut w = Writer {
            crc: crc32fast::Hasher::new(),
            entries: 0,
        };
        w.crc.update(&out);
        (w, out)
    }

    fn entry(&mut self, kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len() + 9);
        out.push(kind);
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(body);
        self.crc.update(&out);
        self.entries += 1;
        out
    }

    /// A stream's entry.
    ///
    /// # Errors
    /// If its weights cannot be encoded.
    pub fn stream(
        &mut self,
        id: &str,
        labels: Option<&[(String, String)]>,
        snap: &DetectorSnapshot,
    ) -> Result<Vec<u8>, StorageError> {
        let header = serde_json::to_vec(&StreamHeader {
            labels: labels.map(<[_]>::to_vec),
        })
        .map_err(|e| StorageError::Format(e.to_string()))?;
        let state = snapshot::encode_inline(id, 0, snap)?;
        let mut body = Vec::with_capacity(4 + header.len() + state.len());
        body.extend_from_slice(&(header.len() as u32).to_le_bytes());
        body.extend_from_slice(&header);
        body.extend_from_slice(&state);
        Ok(self.entry(STREAM, &body))
    }

    /// An entry of incident events (a JSON array of alerts).
    pub fn alerts(&mut self, json: &[u8]) -> Vec<u8> {
        self.entry(ALERTS, json)
    }

    /// The archive's last bytes.
    pub fn finish(mut self) -> Vec<u8> {
        let mut out = vec![END];
        out.extend_from_slice(&self.entries.to_le_bytes());
        self.crc.update(&out);
        out.extend_from_slice(&self.crc.finalize().to_le_bytes());
        out
    }
}

/// Reads and verifies a whole archive.
///
/// # Errors
/// If it is not an archive, is cut short, or a checksum or a stream's state is
/// wrong.
pub fn read(bytes: &[u8]) -> Result<Archive, StorageError> {
    let bad = |why: &str| StorageError::Format(format!("shard archive: {why}"));
    if bytes.len() < 8 + 12 + 13 || &bytes[..8] != MAGIC {
        return Err(bad("not a shard archive (wrong magic or too short)"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(bad("checksum mismatch: damaged or cut short"));
    }
    let mut r = Cursor::new(&body[8..]);
    let version = r.u32()?;
    if version != VERSION {
        return Err(bad(&format!("format version {version}, this build reads {VERSION}")));
    }
    let mut out = Archive {
        shard_count: r.u32()?,
        shard: r.u32()?,
        streams: Vec::new(),
        alerts: Vec::new(),
    };
    let mut entries = 0u64;
    loop {
        let kind = r.u8()?;
        if kind == END {
            if r.u64()? != entries || r.remaining() != 0 {
                return Err(bad("entry count does not match"));
            }
            return Ok(out);
        }
        let n = usize::try_from(r.u64()?).map_err(|_| bad("entry too long"))?;
        let entry = r.take(n)?;
        entries += 1;
        match kind {
            STREAM => out.streams.push(read_stream(entry)?),
            ALERTS => out.alerts.push(entry.to_vec()),
            k => return Err(bad(&format!("unknown entry kind {k}"))),
        }
    }
}

fn read_stream(entry: &[u8]) -> Result<ArchivedStream, StorageError> {
    let mut r = Cursor::new(entry);
    let m = r.u32()? as usize;
    let header: StreamHeader = serde_json::from_slice(r.take(m)?)
        .map_err(|e| StorageError::Format(format!("shard archive: stream header: {e}")))?;
    let state = r.take(r.remaining())?;
    Ok(ArchivedStream {
        decoded: snapshot::decode(state)?,
        labels: header.labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::{Detector, DetectorConfig};

    fn archive_of(detectors: &[(&str, &Detector)]) -> Vec<u8> {
        let (mut w, mut out) = Writer::start(16, 3);
        for (id, d) in detectors {
            let labels = vec![("__name__".to_string(), "up".to_string())];
            out.extend(w.stream(id, Some(&labels), &d.snapshot()).unwrap());
        }
        out.extend(w.alerts(b"[]"));
        out.extend(w.finish());
        out
    }

    #[test]
    fn streams_come_back_as_they_went_in() {
        let mut d = Detector::new(DetectorConfig::default()).unwrap();
        for t in 0..20 {
            d.update(t * 1_000_000, &[f64::from(t as i32 % 5)]).unwrap();
        }
        let bytes = archive_of(&[("a", &d), ("b{x=\"1\"}", &d)]);
        let a = read(&bytes).unwrap();
        assert_eq!((a.shard_count, a.shard, a.streams.len(), a.alerts.len()), (16, 3, 2, 1));
        assert_eq!(a.streams[1].decoded.stream, "b{x=\"1\"}");
        assert_eq!(a.streams[0].labels.as_ref().unwrap()[0].1, "up");
        let back = Detector::restore(a.streams.into_iter().next().unwrap().decoded.snapshot).unwrap();
        assert_eq!(back.readings_seen(), d.readings_seen());
        assert_eq!(back.last_timestamp(), d.last_timestamp());
    }

    #[test]
    fn damage_and_truncation_are_refused_without_panicking() {
        let d = Detector::new(DetectorConfig::default()).unwrap();
        let bytes = archive_of(&[("a", &d)]);
        for cut in [0, 7, 20, bytes.len() / 2, bytes.len() - 1] {
            assert!(read(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for at in [9, 21, bytes.len() / 2, bytes.len() - 6] {
            let mut b = bytes.clone();
            b[at] ^= 0x40;
            assert!(read(&b).is_err(), "flipped byte {at}");
        }
        assert!(read(b"ANOMSNAP and then some more bytes to be long").is_err());
    }
}
