//! What the registry writes to the write-ahead log, and how it reads it back.
//!
//! ```text
//! readings  0x01 | u8 history | u32 n | n × (u16 id len | id | i64 µs | u16 m | m × f64)
//! alerts    0x02 | JSON [Alert]
//! put       0x03 | JSON {"stream", "config"}
//! delete    0x04 | u16 id len | id
//! accept    0x05 | u16 id len | id
//! reset     0x06 | u16 id len | id
//! backfill  0x07 | as readings
//! adopt     0x08 | a state file in format 1 (state and weights, CRC'd)
//! ```
//! Little-endian. Readings are binary (they are nearly every byte of the log);
//! the rare records are JSON. Decoding checks every length and never panics.

use super::{Alert, Reading};
use crate::detector::DetectorConfig;
use crate::storage::bytes::{Cursor, CutShort};

/// One logged change.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// A batch of readings (`history`: taught as normal), logged before it is applied.
    Readings {
        /// Learnt as history.
        history: bool,
        /// The batch, in request order.
        readings: Vec<Reading>,
    },
    /// Incident events a batch raised, with their sequence numbers.
    Alerts(Vec<Alert>),
    /// A stream created or reconfigured.
    Put {
        /// The stream.
        stream: String,
        /// Its new config.
        config: Box<DetectorConfig>,
    },
    /// A stream deleted.
    Delete(String),
    /// A stream's recent behaviour accepted as normal.
    Accept(String),
    /// A stream started over under its config.
    Reset(String),
    /// A warming-up stream's past, fetched from Prometheus: it starts over
    /// having learnt these readings and then its own as history.
    Backfill(Vec<Reading>),
    /// A stream taken whole from a shard archive: its state file (format 1,
    /// state and weights) replaces whatever the node had under its id.
    Adopt(Vec<u8>),
}

#[derive(serde::Serialize, serde::Deserialize)]
struct PutBody {
    stream: String,
    config: DetectorConfig,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Stream ids are at most 256 bytes (checked before anything is logged).
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The bytes of a [`Record::Readings`] (without copying the batch).
pub fn encode_readings<'a, I>(history: bool, readings: I) -> Vec<u8>
where
    I: IntoIterator<Item = &'a Reading>,
    I::IntoIter: Clone,
{
    let readings = readings.into_iter();
    let (n, size) = readings.clone().fold((0usize, 0usize), |(n, b), r| {
        (n + 1, b + 12 + r.stream.len() + 8 * r.values.len())
    });
    let mut out = Vec::with_capacity(6 + size);
    out.push(1);
    out.push(u8::from(history));
    out.extend_from_slice(&(n as u32).to_le_bytes());
    for r in readings {
        put_str(&mut out, &r.stream);
        out.extend_from_slice(&r.timestamp.to_le_bytes());
        out.extend_from_slice(&(r.values.len() as u16).to_le_bytes());
        for v in &r.values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// The bytes of a [`Record::Backfill`]: a batch's layout under its own tag.
pub fn encode_backfill(readings: &[Reading]) -> Vec<u8> {
    let mut out = encode_readings(false, readings);
    out[0] = 7;
    out
}

impl Record {
    /// The record's bytes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Record::Readings { history, readings } => encode_readings(*history, readings),
            Record::Backfill(readings) => encode_backfill(readings),
            Record::Alerts(alerts) => {
                let mut out = vec![2];
                serde_json::to_writer(&mut out, alerts).expect("alerts serialise");
                out
            }
            Record::Put { stream, config } => {
                let mut out = vec![3];
                let body = PutBody {
                    stream: stream.clone(),
                    config: (**config).clone(),
                };
                serde_json::to_writer(&mut out, &body).expect("config serialises");
                out
            }
            Record::Adopt(state) => {
                let mut out = Vec::with_capacity(1 + state.len());
                out.push(8);
                out.extend_from_slice(state);
                out
            }
            Record::Delete(s) | Record::Accept(s) | Record::Reset(s) => {
                let tag = match self {
                    Record::Delete(_) => 4,
                    Record::Accept(_) => 5,
                    _ => 6,
                };
                let mut out = vec![tag];
                put_str(&mut out, s);
                out
            }
        }
    }

    /// Reads a record back.
    ///
    /// # Errors
    /// If the bytes are not a record this build wrote.
    pub fn decode(bytes: &[u8]) -> Result<Record, String> {
        let (&tag, body) = bytes.split_first().ok_or("empty record")?;
        let mut r = Cursor::new(body);
        let record = match tag {
            1 | 7 => {
                let history = r.u8().map_err(cut_short)? != 0;
                let n = r.u32().map_err(cut_short)? as usize;
                // Each reading takes at least 12 bytes: bound the allocation by the input.
                let mut readings = Vec::with_capacity(n.min(body.len() / 12));
                for _ in 0..n {
                    let stream = read_str(&mut r)?;
                    let timestamp = r.u64().map_err(cut_short)? as i64;
                    let m = r.u16().map_err(cut_short)? as usize;
                    let raw = r.take(8 * m).map_err(cut_short)?;
                    let values = raw
                        .chunks_exact(8)
                        .map(|c| f64::from_le_bytes(c.try_into().expect("8")))
                        .collect();
                    readings.push(Reading {
                        stream,
                        timestamp,
                        values,
                    });
                }
                if tag == 7 {
                    Record::Backfill(readings)
                } else {
                    Record::Readings { history, readings }
                }
            }
            2 => {
                return serde_json::from_slice(body)
                    .map(Record::Alerts)
                    .map_err(|e| e.to_string());
            }
            3 => {
                let b: PutBody = serde_json::from_slice(body).map_err(|e| e.to_string())?;
                return Ok(Record::Put {
                    stream: b.stream,
                    config: Box::new(b.config),
                });
            }
            4 => Record::Delete(read_str(&mut r)?),
            5 => Record::Accept(read_str(&mut r)?),
            6 => Record::Reset(read_str(&mut r)?),
            8 => return Ok(Record::Adopt(body.to_vec())),
            t => return Err(format!("unknown record type {t}")),
        };
        if r.remaining() != 0 {
            return Err("trailing bytes after the record".into());
        }
        Ok(record)
    }
}

/// A length-prefixed (u16) UTF-8 string.
fn read_str(r: &mut Cursor<'_>) -> Result<String, String> {
    let n = r.u16().map_err(cut_short)? as usize;
    String::from_utf8(r.take(n).map_err(cut_short)?.to_vec()).map_err(|_| "stream id is not UTF-8".to_string())
}

fn cut_short(_: CutShort) -> String {
    "record cut short".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Record> {
        vec![
            Record::Readings {
                history: true,
                readings: vec![
                    Reading {
                        stream: "cpu/ü".into(),
                        timestamp: -5,
                        values: vec![1.5, -0.0, 1e300],
                    },
                    Reading {
                        stream: "b".into(),
                        timestamp: i64::MAX,
                        values: vec![2.0],
                    },
                ],
            },
            Record::Put {
                stream: "s".into(),
                config: Box::default(),
            },
            Record::Delete("gone".into()),
            Record::Accept("ok".into()),
            Record::Reset("again".into()),
            Record::Backfill(vec![Reading {
                stream: "up{job=\"a\"}".into(),
                timestamp: 1_700_000_000_000_000,
                values: vec![0.25],
            }]),
            Record::Alerts(vec![]),
        ]
    }

    #[test]
    fn every_record_round_trips() {
        for r in samples() {
            assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        }
        // An adopted state is opaque here (its own checksum guards it).
        let adopt = Record::Adopt(b"ANOMSNAP...".to_vec());
        assert_eq!(Record::decode(&adopt.encode()).unwrap(), adopt);
    }

    #[test]
    fn every_cut_and_extension_is_an_error_not_a_panic() {
        for r in samples() {
            let bytes = r.encode();
            for cut in 0..bytes.len() {
                let _ = Record::decode(&bytes[..cut]);
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(Record::decode(&longer).is_err(), "{r:?} with a trailing byte");
        }
        assert!(
            Record::decode(&[1, 0, 255, 255, 255, 255]).is_err(),
            "a huge count is refused"
        );
    }
}
