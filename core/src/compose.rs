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
    /// Variables the file uses that are not set (compose warns about these too).
    pub unset_variables: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct RawFile {
    #[serde(default)]
    services: IndexMap<String, Service>,
}

#[derive(Debug, Deserialize)]
pub struct Service {
    pub build: Option<Build>,
    pub image: Option<String>,
    pub platform: Option<String>,
    #[serde(rename = "x-bake")]
    pub x_bake: Option<XBake>,
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
            source,
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut vars = read_dotenv(&dir.join(".env"))?;
        vars.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut unset = Vec::new();
        let text = interpolate(&text, &vars, &mut unset).map_err(|(line, column, msg)| {
            PlanError::invalid(Location::new(path, line, column), msg)
        })?;
        let raw: RawFile = crate::yaml::parse(path, &text)?;
        let locations = Locations::index(&text);
        let file = ComposeFile {
            path: path.to_path_buf(),
            locations,
            services: raw.services,
            vars,
            unset_variables: unset,
        };
        file.check_build_keys()?;
        Ok(file)
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

    /// `(service, key)` for each compose build key that bakery ignores.
    pub fn ignored_keys(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, service) in &self.services {
            if let Some(build) = &service.build {
                for key in build.0.other.keys() {
                    if IGNORED_BUILD_KEYS.contains(&key.as_str()) {
                        out.push((name.clone(), key.clone()));
                    }
                }
            }
        }
        out
    }
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
    unset: &mut Vec<String>,
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
        let (line, column) = line_col(text, i);
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
                out.push_str(&expand_braced(inner, vars, unset).map_err(|m| (line, column, m))?);
                i = end + 1;
            }
            Some(&b) if b == b'_' || b.is_ascii_alphabetic() => {
                let start = i + 1;
                let mut j = start;
                while j < bytes.len() && (bytes[j] == b'_' || bytes[j].is_ascii_alphanumeric()) {
                    j += 1;
                }
                out.push_str(&lookup(&text[start..j], vars, unset));
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

fn lookup(name: &str, vars: &HashMap<String, String>, unset: &mut Vec<String>) -> String {
    match vars.get(name) {
        Some(v) => v.clone(),
        None => {
            if !unset.iter().any(|u| u == name) {
                unset.push(name.to_string());
            }
            String::new()
        }
    }
}

fn expand_braced(
    inner: &str,
    vars: &HashMap<String, String>,
    unset: &mut Vec<String>,
) -> Result<String, String> {
    let name_end = inner
        .find(|c: char| !(c == '_' || c.is_ascii_alphanumeric()))
        .unwrap_or(inner.len());
    let (name, rest) = inner.split_at(name_end);
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("invalid variable reference `${{{inner}}}`"));
    }
    let value = vars.get(name);
    let nested =
        |s: &str, unset: &mut Vec<String>| interpolate(s, vars, unset).map_err(|(_, _, m)| m);
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
        "" => lookup(name, vars, unset),
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
        interpolate("$A ${A} $B", &vars(), &mut unset).unwrap();
        assert_eq!(unset, ["A", "B"]);
    }
}
