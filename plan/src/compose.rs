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

/// A parsed compose file with the positions of its values.
pub struct ComposeFile {
    pub path: PathBuf,
    pub locations: Locations,
    pub services: IndexMap<String, Service>,
    /// The variables in force: the process environment over `.env`.
    pub vars: HashMap<String, String>,
    /// Variables the file uses that are not set (compose warns about these
    /// too), where each is first used.
    pub unset_variables: Vec<Unset>,
}

/// A variable the file uses that is not set, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unset {
    pub name: String,
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Deserialize)]
struct RawFile {
    #[serde(default)]
    services: IndexMap<String, Service>,
    /// Every other top-level key, checked by [`ComposeFile::check_keys`].
    #[serde(flatten)]
    other: BTreeMap<String, serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize)]
pub struct Service {
    pub build: Option<Build>,
    pub image: Option<String>,
    pub platform: Option<String>,
    #[serde(rename = "x-bake")]
    pub x_bake: Option<XBake>,
    /// Every other key: `docker compose up`'s, or misspelt.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml_ng::Value>,
}

/// `build:` is either a context path or a mapping.
#[derive(Debug, Default)]
pub struct Build(pub BuildSection);

#[derive(Debug, Default, Deserialize)]
pub struct BuildSection {
    pub context: Option<String>,
    pub dockerfile: Option<String>,
    #[serde(default, deserialize_with = "compose_vars")]
    pub args: Option<BTreeMap<String, Option<String>>>,
    pub target: Option<String>,
    #[serde(default, deserialize_with = "compose_vars")]
    pub labels: Option<BTreeMap<String, Option<String>>>,
    pub cache_from: Option<Vec<String>>,
    pub platforms: Option<Vec<String>>,
    /// More tags for the image, in the same repository as `image`.
    pub tags: Option<Vec<String>>,
    #[serde(rename = "x-bake")]
    pub x_bake: Option<XBake>,
    /// Every other key, checked by [`check_build_keys`].
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml_ng::Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct XBake {
    pub platforms: Option<Vec<String>>,
    /// Every other key: bake's own, or misspelt.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml_ng::Value>,
}

/// Top-level keys of the compose specification.
const TOP_LEVEL_KEYS: &[&str] = &[
    "version", "name", "include", "services", "models", "networks", "volumes", "secrets", "configs",
];

/// Service keys of the compose specification. bakery reads `build`,
/// `image`, `platform` and `x-bake`; the others are `docker compose up`'s
/// and are left alone.
const SERVICE_KEYS: &[&str] = &[
    "annotations",
    "attach",
    "blkio_config",
    "build",
    "cap_add",
    "cap_drop",
    "cgroup",
    "cgroup_parent",
    "command",
    "configs",
    "container_name",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpu_shares",
    "cpus",
    "cpuset",
    "credential_spec",
    "depends_on",
    "deploy",
    "develop",
    "device_cgroup_rules",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "entrypoint",
    "env_file",
    "environment",
    "expose",
    "extends",
    "external_links",
    "extra_hosts",
    "gpus",
    "group_add",
    "healthcheck",
    "hostname",
    "image",
    "init",
    "ipc",
    "isolation",
    "label_file",
    "labels",
    "links",
    "logging",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "models",
    "network_mode",
    "networks",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "ports",
    "post_start",
    "pre_stop",
    "privileged",
    "profiles",
    "provider",
    "pull_policy",
    "pull_refresh_after",
    "read_only",
    "restart",
    "runtime",
    "scale",
    "secrets",
    "security_opt",
    "shm_size",
    "stdin_open",
    "stop_grace_period",
    "stop_signal",
    "storage_opt",
    "sysctls",
    "tmpfs",
    "tty",
    "ulimits",
    "use_api_socket",
    "user",
    "userns_mode",
    "uts",
    "volumes",
    "volumes_from",
    "working_dir",
    "x-bake",
];

/// `x-bake` keys `docker buildx bake` reads that bakery does not apply:
/// warnings, not errors (bakery applies `platforms`).
const IGNORED_BAKE_KEYS: &[&str] = &[
    "cache-from",
    "cache-to",
    "contexts",
    "no-cache",
    "no-cache-filter",
    "output",
    "pull",
    "secret",
    "ssh",
    "tags",
];

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

/// Build keys bakery reads.
const SUPPORTED_BUILD_KEYS: &[&str] = &[
    "context",
    "dockerfile",
    "args",
    "target",
    "labels",
    "cache_from",
    "platforms",
    "tags",
    "x-bake",
];

/// Build keys of the compose specification that bakery does not apply.
/// They are legitimate, so they warn instead of failing the build.
const IGNORED_BUILD_KEYS: &[&str] = &[
    "additional_contexts",
    "cache_to",
    "dockerfile_inline",
    "entitlements",
    "extra_hosts",
    "isolation",
    "network",
    "no_cache",
    "privileged",
    "pull",
    "secrets",
    "shm_size",
    "ssh",
    "ulimits",
];

impl ComposeFile {
    /// Reads, interpolates and parses a compose file. `env` is the process
    /// environment; the `.env` next to the file fills what it does not set.
    pub fn load(path: &Path, env: &HashMap<String, String>) -> Result<ComposeFile, PlanError> {
        let text = std::fs::read_to_string(path).map_err(|source| PlanError::Read {
            path: path.to_path_buf(),
            cause: source,
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut vars = read_dotenv(&dir.join(".env"))?;
        vars.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut unset = Vec::new();
        let text = interpolate(&text, &vars, &mut unset).map_err(|(line, column, msg)| {
            PlanError::invalid(Location::new(path, line, column), msg)
        })?;
        let unset: Vec<Unset> = unset
            .into_iter()
            .map(|(name, line, column)| Unset { name, line, column })
            .collect();
        let raw: RawFile =
            crate::yaml::parse(path, &text).map_err(|e| explain_unset(e, path, &unset))?;
        let locations = Locations::index(&text);
        let file = ComposeFile {
            path: path.to_path_buf(),
            locations,
            services: raw.services,
            vars,
            unset_variables: unset,
        };
        file.check_keys(&raw.other)?;
        file.check_build_keys()?;
        Ok(file)
    }

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
        let bake_keys: Vec<&str> = std::iter::once("platforms")
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
        explain_unset(error, &self.path, &self.unset_variables)
    }

    /// Where `path` (dotted, under the file root) is written.
    pub fn location_of(&self, path: &str) -> Location {
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

/// Reads a `.env` file; a missing file is an empty one.
fn read_dotenv(path: &Path) -> Result<HashMap<String, String>, PlanError> {
    let iter = match dotenvy::from_path_iter(path) {
        Ok(iter) => iter,
        Err(dotenvy::Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(HashMap::new())
        }
        Err(e) => return Err(dotenv_error(path, e)),
    };
    iter.map(|item| item.map_err(|e| dotenv_error(path, e)))
        .collect()
}

fn dotenv_error(path: &Path, e: dotenvy::Error) -> PlanError {
    let line = match &e {
        dotenvy::Error::LineParse(_, index) => *index + 1,
        _ => 1,
    };
    PlanError::invalid(Location::new(path, line, 1), format!("cannot parse: {e}"))
}

/// Compose variable interpolation on text: `$VAR`, `${VAR}`, `${VAR:-default}`,
/// `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`, `${VAR:+alt}`,
/// `${VAR+alt}`, and `$$` for a literal `$`. Defaults may nest.
///
/// Hand-written: the shell-expansion crates do not implement compose's
/// `?`/`+` forms or its `$$` escape. Errors are `(line, column, message)`.
pub fn interpolate(
    text: &str,
    vars: &HashMap<String, String>,
    unset: &mut Vec<(String, usize, usize)>,
) -> Result<String, (usize, usize, String)> {
    interpolate_at(text, vars, unset, None)
}

/// [`interpolate`], with the position of the outer reference when `text`
/// is a default nested in one (so unset variables are reported there).
fn interpolate_at(
    text: &str,
    vars: &HashMap<String, String>,
    unset: &mut Vec<(String, usize, usize)>,
    outer: Option<(usize, usize)>,
) -> Result<String, (usize, usize, String)> {
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c != b'$' {
            let ch = text[i..].chars().next().unwrap_or('\0');
            out.push(ch);
            i += ch.len_utf8().max(1);
            continue;
        }
        let (line, column) = outer.unwrap_or_else(|| line_col(text, i));
        match bytes.get(i + 1) {
            Some(b'$') => {
                out.push('$');
                i += 2;
            }
            Some(b'{') => {
                let end = matching_brace(text, i + 1).ok_or((
                    line,
                    column,
                    "unterminated `${` in variable reference".to_string(),
                ))?;
                let inner = &text[i + 2..end];
                let expanded = expand_braced(inner, vars, unset, (line, column))
                    .map_err(|m| (line, column, m))?;
                out.push_str(&expanded);
                i = end + 1;
            }
            Some(&b) if b == b'_' || b.is_ascii_alphabetic() => {
                let start = i + 1;
                let mut j = start;
                while j < bytes.len() && (bytes[j] == b'_' || bytes[j].is_ascii_alphanumeric()) {
                    j += 1;
                }
                out.push_str(&lookup(&text[start..j], vars, unset, (line, column)));
                i = j;
            }
            _ => {
                out.push('$');
                i += 1;
            }
        }
    }
    Ok(out)
}

fn lookup(
    name: &str,
    vars: &HashMap<String, String>,
    unset: &mut Vec<(String, usize, usize)>,
    (line, column): (usize, usize),
) -> String {
    match vars.get(name) {
        Some(v) => v.clone(),
        None => {
            if !unset.iter().any(|u| u.0 == name) {
                unset.push((name.to_string(), line, column));
            }
            String::new()
        }
    }
}

fn expand_braced(
    inner: &str,
    vars: &HashMap<String, String>,
    unset: &mut Vec<(String, usize, usize)>,
    at: (usize, usize),
) -> Result<String, String> {
    let name_end = inner
        .find(|c: char| !(c == '_' || c.is_ascii_alphanumeric()))
        .unwrap_or(inner.len());
    let (name, rest) = inner.split_at(name_end);
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("invalid variable reference `${{{inner}}}`"));
    }
    let value = vars.get(name);
    let nested = |s: &str, unset: &mut Vec<(String, usize, usize)>| {
        interpolate_at(s, vars, unset, Some(at)).map_err(|(_, _, m)| m)
    };
    let (op, arg) = if let Some(a) = rest.strip_prefix(":-") {
        (":-", a)
    } else if let Some(a) = rest.strip_prefix(":?") {
        (":?", a)
    } else if let Some(a) = rest.strip_prefix(":+") {
        (":+", a)
    } else if let Some(a) = rest.strip_prefix('-') {
        ("-", a)
    } else if let Some(a) = rest.strip_prefix('?') {
        ("?", a)
    } else if let Some(a) = rest.strip_prefix('+') {
        ("+", a)
    } else if rest.is_empty() {
        ("", "")
    } else {
        return Err(format!("invalid variable reference `${{{inner}}}`"));
    };
    let empty = value.is_none_or(|v| v.is_empty());
    Ok(match op {
        "" => lookup(name, vars, unset, at),
        ":-" if empty => nested(arg, unset)?,
        "-" if value.is_none() => nested(arg, unset)?,
        ":?" if empty => return Err(required(name, arg)),
        "?" if value.is_none() => return Err(required(name, arg)),
        ":+" => {
            if empty {
                String::new()
            } else {
                nested(arg, unset)?
            }
        }
        "+" => {
            if value.is_none() {
                String::new()
            } else {
                nested(arg, unset)?
            }
        }
        _ => value.cloned().unwrap_or_default(),
    })
}

fn required(name: &str, message: &str) -> String {
    if message.is_empty() {
        format!("required variable `{name}` is not set")
    } else {
        format!("required variable `{name}` is not set: {message}")
    }
}

/// Index of the `}` closing the `{` at `open`, counting nested braces.
fn matching_brace(text: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, b) in text.bytes().enumerate().skip(open) {
        match b {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            b'\n' => return None,
            _ => {}
        }
    }
    None
}

fn line_col(text: &str, index: usize) -> (usize, usize) {
    let before = &text[..index];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |p| p + 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> HashMap<String, String> {
        [("TAG", "1.2"), ("EMPTY", ""), ("REG", "r.io")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn interp(s: &str) -> Result<String, String> {
        interpolate(s, &vars(), &mut Vec::new()).map_err(|e| e.2)
    }

    #[test]
    fn interpolation_follows_compose() {
        let rows = [
            ("image: $REG/app:${TAG}", "image: r.io/app:1.2"),
            ("${MISSING:-d}", "d"),
            ("${EMPTY:-d}", "d"),
            ("${EMPTY-d}", ""),
            ("${MISSING-d}", "d"),
            ("${TAG:+set}", "set"),
            ("${EMPTY:+set}", ""),
            ("${EMPTY+set}", "set"),
            ("${MISSING:-${REG}/x}", "r.io/x"),
            ("cost: $$5 and $", "cost: $5 and $"),
            ("naïve ${TAG}", "naïve 1.2"),
        ];
        for (input, want) in rows {
            assert_eq!(interp(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn required_and_malformed_references_fail_with_position() {
        let e = interpolate(
            "a: 1\nb: ${NEED:?set NEED first}\n",
            &vars(),
            &mut Vec::new(),
        )
        .unwrap_err();
        assert_eq!((e.0, e.1), (2, 4));
        assert!(
            e.2.contains("NEED") && e.2.contains("set NEED first"),
            "{}",
            e.2
        );
        assert!(interp("${TAG").unwrap_err().contains("unterminated"));
        assert!(interp("${1bad}").is_err());
    }

    #[test]
    fn unset_variables_are_reported_once() {
        let mut unset = Vec::new();
        interpolate("$A ${A}\n  $B", &vars(), &mut unset).unwrap();
        let names: Vec<_> = unset.iter().map(|u| (u.0.as_str(), u.1, u.2)).collect();
        assert_eq!(names, [("A", 1, 1), ("B", 2, 3)]);
    }
}
