//! Reading compose files as `docker compose` does: interpolation, then each
//! service's `extends` chain merged, then the files of `include:` read as
//! projects of their own.
//!
//! Typed parsing runs on each file's own text first, so a wrong type is
//! reported at its line; a service that extends another is then rebuilt
//! from the merged YAML ([`super::merge`]), and its errors point at its
//! `extends:`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde_yaml_ng::Value;

use super::interpolate::{interpolate, read_dotenv};
use super::merge::{merge_services, rebase};
use super::{explain_unset, Base, ComposeFile, RawFile, Service, Unset};
use crate::error::{did_you_mean, Location, PlanError};
use crate::location::Locations;

/// One file, read, interpolated and parsed both ways.
struct Source {
    path: PathBuf,
    locations: Rc<Locations>,
    /// The typed parse, which has already checked every type.
    raw: RawFile,
    /// The same document as YAML, for merging.
    value: Value,
    unset: Vec<Unset>,
}

impl Source {
    fn read(path: &Path, vars: &HashMap<String, String>) -> Result<Source, PlanError> {
        let text = std::fs::read_to_string(path).map_err(|cause| PlanError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        let mut unset = Vec::new();
        let text = interpolate(&text, vars, &mut unset).map_err(|(line, column, msg)| {
            PlanError::invalid(Location::new(path, line, column), msg)
        })?;
        let unset: Vec<Unset> = unset
            .into_iter()
            .map(|(name, line, column)| Unset { name, line, column })
            .collect();
        let raw: RawFile =
            crate::yaml::parse(path, &text).map_err(|e| explain_unset(e, path, &unset))?;
        // The typed parse accepted it, so it is YAML.
        let mut value: Value = serde_yaml_ng::from_str(&text).unwrap_or(Value::Null);
        let _ = value.apply_merge();
        Ok(Source {
            path: path.to_path_buf(),
            locations: Rc::new(Locations::index(&text)),
            raw,
            value,
            unset,
        })
    }

    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    fn location_of(&self, path: &str) -> Location {
        let pos = self.locations.nearest(path);
        Location::new(&self.path, pos.line, pos.column)
    }

    fn service(&self, name: &str) -> Option<&Value> {
        self.value.get("services")?.get(name)
    }

    fn service_names(&self) -> Vec<&str> {
        self.raw.services.keys().map(String::as_str).collect()
    }
}

impl ComposeFile {
    /// Reads, interpolates and parses a compose file and the files it
    /// includes and extends. `env` is the process environment; the `.env`
    /// next to the file fills what it does not set.
    pub fn load(path: &Path, env: &HashMap<String, String>) -> Result<ComposeFile, PlanError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let vars = variables(&[dir.join(".env")], env)?;
        load_project(path, dir.to_path_buf(), vars, env, &mut Vec::new())
    }
}

/// The `.env` files' variables (a later file wins), under the process environment.
fn variables(
    dotenvs: &[PathBuf],
    env: &HashMap<String, String>,
) -> Result<HashMap<String, String>, PlanError> {
    let mut vars = HashMap::new();
    for file in dotenvs {
        vars.extend(read_dotenv(file)?);
    }
    vars.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(vars)
}

/// One file as a project: its services with their `extends` applied, its
/// includes loaded beneath it. `stack` holds the files being included, to
/// refuse a cycle.
fn load_project(
    path: &Path,
    project_dir: PathBuf,
    vars: HashMap<String, String>,
    env: &HashMap<String, String>,
    stack: &mut Vec<PathBuf>,
) -> Result<ComposeFile, PlanError> {
    let source = Source::read(path, &vars)?;
    let mut services: Vec<(String, Service)> = Vec::new();
    let mut sources = Sources::default();
    let mut bases = HashMap::new();
    for (name, service) in &source.raw.services {
        if !service.other.contains_key("extends") {
            continue;
        }
        let mut chain_bases = Vec::new();
        let mut walk = Walk {
            vars: &vars,
            chain: Vec::new(),
            sources: &mut sources,
            bases: &mut chain_bases,
        };
        let merged = resolve_extends(&source, name, &mut walk)?;
        bases.insert(name.clone(), chain_bases);
        let at = source.location_of(&format!("services.{name}.extends"));
        let service: Service = serde_yaml_ng::from_value(merged).map_err(|e| {
            PlanError::invalid(at, format!("`services.{name}` with what it extends: {e}"))
        })?;
        services.push((name.clone(), service));
    }
    let Source {
        locations,
        mut raw,
        unset,
        ..
    } = source;
    for (name, service) in services {
        raw.services.insert(name, service);
    }
    let include = raw.other.remove("include");
    let mut file = ComposeFile {
        path: path.to_path_buf(),
        project_dir,
        locations: Rc::try_unwrap(locations).unwrap_or_else(|shared| (*shared).clone()),
        bases,
        services: raw.services,
        vars,
        unset_variables: unset,
        secrets: raw.secrets,
        included: Vec::new(),
    };
    file.check_keys(&raw.other)?;
    file.check_build_keys()?;
    stack.push(canonical(path));
    file.included = includes(&file, include.as_ref(), env, stack)?;
    stack.pop();
    check_unique_services(&file)?;
    Ok(file)
}

/// A link of an `extends` chain: which service, and where it says `extends`.
struct Link {
    file: PathBuf,
    service: String,
    at: Location,
}

/// The service `name` of `source` with its `extends` chain merged, as YAML.
/// What one service's walk up its `extends` chain carries along.
struct Walk<'a> {
    vars: &'a HashMap<String, String>,
    /// The services being extended, to refuse a cycle.
    chain: Vec<Link>,
    sources: &'a mut Sources,
    /// Each base passed, nearest first: where an inherited value is written.
    bases: &'a mut Vec<Base>,
}

fn resolve_extends(source: &Source, name: &str, walk: &mut Walk<'_>) -> Result<Value, PlanError> {
    let chain = &walk.chain;
    let service = source.service(name).cloned().unwrap_or(Value::Null);
    let Some(extends) = service.get("extends") else {
        return Ok(service);
    };
    let at = source.location_of(&format!("services.{name}.extends"));
    let file = canonical(&source.path);
    check_chain(chain, &file, name, &at)?;
    let (base_file, base) = extends_target(extends).ok_or_else(|| {
        PlanError::invalid_with_hint(
            at.clone(),
            format!(
                "`services.{name}.extends` is neither a service name nor a mapping of `service` and `file`"
            ),
            "write `extends: base` or `extends: {service: base, file: common.yaml}`",
        )
    })?;
    let other;
    let base_source = match &base_file {
        Some(f) => {
            let path = source.dir().join(f);
            other = walk.sources.read(&path, walk.vars).map_err(|e| match e {
                PlanError::Read { cause, .. } => PlanError::invalid_with_hint(
                    at.clone(),
                    format!("`extends.file`: cannot read {}: {cause}", path.display()),
                    "the file is relative to the compose file that names it",
                ),
                e => e,
            })?;
            &*other
        }
        None => source,
    };
    if base_source.service(&base).is_none() {
        return Err(unknown_base(base_source, name, &base, at));
    }
    walk.chain.push(Link {
        file,
        service: name.to_string(),
        at,
    });
    walk.bases.push(Base {
        path: base_source.path.clone(),
        locations: Rc::clone(&base_source.locations),
        service: base.clone(),
    });
    let mut base_value = resolve_extends(base_source, &base, walk)?;
    walk.chain.pop();
    if canonical(&base_source.path) != canonical(&source.path) {
        // Absolute: the service's own file joins a relative result to its
        // directory again (`--compose compose.yaml` is relative).
        rebase(&mut base_value, &absolute_dir(base_source.dir()));
    }
    let mut own = service;
    if let Some(map) = own.as_mapping_mut() {
        map.remove("extends");
    }
    Ok(merge_services(base_value, own))
}

/// Refuses an `extends` chain that is too deep, or that comes back to
/// `name` in `file` (naming every link of the cycle).
fn check_chain(chain: &[Link], file: &Path, name: &str, at: &Location) -> Result<(), PlanError> {
    if chain.len() >= MAX_EXTENDS_DEPTH {
        return Err(PlanError::invalid_with_hint(
            at.clone(),
            format!("`extends` goes more than {MAX_EXTENDS_DEPTH} services deep"),
            "extend a service nearer the root of the chain",
        ));
    }
    if let Some(first) = chain
        .iter()
        .position(|l| l.file == file && l.service == name)
    {
        let links: Vec<String> = chain[first..]
            .iter()
            .map(|l| format!("`{}` ({})", l.service, l.at))
            .collect();
        return Err(PlanError::invalid_with_hint(
            chain[first].at.clone(),
            format!("`extends` makes a cycle: {} → `{name}`", links.join(" → ")),
            "remove the `extends` of one of these services",
        ));
    }
    Ok(())
}

/// `name` extends `base`, which `source` does not define.
fn unknown_base(source: &Source, name: &str, base: &str, at: Location) -> PlanError {
    let hint = match did_you_mean(base, source.service_names()) {
        Some(best) => format!("did you mean `{best}`?"),
        None => format!(
            "the services of {} are: {}",
            source.path.display(),
            source.service_names().join(", ")
        ),
    };
    PlanError::invalid_with_hint(
        at,
        format!(
            "`{name}` extends `{base}`, which {} does not define",
            source.path.display()
        ),
        hint,
    )
}

/// `extends: name` or `extends: {service: name, file: path}`.
fn extends_target(value: &Value) -> Option<(Option<String>, String)> {
    match value {
        Value::String(s) => Some((None, s.clone())),
        Value::Mapping(m) => {
            if m.keys()
                .any(|k| !matches!(k.as_str(), Some("service" | "file")))
            {
                return None;
            }
            let service = m.get("service")?.as_str()?.to_string();
            let file = match m.get("file") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_str()?.to_string()),
            };
            Some((file, service))
        }
        _ => None,
    }
}

/// An `include:` entry: the file, and the project it is read as.
struct Include {
    path: PathBuf,
    project_dir: PathBuf,
    env_files: Vec<PathBuf>,
    /// No `env_file` given: the project directory's `.env`, if there is one.
    default_env_file: bool,
}

/// The files of `include:`, each loaded as its own project: paths are
/// relative to the including project's directory; an included file's
/// relative paths to its `project_directory` (default: its own directory),
/// and it is interpolated with its `env_file` (default: that directory's
/// `.env`) under the process environment.
fn includes(
    file: &ComposeFile,
    include: Option<&Value>,
    env: &HashMap<String, String>,
    stack: &mut Vec<PathBuf>,
) -> Result<Vec<ComposeFile>, PlanError> {
    let Some(include) = include.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let Some(entries) = include.as_sequence() else {
        return Err(PlanError::invalid_with_hint(
            file.location_of("include"),
            "`include` is a list",
            "write `include: [other/compose.yaml]` or a list of {path, project_directory, env_file}",
        ));
    };
    let mut out = Vec::new();
    let mut loaded = std::collections::HashSet::new();
    for (i, entry) in entries.iter().enumerate() {
        let at = file.location_of(&format!("include[{i}]"));
        let inc = include_entry(entry, &file.project_dir)
            .map_err(|(message, hint)| PlanError::invalid_with_hint(at.clone(), message, hint))?;
        if !inc.path.is_file() {
            return Err(PlanError::invalid_with_hint(
                at,
                format!("the included file {} does not exist", inc.path.display()),
                format!(
                    "include paths are relative to {}",
                    file.project_dir.display()
                ),
            ));
        }
        if stack.contains(&canonical(&inc.path)) {
            return Err(PlanError::invalid_with_hint(
                at,
                format!(
                    "{} includes itself (through: {})",
                    inc.path.display(),
                    chain(stack)
                ),
                "remove one of the includes that lead back to this file",
            ));
        }
        for f in &inc.env_files {
            if !f.is_file() && !inc.default_env_file {
                return Err(PlanError::invalid(
                    at,
                    format!("the include's env_file {} does not exist", f.display()),
                ));
            }
        }
        if loaded.contains(&canonical(&inc.path)) {
            // Included twice (a diamond): its services are the same ones,
            // which compose takes once.
            continue;
        }
        // The including project's variables (the environment, its .env)
        // win over the include's env_file, as compose has them.
        let vars = variables(&inc.env_files, &file.vars)?;
        let child = load_project(&inc.path, inc.project_dir, vars, env, stack)?;
        loaded.insert(canonical(&inc.path));
        out.push(child);
    }
    Ok(out)
}

fn chain(stack: &[PathBuf]) -> String {
    stack
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" → ")
}

/// One `include:` entry: a path, or `{path, project_directory, env_file}`.
fn include_entry(entry: &Value, base: &Path) -> Result<Include, (String, String)> {
    let form = || {
        (
            "an `include` entry is a path or a mapping with `path`".to_string(),
            "write `- other/compose.yaml` or `- path: other/compose.yaml`".to_string(),
        )
    };
    let (path, project, env_files) = match entry {
        Value::String(p) => (p.clone(), None, Vec::new()),
        Value::Mapping(m) => {
            const KEYS: [&str; 3] = ["path", "project_directory", "env_file"];
            if let Some(key) = m
                .keys()
                .find(|k| !KEYS.contains(&k.as_str().unwrap_or_default()))
            {
                let key = key.as_str().unwrap_or("?");
                let hint = match did_you_mean(key, KEYS) {
                    Some(best) => format!("did you mean `{best}`?"),
                    None => format!("an include entry has: {}", KEYS.join(", ")),
                };
                return Err((format!("unknown key `{key}` in an `include` entry"), hint));
            }
            let path = match m.get("path") {
                Some(Value::String(p)) => p.clone(),
                Some(Value::Sequence(list)) if list.len() == 1 => {
                    list[0].as_str().ok_or_else(form)?.to_string()
                }
                Some(Value::Sequence(_)) => {
                    return Err((
                        "an `include` entry lists several files to merge as overrides; bakery reads one file per entry".into(),
                        "merge the override into the file, or include each file as its own entry".into(),
                    ))
                }
                _ => return Err(form()),
            };
            let (project, env_files) = include_dirs(m)?;
            (path, project, env_files)
        }
        _ => return Err(form()),
    };
    let path = base.join(path);
    let project_dir = match project {
        Some(d) => base.join(d),
        None => path.parent().unwrap_or(Path::new(".")).to_path_buf(),
    };
    let default_env_file = env_files.is_empty();
    let env_files = if default_env_file {
        vec![project_dir.join(".env")]
    } else {
        env_files.iter().map(|f| base.join(f)).collect()
    };
    Ok(Include {
        path,
        project_dir,
        env_files,
        default_env_file,
    })
}

/// An `include` mapping's `project_directory` and `env_file` (one or a
/// list), as written.
fn include_dirs(
    m: &serde_yaml_ng::Mapping,
) -> Result<(Option<String>, Vec<String>), (String, String)> {
    let typed = |what: &str| {
        (
            format!("`{what}` of an `include` entry is not a path"),
            format!("write `{what}: ./dir`"),
        )
    };
    let project = match m.get("project_directory") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) => Some(d.clone()),
        Some(_) => return Err(typed("project_directory")),
    };
    let env_files = match m.get("env_file") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(f)) => vec![f.clone()],
        Some(Value::Sequence(list)) => list
            .iter()
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .ok_or_else(|| typed("env_file"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(typed("env_file")),
    };
    Ok((project, env_files))
}

/// A service name is one service in the whole project: compose refuses an
/// included file that defines a service the project already has.
fn check_unique_services(root: &ComposeFile) -> Result<(), PlanError> {
    let mut seen: HashMap<&str, Location> = HashMap::new();
    for file in root.files() {
        for name in file.services.keys() {
            let here = file.location_of(&format!("services.{name}"));
            if let Some(first) = seen.get(name.as_str()) {
                return Err(PlanError::invalid_with_hint(
                    here,
                    format!("service `{name}` is defined twice: here and at {first}"),
                    "rename one of them: an included file's services join the project's",
                ));
            }
            seen.insert(name, here);
        }
    }
    Ok(())
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The deepest `extends` chain followed: deeper is a mistake, and every
/// level is a merge (a chain of thousands overflowed the stack).
const MAX_EXTENDS_DEPTH: usize = 64;

/// Files read for `extends.file`, each read and parsed once per project
/// (a chain that alternates between two files read them at every link).
#[derive(Default)]
struct Sources(HashMap<PathBuf, std::rc::Rc<Source>>);

impl Sources {
    fn read(
        &mut self,
        path: &Path,
        vars: &HashMap<String, String>,
    ) -> Result<std::rc::Rc<Source>, PlanError> {
        let key = canonical(path);
        if let Some(source) = self.0.get(&key) {
            return Ok(std::rc::Rc::clone(source));
        }
        let source = std::rc::Rc::new(Source::read(path, vars)?);
        self.0.insert(key, std::rc::Rc::clone(&source));
        Ok(source)
    }
}

/// `dir` from the root: `Path::new("")` (a file named without a directory)
/// is the working directory.
fn absolute_dir(dir: &Path) -> PathBuf {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}
