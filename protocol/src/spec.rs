//! What one agent builds: the build spec as the protocol defines it.
//!
//! The client's planner resolves config.yaml and compose files into this;
//! the controller stores it (in its journal) and hands it to the agent. It
//! is its own type, not the planner's YAML model, so that a change to
//! config.yaml's keys cannot silently change what is on the wire or on disk.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

use crate::arch::Platform;
use crate::resources::{Cpu, Memory};

/// A fully resolved build: no field is left to be inherited. Unknown
/// fields are refused, on the controller as much as in the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSpec {
    pub platform: Option<Platform>,
    /// The Dockerfile, relative to the context, `/`-separated.
    pub dockerfile: String,
    /// The Dockerfile lies outside the context (compose and buildx allow
    /// it). The client sends it in the archive under
    /// [`DOCKERFILE_BESIDE`]`/`, and the agent moves it out of the context
    /// before building, so `COPY . .` never copies it into the image.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dockerfile_beside: bool,
    pub target: Option<String>,
    pub build_args: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub pre_script: Option<String>,
    pub post_script: Option<String>,
    pub credentials: Vec<Credential>,
    /// Build secrets for `RUN --mount=type=secret,id=…`: travel like
    /// registry passwords (fetched once by the agent, forgotten when the
    /// build ends, masked in every log line).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<BuildSecret>,
    pub cpu: Option<Cpu>,
    pub memory: Option<Memory>,
    pub spot: bool,
    pub cache: Cache,
    pub cache_from: Vec<String>,
    pub snapshot_mode: Option<SnapshotMode>,
    pub use_new_run: bool,
    pub cleanup: bool,
    /// The platform the builder targets: `linux/<arch>` unless overridden.
    pub custom_platform: String,
    pub no_push: bool,
    pub ignore_path: Vec<String>,
    pub extra_flags: Vec<String>,
    /// Layer compression of the pushed image (builder default: gzip).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_level: Option<u8>,
}

/// The registry-backed layer cache of one build.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Cache {
    pub enable: Option<bool>,
    /// The per-arch cache repository, resolved.
    pub repo: Option<String>,
    pub ttl: Option<String>,
    pub copy_layers: Option<bool>,
    pub run_layers: Option<bool>,
    pub compressed: Option<bool>,
}

/// Layer compression of a pushed image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    Zstd,
}

impl Compression {
    /// The highest level the codec takes (the lowest is 1).
    pub fn max_level(self) -> u8 {
        match self {
            Compression::Gzip => 9,
            Compression::Zstd => 22,
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        })
    }
}

/// Kaniko's `--snapshot-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    Full,
    Redo,
    Time,
}

impl fmt::Display for SnapshotMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SnapshotMode::Full => "full",
            SnapshotMode::Redo => "redo",
            SnapshotMode::Time => "time",
        })
    }
}

/// The archive directory that carries a Dockerfile from outside the
/// context (see [`BuildSpec::dockerfile_beside`]).
pub const DOCKERFILE_BESIDE: &str = ".bakery-dockerfile";

impl BuildSpec {
    /// Every value that must not reach a log: registry passwords and build
    /// secrets.
    pub fn secret_values(&self) -> impl Iterator<Item = &str> {
        self.credentials
            .iter()
            .map(|c| c.password.expose())
            .chain(self.secrets.iter().map(|s| s.value.expose()))
    }

    /// Blanks every password and secret value: what a finished build keeps.
    pub fn forget_secrets(&mut self) {
        for c in &mut self.credentials {
            c.password = Secret::new("");
        }
        for s in &mut self.secrets {
            s.value = Secret::new("");
        }
    }
}

/// One build secret, `RUN --mount=type=secret,id=<id>`. The value never
/// prints: see [`Secret`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSecret {
    pub id: String,
    pub value: Secret,
}

/// A registry login. The password never prints: see [`Secret`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub registry: String,
    pub username: String,
    pub password: Secret,
}

/// A value that must not reach a log. `Debug` and `Display` print `***`;
/// serialisation keeps the value (it has to travel to the agent), so output
/// meant for people is redacted first.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

/// What a secret prints as.
pub const REDACTED: &str = "***";

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}
