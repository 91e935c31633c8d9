//! The build plan: every (service, arch) to build, fully resolved and checked.
//!
//! Resolution stacks [`Settings`] layers from general to specific:
//!
//! * config.yaml only: `global`, then the `bake` entry of the arch;
//! * compose (with or without config.yaml): config `global`, then the
//!   compose service, then the config `bake` entry of the arch, if any.
//!
//! Every check that can fail does so here, before anything is packed or
//! uploaded, and points at the layer that set the offending value.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use bakery_protocol::reference::ImageRef;
use bakery_protocol::{Arch, BuildSpec};

use crate::compose::{ComposeFile, Service};
use crate::error::{Location, PlanError};
use crate::location::Locations;
use crate::settings::{Cache, Kaniko, Settings};

/// What to plan from.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// The repository root: config.yaml context paths are relative to it.
    pub repo: PathBuf,
    pub config: Option<PathBuf>,
    pub compose: Option<PathBuf>,
    /// Services to build; empty means all.
    pub services: Vec<String>,
    /// The environment for compose interpolation and valueless build args.
    pub env: HashMap<String, String>,
    /// The arch to build when nothing names one.
    pub host_arch: Arch,
    /// A build described by command-line flags instead of a file
    /// (`--tag`, `--file`, …, as docker/build-push-action's inputs).
    pub inline: Option<InlineBuild>,
    /// Flags that apply to every selected service of a config or compose
    /// file, as `docker buildx bake --set '*.…'` does.
    pub overrides: Overrides,
}

/// `--platform`, `--build-arg`, `--label`, `--target`, `--cache` given with
/// a config or compose file: applied to every selected service (never
/// silently dropped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Replace each service's platforms.
    pub platforms: Vec<String>,
    /// Merged over each service's (the flag wins).
    pub build_args: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub target: Option<String>,
    pub cache: bool,
    pub cache_repo: Option<String>,
}

impl Overrides {
    fn settings(&self) -> Option<Settings> {
        let cache = self.cache || self.cache_repo.is_some();
        let none = self.build_args.is_empty() && self.labels.is_empty() && self.target.is_none();
        if none && !cache {
            return None;
        }
        Some(Settings {
            kaniko: Some(Kaniko {
                target: self.target.clone(),
                build_args: (!self.build_args.is_empty()).then(|| self.build_args.clone()),
                labels: (!self.labels.is_empty()).then(|| self.labels.clone()),
                cache: cache.then(|| Cache {
                    enable: Some(true),
                    repo: self.cache_repo.clone(),
                    ..Cache::default()
                }),
                ..Kaniko::default()
            }),
            ..Settings::default()
        })
    }
}

/// A single image described by flags.
#[derive(Debug, Clone, Default)]
pub struct InlineBuild {
    /// The context, relative to the repository.
    pub context: String,
    pub dockerfile: Option<String>,
    /// The first is the destination; the others tag the same index.
    pub tags: Vec<String>,
    /// `linux/amd64`, `linux/arm64`; empty means the host's arch.
    pub platforms: Vec<String>,
    pub build_args: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub target: Option<String>,
    /// `--cache`: the registry layer cache, in `cache_repo` or, when that
    /// is `None`, in the repository derived from the destination.
    pub cache: bool,
    /// `--cache-repo`; implies `cache`.
    pub cache_repo: Option<String>,
}

impl PlanOptions {
    pub fn new(repo: impl Into<PathBuf>) -> Self {
        PlanOptions {
            repo: repo.into(),
            config: None,
            compose: None,
            services: Vec::new(),
            env: std::env::vars().collect(),
            host_arch: Arch::host(),
            inline: None,
            overrides: Overrides::default(),
        }
    }
}

/// Everything to build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub services: Vec<ServicePlan>,
    /// Things the user should know that do not stop the build, each
    /// `file:line:col: …` where it has a place.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The compose file found in the repository when none was named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovered: Option<PathBuf>,
}

/// One image: its arches and the multi-arch tag that joins them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServicePlan {
    pub name: String,
    /// The multi-arch index tag; `None` when the build does not push.
    pub destination: Option<String>,
    /// More tags for the same index, in the destination's repository
    /// (compose `build.tags`, or every `--tag` after the first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    pub builds: Vec<ArchBuild>,
}

/// One agent's work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchBuild {
    pub arch: Arch,
    /// The per-arch tag the agent pushes; `None` for a build without push.
    pub push: Option<String>,
    /// The context directory on the client; the agent gets it as an archive.
    pub context_dir: PathBuf,
    pub spec: BuildSpec,
}

impl Plan {
    /// Resolves and validates a plan from files on disk.
    pub fn resolve(opts: &PlanOptions) -> Result<Plan, PlanError> {
        let mut plan = Self::resolve_files(opts)?;
        plan.warn_secret_build_args();
        Ok(plan)
    }

    /// Build args named like secrets end up in the image's history, where
    /// anyone who can pull the image reads them.
    fn warn_secret_build_args(&mut self) {
        let mut named: Vec<(String, String)> = self
            .builds()
            .flat_map(|(service, b)| {
                b.spec
                    .build_args
                    .keys()
                    .filter(|k| looks_secret(k))
                    .map(|k| (service.name.clone(), k.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        named.sort();
        named.dedup();
        for (service, arg) in named {
            self.warnings.push(format!(
                "build arg `{arg}` of `{service}` looks like a secret: build args are kept in the image's history, readable by anyone who can pull it; pass it as a build secret (RUN --mount=type=secret) instead"
            ));
        }
    }

    fn resolve_files(opts: &PlanOptions) -> Result<Plan, PlanError> {
        let repo = absolute(&opts.repo);
        if let Some(inline) = &opts.inline {
            if opts.config.is_some() || opts.compose.is_some() {
                return Err(PlanError::Conflict(
                    "--tag describes the build by flags; it cannot be combined with --config or --compose".into(),
                ));
            }
            return Resolver {
                repo: &repo,
                config: None,
                host_arch: opts.host_arch,
                overrides: &Overrides::default(),
            }
            .plan_inline(inline, &opts.services);
        }
        let mut discovered = None;
        let (config_path, compose_path) = match (&opts.config, &opts.compose) {
            (None, None) => {
                let default = repo.join("config.yaml");
                if default.is_file() {
                    (Some(default), None)
                } else {
                    let found = discover_compose(&repo, &opts.env)?;
                    discovered = Some(found.clone());
                    (None, Some(found))
                }
            }
            (config, compose) => (config.clone(), compose.clone()),
        };
        let config = config_path.as_deref().map(ConfigFile::load).transpose()?;
        let compose = compose_path
            .as_deref()
            .map(|p| ComposeFile::load(p, &opts.env))
            .transpose()?;
        let resolver = Resolver {
            repo: &repo,
            config: config.as_ref(),
            host_arch: opts.host_arch,
            overrides: &opts.overrides,
        };
        let mut plan = match &compose {
            Some(compose) => resolver
                .plan_compose(compose, &opts.services)
                .map_err(|e| compose.explain_unset(e))?,
            None => resolver.plan_config(&opts.services)?,
        };
        plan.discovered = discovered;
        if let Some(compose) = &compose {
            for unset in &compose.unset_variables {
                plan.warnings.push(format!(
                    "{}: variable `{}` is not set; it was replaced by an empty string",
                    Location::new(&compose.path, unset.line, unset.column),
                    unset.name
                ));
            }
            for path in compose.ignored_keys() {
                plan.warnings.push(format!(
                    "{}: `{path}` is not applied by bakery; it is ignored",
                    compose.location_of(&path)
                ));
            }
        }
        Ok(plan)
    }

    /// A copy safe to show: every password replaced by `***`, wherever its
    /// value appears (a build arg or a script can carry it too).
    pub fn redacted(&self) -> Plan {
        let redactor = bakery_protocol::redact::Redactor::new(
            self.builds()
                .flat_map(|(_, b)| {
                    b.spec
                        .credentials
                        .iter()
                        .map(|c| c.password.expose().to_string())
                })
                .collect::<Vec<_>>(),
        );
        let mut value = serde_json::to_value(self).expect("plans serialise");
        redact_strings(&mut value, &redactor);
        serde_json::from_value(value).expect("a redacted plan is still a plan")
    }

    /// Every (service, arch) pair.
    pub fn builds(&self) -> impl Iterator<Item = (&ServicePlan, &ArchBuild)> {
        self.services
            .iter()
            .flat_map(|s| s.builds.iter().map(move |b| (s, b)))
    }
}

fn redact_strings(value: &mut serde_json::Value, redactor: &bakery_protocol::redact::Redactor) {
    match value {
        serde_json::Value::String(s) => *s = redactor.redact(s),
        serde_json::Value::Array(items) => {
            items.iter_mut().for_each(|v| redact_strings(v, redactor))
        }
        serde_json::Value::Object(map) => {
            map.values_mut().for_each(|v| redact_strings(v, redactor))
        }
        _ => {}
    }
}

/// config.yaml as read from disk.
struct ConfigFile {
    path: PathBuf,
    locations: Locations,
    global: Settings,
    bake: Vec<Settings>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    global: Settings,
    #[serde(default)]
    bake: Vec<Settings>,
}

impl ConfigFile {
    fn load(path: &Path) -> Result<ConfigFile, PlanError> {
        let text = std::fs::read_to_string(path).map_err(|source| PlanError::Read {
            path: path.to_path_buf(),
            cause: source,
        })?;
        let raw: RawConfig = crate::yaml::parse(path, &text)?;
        let file = ConfigFile {
            path: path.to_path_buf(),
            locations: Locations::index(&text),
            global: raw.global,
            bake: raw.bake,
        };
        file.check_bake_arches()?;
        Ok(file)
    }

    fn location_of(&self, path: &str) -> Location {
        let pos = self.locations.nearest(path);
        Location::new(&self.path, pos.line, pos.column)
    }

    /// Each bake entry names one arch, and no arch twice.
    fn check_bake_arches(&self) -> Result<(), PlanError> {
        let mut seen: Vec<Arch> = Vec::new();
        for (i, entry) in self.bake.iter().enumerate() {
            let Some(arch) = entry.arch else {
                return Err(PlanError::invalid_with_hint(
                    self.location_of(&format!("bake[{i}]")),
                    format!("bake entry {} has no `arch`", i + 1),
                    "add `arch: amd64` or `arch: arm64` to the entry",
                ));
            };
            if seen.contains(&arch) {
                return Err(PlanError::invalid_with_hint(
                    self.location_of(&format!("bake[{i}].arch")),
                    format!("arch `{arch}` has two bake entries"),
                    "merge them into one entry",
                ));
            }
            seen.push(arch);
        }
        Ok(())
    }

    fn bake_for(&self, arch: Arch) -> Option<(usize, &Settings)> {
        self.bake
            .iter()
            .enumerate()
            .find(|(_, b)| b.arch == Some(arch))
    }

    fn layer(&self, settings: &Settings, prefix: String) -> Layer<'_> {
        Layer {
            settings: settings.clone(),
            file: &self.path,
            locations: &self.locations,
            prefix,
            kind: LayerKind::Config,
        }
    }
}

/// The fields whose origin an error may need to point at.
#[derive(Clone, Copy)]
enum Field {
    ContextPath,
    Dockerfile,
    Destination,
    CompressionLevel,
}

#[derive(Clone, Copy, PartialEq)]
enum LayerKind {
    Config,
    Compose,
}

/// One layer of settings and the place in a file it came from.
struct Layer<'a> {
    settings: Settings,
    file: &'a Path,
    locations: &'a Locations,
    prefix: String,
    kind: LayerKind,
}

impl Layer<'_> {
    fn has(&self, field: Field) -> bool {
        let k = self.settings.kaniko.as_ref();
        match field {
            Field::ContextPath => k.and_then(|k| k.context_path.as_ref()).is_some(),
            Field::Dockerfile => k.and_then(|k| k.dockerfile.as_ref()).is_some(),
            Field::Destination => k.and_then(|k| k.destination.as_ref()).is_some(),
            Field::CompressionLevel => k.and_then(|k| k.compression_level).is_some(),
        }
    }

    fn yaml_path(&self, field: Field) -> String {
        let suffix = match (self.kind, field) {
            (LayerKind::Config, Field::ContextPath) => "kaniko.context-path",
            (LayerKind::Config, Field::Dockerfile) => "kaniko.dockerfile",
            (LayerKind::Config, Field::Destination) => "kaniko.destination",
            (LayerKind::Compose, Field::ContextPath) => "build.context",
            (LayerKind::Compose, Field::Dockerfile) => "build.dockerfile",
            (LayerKind::Compose, Field::Destination) => "image",
            (_, Field::CompressionLevel) => "kaniko.compression-level",
        };
        format!("{}.{suffix}", self.prefix)
    }

    fn is_bake(&self) -> bool {
        self.kind == LayerKind::Config && self.prefix.starts_with("bake[")
    }

    fn location(&self, path: &str) -> Location {
        let pos = self.locations.nearest(path);
        Location::new(self.file, pos.line, pos.column)
    }
}

/// Where a merged value came from: the most specific layer that set it, or
/// (when none did) the most specific layer, where it should be added.
fn origin(layers: &[Layer], field: Field) -> Location {
    match layers.iter().rev().find(|l| l.has(field)) {
        Some(layer) => layer.location(&layer.yaml_path(field)),
        None => {
            let top = layers.last().expect("at least one layer");
            top.location(&top.prefix)
        }
    }
}

struct Resolver<'a> {
    repo: &'a Path,
    config: Option<&'a ConfigFile>,
    host_arch: Arch,
    overrides: &'a Overrides,
}

impl Resolver<'_> {
    fn plan_config(&self, filter: &[String]) -> Result<Plan, PlanError> {
        let config = self
            .config
            .expect("config present when there is no compose");
        let arches: Vec<(Arch, Option<usize>)> = match self.override_arches()? {
            Some(arches) => arches
                .into_iter()
                .map(|a| (a, config.bake_for(a).map(|(i, _)| i)))
                .collect(),
            None if config.bake.is_empty() => {
                vec![(config.global.arch.unwrap_or(self.host_arch), None)]
            }
            None => config
                .bake
                .iter()
                .enumerate()
                .filter_map(|(i, b)| b.arch.map(|a| (a, Some(i))))
                .collect(),
        };
        let mut builds = Vec::new();
        for (arch, bake_index) in arches {
            let mut layers = vec![config.layer(&config.global, "global".into())];
            if let Some(i) = bake_index {
                layers.push(config.layer(&config.bake[i], format!("bake[{i}]")));
            }
            self.push_flags(&mut layers);
            builds.push(self.resolve_arch(arch, &layers)?);
        }
        let name = service_name(builds.iter().map(|(b, _)| b), self.repo);
        if !filter.is_empty() && !filter.iter().any(|f| f == &name) {
            return Err(PlanError::UnknownServices {
                unknown: filter.iter().filter(|f| **f != name).cloned().collect(),
                known: vec![name],
            });
        }
        Ok(Plan {
            services: vec![service_plan(name, builds)],
            warnings: Vec::new(),
            discovered: None,
        })
    }

    /// A build from flags: the same checks, reported against the flags.
    fn plan_inline(&self, inline: &InlineBuild, filter: &[String]) -> Result<Plan, PlanError> {
        let flags = Path::new("command line");
        let at = |_: usize| Location::new(flags, 1, 1);
        let Some(first) = inline.tags.first() else {
            return Err(PlanError::invalid(at(0), "no --tag given"));
        };
        let mut arches = Vec::new();
        for p in &inline.platforms {
            let arch = Arch::from_platform(p)
                .map_err(|m| PlanError::invalid(at(0), format!("--platform: {m}")))?;
            if !arches.contains(&arch) {
                arches.push(arch);
            }
        }
        if arches.is_empty() {
            arches.push(self.host_arch);
        }
        let settings = Settings {
            kaniko: Some(Kaniko {
                context_path: Some(inline.context.clone()),
                dockerfile: inline.dockerfile.clone(),
                destination: Some(first.clone()),
                target: inline.target.clone(),
                build_args: Some(inline.build_args.clone()),
                labels: Some(inline.labels.clone()),
                cache: (inline.cache || inline.cache_repo.is_some()).then(|| Cache {
                    enable: Some(true),
                    repo: inline.cache_repo.clone(),
                    ..Cache::default()
                }),
                ..Kaniko::default()
            }),
            ..Settings::default()
        };
        let locations = Locations::default();
        let layer = Layer {
            settings,
            file: flags,
            locations: &locations,
            prefix: String::new(),
            kind: LayerKind::Config,
        };
        let mut builds = Vec::new();
        for arch in arches {
            builds.push(self.resolve_arch(arch, std::slice::from_ref(&layer))?);
        }
        let name = service_name(builds.iter().map(|(b, _)| b), self.repo);
        if !filter.is_empty() && !filter.iter().any(|f| f == &name) {
            return Err(PlanError::UnknownServices {
                unknown: filter.iter().filter(|f| **f != name).cloned().collect(),
                known: vec![name],
            });
        }
        let mut plan = service_plan(name, builds);
        plan.tags = extra_tags(plan.destination.as_deref(), &inline.tags[1..], at)?;
        Ok(Plan {
            services: vec![plan],
            warnings: Vec::new(),
            discovered: None,
        })
    }

    fn plan_compose(&self, compose: &ComposeFile, filter: &[String]) -> Result<Plan, PlanError> {
        let buildable: Vec<&String> = compose
            .services
            .iter()
            .filter(|(_, s)| s.build.is_some())
            .map(|(n, _)| n)
            .collect();
        if let Some(name) = filter
            .iter()
            .find(|f| compose.services.contains_key(*f) && !buildable.iter().any(|b| b == f))
        {
            let image = compose.services[name].image.clone();
            return Err(PlanError::invalid_with_hint(
                compose.location_of(&format!("services.{name}")),
                format!(
                    "service `{name}` has no `build` section{}: bakery builds images, it does not run services",
                    image.map(|i| format!(" (compose runs it from `{i}`)")).unwrap_or_default()
                ),
                format!(
                    "build only the services that have one{}, or give `{name}` a `build` section",
                    if buildable.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " ({})",
                            buildable.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                        )
                    }
                ),
            ));
        }
        let unknown: Vec<String> = filter
            .iter()
            .filter(|f| !buildable.iter().any(|b| b == f))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(PlanError::UnknownServices {
                unknown,
                known: buildable.iter().map(|s| s.to_string()).collect(),
            });
        }
        if buildable.is_empty() {
            return Err(PlanError::invalid_with_hint(
                compose.location_of("services"),
                "no service has a `build` section",
                "add `build: .` (or a build mapping) to the services bakery should build",
            ));
        }
        let mut services = Vec::new();
        for name in buildable {
            if !filter.is_empty() && !filter.contains(name) {
                continue;
            }
            let service = &compose.services[name];
            let prefix = format!("services.{name}");
            let service_settings = self.compose_settings(compose, service);
            let mut builds = Vec::new();
            for arch in self.compose_arches(compose, service, &prefix)? {
                let mut layers = Vec::new();
                if let Some(config) = self.config {
                    layers.push(config.layer(&config.global, "global".into()));
                }
                layers.push(Layer {
                    settings: service_settings.clone(),
                    file: &compose.path,
                    locations: &compose.locations,
                    prefix: prefix.clone(),
                    kind: LayerKind::Compose,
                });
                if let Some((i, bake)) = self.config.and_then(|c| c.bake_for(arch)) {
                    let config = self.config.expect("bake entry implies config");
                    layers.push(config.layer(bake, format!("bake[{i}]")));
                }
                self.push_flags(&mut layers);
                builds.push(self.resolve_arch(arch, &layers)?);
            }
            let mut plan = service_plan(name.clone(), builds);
            let tags = service
                .build
                .as_ref()
                .and_then(|b| b.0.tags.clone())
                .unwrap_or_default();
            plan.tags = extra_tags(plan.destination.as_deref(), &tags, |i| {
                compose.location_of(&format!("{prefix}.build.tags[{i}]"))
            })?;
            services.push(plan);
        }
        Ok(Plan {
            services,
            warnings: Vec::new(),
            discovered: None,
        })
    }

    /// A compose service as a settings layer. Its context is rewritten
    /// relative to the repository so that all layers share one base.
    fn compose_settings(&self, compose: &ComposeFile, service: &Service) -> Settings {
        let build = &service.build.as_ref().expect("buildable service").0;
        let compose_dir = absolute(compose.path.parent().unwrap_or(Path::new(".")));
        let context = normalize(&compose_dir.join(build.context.as_deref().unwrap_or(".")));
        let context = match context.strip_prefix(self.repo) {
            Ok(rel) if rel.as_os_str().is_empty() => ".".to_string(),
            Ok(rel) => rel.to_string_lossy().into_owned(),
            Err(_) => context.to_string_lossy().into_owned(),
        };
        let from_env = |vars: &Option<BTreeMap<String, Option<String>>>| {
            vars.as_ref().map(|m| {
                m.iter()
                    .filter_map(|(k, v)| {
                        v.clone()
                            .or_else(|| compose.vars.get(k).cloned())
                            .map(|v| (k.clone(), v))
                    })
                    .collect::<BTreeMap<_, _>>()
            })
        };
        Settings {
            kaniko: Some(Kaniko {
                context_path: Some(context),
                dockerfile: build.dockerfile.clone(),
                destination: service.image.clone(),
                target: build.target.clone(),
                build_args: from_env(&build.args),
                labels: from_env(&build.labels),
                cache_from: build.cache_from.clone(),
                ..Kaniko::default()
            }),
            ..Settings::default()
        }
    }

    /// `--platform` given with a config or compose file: the arches of
    /// every service.
    fn override_arches(&self) -> Result<Option<Vec<Arch>>, PlanError> {
        if self.overrides.platforms.is_empty() {
            return Ok(None);
        }
        let mut arches = Vec::new();
        for p in &self.overrides.platforms {
            let arch = Arch::from_platform(p).map_err(|m| {
                PlanError::invalid(
                    Location::new(Path::new("command line"), 1, 1),
                    format!("--platform: {m}"),
                )
            })?;
            if !arches.contains(&arch) {
                arches.push(arch);
            }
        }
        Ok(Some(arches))
    }

    /// The flags that apply to every service, as a last layer (errors about
    /// the fields they set point at the service's own layer).
    fn push_flags<'l>(&self, layers: &mut Vec<Layer<'l>>) {
        let (Some(settings), Some(top)) = (self.overrides.settings(), layers.last()) else {
            return;
        };
        let layer = Layer {
            settings,
            file: top.file,
            locations: top.locations,
            prefix: top.prefix.clone(),
            kind: top.kind,
        };
        layers.push(layer);
    }

    /// The arches of a compose service, from the most specific place that names them.
    fn compose_arches(
        &self,
        compose: &ComposeFile,
        service: &Service,
        prefix: &str,
    ) -> Result<Vec<Arch>, PlanError> {
        if let Some(arches) = self.override_arches()? {
            return Ok(arches);
        }
        let build = &service.build.as_ref().expect("buildable service").0;
        let listed = [
            (
                build.x_bake.as_ref().and_then(|x| x.platforms.clone()),
                "build.x-bake.platforms",
            ),
            (
                service.x_bake.as_ref().and_then(|x| x.platforms.clone()),
                "x-bake.platforms",
            ),
            (build.platforms.clone(), "build.platforms"),
            (service.platform.clone().map(|p| vec![p]), "platform"),
        ]
        .into_iter()
        .find_map(|(list, path)| list.map(|l| (l, path)));
        let Some((platforms, path)) = listed else {
            return Ok(match self.config {
                Some(c) if !c.bake.is_empty() => c.bake.iter().filter_map(|b| b.arch).collect(),
                Some(c) => vec![c.global.arch.unwrap_or(self.host_arch)],
                None => vec![self.host_arch],
            });
        };
        let mut arches = Vec::new();
        for (i, platform) in platforms.iter().enumerate() {
            let item = if path == "platform" {
                format!("{prefix}.platform")
            } else {
                format!("{prefix}.{path}[{i}]")
            };
            let arch = Arch::from_platform(platform)
                .map_err(|m| PlanError::invalid(compose.location_of(&item), m))?;
            if !arches.contains(&arch) {
                arches.push(arch);
            }
        }
        if arches.is_empty() {
            return Err(PlanError::invalid(
                compose.location_of(&format!("{prefix}.{path}")),
                "the platform list is empty",
            ));
        }
        Ok(arches)
    }

    /// Merges `layers` and checks the result for one arch.
    fn resolve_arch(
        &self,
        arch: Arch,
        layers: &[Layer],
    ) -> Result<(ArchBuild, Option<String>), PlanError> {
        let merged = layers
            .iter()
            .fold(Settings::default(), |acc, l| acc.overlay(&l.settings));
        let kaniko = merged.kaniko();
        let no_push = kaniko.no_push.unwrap_or(false);

        let context_rel = kaniko.context_path.clone().unwrap_or_else(|| ".".into());
        let context_dir = normalize(&self.repo.join(&context_rel));
        if !context_dir.is_dir() {
            return Err(PlanError::invalid_with_hint(
                origin(layers, Field::ContextPath),
                format!("build context `{}` is not a directory", context_dir.display()),
                "context paths are relative to the repository (--repo) in config.yaml and to the compose file's directory in compose",
            ));
        }

        let dockerfile = kaniko
            .dockerfile
            .clone()
            .unwrap_or_else(|| "Dockerfile".into());
        check_dockerfile(&context_dir, &dockerfile).map_err(|(msg, hint)| {
            PlanError::invalid_with_hint(origin(layers, Field::Dockerfile), msg, hint)
        })?;

        if let Some(level) = kaniko.compression_level {
            let codec = kaniko
                .compression
                .unwrap_or(bakery_protocol::Compression::Gzip);
            let (name, max) = (codec.to_string(), codec.max_level());
            if !(1..=max).contains(&level) {
                return Err(PlanError::invalid_with_hint(
                    origin(layers, Field::CompressionLevel),
                    format!("compression level {level} is out of range for {name}"),
                    format!("{name} levels go from 1 to {max}"),
                ));
            }
        }

        // The index tag comes from the layers shared by every arch; a bake
        // entry's own destination is where that arch alone is pushed.
        let (shared, arch_layer) = match layers.split_last() {
            Some((top, rest)) if top.is_bake() => (rest, Some(top)),
            _ => (layers, None),
        };
        let index_dest = shared
            .iter()
            .fold(Kaniko::default(), |acc, l| {
                acc.overlay(&l.settings.kaniko())
            })
            .destination;
        let parse = |dest: &str, from: &[Layer]| {
            ImageRef::parse(dest)
                .map_err(|m| PlanError::invalid(origin(from, Field::Destination), m))
        };
        let index = index_dest
            .as_deref()
            .map(|d| parse(d, shared))
            .transpose()?;
        let own = arch_layer
            .filter(|l| l.has(Field::Destination))
            .and_then(|l| l.settings.kaniko().destination);
        let push = match (own, &index) {
            (_, _) if no_push => None,
            (Some(own), index) => {
                let own_ref = parse(&own, layers)?;
                // An index can only reference manifests in its own repository.
                if let Some(index) = index.as_ref().filter(|i| {
                    (&i.registry, &i.repository) != (&own_ref.registry, &own_ref.repository)
                }) {
                    return Err(PlanError::invalid_with_hint(
                        origin(layers, Field::Destination),
                        format!(
                            "the {arch} destination `{own_ref}` is not in the repository of the multi-arch tag `{index}`"
                        ),
                        format!("an image index can only reference images in its own repository; push to {}/{}:<tag>", index.registry, index.repository),
                    ));
                }
                Some(own_ref)
            }
            (None, Some(index)) => Some(
                index
                    .with_arch_suffix(arch)
                    .map_err(|m| PlanError::invalid(origin(layers, Field::Destination), m))?,
            ),
            (None, None) => {
                let top = layers.last().expect("at least one layer");
                let hint = match top.kind {
                    LayerKind::Compose => "set `image:` on the service",
                    LayerKind::Config => {
                        "set `kaniko.destination` in `global` (or in this bake entry)"
                    }
                };
                return Err(PlanError::invalid_with_hint(
                    top.location(&top.prefix),
                    format!("no destination for the {arch} build"),
                    hint,
                ));
            }
        };
        let index = if no_push {
            None
        } else {
            index.map(|r| r.to_string())
        };

        let cache = per_arch_cache(kaniko.cache.unwrap_or_default(), push.as_ref(), arch);
        let build = ArchBuild {
            arch,
            push: push.map(|p| p.to_string()),
            context_dir,
            spec: BuildSpec {
                platform: merged.platform,
                dockerfile,
                target: kaniko.target,
                build_args: kaniko.build_args.unwrap_or_default(),
                labels: kaniko.labels.unwrap_or_default(),
                env: merged.env.unwrap_or_default(),
                pre_script: merged.pre_script,
                post_script: merged.post_script,
                credentials: merged.kaniko_credentials.unwrap_or_default(),
                cpu: merged.cpu,
                memory: merged.memory,
                spot: merged.spot.unwrap_or(false),
                cache: cache.into(),
                cache_from: kaniko.cache_from.unwrap_or_default(),
                snapshot_mode: kaniko.snapshot_mode,
                use_new_run: kaniko.use_new_run.unwrap_or(false),
                cleanup: kaniko.cleanup.unwrap_or(false),
                custom_platform: kaniko
                    .custom_platform
                    .unwrap_or_else(|| arch.platform().into()),
                no_push,
                ignore_path: kaniko.ignore_path.unwrap_or_default(),
                extra_flags: kaniko.extra_flags.unwrap_or_default(),
                compression: kaniko.compression,
                compression_level: kaniko.compression_level,
            },
        };
        Ok((build, index))
    }
}

/// Layer caches are per arch, so that an arm64 build can never pick up an
/// amd64 layer whose cache key happens to match (a `FROM scratch` stage has
/// no per-arch base digest in its key): with the cache on, an arch gets
/// `<repo>-<arch>`, where `<repo>` is `cache.repo`, or, when none is set,
/// `<destination repository>-cache` in the destination's registry (also when
/// `cache.repo` is a bare registry host, as in the original README's
/// example: then in that registry). A build that neither pushes nor names a
/// repository keeps none.
fn per_arch_cache(mut cache: Cache, push: Option<&ImageRef>, arch: Arch) -> Cache {
    if cache.enable != Some(true) {
        return cache;
    }
    let base = match (cache.repo.take(), push) {
        (Some(repo), _) if repo.contains('/') => Some(repo),
        (Some(host), Some(dest)) => Some(format!("{host}/{}-cache", dest.repository)),
        (Some(repo), None) => Some(repo),
        (None, Some(dest)) => Some(format!("{}/{}-cache", dest.registry, dest.repository)),
        (None, None) => None,
    };
    // A repository already ending in `-<arch>` (a bake entry's own) stays.
    let suffix = format!("-{arch}");
    cache.repo = base.map(|b| {
        if b.ends_with(&suffix) {
            b
        } else {
            format!("{b}{suffix}")
        }
    });
    cache
}

/// Groups arch builds into a service, under the index tag they share.
fn service_plan(name: String, resolved: Vec<(ArchBuild, Option<String>)>) -> ServicePlan {
    let destination = resolved.iter().find_map(|(_, index)| index.clone());
    ServicePlan {
        name,
        destination,
        tags: Vec::new(),
        builds: resolved.into_iter().map(|(b, _)| b).collect(),
    }
}

/// Checks extra tags: tags, in the index's repository (an index can only
/// reference manifests in its own repository). Returns them normalised.
fn extra_tags(
    destination: Option<&str>,
    tags: &[String],
    at: impl Fn(usize) -> Location,
) -> Result<Vec<String>, PlanError> {
    let Some(dest) = destination.and_then(|d| ImageRef::parse(d).ok()) else {
        return Ok(Vec::new());
    };
    tags.iter()
        .enumerate()
        .map(|(i, t)| {
            let r = ImageRef::parse(t).map_err(|m| PlanError::invalid(at(i), m))?;
            if (&r.registry, &r.repository) != (&dest.registry, &dest.repository) {
                return Err(PlanError::invalid_with_hint(
                    at(i),
                    format!("tag `{t}` is not in the repository of `{dest}`"),
                    format!(
                        "extra tags name the same image in {}/{}",
                        dest.registry, dest.repository
                    ),
                ));
            }
            Ok(r.to_string())
        })
        .collect()
}

/// With neither `--config` nor `--compose` and no config.yaml: the compose
/// file `docker compose` would use — `COMPOSE_FILE`, then `compose.yaml`,
/// `compose.yml`, `docker-compose.yaml`, `docker-compose.yml` in the repository.
fn discover_compose(repo: &Path, env: &HashMap<String, String>) -> Result<PathBuf, PlanError> {
    const NAMES: [&str; 4] = [
        "compose.yaml",
        "compose.yml",
        "docker-compose.yaml",
        "docker-compose.yml",
    ];
    if let Some(listed) = env.get("COMPOSE_FILE").filter(|v| !v.trim().is_empty()) {
        let separator = env
            .get("COMPOSE_PATH_SEPARATOR")
            .and_then(|s| s.chars().next())
            .unwrap_or(':');
        let files: Vec<&str> = listed.split(separator).filter(|f| !f.is_empty()).collect();
        if files.len() > 1 {
            return Err(PlanError::Conflict(format!(
                "COMPOSE_FILE names {} files ({listed}); bakery reads one compose file: pass it with --compose",
                files.len()
            )));
        }
        let path = repo.join(files[0]);
        if !path.is_file() {
            return Err(PlanError::Conflict(format!(
                "COMPOSE_FILE names {}, which does not exist",
                path.display()
            )));
        }
        return Ok(path);
    }
    NAMES
        .iter()
        .map(|n| repo.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| PlanError::NothingToBuild {
            looked_for: format!(
                "{} and a compose file ({}) in {}",
                repo.join("config.yaml").display(),
                NAMES.join(", "),
                repo.display()
            ),
        })
}

/// Whether a build arg's name says it holds a secret.
fn looks_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    [
        "PASSWORD",
        "PASSWD",
        "TOKEN",
        "SECRET",
        "PRIVATE_KEY",
        "API_KEY",
        "APIKEY",
    ]
    .iter()
    .any(|s| upper.contains(s))
}

/// A config.yaml describes one image: name it after its repository.
fn service_name<'a>(builds: impl Iterator<Item = &'a ArchBuild>, repo: &Path) -> String {
    builds
        .filter_map(|b| b.push.as_deref())
        .filter_map(|p| ImageRef::parse(p).ok())
        .map(|r| r.short_name().to_string())
        .next()
        .or_else(|| repo.file_name().map(|n| service_safe(&n.to_string_lossy())))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "app".into())
}

/// A directory name as a service name: what the controller accepts
/// ([`bakery_protocol::validate`]: letters, digits, `.`, `_`, `-`), other characters
/// as `-`.
fn service_safe(name: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    mapped
        .trim_start_matches(['.', '_', '-'])
        .chars()
        .take(bakery_protocol::validate::MAX_SERVICE_NAME)
        .collect()
}

/// The Dockerfile must be a file inside the context, since the context is
/// all the agent receives. Errors are (message, hint).
fn check_dockerfile(context: &Path, dockerfile: &str) -> Result<(), (String, String)> {
    let rel = Path::new(dockerfile);
    if rel.is_absolute() || rel.components().any(|c| c == Component::ParentDir) {
        return Err((
            format!("dockerfile `{dockerfile}` is outside the build context"),
            "the agent only receives the context; give the Dockerfile's path relative to the context".into(),
        ));
    }
    let path = context.join(rel);
    if !path.is_file() {
        let mut near: Vec<String> = std::fs::read_dir(context)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n.contains("Dockerfile")
                    || n.contains("dockerfile")
                    || n.ends_with(".Containerfile")
                    || n == "Containerfile"
            })
            .collect();
        near.sort();
        let hint = if near.is_empty() {
            "dockerfile paths are relative to the build context".to_string()
        } else {
            format!("the context has: {}", near.join(", "))
        };
        return Err((
            format!(
                "dockerfile `{dockerfile}` not found in the build context `{}`",
                context.display()
            ),
            hint,
        ));
    }
    // A symlink (or a directory on the way that is one) leading out of the
    // context is stored as a link: the agent would find nothing, or a file
    // of its own machine.
    let inside = match (context.canonicalize(), path.canonicalize()) {
        (Ok(root), Ok(real)) => real.starts_with(root),
        _ => true,
    };
    if !inside {
        return Err((
            format!("dockerfile `{dockerfile}` is a symlink that leads out of the build context"),
            "the agent only receives the context; copy the Dockerfile into it, or make the context the directory that holds it".into(),
        ));
    }
    Ok(())
}

fn absolute(p: &Path) -> PathBuf {
    normalize(&std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()))
}

/// Lexically removes `.` and `..`, so paths compare as users expect.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
