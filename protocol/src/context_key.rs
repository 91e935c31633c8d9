//! Build contexts by content address: `contexts/sha256-<hex>.tar.gz` (or
//! `.tar.zst`). The key names both what the archive holds (its SHA-256) and
//! how it is compressed, so it is one type, parsed once, instead of a
//! string whose suffix each reader inspects.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How a context archive is compressed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// tar.gz, compressed on all cores. What Kaniko reads directly.
    #[default]
    Gzip,
    /// tar.zst: several times faster to pack and unpack; bakery's agent reads it.
    Zstd,
}

impl Codec {
    /// The file extension, `tar.gz` or `tar.zst`.
    pub fn extension(self) -> &'static str {
        match self {
            Codec::Gzip => "tar.gz",
            Codec::Zstd => "tar.zst",
        }
    }
}

impl FromStr for Codec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gzip" | "gz" => Ok(Codec::Gzip),
            "zstd" | "zst" => Ok(Codec::Zstd),
            _ => Err(format!("unknown codec `{s}`; expected gzip or zstd")),
        }
    }
}

/// The storage key of a context archive.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContextKey {
    /// Lowercase hex SHA-256 of the archive's bytes.
    sha256: String,
    codec: Codec,
}

impl ContextKey {
    /// The key of an archive with this SHA-256 (64 lowercase hex digits).
    pub fn new(sha256: &str, codec: Codec) -> Result<ContextKey, String> {
        let hex = sha256.len() == 64
            && sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex {
            return Err(format!("`{sha256}` is not a SHA-256 in lowercase hex"));
        }
        Ok(ContextKey {
            sha256: sha256.to_string(),
            codec,
        })
    }

    /// The archive's SHA-256, 64 lowercase hex digits.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// How the archive is compressed, as its file extension says.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The archive's file name, `sha256-<hex>.tar.gz`.
    pub fn file_name(&self) -> String {
        format!("sha256-{}.{}", self.sha256, self.codec.extension())
    }
}

impl fmt::Display for ContextKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "contexts/{}", self.file_name())
    }
}

impl FromStr for ContextKey {
    type Err = String;
    fn from_str(s: &str) -> Result<ContextKey, String> {
        let bad = || {
            let shown: String = s.chars().take(80).flat_map(char::escape_default).collect();
            format!("`{shown}` is not a context key (contexts/sha256-<64 hex>.tar.gz or .tar.zst)")
        };
        let name = s.strip_prefix("contexts/sha256-").ok_or_else(bad)?;
        let (hex, codec) = if let Some(h) = name.strip_suffix(".tar.gz") {
            (h, Codec::Gzip)
        } else if let Some(h) = name.strip_suffix(".tar.zst") {
            (h, Codec::Zstd)
        } else {
            return Err(bad());
        };
        ContextKey::new(hex, codec).map_err(|_| bad())
    }
}

impl Serialize for ContextKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ContextKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ContextKey, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_refuse_anything_else() {
        let hex = "a".repeat(64);
        let key: ContextKey = format!("contexts/sha256-{hex}.tar.zst").parse().unwrap();
        assert_eq!(key.codec(), Codec::Zstd);
        assert_eq!(key.to_string(), format!("contexts/sha256-{hex}.tar.zst"));
        assert_eq!(key, ContextKey::new(&hex, Codec::Zstd).unwrap());
        for bad in [
            "contexts/../../etc/passwd",
            "contexts/sha256-abc.tar.gz",
            &format!("contexts/sha256-{}.tar.gz", "A".repeat(64)),
            &format!("contexts/sha256-{hex}.zip"),
            &format!("sha256-{hex}.tar.gz"),
        ] {
            assert!(bad.parse::<ContextKey>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(serde_json::from_str::<ContextKey>(&json).unwrap(), key);
        assert!(serde_json::from_str::<ContextKey>("\"contexts/x\"").is_err());
    }
}
