//! YAML scalars read as text.
//!
//! `FOO: 1` and `FOO: true` are numbers and booleans to YAML, but environment
//! variables and build args are strings to every builder. Users should not
//! have to quote them, so maps of such values accept any scalar.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// Any YAML scalar, as the string it would be in a shell.
pub struct Scalar(pub String);

struct ScalarVisitor;

impl Visitor<'_> for ScalarVisitor {
    type Value = Scalar;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, number or boolean")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar(v))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar(v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar(v.to_string()))
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

/// A scalar, or nothing (`KEY:` with no value, or `- KEY` in list form).
struct MaybeScalar(Option<String>);

impl<'de> Deserialize<'de> for MaybeScalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Option::<Scalar>::deserialize(d).map(|o| MaybeScalar(o.map(|s| s.0)))
    }
}

/// A map whose values are text: `env`, `build-args`, `labels`.
pub fn string_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    let map: Option<BTreeMap<String, MaybeScalar>> = Option::deserialize(d)?;
    Ok(map.map(|m| {
        m.into_iter()
            .map(|(k, v)| (k, v.0.unwrap_or_default()))
            .collect()
    }))
}

/// Compose's two spellings of a variable list: a map (`KEY: value`) or a
/// list (`- KEY=value`). A variable with no value (`KEY:` or `- KEY`) is
/// `None`: compose takes it from the environment, or leaves it out.
pub fn compose_vars<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, Option<String>>>, D::Error> {
    struct VarsVisitor;
    impl<'de> Visitor<'de> for VarsVisitor {
        type Value = BTreeMap<String, Option<String>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of KEY: value or a list of KEY=value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = m.next_entry::<String, MaybeScalar>()? {
                out.insert(k, v.0);
            }
            Ok(out)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(item) = s.next_element::<Scalar>()? {
                match item.0.split_once('=') {
                    Some((k, v)) => out.insert(k.to_string(), Some(v.to_string())),
                    None => out.insert(item.0, None),
                };
            }
            Ok(out)
        }
    }
    struct OptVisitor;
    impl<'de> Visitor<'de> for OptVisitor {
        type Value = Option<BTreeMap<String, Option<String>>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of KEY: value or a list of KEY=value")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(VarsVisitor).map(Some)
        }
    }
    d.deserialize_option(OptVisitor)
}
