//! Serde for long runs of `f64` in snapshots: the little-endian bytes in base64
//! (10.7 characters a value instead of ~19 as JSON numbers, and exact by
//! construction). Reading also takes a plain JSON array, as earlier builds wrote.
//!
//! Use with `#[serde(with = "packed")]` on a `Vec<f64>` or `VecDeque<f64>`.

use std::collections::VecDeque;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};

/// The values a field holds, as a slice pair (a `VecDeque`'s two halves).
pub trait Values: Sized {
    /// The values, in order.
    fn halves(&self) -> (&[f64], &[f64]);
    /// Built from values in order.
    fn from_vec(v: Vec<f64>) -> Self;
}

impl Values for Vec<f64> {
    fn halves(&self) -> (&[f64], &[f64]) {
        (self, &[])
    }
    fn from_vec(v: Vec<f64>) -> Self {
        v
    }
}

impl Values for VecDeque<f64> {
    fn halves(&self) -> (&[f64], &[f64]) {
        self.as_slices()
    }
    fn from_vec(v: Vec<f64>) -> Self {
        v.into()
    }
}

/// Writes the values as one base64 string of their little-endian bytes.
pub fn serialize<T: Values, S: Serializer>(values: &T, s: S) -> Result<S::Ok, S::Error> {
    let (a, b) = values.halves();
    let mut bytes = Vec::with_capacity((a.len() + b.len()) * 8);
    for v in a.iter().chain(b) {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    s.serialize_str(&STANDARD.encode(bytes))
}

/// Reads a base64 string (or a JSON array of numbers).
pub fn deserialize<'de, T: Values, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<f64>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("base64 of little-endian f64s, or an array of numbers")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Vec<f64>, E> {
            let bytes = STANDARD.decode(s).map_err(E::custom)?;
            if bytes.len() % 8 != 0 {
                return Err(E::custom(format!(
                    "{} bytes is not a whole number of f64s",
                    bytes.len()
                )));
            }
            Ok(bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<f64>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
            while let Some(v) = seq.next_element::<f64>()? {
                out.push(v);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V).map(T::from_vec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct S {
        #[serde(with = "super")]
        v: Vec<f64>,
        #[serde(with = "super")]
        q: VecDeque<f64>,
    }

    #[test]
    fn values_round_trip_exactly_and_old_arrays_still_read() {
        let mut q: VecDeque<f64> = (0..5).map(f64::from).collect();
        q.rotate_left(2); // two halves
        let s = S {
            v: vec![0.1, -0.0, 1e300, f64::MIN_POSITIVE, 3.0],
            q,
        };
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"v\":\""), "{json}");
        let back: S = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.v[1].to_bits(), (-0.0f64).to_bits(), "bit-exact");
        let old: S = serde_json::from_str(r#"{"v":[1.5,2],"q":[]}"#).unwrap();
        assert_eq!(old.v, vec![1.5, 2.0]);
        assert!(serde_json::from_str::<S>(r#"{"v":"AAAA","q":[]}"#).is_err(), "3 bytes");
    }
}
