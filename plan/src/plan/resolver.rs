//! From config.yaml, compose or flags to the layers of every (service, arch).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use bakery_protocol::reference::ImageRef;
use bakery_protocol::Arch;

use super::arch::{extra_tags, service_plan};
use super::config_file::ConfigFile;
use super::layer::{Layer, LayerKind};
use super::paths::{absolute, normalize};
use super::{ArchBuild, InlineBuild, NamedSource, Overrides, Plan, ServicePlan};
use crate::compose::{BuildSecretEntry, ComposeFile, Service};
use crate::error::{Location, PlanError};
use crate::location::Locations;
use crate::secrets::{SecretRef, SecretSource};
use crate::settings::{Cache, Kaniko, Settings};

/// What every plan is resolved against: the repository, config.yaml if
/// any, the host's arch and the flags that apply to every service.
pub(super) struct Resolver<'a> {
    pub(super) repo: &'a Path,
    pub(super) config: Option<&'a ConfigFile>,
    pub(super) host_arch: Arch,
    pub(super) overrides: &'a Overrides,
    /// For secrets read from variables.
    pub(super) env: &'a HashMap<String, String>,
}

impl Resolver<'_> {
    pub(super) fn plan_config(&self, filter: &[String]) -> Result<Plan, PlanError> {
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
        check_single_filter(&name, filter)?;
        Ok(Plan {
            services: vec![service_plan(name, builds)],
            warnings: Vec::new(),
            discovered: None,
        })
    }

    /// `--file` as docker/build-push-action reads it: a path from the
    /// repository (the workspace in CI) that exists wins; otherwise it is
    /// relative to the context, as in compose and config.yaml.
    fn inline_dockerfile(&self, file: &str) -> String {
        let from_repo = self.repo.join(file);
        if Path::new(file).is_relative() && from_repo.is_file() {
            super::paths::absolute(&from_repo)
                .to_string_lossy()
                .into_owned()
        } else {
            file.to_string()
        }
    }

    /// A build from flags: the same checks, reported against the flags.
    pub(super) fn plan_inline(
        &self,
        inline: &InlineBuild,
        filter: &[String],
    ) -> Result<Plan, PlanError> {
        let at = |_: usize| Location::command_line();
        let flags = Location::command_line().file;
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
                dockerfile: inline
                    .dockerfile
                    .as_deref()
                    .map(|f| self.inline_dockerfile(f)),
                destination: Some(first.clone()),
                target: inline.target.clone(),
                build_args: Some(inline.build_args.clone()),
                labels: Some(inline.labels.clone()),
                cache: (inline.cache || inline.cache_repo.is_some()).then(|| Cache {
                    enable: Some(true),
                    repo: inline.cache_repo.clone(),
                    ..Cache::default()
                }),
                no_push: inline.no_push.then_some(true),
                ..Kaniko::default()
            }),
            disk: inline.disk,
            ..Settings::default()
        };
        let locations = Locations::default();
        let layer = Layer {
            settings,
            file: &flags,
            locations: &locations,
            prefix: String::new(),
            kind: LayerKind::Config,
            flags: false,
        };
        let mut builds = Vec::new();
        for arch in arches {
            builds.push(self.resolve_arch(arch, std::slice::from_ref(&layer))?);
        }
        // Named after the tag, pushed or not (`--push=false` keeps the name).
        let name = ImageRef::parse(first)
            .ok()
            .map(|r| r.short_name().to_string())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| service_name(builds.iter().map(|(b, _)| b), self.repo));
        check_single_filter(&name, filter)?;
        let mut plan = service_plan(name, builds);
        plan.tags = extra_tags(plan.destination.as_deref(), &inline.tags[1..], at)?;
        Ok(Plan {
            services: vec![plan],
            warnings: Vec::new(),
            discovered: None,
        })
    }

    pub(super) fn plan_compose(
        &self,
        compose: &ComposeFile,
        filter: &[String],
        profiles: &[String],
    ) -> Result<Plan, PlanError> {
        let mut services = Vec::new();
        for (file, name) in buildable_selection(compose, filter, profiles)? {
            services.push(self.compose_service(file, name)?);
        }
        Ok(Plan {
            services,
            warnings: Vec::new(),
            discovered: None,
        })
    }

    /// One compose service: global, the service, the arch's bake entry
    /// and the flags, per arch.
    fn compose_service(&self, compose: &ComposeFile, name: &str) -> Result<ServicePlan, PlanError> {
        let service = &compose.services[name];
        let prefix = format!("services.{name}");
        let service_settings = self.compose_settings(compose, service, &prefix)?;
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
                flags: false,
            });
            if let Some(config) = self.config {
                if let Some((i, bake)) = config.bake_for(arch) {
                    layers.push(config.layer(bake, format!("bake[{i}]")));
                }
            }
            self.push_flags(&mut layers);
            builds.push(self.resolve_arch(arch, &layers)?);
        }
        let mut plan = service_plan(name.to_string(), builds);
        let named = compose_named_contexts(compose, service, &prefix)?;
        for build in &mut plan.builds {
            build.named_contexts = named.clone();
        }
        let tags = service
            .build
            .as_ref()
            .and_then(|b| b.0.tags.clone())
            .unwrap_or_default();
        plan.tags = extra_tags(plan.destination.as_deref(), &tags, |i| {
            compose.location_of(&format!("{prefix}.build.tags[{i}]"))
        })?;
        Ok(plan)
    }

    /// A compose service as a settings layer. Its context is rewritten
    /// relative to the repository so that all layers share one base.
    fn compose_settings(
        &self,
        compose: &ComposeFile,
        service: &Service,
        prefix: &str,
    ) -> Result<Settings, PlanError> {
        let build = &service.build.as_ref().expect("buildable service").0;
        let compose_dir = absolute(&compose.project_dir);
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
        let secrets = compose_secrets(compose, build, &compose_dir, prefix)?;
        let disk = [service.x_bake.as_ref(), build.x_bake.as_ref()]
            .into_iter()
            .flatten()
            .find_map(|x| x.disk);
        Ok(Settings {
            secrets,
            disk,
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
        })
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
                PlanError::invalid(Location::command_line(), format!("--platform: {m}"))
            })?;
            if !arches.contains(&arch) {
                arches.push(arch);
            }
        }
        Ok(Some(arches))
    }

    /// The flags that apply to every service, as a last layer (errors about
    /// the fields they set point at the service's own layer).
    fn push_flags(&self, layers: &mut Vec<Layer<'_>>) {
        let (Some(settings), Some(top)) = (self.overrides.settings(), layers.last()) else {
            return;
        };
        let layer = Layer {
            settings,
            file: top.file,
            locations: top.locations,
            prefix: top.prefix.clone(),
            kind: top.kind,
            flags: true,
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
}

/// A config.yaml describes one image: name it after its repository.
pub(super) fn service_name<'a>(builds: impl Iterator<Item = &'a ArchBuild>, repo: &Path) -> String {
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

/// A config.yaml or flags build is one service: a filter may only name it.
fn check_single_filter(name: &str, filter: &[String]) -> Result<(), PlanError> {
    if filter.is_empty() || filter.iter().any(|f| f == name) {
        return Ok(());
    }
    Err(PlanError::UnknownServices {
        unknown: filter.iter().filter(|f| *f != name).cloned().collect(),
        known: vec![name.to_string()],
    })
}

/// The compose services to build, in file order (the root file's, then
/// each include's): those with a `build` section that the filter selects,
/// or without a filter, those whose `profiles` are active (a service
/// without `profiles` always is; `*` activates all), as `docker compose`
/// selects them. A filter naming a service without `build`, or none at
/// all, is an error.
fn buildable_selection<'c>(
    compose: &'c ComposeFile,
    filter: &[String],
    profiles: &[String],
) -> Result<Vec<(&'c ComposeFile, &'c String)>, PlanError> {
    let buildable: Vec<(&ComposeFile, &String, &Service)> = compose
        .all_services()
        .filter(|(_, _, s)| s.build.is_some())
        .collect();
    let defined = |name: &String| compose.all_services().find(|(_, n, _)| *n == name);
    if let Some((file, name, service)) = filter
        .iter()
        .filter_map(defined)
        .find(|(_, _, s)| s.build.is_none())
    {
        let names: Vec<&str> = buildable.iter().map(|(_, n, _)| n.as_str()).collect();
        return Err(PlanError::invalid_with_hint(
                file.location_of(&format!("services.{name}")),
                format!(
                    "service `{name}` has no `build` section{}: bakery builds images, it does not run services",
                    service.image.as_ref().map(|i| format!(" (compose runs it from `{i}`)")).unwrap_or_default()
                ),
                format!(
                    "build only the services that have one{}, or give `{name}` a `build` section",
                    if names.is_empty() { String::new() } else { format!(" ({})", names.join(", ")) }
                ),
            ));
    }
    let unknown: Vec<String> = filter
        .iter()
        .filter(|f| !buildable.iter().any(|(_, b, _)| b == f))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(PlanError::UnknownServices {
            unknown,
            known: buildable.iter().map(|(_, s, _)| (*s).clone()).collect(),
        });
    }
    if buildable.is_empty() {
        return Err(PlanError::invalid_with_hint(
            compose.location_of("services"),
            "no service has a `build` section",
            "add `build: .` (or a build mapping) to the services bakery should build",
        ));
    }
    let active = |s: &Service| match &s.profiles {
        None => true,
        Some(p) if p.is_empty() => true,
        Some(p) => profiles.iter().any(|a| a == "*" || p.contains(a)),
    };
    let selected: Vec<(&ComposeFile, &String)> = buildable
        .iter()
        .filter(|(_, name, s)| {
            if filter.is_empty() {
                active(s)
            } else {
                filter.contains(name)
            }
        })
        .map(|(f, n, _)| (*f, *n))
        .collect();
    if selected.is_empty() {
        let inactive: BTreeSet<&String> = buildable
            .iter()
            .flat_map(|(_, _, s)| s.profiles.iter().flatten())
            .collect();
        return Err(PlanError::invalid_with_hint(
            compose.location_of("services"),
            "every service with a `build` section belongs to a profile that is not active",
            format!(
                "activate one with --profile (or COMPOSE_PROFILES): {}",
                inactive.into_iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    Ok(selected)
}

/// A service's `build.additional_contexts`: directories (relative to the
/// compose file's project directory; they must exist) and
/// `docker-image://` images. Other kinds are refused at their line.
fn compose_named_contexts(
    compose: &ComposeFile,
    service: &Service,
    prefix: &str,
) -> Result<BTreeMap<String, NamedSource>, PlanError> {
    let build = &service.build.as_ref().expect("buildable service").0;
    let Some(entries) = &build.additional_contexts else {
        return Ok(BTreeMap::new());
    };
    let dir = absolute(&compose.project_dir);
    let mut out = BTreeMap::new();
    for (name, value) in entries {
        let at = || compose.location_of(&format!("{prefix}.build.additional_contexts.{name}"));
        let Some(value) = value.as_deref().filter(|v| !v.is_empty()) else {
            return Err(PlanError::invalid_with_hint(
                at(),
                format!("additional context `{name}` has no value"),
                "give a directory or docker-image://IMAGE",
            ));
        };
        let source = if let Some(image) = value.strip_prefix("docker-image://") {
            NamedSource::Image(image.to_string())
        } else if value.contains("://")
            || value.starts_with("service:")
            || value.starts_with("target:")
        {
            return Err(PlanError::invalid_with_hint(
                at(),
                format!("additional context `{name}`: `{value}` is not supported"),
                "use a directory, or docker-image://IMAGE (for a `service:` context, the image that service pushes)",
            ));
        } else {
            let path = normalize(&dir.join(value));
            if !path.is_dir() {
                return Err(PlanError::invalid_with_hint(
                    at(),
                    format!(
                        "additional context `{name}`: {} is not a directory",
                        path.display()
                    ),
                    "a directory is relative to the compose file",
                ));
            }
            NamedSource::Dir(path)
        };
        out.insert(name.clone(), source);
    }
    Ok(out)
}

/// A service's `build.secrets`, each resolved through the top-level
/// `secrets:` it names (files relative to the compose file).
fn compose_secrets(
    compose: &ComposeFile,
    build: &crate::compose::BuildSection,
    compose_dir: &Path,
    prefix: &str,
) -> Result<Option<Vec<SecretRef>>, PlanError> {
    let Some(entries) = &build.secrets else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let (name, target) = match entry {
            BuildSecretEntry::Name(n) => (n, None),
            BuildSecretEntry::Long { source, target, .. } => (source, target.as_ref()),
        };
        let at = || compose.location_of(&format!("{prefix}.build.secrets[{i}]"));
        let top = compose.secrets.get(name).ok_or_else(|| {
            PlanError::invalid_with_hint(
                at(),
                format!("build secret `{name}` is not defined under the top-level `secrets:`"),
                format!("add `secrets: {{{name}: {{file: ./path}}}}` or `{{environment: VARIABLE}}` at the top of the file"),
            )
        })?;
        let source = match (&top.file, &top.environment) {
            (Some(file), None) => SecretSource::File(compose_dir.join(file)),
            (None, Some(var)) => SecretSource::Env(var.clone()),
            _ => {
                return Err(PlanError::invalid(
                    compose.location_of(&format!("secrets.{name}")),
                    format!("secret `{name}` needs exactly one of `file:` or `environment:` to be built with"),
                ))
            }
        };
        out.push(SecretRef {
            id: target.unwrap_or(name).clone(),
            source,
        });
    }
    Ok(Some(out))
}
