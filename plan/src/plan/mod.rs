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

mod arch;
mod config_file;
mod layer;
mod paths;
mod resolver;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use bakery_protocol::reference::ImageRef;
use bakery_protocol::{Arch, BuildSpec};

use crate::compose::ComposeFile;
use crate::error::{Location, PlanError};
use crate::secrets::SecretRef;
use crate::settings::{Cache, Kaniko, Settings};
use config_file::ConfigFile;
use paths::{absolute, discover_compose};
use resolver::Resolver;

/// What to plan from.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// The repository root: config.yaml context paths are relative to it.
    pub repo: PathBuf,
    /// `--config`: the config.yaml to read; with neither file named,
    /// `config.yaml` in `repo` when it exists, else a compose file found there.
    pub config: Option<PathBuf>,
    /// `--compose`: the compose file to read; given with `config`, config.yaml's
    /// `global` and `bake` layers apply to its services.
    pub compose: Option<PathBuf>,
    /// Services to build; empty means all (of the active profiles).
    pub services: Vec<String>,
    /// Compose profiles to activate (`--profile`, `COMPOSE_PROFILES`): a
    /// service with `profiles:` is built only when one is active, or when
    /// `services` names it.
    pub profiles: Vec<String>,
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
    /// `--label`: merged over each service's labels (the flag wins).
    pub labels: BTreeMap<String, String>,
    /// `--target`: the Dockerfile stage every service builds, replacing the file's.
    pub target: Option<String>,
    /// `--cache`: turn the registry layer cache on for every service.
    pub cache: bool,
    /// `--cache-repo`: the cache's base repository for every service (implies `cache`).
    pub cache_repo: Option<String>,
    /// `--secret`: added to every service's (the flag wins on an id);
    /// files relative to the working directory. With `--tag` too.
    pub secrets: Vec<SecretRef>,
    /// `--push=false`: build and check every arch, push nothing.
    pub no_push: bool,
    /// `--disk`: every agent's scratch disk, replacing the files'.
    pub disk: Option<bakery_protocol::resources::Disk>,
    /// `--no-cache`: the layer cache off for every service, whatever the
    /// files say (it cannot be given with `cache`).
    pub no_cache: bool,
}

impl Overrides {
    fn settings(&self) -> Option<Settings> {
        let cache = self.cache || self.cache_repo.is_some();
        // Secrets are not a layer: they are read where the flag was given.
        let none = self.build_args.is_empty()
            && self.labels.is_empty()
            && self.target.is_none()
            && self.disk.is_none()
            && !self.no_push;
        if none && !cache && !self.no_cache {
            return None;
        }
        let cache = if self.no_cache {
            Some(Cache {
                enable: Some(false),
                ..Cache::default()
            })
        } else {
            cache.then(|| Cache {
                enable: Some(true),
                repo: self.cache_repo.clone(),
                ..Cache::default()
            })
        };
        Some(Settings {
            kaniko: Some(Kaniko {
                target: self.target.clone(),
                build_args: (!self.build_args.is_empty()).then(|| self.build_args.clone()),
                labels: (!self.labels.is_empty()).then(|| self.labels.clone()),
                cache,
                no_push: self.no_push.then_some(true),
                ..Kaniko::default()
            }),
            disk: self.disk,
            ..Settings::default()
        })
    }
}

/// A single image described by flags.
#[derive(Debug, Clone, Default)]
pub struct InlineBuild {
    /// The context, relative to the repository.
    pub context: String,
    /// `--file`: the Dockerfile; a path that exists from the repository wins, else
    /// it is relative to the context; `None` means `Dockerfile` in the context.
    pub dockerfile: Option<String>,
    /// The first is the destination; the others tag the same index.
    pub tags: Vec<String>,
    /// `linux/amd64`, `linux/arm64`; empty means the host's arch.
    pub platforms: Vec<String>,
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// `--label` values.
    pub labels: BTreeMap<String, String>,
    /// `--target`: the Dockerfile stage to build.
    pub target: Option<String>,
    /// `--cache`: the registry layer cache, in `cache_repo` or, when that
    /// is `None`, in the repository derived from the destination.
    pub cache: bool,
    /// `--cache-repo`; implies `cache`.
    pub cache_repo: Option<String>,
    /// `--push=false`.
    pub no_push: bool,
    /// `--disk`.
    pub disk: Option<bakery_protocol::resources::Disk>,
}

impl PlanOptions {
    /// Options for the repository `repo`: no file named (so config.yaml or a compose file is
    /// looked for there), every service, the process environment, and this machine's arch.
    pub fn new(repo: impl Into<PathBuf>) -> Self {
        PlanOptions {
            repo: repo.into(),
            config: None,
            compose: None,
            services: Vec::new(),
            profiles: Vec::new(),
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
    /// The services to build, in the order their file lists them.
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
    /// The service's name: the compose service, or for config.yaml and flags,
    /// the short name of the destination (else the repository's directory name).
    pub name: String,
    /// The multi-arch index tag; `None` when the build does not push.
    pub destination: Option<String>,
    /// More tags for the same index (compose `build.tags`, or every
    /// `--tag` after the first); one in another repository gets the
    /// per-arch images copied there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// One build per arch.
    pub builds: Vec<ArchBuild>,
}

/// One agent's work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchBuild {
    /// The arch this build is for.
    pub arch: Arch,
    /// The per-arch tag the agent pushes; `None` for a build without push.
    pub push: Option<String>,
    /// The context directory on the client; the agent gets it as an archive.
    pub context_dir: PathBuf,
    /// The resolved spec the agent receives.
    pub spec: BuildSpec,
    /// The files build secrets were read from: left out of the uploaded
    /// context when they are inside it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_files: Vec<PathBuf>,
    /// A Dockerfile outside the context, sent beside it (the spec's
    /// `dockerfile` then names its entry in the archive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile_outside: Option<PathBuf>,
    /// The service's named build contexts (compose `additional_contexts`),
    /// for `FROM name` and `COPY --from=name`; the command line's
    /// `--build-context` wins on a name both give.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub named_contexts: BTreeMap<String, NamedSource>,
}

/// Where a named build context comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NamedSource {
    /// A directory on this machine, packed beside the context.
    Dir(PathBuf),
    /// An image (`docker-image://…`), pulled by the builder.
    Image(String),
}

impl ArchBuild {
    /// The Dockerfile on this machine, wherever it is.
    pub fn dockerfile_path(&self) -> PathBuf {
        match &self.dockerfile_outside {
            Some(file) => file.clone(),
            None => self.context_dir.join(&self.spec.dockerfile),
        }
    }
}

impl Plan {
    /// Resolves and validates a plan from files on disk.
    pub fn resolve(opts: &PlanOptions) -> Result<Plan, PlanError> {
        let mut plan = Self::resolve_files(opts)?;
        plan.check_output_keys()?;
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
                overrides: &Overrides {
                    secrets: opts.overrides.secrets.clone(),
                    ..Overrides::default()
                },
                env: &opts.env,
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
        let config = config_path
            .as_deref()
            .map(|p| ConfigFile::load(p, &opts.env))
            .transpose()?;
        let compose = compose_path
            .as_deref()
            .map(|p| ComposeFile::load(p, &opts.env))
            .transpose()?;
        let resolver = Resolver {
            repo: &repo,
            config: config.as_ref(),
            host_arch: opts.host_arch,
            overrides: &opts.overrides,
            env: &opts.env,
        };
        let mut plan = match &compose {
            Some(compose) => resolver
                .plan_compose(compose, &opts.services, &opts.profiles)
                .map_err(|e| compose.explain_unset(e))?,
            None => resolver.plan_config(&opts.services)?,
        };
        plan.discovered = discovered;
        for file in compose.iter().flat_map(|c| c.files()) {
            for unset in &file.unset_variables {
                plan.warnings.push(format!(
                    "{}: variable `{}` is not set; it was replaced by an empty string",
                    Location::new(&file.path, unset.line, unset.column),
                    unset.name
                ));
            }
            for path in file.ignored_keys() {
                plan.warnings.push(format!(
                    "{}: `{path}` is not applied by bakery; it is ignored",
                    file.location_of(&path)
                ));
            }
        }
        Ok(plan)
    }

    /// A copy safe to show: every password and build secret replaced by
    /// `***`, wherever its value appears (a build arg or a script can carry
    /// it too).
    #[must_use]
    pub fn redacted(&self) -> Plan {
        let redactor = bakery_protocol::redact::Redactor::new(
            self.builds()
                .flat_map(|(_, b)| b.spec.secret_values().map(str::to_string))
                .collect::<Vec<_>>(),
        );
        let mut value = serde_json::to_value(self).expect("plans serialise");
        redact_strings(&mut value, &redactor);
        let mut plan: Plan =
            serde_json::from_value(value).expect("a redacted plan is still a plan");
        // The fields themselves, whatever their length (the redactor leaves
        // values under 4 characters alone, they would mask every word).
        let masked = || bakery_protocol::spec::Secret::new(bakery_protocol::spec::REDACTED);
        for build in plan.services.iter_mut().flat_map(|s| s.builds.iter_mut()) {
            for c in &mut build.spec.credentials {
                c.password = masked();
            }
            for s in &mut build.spec.secrets {
                s.value = masked();
            }
        }
        plan
    }

    /// The build of `service` for `arch`, if planned.
    pub fn build(&self, service: &str, arch: Arch) -> Option<&ArchBuild> {
        self.services
            .iter()
            .find(|s| s.name == service)?
            .builds
            .iter()
            .find(|b| b.arch == arch)
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
            for v in items.iter_mut() {
                redact_strings(v, redactor);
            }
        }
        serde_json::Value::Object(map) => {
            map.values_mut().for_each(|v| redact_strings(v, redactor));
        }
        _ => {}
    }
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

/// The name a CI output key gives `name` (a service or an arch):
/// upper-cased, every character but ASCII letters and digits as `_`. GitLab
/// dotenv reports and shell variables take nothing else.
pub fn output_key(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The dotenv keys a service's results are reported under:
/// `BAKERY_<SERVICE>_DIGEST`, `_IMAGE`, and `BAKERY_<SERVICE>_<ARCH>_DIGEST`.
pub fn output_keys(service: &ServicePlan) -> Vec<String> {
    let k = output_key(&service.name);
    let mut keys = vec![format!("BAKERY_{k}_DIGEST"), format!("BAKERY_{k}_IMAGE")];
    keys.extend(
        service
            .builds
            .iter()
            .map(|b| format!("BAKERY_{k}_{}_DIGEST", output_key(b.arch.as_str()))),
    );
    keys
}

/// Keys of the step outputs' `metadata` object that are not services'.
const METADATA_KEYS: [&str; 2] = ["containerimage.digest", "image.name"];

/// The tag each arch is pushed to with `--arch-tags=false`: one rolling tag
/// per arch and repository, overwritten by every build (the builders push
/// to a tag; the index pins each image by digest, so a later push to the
/// same tag takes nothing from an earlier index).
pub const STAGING_TAG_PREFIX: &str = "bakery-staging-";

impl Plan {
    /// `--arch-tags=false`: each arch is pushed to
    /// [`STAGING_TAG_PREFIX`]`<arch>` in its index's repository instead of
    /// `<tag>_<arch>`, so a repository gains no tags per build besides the
    /// index's. An arch with a destination of its own (a bake entry's) keeps it.
    pub fn stage_arch_pushes(&mut self) {
        for service in &mut self.services {
            let Some(index) = service
                .destination
                .as_deref()
                .and_then(|d| ImageRef::parse(d).ok())
            else {
                continue;
            };
            for build in &mut service.builds {
                let suffixed = index
                    .with_arch_suffix(build.arch)
                    .ok()
                    .map(|r| r.to_string());
                if build.push.is_some() && build.push == suffixed {
                    build.push = Some(
                        ImageRef {
                            tag: format!("{STAGING_TAG_PREFIX}{}", build.arch),
                            ..index.clone()
                        }
                        .to_string(),
                    );
                }
            }
        }
    }
}

impl Plan {
    /// Two services whose CI outputs would land under one key (`web-api`
    /// and `web.api` are both `BAKERY_WEB_API_*`; `app_amd64`'s digest is
    /// `app`'s amd64 digest) are refused, naming both: a later job would
    /// deploy the wrong image.
    fn check_output_keys(&self) -> Result<(), PlanError> {
        let mut owner: std::collections::HashMap<String, &str> = Default::default();
        for service in &self.services {
            if METADATA_KEYS.contains(&service.name.as_str()) {
                return Err(PlanError::Conflict(format!(
                    "service `{}` has the name of a key build-push-action's `metadata` output already has; rename the service",
                    service.name
                )));
            }
            for key in output_keys(service) {
                match owner.insert(key.clone(), &service.name) {
                    Some(other) if other != service.name => {
                        return Err(PlanError::Conflict(format!(
                            "services `{other}` and `{}` would both report {key} (CI output names keep only letters and digits, upper-cased): a later job could deploy the wrong image; rename one of them",
                            service.name
                        )));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}
