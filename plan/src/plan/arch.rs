//! One arch's build: its layers merged, checked and turned into a spec.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bakery_protocol::reference::ImageRef;
use bakery_protocol::spec::BuildSecret;
use bakery_protocol::{Arch, BuildSpec};

use super::layer::{origin, Field, Layer, LayerKind};
use super::paths::{check_dockerfile, normalize, Placement};
use super::resolver::Resolver;
use super::{ArchBuild, ServicePlan};
use crate::error::{Location, PlanError};
use crate::settings::{Cache, Kaniko, Settings};

impl Resolver<'_> {
    /// Merges `layers` and checks the result for one arch. Returns the
    /// build and the multi-arch tag it belongs to.
    pub(super) fn resolve_arch(
        &self,
        arch: Arch,
        layers: &[Layer],
    ) -> Result<(ArchBuild, Option<String>), PlanError> {
        let merged = layers
            .iter()
            .fold(Settings::default(), |acc, l| acc.overlay(&l.settings));
        let kaniko = merged.kaniko();
        let no_push = kaniko.no_push.unwrap_or(false);
        let (context_dir, placement) = self.check_inputs(&kaniko, layers)?;
        let (dockerfile, dockerfile_outside) = match placement {
            Placement::InContext(rel) => (rel, None),
            Placement::Beside(file) => (beside_entry(&file), Some(file)),
        };
        let (push, index) = destinations(arch, layers, no_push)?;
        let cache = per_arch_cache(
            kaniko.cache.clone().unwrap_or_default(),
            push.as_ref(),
            arch,
        );
        let (secrets, secret_files) = self.read_secrets(layers)?;
        let mut spec = spec(merged, kaniko, dockerfile, cache, arch, no_push);
        spec.secrets = secrets;
        spec.dockerfile_beside = dockerfile_outside.is_some();
        // The controller's own rules, here with the file and line: plan
        // and build never disagree about a value.
        bakery_protocol::validate::check_spec(&spec, "spec").map_err(|invalid| {
            let (location, key) = spec_origin(layers, &invalid.field);
            PlanError::invalid_with_hint(
                location,
                format!("{key}: {}", invalid.message),
                "the controller would refuse the build: change the value here",
            )
        })?;
        let build = ArchBuild {
            arch,
            push: push.map(|p| p.to_string()),
            context_dir,
            spec,
            secret_files,
            dockerfile_outside,
            named_contexts: BTreeMap::new(),
        };
        Ok((build, index.map(|r| r.to_string())))
    }

    /// Every layer's secrets, then `--secret`'s, each read now (a later one
    /// replaces an earlier one with its id). An error points where the
    /// secret was named.
    fn read_secrets(
        &self,
        layers: &[Layer],
    ) -> Result<(Vec<BuildSecret>, Vec<PathBuf>), PlanError> {
        let mut out: Vec<(BuildSecret, Option<PathBuf>)> = Vec::new();
        let mut add = |secret: BuildSecret, file: Option<PathBuf>| {
            out.retain(|(s, _)| s.id != secret.id);
            out.push((secret, file));
        };
        for layer in layers {
            let mut seen = std::collections::HashSet::new();
            for (i, r) in layer.settings.secrets.iter().flatten().enumerate() {
                let at = || layer.location(&layer.secret_path(i));
                if !seen.insert(r.id.as_str()) {
                    let message = format!("secret `{}` is named twice here", r.id);
                    return Err(PlanError::invalid(at(), message));
                }
                let secret = r
                    .read(self.repo, self.env)
                    .map_err(|m| PlanError::invalid(at(), m))?;
                add(secret, r.file(self.repo));
            }
        }
        let cwd = std::env::current_dir().unwrap_or_default();
        let flags = || Location::command_line();
        let mut seen = std::collections::HashSet::new();
        for r in &self.overrides.secrets {
            if !seen.insert(r.id.as_str()) {
                let message = format!("--secret: `{}` is given twice", r.id);
                return Err(PlanError::invalid(flags(), message));
            }
            let secret = r
                .read(&cwd, self.env)
                .map_err(|m| PlanError::invalid(flags(), format!("--secret {r}: {m}")))?;
            add(secret, r.file(&cwd));
        }
        let (secrets, files): (Vec<_>, Vec<_>) = out.into_iter().unzip();
        Ok((secrets, files.into_iter().flatten().collect()))
    }

    /// The context is a directory, the Dockerfile a file, and the
    /// compression level one the codec has. Returns the context and where
    /// the Dockerfile is.
    fn check_inputs(
        &self,
        kaniko: &Kaniko,
        layers: &[Layer],
    ) -> Result<(PathBuf, Placement), PlanError> {
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
        let placement =
            check_dockerfile(self.repo, &context_dir, &dockerfile).map_err(|(msg, hint)| {
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
        Ok((context_dir, placement))
    }
}

/// The archive entry a Dockerfile from outside the context travels as:
/// its own name (so the agent's messages name it), in the reserved
/// directory.
fn beside_entry(file: &std::path::Path) -> String {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.chars().any(char::is_control))
        .unwrap_or_else(|| "Dockerfile".into());
    format!("{}/{name}", bakery_protocol::spec::DOCKERFILE_BESIDE)
}

/// Where this arch is pushed and the multi-arch tag it joins (both `None`
/// without push). The index tag comes from the layers shared by every
/// arch; a bake entry's own destination is where that arch alone is pushed.
fn destinations(
    arch: Arch,
    layers: &[Layer],
    no_push: bool,
) -> Result<(Option<ImageRef>, Option<ImageRef>), PlanError> {
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
        ImageRef::parse(dest).map_err(|m| PlanError::invalid(origin(from, Field::Destination), m))
    };
    let index = index_dest
        .as_deref()
        .map(|d| parse(d, shared))
        .transpose()?;
    if no_push {
        return Ok((None, None));
    }
    let own = arch_layer
        .filter(|l| l.has(Field::Destination))
        .and_then(|l| l.settings.kaniko().destination);
    let push = match (own, &index) {
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
            own_ref
        }
        (None, Some(index)) => index
            .with_arch_suffix(arch)
            .map_err(|m| PlanError::invalid(origin(layers, Field::Destination), m))?,
        (None, None) => {
            let top = layers.last().expect("at least one layer");
            let hint = match top.kind {
                LayerKind::Compose => "set `image:` on the service",
                LayerKind::Config => "set `kaniko.destination` in `global` (or in this bake entry)",
            };
            return Err(PlanError::invalid_with_hint(
                top.location(&top.prefix),
                format!("no destination for the {arch} build"),
                hint,
            ));
        }
    };
    Ok((Some(push), index))
}

/// The protocol's spec from merged, checked settings.
fn spec(
    merged: Settings,
    kaniko: Kaniko,
    dockerfile: String,
    cache: Cache,
    arch: Arch,
    no_push: bool,
) -> BuildSpec {
    BuildSpec {
        platform: merged.platform,
        dockerfile,
        dockerfile_beside: false,
        target: kaniko.target,
        build_args: kaniko.build_args.unwrap_or_default(),
        labels: kaniko.labels.unwrap_or_default(),
        // `--annotation`, `--build-context` and `--ssh` apply to every
        // service: the client adds them.
        annotations: BTreeMap::new(),
        ssh: Vec::new(),
        build_contexts: BTreeMap::new(),
        env: merged.env.unwrap_or_default(),
        pre_script: merged.pre_script,
        post_script: merged.post_script,
        credentials: merged.kaniko_credentials.unwrap_or_default(),
        secrets: Vec::new(),
        cpu: merged.cpu,
        memory: merged.memory,
        disk: merged.disk,
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
pub(super) fn service_plan(
    name: String,
    resolved: Vec<(ArchBuild, Option<String>)>,
) -> ServicePlan {
    let destination = resolved.iter().find_map(|(_, index)| index.clone());
    ServicePlan {
        name,
        destination,
        tags: Vec::new(),
        builds: resolved.into_iter().map(|(b, _)| b).collect(),
    }
}

/// Checks extra tags: tags (never digests). One in another repository than
/// the index's is fine: the controller copies the per-arch images there
/// (an index only references manifests in its own repository). Returns
/// them normalised.
pub(super) fn extra_tags(
    destination: Option<&str>,
    tags: &[String],
    at: impl Fn(usize) -> Location,
) -> Result<Vec<String>, PlanError> {
    if destination.and_then(|d| ImageRef::parse(d).ok()).is_none() {
        return Ok(Vec::new());
    }
    tags.iter()
        .enumerate()
        .map(|(i, t)| {
            let r = ImageRef::parse(t).map_err(|m| PlanError::invalid(at(i), m))?;
            Ok(r.to_string())
        })
        .collect()
}

/// Where the value a spec check names (`spec.build_args.NAME`,
/// `spec.target`, ...) was set, and how that place calls it: the most
/// specific layer whose own settings hold it (the map key itself where
/// there is one, else the field), the command line for a flag, else the
/// entry.
fn spec_origin(layers: &[Layer], field: &str) -> (Location, String) {
    let rest = field.strip_prefix("spec.").unwrap_or(field);
    let (name, below) = rest.split_once('.').unwrap_or((rest, ""));
    let name = name.split('[').next().unwrap_or(name);
    let top = layers.last().expect("at least one layer");
    let Some(setting) = setting_of(name) else {
        return (top.location(&top.prefix), rest.to_string());
    };
    let holds = |layer: &Layer, key: bool| {
        let settings = serde_json::to_value(&layer.settings).unwrap_or_default();
        match settings.pointer(setting) {
            Some(serde_json::Value::Object(map)) if key => map.contains_key(below),
            Some(serde_json::Value::Null) | None => false,
            Some(_) => !key,
        }
    };
    let layer = (!below.is_empty())
        .then(|| layers.iter().rev().find(|l| holds(l, true)))
        .flatten()
        .or_else(|| layers.iter().rev().find(|l| holds(l, false)));
    let Some(layer) = layer else {
        return (top.location(&top.prefix), rest.to_string());
    };
    let key = yaml_key(layer.kind, setting);
    let shown = if below.is_empty() {
        key
    } else {
        format!("{key}.{below}")
    };
    if layer.flags {
        return (Location::command_line(), shown);
    }
    (layer.location(&format!("{}.{shown}", layer.prefix)), shown)
}

/// Where a spec field is held in [`Settings`] (as JSON, kebab-case: the
/// names config.yaml uses).
fn setting_of(spec_field: &str) -> Option<&'static str> {
    Some(match spec_field {
        "env" => "/env",
        "pre_script" => "/pre-script",
        "post_script" => "/post-script",
        "credentials" => "/kaniko-credentials",
        "secrets" => "/secrets",
        "build_args" => "/kaniko/build-args",
        "labels" => "/kaniko/labels",
        "target" => "/kaniko/target",
        "cache_from" => "/kaniko/cache-from",
        "dockerfile" => "/kaniko/dockerfile",
        "extra_flags" => "/kaniko/extra-flags",
        "ignore_path" => "/kaniko/ignore-path",
        "cache" => "/kaniko/cache",
        "custom_platform" => "/kaniko/custom-platform",
        _ => return None,
    })
}

/// The YAML key of a setting in a layer's file: config.yaml's own, or the
/// compose key it was read from.
fn yaml_key(kind: LayerKind, setting: &str) -> String {
    let compose = match setting {
        "/kaniko/build-args" => Some("build.args"),
        "/kaniko/labels" => Some("build.labels"),
        "/kaniko/target" => Some("build.target"),
        "/kaniko/cache-from" => Some("build.cache_from"),
        "/kaniko/dockerfile" => Some("build.dockerfile"),
        "/secrets" => Some("build.secrets"),
        _ => None,
    };
    match (kind, compose) {
        (LayerKind::Compose, Some(key)) => key.to_string(),
        _ => setting.trim_start_matches('/').replace('/', "."),
    }
}
