//! JSON objects, never arrays, where a struct crosses the wire.
//!
//! serde's derived structs also read a sequence, field by field in order,
//! so `[1, "x"]` would pass for `{"seq": 1, "line": "x"}`. The API
//! description (controller/openapi.yaml) says object, and schemathesis
//! holds the controller to it: every struct a client or an agent sends is
//! read through [`Object`] or the field helpers here, which ask the format
//! for a map and refuse anything else.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// A `T` that was written as an object (a map), not as an array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(MapOnly(PhantomData)).map(Object)
    }
}

struct MapOnly<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for MapOnly<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map))
    }
}

/// `#[serde(deserialize_with)]` for a struct field.
pub fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Object::deserialize(d).map(|o| o.0)
}

/// The same for an optional struct (`null` or absent is `None`).
pub fn optional_object<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<Object<T>>::deserialize(d).map(|o| o.map(|o| o.0))
}

/// The same for a list of structs.
pub fn objects<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Vec::<Object<T>>::deserialize(d).map(|v| v.into_iter().map(|o| o.0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Line {
        seq: u64,
        line: String,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Batch {
        #[serde(deserialize_with = "objects")]
        lines: Vec<Line>,
        #[serde(default, deserialize_with = "optional_object")]
        first: Option<Line>,
    }

    #[test]
    fn objects_are_read_and_arrays_refused() {
        let ok: Object<Batch> =
            serde_json::from_str(r#"{"lines": [{"seq": 1, "line": "x"}], "first": null}"#).unwrap();
        assert_eq!(ok.0.lines[0].line, "x");
        assert_eq!(ok.0.first, None);
        // serde alone takes the array form; these must not.
        assert!(serde_json::from_str::<Line>(r#"[1, "x"]"#).is_ok());
        for bad in [
            r#"[[{"seq": 1, "line": "x"}], null]"#,
            r#"{"lines": [[1, "x"]]}"#,
            r#"{"lines": [], "first": [1, "x"]}"#,
        ] {
            let err = serde_json::from_str::<Object<Batch>>(bad).unwrap_err();
            assert!(
                err.to_string().contains("expected an object"),
                "{bad}: {err}"
            );
        }
    }
}
