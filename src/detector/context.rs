//! Context features: columns the model reads but the state never judges.
//!
//! Real streams carry columns that *explain* the others rather than being judged
//! beside them: a command was sent, a mode switched, a deploy began, an on/off
//! state. A flip of such a column is not a fault; judged like a sensor, each flip
//! is an incident (SMAP with its command flags as features: 3,023 false stretches).
//!
//! A feature is context when the config lists it, by index or by the name the
//! config's `features` gives it (`context = [1, "mode"]`), or,
//! with `context_auto` (the default) on a stream of two or more features, when it
//! is evidently an indicator: it has shown at most two distinct values, and either
//! both (an on/off column) or a single 0 or 1 (a flag that has not flipped yet). A
//! third distinct value makes it a measurement for good. If every feature would be
//! context, the flags among them are (columns of 0s and 1s: beside a flag, a
//! two-valued sensor such as a square wave between −1 and 1 is the one judged;
//! SMAP with its command flags: the flags' runs opened five false stretches on
//! seed 0), and if every feature is a flag, only the listed ones are (a stream
//! of indicators alone is judged).
//!
//! Context features are inputs of the model (it reconstructs the others given
//! them) and are buffered and learnt like any feature, but no statistic of theirs
//! enters the state, the range rule, the stuck check or the contributions, so they
//! are never flagged and never named as a cause.

use serde::{Deserialize, Deserializer, Serialize, de};

/// A feature named in a config: by its index, or by its name in the config's
/// `features` (JSON and TOML: `1` or `"mode"`; anything else is refused by
/// saying so).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum FeatureRef {
    /// Its position in a reading's values, from 0.
    Index(usize),
    /// Its name in `features`.
    Name(String),
}

impl<'de> Deserialize<'de> for FeatureRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = FeatureRef;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a feature's index (0, 1, ...) or its name in `features`")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<FeatureRef, E> {
                usize::try_from(v)
                    .map(FeatureRef::Index)
                    .map_err(|_| E::custom(format!("feature index {v} is out of range")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<FeatureRef, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("a feature index is 0 or more, got {v}")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FeatureRef, E> {
                Ok(FeatureRef::Name(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl FeatureRef {
    /// Its index among features named `names` (in order), if it has one.
    pub fn index_in(&self, names: &[String]) -> Option<usize> {
        match self {
            FeatureRef::Index(j) => Some(*j),
            FeatureRef::Name(n) => names.iter().position(|m| m == n),
        }
    }
}

impl std::fmt::Display for FeatureRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FeatureRef::Index(j) => write!(f, "{j}"),
            FeatureRef::Name(n) => write!(f, "{n:?}"),
        }
    }
}

impl From<usize> for FeatureRef {
    fn from(j: usize) -> Self {
        FeatureRef::Index(j)
    }
}

impl From<&str> for FeatureRef {
    fn from(name: &str) -> Self {
        FeatureRef::Name(name.to_string())
    }
}

/// Longest feature name, in bytes.
pub const MAX_NAME: usize = 256;

/// The indices of `refs` among features named `names` (in order), or why one
/// cannot be found.
pub fn resolve(refs: &[FeatureRef], names: &[String]) -> Result<Vec<usize>, String> {
    refs.iter()
        .map(|r| {
            r.index_in(names).ok_or_else(|| match names {
                [] => format!("context names feature {r}, but `features` gives no names"),
                _ => format!("context names feature {r}, which is not one of `features` {names:?}"),
            })
        })
        .collect()
}

/// Why the feature names `names` cannot be used, if they cannot: each 1 to
/// [`MAX_NAME`] bytes, no two alike, at most `limit` of them.
pub fn check_names(names: &[String], limit: usize) -> Result<(), String> {
    if names.len() > limit {
        return Err(format!("features names {} features, at most {limit}", names.len()));
    }
    if let Some(n) = names.iter().find(|n| n.is_empty() || n.len() > MAX_NAME) {
        return Err(format!(
            "features: a name must be 1 to {MAX_NAME} bytes, got {} bytes",
            n.len()
        ));
    }
    if let Some((i, n)) = names.iter().enumerate().find(|(i, n)| names[..*i].contains(n)) {
        return Err(format!(
            "features: {n:?} names features {} and {i}",
            names.iter().position(|m| m == n).unwrap_or(0)
        ));
    }
    Ok(())
}

/// The distinct values a feature has shown, up to two.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Levels {
    seen: [f64; 2],
    /// Distinct values seen: 0, 1, 2, or 3 for "more than two".
    n: u8,
}

impl Levels {
    /// Notes one value.
    pub fn observe(&mut self, x: f64) {
        let n = usize::from(self.n);
        if n > 2 || self.seen[..n].contains(&x) {
            return;
        }
        if n < 2 {
            self.seen[n] = x;
        }
        self.n += 1;
    }

    /// Whether the feature looks like an indicator (see the module docs).
    pub fn is_indicator(&self) -> bool {
        match self.n {
            1 => self.seen[0] == 0.0 || self.seen[0] == 1.0,
            2 => true,
            _ => false,
        }
    }

    /// Whether every value the feature has shown is 0 or 1 (a flag).
    pub fn is_flag(&self) -> bool {
        let n = usize::from(self.n);
        (1..=2).contains(&n) && self.seen[..n].iter().all(|&x| x == 0.0 || x == 1.0)
    }
}

/// Which of `d` features are context: `listed` (indices; out-of-range ones are
/// ignored) and, when `auto` and `d ≥ 2`, the indicators among `levels`, or the
/// flags among them when every feature is an indicator. `None` when none is, or
/// when every one would be and the list alone covers fewer.
pub fn mask(d: usize, listed: impl IntoIterator<Item = usize>, auto: bool, levels: &[Levels]) -> Option<Vec<bool>> {
    let mut listed_mask = vec![false; d];
    for j in listed.into_iter().filter(|&j| j < d) {
        listed_mask[j] = true;
    }
    let with = |is: fn(&Levels) -> bool| -> Vec<bool> {
        (0..d)
            .map(|j| listed_mask[j] || (auto && d >= 2 && levels.get(j).is_some_and(is)))
            .collect()
    };
    let every = |m: &[bool]| m.iter().all(|&m| m);
    let mut mask = with(Levels::is_indicator);
    if every(&mask) {
        mask = with(Levels::is_flag);
    }
    if every(&mask) {
        mask = listed_mask;
    }
    (mask.iter().any(|&m| m) && !every(&mask)).then_some(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn levels(values: &[f64]) -> Levels {
        let mut l = Levels::default();
        values.iter().for_each(|&x| l.observe(x));
        l
    }

    #[test]
    fn flags_and_on_off_columns_are_indicators_and_measurements_are_not() {
        assert!(levels(&[0.0, 0.0, 0.0]).is_indicator());
        assert!(levels(&[1.0]).is_indicator());
        assert!(levels(&[0.0, 1.0, 0.0, 0.0]).is_indicator());
        assert!(levels(&[20.0, 80.0, 20.0]).is_indicator());
        assert!(
            !levels(&[50.0, 50.0]).is_indicator(),
            "a constant reading is a measurement"
        );
        assert!(!levels(&[0.0, 1.0, 0.5]).is_indicator());
        assert!(!levels(&[0.0, 1.0, 0.5, 0.0, 1.0]).is_indicator(), "for good");
        assert!(!levels(&[]).is_indicator());
    }

    #[test]
    fn the_mask_takes_the_list_and_the_indicators_but_never_every_feature() {
        let flag = levels(&[0.0, 1.0]);
        let sensor = levels(&[0.1, 0.2, 0.3]);
        assert_eq!(mask(2, [], true, &[sensor, flag]), Some(vec![false, true]));
        assert_eq!(mask(2, [], false, &[sensor, flag]), None);
        assert_eq!(mask(3, [0, 7], false, &[sensor; 3]), Some(vec![true, false, false]));
        // Among indicators alone the flags are context; flags alone are judged;
        // a univariate stream is always judged.
        let wave = levels(&[-1.0, 1.0, -1.0]);
        assert_eq!(mask(2, [], true, &[wave, flag]), Some(vec![false, true]));
        assert_eq!(
            mask(3, [], true, &[wave, flag, levels(&[0.0])]),
            Some(vec![false, true, true])
        );
        assert_eq!(mask(2, [], true, &[levels(&[1.0]), flag]), None);
        assert_eq!(mask(2, [], true, &[flag, flag]), None);
        assert_eq!(mask(2, [1], true, &[flag, flag]), Some(vec![false, true]));
        assert_eq!(mask(1, [], true, &[flag]), None);
        assert_eq!(mask(2, [0, 1], false, &[sensor; 2]), None);
    }

    #[test]
    fn named_features_give_the_width_a_context_must_fit_before_any_reading() {
        let config = |features: &[&str], context: Vec<FeatureRef>| crate::detector::DetectorConfig {
            features: features.iter().map(|s| s.to_string()).collect(),
            context,
            ..Default::default()
        };
        let all = config(&["x"], vec!["x".into()]).validate().unwrap_err().0;
        assert!(all.contains("every feature"), "{all}");
        let beyond = config(&["a", "b"], vec![5.into()]).validate().unwrap_err().0;
        assert!(beyond.contains("numbered 0..2"), "{beyond}");
        config(&["a", "b"], vec!["b".into()]).validate().unwrap();
        // Unnamed, the width is not known until a reading comes.
        config(&[], vec![0.into()]).validate().unwrap();
    }

    #[test]
    fn a_feature_is_named_by_its_index_or_by_its_name() {
        let names: Vec<String> = ["cpu", "mode"].map(String::from).to_vec();
        let refs: Vec<FeatureRef> = serde_json::from_str(r#"[0, "mode"]"#).unwrap();
        assert_eq!(refs, vec![0.into(), "mode".into()]);
        for (bad, says) in [
            ("[true]", "a feature's index (0, 1, ...) or its name"),
            ("[1.5]", "a feature's index (0, 1, ...) or its name"),
            ("[[0]]", "a feature's index (0, 1, ...) or its name"),
            ("[-1]", "a feature index is 0 or more, got -1"),
        ] {
            let err = serde_json::from_str::<Vec<FeatureRef>>(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
        assert_eq!(resolve(&refs, &names), Ok(vec![0, 1]));
        let unknown = resolve(&["deploy".into()], &names).unwrap_err();
        assert!(unknown.contains("\"deploy\"") && unknown.contains("cpu"), "{unknown}");
        let unnamed = resolve(&["mode".into()], &[]).unwrap_err();
        assert!(unnamed.contains("gives no names"), "{unnamed}");
        assert_eq!(check_names(&names, 2), Ok(()));
        assert!(check_names(&names, 1).is_err());
        let twice: Vec<String> = ["a", "b", "a"].map(String::from).to_vec();
        assert_eq!(
            check_names(&twice, 8),
            Err("features: \"a\" names features 0 and 2".into())
        );
        assert!(check_names(&[String::new()], 8).is_err());
        assert!(check_names(&["x".repeat(MAX_NAME + 1)], 8).is_err());
    }
}
