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
use crate::resources::{Cpu, Disk, Memory};

/// A fully resolved build: no field is left to be inherited. Unknown
/// fields are refused, on the controller as much as in the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSpec {
    /// Where the agent runs; `None` means the controller's default (`DEFAULT_PLATFORM`).
    pub platform: Option<Platform>,
    /// The Dockerfile, relative to the context, `/`-separated.
    pub dockerfile: String,
    /// The Dockerfile lies outside the context (compose and buildx allow
    /// it). The client sends it in the archive under
    /// [`DOCKERFILE_BESIDE`]`/`, and the agent moves it out of the context
    /// before building, so `COPY . .` never copies it into the image.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dockerfile_beside: bool,
    /// The Dockerfile stage to build (`--target`); `None` builds the last stage.
    pub target: Option<String>,
    /// `--build-arg` values, passed to the builder through its environment.
    pub build_args: BTreeMap<String, String>,
    /// Labels set on the built image (`--label`).
    pub labels: BTreeMap<String, String>,
    /// Annotations on the image manifest (`manifest:` level): buildah's
    /// `--annotation`; for Kaniko, which cannot, the controller puts them
    /// on the image's index entry (see [`crate::annotations`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Environment variables of the agent's build and its pre- and post-script.
    pub env: BTreeMap<String, String>,
    /// Shell run with `sh -ce` in the context directory before the build; `None` runs nothing.
    pub pre_script: Option<String>,
    /// Shell run with `sh -ce` after a successful build and push; `None` runs nothing.
    pub post_script: Option<String>,
    /// Registry logins for pulling bases, pushing and the cache repository,
    /// written to a Docker `config.json` only the builder reads.
    #[serde(deserialize_with = "crate::object::objects")]
    pub credentials: Vec<Credential>,
    /// Build secrets for `RUN --mount=type=secret,id=…`: travel like
    /// registry passwords (fetched once by the agent, forgotten when the
    /// build ends, masked in every log line).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::object::objects"
    )]
    pub secrets: Vec<BuildSecret>,
    /// SSH keys for `RUN --mount=type=ssh[,id=…]` (buildah's `--ssh
    /// id=<key file>`): each a private key's content, travelling and
    /// forgotten like a build secret. Kaniko has no SSH mounts: the
    /// controller refuses them for its agents.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::object::objects"
    )]
    pub ssh: Vec<BuildSecret>,
    /// Named build contexts (`FROM <name>`, `COPY --from=<name>`),
    /// buildah's `--build-context`. Kaniko has none: the controller
    /// refuses them for its agents.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub build_contexts: BTreeMap<String, NamedContext>,
    /// The vCPUs to ask the platform for; `None` means the controller's `DEFAULT_BUILD_CPU`.
    pub cpu: Option<Cpu>,
    /// The memory to ask the platform for; `None` means the controller's `DEFAULT_BUILD_MEMORY`.
    pub memory: Option<Memory>,
    /// Scratch disk; `None` means the controller's DEFAULT_BUILD_DISK, else
    /// the platform's own default (Fargate: 20 GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<Disk>,
    /// Run on Spot capacity where the platform has it
    /// (ECS Fargate Spot); other platforms ignore it.
    pub spot: bool,
    /// The registry layer cache, per arch.
    #[serde(deserialize_with = "crate::object::object")]
    pub cache: Cache,
    /// More images whose layers the builder may reuse (compose
    /// `cache_from`): buildah's `--cache-from`; Kaniko takes none.
    pub cache_from: Vec<String>,
    /// Kaniko's `--snapshot-mode`; `None` leaves Kaniko's default (full).
    pub snapshot_mode: Option<SnapshotMode>,
    /// Kaniko's `--use-new-run`: detect a RUN step's changes
    /// by modification time, not by a full snapshot.
    pub use_new_run: bool,
    /// Kaniko's `--cleanup`: clean the filesystem up at the end of the build.
    pub cleanup: bool,
    /// The platform the builder targets: `linux/<arch>` unless overridden.
    pub custom_platform: String,
    /// Build and check, but push nothing: not the arch image, not
    /// the index (a check build, as for a pull request from a fork).
    pub no_push: bool,
    /// Extra paths Kaniko leaves out of its snapshots (`--ignore-path`);
    /// the agent's work dir is always left out besides.
    pub ignore_path: Vec<String>,
    /// Flags passed to the builder as they are, for options bakery does not model.
    pub extra_flags: Vec<String>,
    /// Layer compression of the pushed image (builder default: gzip).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
    /// The compression level, 1 to [`Compression::max_level`];
    /// `None` leaves the builder's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_level: Option<u8>,
}

/// The registry-backed layer cache of one build.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Cache {
    /// Whether the cache is used at all; `None` and `false` both mean no cache.
    pub enable: Option<bool>,
    /// The per-arch cache repository, resolved.
    pub repo: Option<String>,
    /// How long a cached layer stays valid (`--cache-ttl`, a Go
    /// duration such as `24h`); `None` leaves the builder's default.
    pub ttl: Option<String>,
    /// Kaniko's `--cache-copy-layers`: cache the layers of `COPY` steps too.
    pub copy_layers: Option<bool>,
    /// Kaniko's `--cache-run-layers`: cache the layers of
    /// `RUN` steps; `None` leaves Kaniko's default (on).
    pub run_layers: Option<bool>,
    /// Kaniko's `--compressed-caching`; `false` caches layers uncompressed:
    /// a slower build that needs less memory, for large builds.
    pub compressed: Option<bool>,
}

/// Layer compression of a pushed image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip: what every runtime and registry reads; the builders' default; levels 1 to 9.
    Gzip,
    /// zstd: layers unpack markedly faster than gzip's; levels 1 to 22.
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
    /// Snapshot by file contents: slowest, and never misses a change.
    Full,
    /// Snapshot by file metadata (modification time, size, mode, owner): faster than `Full`.
    Redo,
    /// Snapshot by modification time only: fastest, and misses a change that keeps the time.
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

/// What a named build context is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum NamedContext {
    /// A directory the client sent in the context archive, as
    /// [`CONTEXTS_BESIDE`]`/<n>/` (the name is the user's text and never a
    /// path); the agent moves it out of the context before building.
    Archive(u32),
    /// An image (`docker-image://<reference>`).
    DockerImage(String),
}

/// The archive directory that carries named build contexts (see
/// [`NamedContext::Archive`]).
pub const CONTEXTS_BESIDE: &str = ".bakery-contexts";

/// The archive directory that carries a Dockerfile from outside the
/// context (see [`BuildSpec::dockerfile_beside`]).
pub const DOCKERFILE_BESIDE: &str = ".bakery-dockerfile";

impl BuildSpec {
    /// A build of `dockerfile` for `arch` that asks for nothing else: no
    /// args, logins, secrets or cache, the controller's default platform
    /// and sizes, pushed. The planner sets every field itself (a new
    /// field must be decided there); tests, benchmarks and tools start
    /// from this and change what they test.
    pub fn new(dockerfile: impl Into<String>, arch: crate::Arch) -> BuildSpec {
        BuildSpec {
            platform: None,
            dockerfile: dockerfile.into(),
            dockerfile_beside: false,
            target: None,
            build_args: BTreeMap::new(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            env: BTreeMap::new(),
            pre_script: None,
            post_script: None,
            credentials: Vec::new(),
            secrets: Vec::new(),
            ssh: Vec::new(),
            build_contexts: BTreeMap::new(),
            cpu: None,
            memory: None,
            disk: None,
            spot: false,
            cache: Cache::default(),
            cache_from: Vec::new(),
            snapshot_mode: None,
            use_new_run: false,
            cleanup: false,
            custom_platform: arch.platform().to_string(),
            no_push: false,
            ignore_path: Vec::new(),
            extra_flags: Vec::new(),
            compression: None,
            compression_level: None,
        }
    }

    /// Every value that must not reach a log: registry passwords, build
    /// secrets and SSH keys.
    pub fn secret_values(&self) -> impl Iterator<Item = &str> {
        self.credentials
            .iter()
            .map(|c| c.password.expose())
            .chain(self.secrets.iter().map(|s| s.value.expose()))
            .chain(self.ssh.iter().map(|s| s.value.expose()))
    }

    /// Blanks every password and secret value: what a finished build keeps.
    pub fn forget_secrets(&mut self) {
        for c in &mut self.credentials {
            c.password = Secret::new("");
        }
        for s in self.secrets.iter_mut().chain(self.ssh.iter_mut()) {
            s.value = Secret::new("");
        }
    }
}

/// One build secret, `RUN --mount=type=secret,id=<id>`. The value never
/// prints: see [`Secret`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSecret {
    /// The id the Dockerfile mounts it by (`RUN
    /// --mount=type=secret,id=<id>`); unique within a build.
    pub id: String,
    /// The secret's content, read by the client from its file or variable.
    pub value: Secret,
}

/// A registry login. The password never prints: see [`Secret`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// The registry host the login is for, as a Docker
    /// `config.json` keys it (`docker.io` for Docker Hub).
    pub registry: String,
    /// The user name to log in with.
    pub username: String,
    /// The password or token to log in with.
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
    /// A secret holding `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The value itself, for the few places that must use it (a login, a secret file, a redactor).
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
