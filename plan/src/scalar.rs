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

/// A duration as Kaniko's and buildah's `--cache-ttl` read it (Go's
/// `time.ParseDuration`: `24h`, `1h30m`, `1.5h`, `90s`), checked when the
/// file is read: a value the builder refuses would otherwise fail the build
/// inside the agent, after the context was uploaded.
pub fn go_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    // Checked inside the visitor, while the scalar is the parser's current
    // event: the error then points at the value's own line.
    struct Text;
    impl Visitor<'_> for Text {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration such as 24h")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            if is_go_duration(v) {
                Ok(v.to_string())
            } else {
                Err(E::custom(format!(
                    "`{v}` is not a duration: write a number and a unit, as in 24h, 1h30m, 90m or 1.5h (units ns, us, ms, s, m, h)"
                )))
            }
        }
    }
    struct Maybe;
    impl<'de> Visitor<'de> for Maybe {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration such as 24h")
        }
        fn visit_none<E: de::Error>(self) -> Result<Option<String>, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Option<String>, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<String>, D::Error> {
            d.deserialize_str(Text).map(Some)
        }
    }
    d.deserialize_option(Maybe)
}

fn is_go_duration(text: &str) -> bool {
    let rest = text.strip_prefix(['+', '-']).unwrap_or(text);
    if rest == "0" {
        return true;
    }
    let mut rest = rest;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let number = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (digits, tail) = rest.split_at(number);
        if digits.is_empty() || digits == "." || digits.matches('.').count() > 1 {
            return false;
        }
        let Some(unit) = ["ns", "us", "µs", "μs", "ms", "s", "m", "h"]
            .into_iter()
            .find(|u| tail.starts_with(u) && !(*u == "m" && tail.starts_with("ms")))
        else {
            return false;
        };
        rest = &tail[unit.len()..];
    }
    true
}

#[cfg(test)]
mod duration_tests {
    use super::is_go_duration;

    #[test]
    fn durations_are_read_as_go_reads_them() {
        for ok in [
            "24h", "1h30m", "1.5h", "90s", "300ms", "0", "2h45m10s", "10us",
        ] {
            assert!(is_go_duration(ok), "{ok}");
        }
        for bad in [
            "one day please",
            "24",
            "h",
            "1d",
            "",
            "1..5h",
            "1h 30m",
            "24 h",
        ] {
            assert!(!is_go_duration(bad), "{bad}");
        }
    }
}
