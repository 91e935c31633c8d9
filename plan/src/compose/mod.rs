//! docker-compose files as a source of build settings.
//!
//! Only what builds an image is read: `services.<name>.build` (string or
//! object form), `image` (the destination), and the platforms
//! (`build.x-bake.platforms` as `docker buildx bake` reads it, then
//! `build.platforms`, then the service `platform`). Other service keys belong
//! to `docker compose up` and are ignored. The file is interpolated with the
//! environment (and the `.env` beside it) before parsing, as the original
//! tool did; doing it on the text keeps every line number intact.

use std::collections::{BTreeMap, HashMap};

use indexmap::IndexMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::error::{did_you_mean, Location, PlanError};
use crate::location::Locations;
use crate::scalar::compose_vars;
use keys::{
    IGNORED_BAKE_KEYS, IGNORED_BUILD_KEYS, SERVICE_KEYS, SUPPORTED_BUILD_KEYS, TOP_LEVEL_KEYS,
};

mod interpolate;
mod keys;
mod load;
mod merge;

pub use interpolate::interpolate;

/// A parsed compose file with the positions of its values.
pub struct ComposeFile {
    /// The compose file, as it was named (on the command
    /// line, in `COMPOSE_FILE`, or found in the repository), or as an
    /// `include:` names it.
    pub path: PathBuf,
    /// What its relative paths (contexts, secret files) start from: the
    /// file's directory, or an include's `project_directory`.
    pub project_dir: PathBuf,
    /// Where each key and value sits in the interpolated text, for errors that point at a line.
    pub locations: Locations,
    /// The services, in the order the file lists them; those
    /// without `build` are kept, and skipped when planned.
    pub services: IndexMap<String, Service>,
    /// The variables in force: the process environment over `.env`.
    pub vars: HashMap<String, String>,
    /// Variables the file uses that are not set (compose warns about these
    /// too), where each is first used.
    pub unset_variables: Vec<Unset>,
    /// The top-level `secrets:` that services' `build.secrets` name.
    pub secrets: BTreeMap<String, TopSecret>,
    /// The files of its `include:`, each a project of its own.
    pub included: Vec<ComposeFile>,
    /// For each service that extends another, the bases it inherits from,
    /// nearest first: an error in an inherited value points at its line.
    bases: HashMap<String, Vec<Base>>,
}

/// A service another one extends, and where its file's values are written.
pub(super) struct Base {
    path: PathBuf,
    locations: std::rc::Rc<Locations>,
    service: String,
}

/// A top-level secret: a file (relative to the compose file) or a variable.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TopSecret {
    /// `file:`: the secret's file, relative to the compose file's directory.
    pub file: Option<String>,
    /// `environment:`: the variable of the client that holds the secret.
    pub environment: Option<String>,
    /// `external`, `name`, …: swarm's, which a build cannot use.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml_ng::Value>,
}

/// One `build.secrets` entry: a name, or `{source, target}` (the id the
/// Dockerfile mounts is `target` when given).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum BuildSecretEntry {
    /// The short form: the name of a top-level secret, which the Dockerfile mounts by the same id.
    Name(String),
    /// The long form, naming the top-level secret and, optionally, the id to mount it as.
    Long {
        /// The name of the top-level secret.
        source: String,
        /// The id the Dockerfile mounts (`RUN --mount=type=secret,id=…`); `None` means `source`.
        target: Option<String>,
        /// `uid`, `gid`, `mode`: applied by BuildKit's mount, not here.
        #[serde(flatten)]
        other: BTreeMap<String, serde_yaml_ng::Value>,
    },
}

/// A variable the file uses that is not set, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unset {
    /// The variable's name.
    pub name: String,
    /// 1-based line of its first use.
    pub line: usize,
    /// 1-based column of its first use.
    pub column: usize,
}

#[derive(Debug, Deserialize)]
struct RawFile {
    #[serde(default)]
    services: IndexMap<String, Service>,
    #[serde(default)]
    secrets: BTreeMap<String, TopSecret>,
    /// Every other top-level key, checked by [`ComposeFile::check_keys`].
    #[serde(flatten)]
    other: BTreeMap<String, serde_yaml_ng::Value>,
}

/// One entry of `services:`, as far as building it goes.
#[derive(Debug, Deserialize)]
pub struct Service {
    /// `build:`; a service without it has nothing to build.
    pub build: Option<Build>,
    /// `image:`: the destination tag, which becomes the multi-arch index.
    pub image: Option<String>,
    /// `platform:`, one platform; used when no list of platforms is given.
    pub platform: Option<String>,
    /// `profiles:`: the service is built only when one of them is active
    /// (`--profile`, `COMPOSE_PROFILES`) or when it is named.
    pub profiles: Option<Vec<String>>,
    /// `x-bake:` on the service; its `platforms` come second, after the build's own `x-bake`.
    #[serde(rename = "x-bake")]
    pub x_bake: Option<XBake>,
    /// Every other key: `docker compose up`'s, or misspelt.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml_ng::Value>,
}

/// `build:` is either a context path or a mapping.
#[derive(Debug, Default)]
pub struct Build(pub BuildSection);

/// The `build:` mapping (a bare `build: ./dir` fills `context` alone).
#[derive(Debug, Default, Deserialize)]
pub struct BuildSection {
    /// The build context, relative to the compose file's directory; `None` means that directory.
    pub context: Option<String>,
    /// The Dockerfile, relative to the context; `None` means `Dockerfile`.
    pub dockerfile: Option<String>,
    /// `args:`, as a map or a list of `KEY=value`; a key without a value
    /// takes the variable of that name, and is left out when it is unset.
    #[serde(default, deserialize_with = "compose_vars")]
    pub args: Option<BTreeMap<String, Option<String>>>,
    /// The Dockerfile stage to build.
    pub target: Option<String>,
    /// `labels:`, as a map or a list of `KEY=value`; a key without
    /// a value takes the variable of that name, as with `args`.
    #[serde(default, deserialize_with = "compose_vars")]
    pub labels: Option<BTreeMap<String, Option<String>>>,
    /// `cache_from:`: images whose layers the builder may reuse.
    pub cache_from: Option<Vec<String>>,
    /// `platforms:`: the platforms to build, after the two `x-bake.platforms`.
    pub platforms: Option<Vec<String>>,
    /// More tags for the image, in the same repository as `image`.
    pub tags: Option<Vec<String>>,
    /// `secrets:`: top-level secrets the build mounts.
    pub secrets: Option<Vec<BuildSecretEntry>>,
    /// `additional_contexts:`, as a map or a list of `name=value`: named
    /// contexts, each a directory (relative to the compose file) or a
    /// `docker-image://` reference.
    #[serde(default, deserialize_with = "compose_vars")]
    pub additional_contexts: Option<BTreeMap<String, Option<String>>>,
    /// `x-bake:` inside `build`; its `platforms` come first, as `docker buildx bake` reads them.
    #[serde(rename = "x-bake")]
    pub x_bake: Option<XBake>,
    /// Every other key, checked by [`check_build_keys`].
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml_ng::Value>,
}

/// The `x-bake:` block, which `docker buildx bake` reads; bakery takes its
/// platforms, and its own `disk`.
#[derive(Debug, Default, Deserialize)]
pub struct XBake {
    /// The platforms to build (`linux/amd64`, `linux/arm64`).
    pub platforms: Option<Vec<String>>,
    /// bakery's: the agents' scratch disk (`50G`), as config.yaml's `disk`.
    pub disk: Option<bakery_protocol::resources::Disk>,
    /// Every other key: bake's own, or misspelt.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml_ng::Value>,
}

impl<'de> Deserialize<'de> for Build {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BuildVisitor;
        impl<'de> Visitor<'de> for BuildVisitor {
            type Value = Build;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a context path or a build mapping")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Build, E> {
                Ok(Build(BuildSection {
                    context: Some(v.to_string()),
                    ..BuildSection::default()
                }))
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<Build, A::Error> {
                BuildSection::deserialize(de::value::MapAccessDeserializer::new(m)).map(Build)
            }
        }
        d.deserialize_any(BuildVisitor)
    }
}

impl ComposeFile {
    /// Misspelt top-level, service and `x-bake` keys are errors, with the
    /// key they were probably meant to be (a misspelt `x-bake.platforms`
    /// silently dropped an arch). `x-` keys are the user's own.
    fn check_keys(&self, top: &BTreeMap<String, serde_yaml_ng::Value>) -> Result<(), PlanError> {
        let unknown = |path: String, key: &str, known: &[&str], within: &str| {
            let hint = match did_you_mean(key, known.iter().copied()) {
                Some(best) => format!("did you mean `{best}`?"),
                None => format!("the keys {within} are: {}", known.join(", ")),
            };
            PlanError::invalid_with_hint(
                self.location_of(&path),
                format!("unknown key `{key}` {within}"),
                hint,
            )
        };
        for key in top.keys().filter(|k| !k.starts_with("x-")) {
            if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
                return Err(unknown(
                    key.clone(),
                    key,
                    TOP_LEVEL_KEYS,
                    "at the top of a compose file",
                ));
            }
        }
        let bake_keys: Vec<&str> = ["platforms", "disk"]
            .into_iter()
            .chain(IGNORED_BAKE_KEYS.iter().copied())
            .collect();
        for (name, service) in &self.services {
            for key in service.other.keys().filter(|k| !k.starts_with("x-")) {
                if !SERVICE_KEYS.contains(&key.as_str()) {
                    let within = format!("in `services.{name}`");
                    return Err(unknown(
                        format!("services.{name}.{key}"),
                        key,
                        SERVICE_KEYS,
                        &within,
                    ));
                }
            }
            let bakes = [
                (service.x_bake.as_ref(), format!("services.{name}.x-bake")),
                (
                    service.build.as_ref().and_then(|b| b.0.x_bake.as_ref()),
                    format!("services.{name}.build.x-bake"),
                ),
            ];
            for (bake, path) in bakes {
                let Some(bake) = bake else { continue };
                for key in bake.other.keys() {
                    if !bake_keys.contains(&key.as_str()) {
                        let within = format!("in `{path}`");
                        return Err(unknown(format!("{path}.{key}"), key, &bake_keys, &within));
                    }
                }
            }
        }
        Ok(())
    }

    /// An error at a line that uses an unset variable is most likely that
    /// variable's doing (`image: r.io/app:${TAGG}` is an image without a
    /// tag): say so, at the variable.
    pub fn explain_unset(&self, error: PlanError) -> PlanError {
        self.files().into_iter().fold(error, |error, file| {
            explain_unset(error, &file.path, &file.unset_variables)
        })
    }

    /// This file and every file it includes, depth first; a file included
    /// twice (a diamond) once, as compose takes it.
    pub fn files(&self) -> Vec<&ComposeFile> {
        let mut out: Vec<&ComposeFile> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut pending = vec![self];
        while let Some(file) = pending.pop() {
            let key = std::fs::canonicalize(&file.path).unwrap_or_else(|_| file.path.clone());
            if seen.insert(key) {
                out.push(file);
                pending.extend(file.included.iter().rev());
            }
        }
        out
    }

    /// Every service of the project (this file's and its includes'), with
    /// the file that defines it, in file order.
    pub fn all_services(&self) -> impl Iterator<Item = (&ComposeFile, &String, &Service)> {
        self.files()
            .into_iter()
            .flat_map(|f| f.services.iter().map(move |(n, s)| (f, n, s)))
    }

    /// Where `path` (dotted, under the file root) is written: in this
    /// file, or for a value a service inherits through `extends`, in the
    /// base's file; else the nearest key above it here.
    pub fn location_of(&self, path: &str) -> Location {
        if self.locations.key(path).is_none() {
            let inherited = path
                .strip_prefix("services.")
                .and_then(|p| p.split_once('.'))
                .and_then(|(service, rest)| {
                    self.bases.get(service)?.iter().find_map(|base| {
                        let theirs = format!("services.{}.{rest}", base.service);
                        let pos = base.locations.key(&theirs)?;
                        Some(Location::new(&base.path, pos.line, pos.column))
                    })
                });
            if let Some(at) = inherited {
                return at;
            }
        }
        let pos = self.locations.nearest(path);
        Location::new(&self.path, pos.line, pos.column)
    }

    /// Misspelt build keys are errors; real compose keys bakery does not
    /// apply are left to the caller to warn about ([`ComposeFile::ignored_keys`]).
    fn check_build_keys(&self) -> Result<(), PlanError> {
        for (name, service) in &self.services {
            let Some(build) = &service.build else {
                continue;
            };
            for key in build.0.other.keys() {
                if key.starts_with("x-") || IGNORED_BUILD_KEYS.contains(&key.as_str()) {
                    continue;
                }
                let all = SUPPORTED_BUILD_KEYS
                    .iter()
                    .chain(IGNORED_BUILD_KEYS)
                    .copied();
                let hint = match did_you_mean(key, all) {
                    Some(best) => format!("did you mean `{best}`?"),
                    None => format!("bakery reads: {}", SUPPORTED_BUILD_KEYS.join(", ")),
                };
                return Err(PlanError::invalid_with_hint(
                    self.location_of(&format!("services.{name}.build.{key}")),
                    format!("unknown key `{key}` in `services.{name}.build`"),
                    hint,
                ));
            }
        }
        Ok(())
    }

    /// The path of each compose build key and `x-bake` key that bakery
    /// knows but does not apply.
    pub fn ignored_keys(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, service) in &self.services {
            if let Some(build) = &service.build {
                for key in build.0.other.keys() {
                    if IGNORED_BUILD_KEYS.contains(&key.as_str()) {
                        out.push(format!("services.{name}.build.{key}"));
                    }
                }
            }
            let bakes = [
                (service.x_bake.as_ref(), format!("services.{name}.x-bake")),
                (
                    service.build.as_ref().and_then(|b| b.0.x_bake.as_ref()),
                    format!("services.{name}.build.x-bake"),
                ),
            ];
            for (bake, path) in bakes {
                for key in bake.into_iter().flat_map(|b| b.other.keys()) {
                    if IGNORED_BAKE_KEYS.contains(&key.as_str()) {
                        out.push(format!("{path}.{key}"));
                    }
                }
            }
        }
        out
    }
}

/// See [`ComposeFile::explain_unset`].
fn explain_unset(error: PlanError, path: &Path, unset: &[Unset]) -> PlanError {
    let Some(d) = error.diagnostic() else {
        return error;
    };
    if d.location.file != path {
        return error;
    }
    let Some(unset) = unset.iter().find(|u| u.line == d.location.line) else {
        return error;
    };
    PlanError::invalid_with_hint(
        Location::new(path, unset.line, unset.column),
        format!(
            "`{}` is not set, so this line reads as something else: {}",
            unset.name, d.message
        ),
        format!(
            "set {} in the environment or in the .env beside the compose file, or give it a default: ${{{}:-value}}",
            unset.name, unset.name
        ),
    )
}
