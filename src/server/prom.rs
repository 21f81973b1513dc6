//! The Prometheus side of the service: the remote_write receiver
//! (`POST /api/v1/write`, protocol 1.0: snappy block-compressed protobuf) and the
//! scores exposition (`GET /metrics/scores`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use prost::Message as _;

use super::ApiError;
use crate::protocol::prompb;
use crate::registry::{MAX_STREAM_ID_BYTES, Reading, StreamMeta};

/// Largest decompressed remote_write body.
pub const MAX_DECOMPRESSED: usize = 64 << 20;

/// Prometheus' staleness marker: a NaN with this bit pattern ends a series.
const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

/// Labels of one series, sorted by name (`__name__` included).
pub type Labels = Arc<[(String, String)]>;

/// A decoded remote_write request: readings (each series' samples in time order)
/// and each stream's labels.
#[derive(Debug, Default)]
pub struct RemoteWrite {
    /// One reading per sample, grouped by series, oldest first within one.
    pub readings: Vec<Reading>,
    /// Each stream's labels.
    pub labels: HashMap<String, Labels>,
    /// Staleness markers skipped.
    pub stale: usize,
    /// Other non-finite samples skipped.
    pub skipped: usize,
    /// Series whose newest sample is a staleness marker: Prometheus ended them.
    pub ended: Vec<String>,
}

fn escape(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A series' stream id: its canonical label set, `name{a="x",b="y"}` (labels
/// sorted by name, values escaped as in the text format). An id longer than
/// stream ids may be keeps its first 200 bytes and ends in a hash of the whole.
pub fn stream_id(labels: &[(String, String)]) -> String {
    let name = labels
        .iter()
        .find(|(k, _)| k == "__name__")
        .map_or("", |(_, v)| v.as_str());
    let mut id = String::with_capacity(64);
    id.push_str(name);
    id.push('{');
    let mut first = true;
    for (k, v) in labels.iter().filter(|(k, _)| k != "__name__") {
        if !first {
            id.push(',');
        }
        first = false;
        id.push_str(k);
        id.push_str("=\"");
        escape(v, &mut id);
        id.push('"');
    }
    id.push('}');
    if id.len() <= MAX_STREAM_ID_BYTES && !id.chars().any(char::is_control) {
        return id;
    }
    let hash = crate::storage::fnv1a(id.as_bytes(), crate::storage::FNV_OFFSET);
    let mut cut = 200;
    while !id.is_char_boundary(cut) {
        cut -= 1;
    }
    let head: String = id[..cut].chars().filter(|c| !c.is_control()).collect();
    format!("{head}…#{hash:016x}")
}

/// Decodes a remote_write body: snappy block format, then a protobuf
/// `WriteRequest`. At most `max_samples` samples. Any malformed input is a 400
/// (Prometheus drops what it cannot send, it does not retry a 4xx).
pub fn decode(body: &[u8], max_samples: usize) -> Result<RemoteWrite, ApiError> {
    let len = snap::raw::decompress_len(body)
        .map_err(|e| ApiError::bad_request("malformed_snappy", format!("not a snappy block: {e}")))?;
    if len > MAX_DECOMPRESSED {
        return Err(ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("decompressed body of {len} bytes exceeds {MAX_DECOMPRESSED}"),
        ));
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| ApiError::bad_request("malformed_snappy", format!("not a snappy block: {e}")))?;
    let req = prompb::WriteRequest::decode(raw.as_slice())
        .map_err(|e| ApiError::bad_request("malformed_protobuf", format!("not a WriteRequest: {e}")))?;
    let total: usize = req.timeseries.iter().map(|t| t.samples.len()).sum();
    if total > max_samples {
        return Err(ApiError::bad_request(
            "too_many_readings",
            format!("{total} samples in one request, at most {max_samples}"),
        ));
    }
    let mut out = RemoteWrite {
        readings: Vec::with_capacity(total),
        ..Default::default()
    };
    for ts in req.timeseries {
        let mut labels: Vec<(String, String)> = ts.labels.into_iter().map(|l| (l.name, l.value)).collect();
        // Labels starting with `__` are Prometheus' own (a relabeling's
        // `__tmp_...` that no `labeldrop` removed): not part of the series.
        labels.retain(|(k, _)| k == "__name__" || !k.starts_with("__"));
        labels.sort();
        labels.dedup_by(|a, b| a.0 == b.0);
        let id = stream_id(&labels);
        let mut samples = ts.samples;
        samples.sort_by_key(|s| s.timestamp);
        if samples.last().is_some_and(|s| s.value.to_bits() == STALE_NAN) {
            out.ended.push(id.clone());
        }
        let before = out.readings.len();
        for s in samples {
            if !s.value.is_finite() {
                // Staleness markers (and any other NaN or infinity) carry no reading.
                if s.value.to_bits() == STALE_NAN {
                    out.stale += 1;
                } else {
                    out.skipped += 1;
                }
                continue;
            }
            let Some(timestamp) = s.timestamp.checked_mul(1000) else {
                return Err(ApiError::bad_request(
                    "invalid_timestamp",
                    format!("series {id}: timestamp {} ms", s.timestamp),
                ));
            };
            out.readings.push(Reading {
                stream: id.clone(),
                timestamp,
                values: vec![s.value],
            });
        }
        if out.readings.len() > before {
            out.labels.insert(id, labels.into());
        }
    }
    Ok(out)
}

/// Encodes readings of univariate streams as a remote_write body (snappy,
/// protobuf `WriteRequest`), each stream a series with its `labels`: what
/// [`decode`] reads back.
pub fn encode(readings: &[Reading], labels: &HashMap<String, Labels>) -> Vec<u8> {
    let mut series: HashMap<&str, prompb::TimeSeries> = HashMap::new();
    for r in readings {
        let ts = series.entry(r.stream.as_str()).or_insert_with(|| prompb::TimeSeries {
            labels: labels
                .get(&r.stream)
                .map(|l| {
                    l.iter()
                        .map(|(name, value)| prompb::Label {
                            name: name.clone(),
                            value: value.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            samples: Vec::new(),
        });
        ts.samples.push(prompb::Sample {
            value: r.values[0],
            timestamp: r.timestamp.div_euclid(1000),
        });
    }
    let req = prompb::WriteRequest {
        timeseries: series.into_values().collect(),
    };
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .expect("a snappy block of any size below 4 GiB")
}

/// The scores exposition: per stream the score, the state, the expected and the
/// actual value, labelled with the series' own labels (its name as `for`) or,
/// for streams fed through the JSON API, `stream`; in a sharded deployment also
/// `anomalyd_shard`, the stream's shard.
pub fn render_scores(streams: &[(String, StreamMeta)], shards: Option<&crate::shard::ShardFunction>) -> String {
    let mut out = String::with_capacity(128 + streams.len() * 400);
    let shard_of: Vec<Option<u32>> = streams.iter().map(|(id, _)| shards.map(|f| f.of_id(id))).collect();
    let families = [
        (
            "anomalyd_stream_score",
            "Anomaly score of the newest reading (0.5 at the stream's calibrated limit).",
        ),
        (
            "anomalyd_stream_anomaly",
            "Anomaly state of the newest reading (1 while a fault lasts).",
        ),
        (
            "anomalyd_stream_expected",
            "What the detector expected for the newest reading.",
        ),
        ("anomalyd_stream_value", "The newest reading's value."),
        (
            "anomalyd_stream_readings_needed",
            "Normal readings the stream still needs before it judges (0 once it does; no score until then).",
        ),
    ];
    for (family, help) in families {
        let _ = writeln!(out, "# HELP {family} {help}");
        let _ = writeln!(out, "# TYPE {family} gauge");
        for ((id, m), shard) in streams.iter().zip(&shard_of) {
            let per_feature: Vec<f64> = match family {
                // Not judged yet: no sample, rather than a 0 that reads as normal.
                "anomalyd_stream_score" => m.score.into_iter().collect(),
                "anomalyd_stream_readings_needed" => vec![m.readings_needed as f64],
                "anomalyd_stream_anomaly" => vec![f64::from(u8::from(m.anomaly))],
                "anomalyd_stream_expected" => m.expected.clone(),
                _ => m.values.clone(),
            };
            let multi = per_feature.len() > 1;
            for (f, v) in per_feature.iter().enumerate() {
                out.push_str(family);
                out.push('{');
                write_labels(&mut out, id, m);
                if let Some(shard) = shard {
                    let _ = write!(out, ",anomalyd_shard=\"{shard}\"");
                }
                if multi {
                    let _ = write!(out, ",feature=\"{f}\"");
                }
                let _ = writeln!(out, "}} {}", fmt_value(*v));
            }
        }
    }
    out
}

fn write_labels(out: &mut String, id: &str, m: &StreamMeta) {
    match &m.labels {
        Some(labels) => {
            let mut first = true;
            for (k, v) in labels.iter() {
                if !first {
                    out.push(',');
                }
                first = false;
                out.push_str(if k == "__name__" { "for" } else { k });
                out.push_str("=\"");
                escape(v, out);
                out.push('"');
            }
        }
        None => {
            out.push_str("stream=\"");
            escape(id, out);
            out.push('"');
        }
    }
}

fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Series<'a> = (&'a [(&'a str, &'a str)], &'a [(f64, i64)]);

    fn body(series: &[Series]) -> Vec<u8> {
        let req = prompb::WriteRequest {
            timeseries: series
                .iter()
                .map(|(labels, samples)| prompb::TimeSeries {
                    labels: labels
                        .iter()
                        .map(|(n, v)| prompb::Label {
                            name: n.to_string(),
                            value: v.to_string(),
                        })
                        .collect(),
                    samples: samples
                        .iter()
                        .map(|&(value, timestamp)| prompb::Sample { value, timestamp })
                        .collect(),
                })
                .collect(),
        };
        snap::raw::Encoder::new().compress_vec(&req.encode_to_vec()).unwrap()
    }

    #[test]
    fn series_become_streams_named_by_their_labels() {
        let b = body(&[
            (
                &[
                    ("job", "node"),
                    ("__name__", "node_load1"),
                    ("instance", "a:9100"),
                    ("__tmp_anomalyd_shard", "3"),
                ],
                &[(2.0, 2000), (1.0, 1000), (f64::from_bits(STALE_NAN), 3000)],
            ),
            (&[("__name__", "up"), ("q", "say \"hi\"\n")], &[(1.0, 1000)]),
        ]);
        let w = decode(&b, 100).unwrap();
        let id = r#"node_load1{instance="a:9100",job="node"}"#;
        assert_eq!(w.readings.len(), 3);
        assert_eq!(
            (w.readings[0].stream.as_str(), w.readings[0].timestamp),
            (id, 1_000_000)
        );
        assert_eq!(w.readings[1].values, vec![2.0], "samples in time order");
        assert_eq!((w.stale, w.skipped), (1, 0), "the staleness marker");
        assert_eq!(w.readings[2].stream, r#"up{q="say \"hi\"\n"}"#);
        assert_eq!(w.labels[id][0], ("__name__".to_string(), "node_load1".to_string()));
    }

    #[test]
    fn what_encode_writes_decode_reads_back() {
        let w = decode(
            &body(&[(&[("__name__", "up"), ("job", "a")], &[(1.5, 1000), (2.5, 2000)])]),
            100,
        )
        .unwrap();
        let back = decode(&encode(&w.readings, &w.labels), 100).unwrap();
        assert_eq!(back.readings, w.readings);
        assert_eq!(back.labels, w.labels);
    }

    #[test]
    fn long_label_sets_get_a_bounded_distinct_id() {
        let a: Vec<(String, String)> = vec![("__name__".into(), "m".into()), ("x".into(), "é".repeat(200))];
        let mut b = a.clone();
        b[1].1.push('!');
        let (ia, ib) = (stream_id(&a), stream_id(&b));
        assert!(ia.len() <= MAX_STREAM_ID_BYTES && ib.len() <= MAX_STREAM_ID_BYTES);
        assert_ne!(ia, ib);
        crate::registry::validate_stream_id(&ia).unwrap();
    }

    #[test]
    fn malformed_bodies_are_400s() {
        for bad in [
            &b"not snappy at all"[..],
            &snap::raw::Encoder::new().compress_vec(b"\xff\xff\xff").unwrap(),
        ] {
            assert_eq!(decode(bad, 100).unwrap_err().status, 400);
        }
        let many = body(&[(&[("__name__", "m")], &[(1.0, 1); 11])]);
        assert_eq!(decode(&many, 10).unwrap_err().code, "too_many_readings");
    }

    #[test]
    fn scores_carry_the_series_labels() {
        let meta = StreamMeta {
            labels: Some(
                vec![
                    ("__name__".to_string(), "node_load1".to_string()),
                    ("job".to_string(), "n".to_string()),
                ]
                .into(),
            ),
            values: vec![1.5],
            score: Some(0.25),
            readings_needed: 0,
            anomaly: true,
            expected: vec![1.25],
            scored: true,
        };
        let plain = StreamMeta {
            labels: None,
            values: vec![1.0, 2.0],
            expected: vec![1.0, 2.5],
            scored: true,
            ..Default::default()
        };
        let text = render_scores(&[("x".into(), meta), ("cpu \"a\"".into(), plain)], None);
        assert!(
            text.contains("anomalyd_stream_score{for=\"node_load1\",job=\"n\"} 0.25\n"),
            "{text}"
        );
        assert!(text.contains("anomalyd_stream_anomaly{for=\"node_load1\",job=\"n\"} 1\n"));
        assert!(
            text.contains("anomalyd_stream_expected{stream=\"cpu \\\"a\\\"\",feature=\"1\"} 2.5\n"),
            "{text}"
        );
    }

    #[test]
    fn a_stream_warming_up_has_no_score_and_says_how_many_readings_it_needs() {
        let warming = StreamMeta {
            values: vec![3.0],
            expected: vec![3.0],
            readings_needed: 40,
            scored: true,
            ..Default::default()
        };
        let text = render_scores(&[("new".into(), warming)], None);
        assert!(!text.contains("anomalyd_stream_score{"), "{text}");
        assert!(
            text.contains("anomalyd_stream_readings_needed{stream=\"new\"} 40\n"),
            "{text}"
        );
    }
}
