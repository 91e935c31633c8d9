//! The build settings of config.yaml, and how layers of them merge.
//!
//! `global`, each `bake` entry and each compose service are all [`Settings`]:
//! partial layers stacked from general to specific. The merge rule is the
//! original tool's: maps (`env`, `build-args`, `labels`, and the `kaniko` and
//! `kaniko.cache` blocks) merge key by key, `secrets` by id; every other
//! value, lists included, is replaced by the more specific layer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use bakery_protocol::resources::{Cpu, Disk, Memory};
use bakery_protocol::spec::{Compression, Credential, SnapshotMode};
use bakery_protocol::{Arch, Platform};

use crate::scalar::string_map;
use crate::secrets::SecretRef;

/// One layer of build settings: `global`, a `bake` entry, or a compose service.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// Where agents run: ecs, k8s or local. Unset means the controller's default.
    pub platform: Option<Platform>,
    /// In `global`: the arch to build when there are no `bake` entries.
    /// In a `bake` entry: the arch that entry builds.
    pub arch: Option<Arch>,
    /// vCPUs for each agent (`1`, `0.5`, `500m`); unset means the controller's default.
    pub cpu: Option<Cpu>,
    /// Memory for each agent, with a unit (`2G`, `512Mi`); unset means the controller's default.
    pub memory: Option<Memory>,
    /// Scratch disk for each agent (`50G`): Fargate's ephemeral storage
    /// (21 to 200 GiB), a pod's ephemeral-storage; unset means the
    /// controller's default.
    pub disk: Option<Disk>,
    /// Ask for Spot capacity where the platform has it (ECS Fargate Spot).
    pub spot: Option<bool>,
    /// Environment variables of the agent container (and its scripts).
    #[serde(
        default,
        deserialize_with = "string_map",
        skip_serializing_if = "Option::is_none"
    )]
    pub env: Option<BTreeMap<String, String>>,
    /// Shell run with `sh -ce` in the context directory before the build.
    pub pre_script: Option<String>,
    /// Shell run with `sh -ce` after a successful build and push.
    pub post_script: Option<String>,
    /// Registry logins for pulling bases, pushing, and the cache repo.
    pub kaniko_credentials: Option<Vec<Credential>>,
    /// Build secrets for `RUN --mount=type=secret,id=…`; merged by id.
    pub secrets: Option<Vec<SecretRef>>,
    /// The `kaniko:` block: what to build and how the builder behaves.
    pub kaniko: Option<Kaniko>,
}

/// The `kaniko:` block: what to build and how the builder behaves.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Kaniko {
    /// The build context, relative to the repository (config.yaml) or to the
    /// compose file's directory (compose).
    pub context_path: Option<String>,
    /// The Dockerfile, relative to the context.
    pub dockerfile: Option<String>,
    /// The image to push: the multi-arch tag.
    pub destination: Option<String>,
    /// The Dockerfile stage to build.
    pub target: Option<String>,
    /// `--build-arg` values; merged key by key.
    #[serde(
        default,
        deserialize_with = "string_map",
        skip_serializing_if = "Option::is_none"
    )]
    pub build_args: Option<BTreeMap<String, String>>,
    /// Labels of the built image; merged key by key.
    #[serde(
        default,
        deserialize_with = "string_map",
        skip_serializing_if = "Option::is_none"
    )]
    pub labels: Option<BTreeMap<String, String>>,
    /// The `kaniko.cache:` block; merged key by key.
    pub cache: Option<Cache>,
    /// Images whose layers may be reused (compose `cache_from`).
    pub cache_from: Option<Vec<String>>,
    /// Kaniko `--snapshot-mode` (full, redo, time).
    pub snapshot_mode: Option<SnapshotMode>,
    /// Kaniko's `--use-new-run`: detect a RUN step's changes by modification
    /// time instead of a full snapshot.
    pub use_new_run: Option<bool>,
    /// Kaniko's `--cleanup`: clean the filesystem up at the end of the build.
    pub cleanup: Option<bool>,
    /// Kaniko `--custom-platform`; defaults to the arch being built.
    pub custom_platform: Option<String>,
    /// Build without pushing (a check build).
    pub no_push: Option<bool>,
    /// Extra paths Kaniko leaves out of snapshots (`--ignore-path`).
    pub ignore_path: Option<Vec<String>>,
    /// Flags passed to the builder as they are, for options bakery does not model.
    pub extra_flags: Option<Vec<String>>,
    /// Layer compression of the pushed image. zstd layers unpack faster,
    /// which is what a Fargate task pays on every start (no layer is kept
    /// between tasks); every current runtime and registry takes them.
    pub compression: Option<Compression>,
    /// 1 to [`Compression::max_level`]; the builder's default when unset.
    pub compression_level: Option<u8>,
}

/// The `kaniko.cache:` block: a registry-backed layer cache.
///
/// Not [`bakery_protocol::Cache`], though the fields match: this is what
/// the user wrote (a base repository, or none; a duration checked with its
/// file and line while the file is read; layers that overlay one another),
/// and the planner resolves it into the protocol's per-arch cache
/// (`<repo>-<arch>`, [`From`] below) that the agent runs with. One type for
/// both would let an unresolved base repository reach an agent.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Cache {
    /// Turns the cache on (it is off unless set to `true`).
    pub enable: Option<bool>,
    /// The cache's base repository; each arch caches in `<repo>-<arch>`. Unset, or a
    /// bare registry host: `<destination repository>-cache`, in that registry.
    pub repo: Option<String>,
    /// How long cached layers stay valid (`--cache-ttl`, such as `24h`),
    /// checked as the builders read it when the file is read.
    #[serde(default, deserialize_with = "crate::scalar::go_duration")]
    pub ttl: Option<String>,
    /// Kaniko's `--cache-copy-layers`: cache the layers of `COPY` steps too.
    pub copy_layers: Option<bool>,
    /// Kaniko's `--cache-run-layers`: cache the layers of `RUN` steps (Kaniko's default).
    pub run_layers: Option<bool>,
    /// Kaniko's `--compressed-caching`; `false` caches layers uncompressed, which
    /// needs less memory in large builds.
    pub compressed: Option<bool>,
}

/// The more specific value wins.
/// Secrets merge by id: a more specific layer replaces one it names again.
fn merge_secrets(
    base: &Option<Vec<SecretRef>>,
    top: &Option<Vec<SecretRef>>,
) -> Option<Vec<SecretRef>> {
    let (Some(base), Some(top)) = (base, top) else {
        return pick(base, top);
    };
    let mut out: Vec<SecretRef> = base
        .iter()
        .filter(|b| !top.iter().any(|t| t.id == b.id))
        .cloned()
        .collect();
    out.extend(top.iter().cloned());
    Some(out)
}

fn pick<T: Clone>(base: &Option<T>, top: &Option<T>) -> Option<T> {
    top.as_ref().or(base.as_ref()).cloned()
}

/// Key-by-key merge; the more specific layer wins per key.
fn merge_map(
    base: &Option<BTreeMap<String, String>>,
    top: &Option<BTreeMap<String, String>>,
) -> Option<BTreeMap<String, String>> {
    match (base, top) {
        (Some(b), Some(t)) => {
            let mut merged = b.clone();
            merged.extend(t.iter().map(|(k, v)| (k.clone(), v.clone())));
            Some(merged)
        }
        _ => pick(base, top),
    }
}

/// Field-by-field merge of two optional blocks.
fn merge_block<T: Clone>(base: &Option<T>, top: &Option<T>, merge: fn(&T, &T) -> T) -> Option<T> {
    match (base, top) {
        (Some(b), Some(t)) => Some(merge(b, t)),
        _ => pick(base, top),
    }
}

impl Settings {
    /// `self` with `top` laid over it.
    #[must_use]
    pub fn overlay(&self, top: &Settings) -> Settings {
        Settings {
            platform: pick(&self.platform, &top.platform),
            arch: pick(&self.arch, &top.arch),
            cpu: pick(&self.cpu, &top.cpu),
            memory: pick(&self.memory, &top.memory),
            disk: pick(&self.disk, &top.disk),
            spot: pick(&self.spot, &top.spot),
            env: merge_map(&self.env, &top.env),
            pre_script: pick(&self.pre_script, &top.pre_script),
            post_script: pick(&self.post_script, &top.post_script),
            kaniko_credentials: pick(&self.kaniko_credentials, &top.kaniko_credentials),
            secrets: merge_secrets(&self.secrets, &top.secrets),
            kaniko: merge_block(&self.kaniko, &top.kaniko, Kaniko::overlay),
        }
    }

    /// The kaniko block, or an empty one.
    pub fn kaniko(&self) -> Kaniko {
        self.kaniko.clone().unwrap_or_default()
    }
}

impl Kaniko {
    /// `self` with `top` laid over it.
    #[must_use]
    pub fn overlay(&self, top: &Kaniko) -> Kaniko {
        Kaniko {
            context_path: pick(&self.context_path, &top.context_path),
            dockerfile: pick(&self.dockerfile, &top.dockerfile),
            destination: pick(&self.destination, &top.destination),
            target: pick(&self.target, &top.target),
            build_args: merge_map(&self.build_args, &top.build_args),
            labels: merge_map(&self.labels, &top.labels),
            cache: merge_block(&self.cache, &top.cache, Cache::overlay),
            cache_from: pick(&self.cache_from, &top.cache_from),
            snapshot_mode: pick(&self.snapshot_mode, &top.snapshot_mode),
            use_new_run: pick(&self.use_new_run, &top.use_new_run),
            cleanup: pick(&self.cleanup, &top.cleanup),
            custom_platform: pick(&self.custom_platform, &top.custom_platform),
            no_push: pick(&self.no_push, &top.no_push),
            ignore_path: pick(&self.ignore_path, &top.ignore_path),
            extra_flags: pick(&self.extra_flags, &top.extra_flags),
            compression: pick(&self.compression, &top.compression),
            compression_level: pick(&self.compression_level, &top.compression_level),
        }
    }
}

impl From<Cache> for bakery_protocol::Cache {
    fn from(c: Cache) -> Self {
        bakery_protocol::Cache {
            enable: c.enable,
            repo: c.repo,
            ttl: c.ttl,
            copy_layers: c.copy_layers,
            run_layers: c.run_layers,
            compressed: c.compressed,
        }
    }
}

impl Cache {
    /// `self` with `top` laid over it.
    #[must_use]
    pub fn overlay(&self, top: &Cache) -> Cache {
        Cache {
            enable: pick(&self.enable, &top.enable),
            repo: pick(&self.repo, &top.repo),
            ttl: pick(&self.ttl, &top.ttl),
            copy_layers: pick(&self.copy_layers, &top.copy_layers),
            run_layers: pick(&self.run_layers, &top.run_layers),
            compressed: pick(&self.compressed, &top.compressed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::unnecessary_wraps)] // the type of the fields it fills
    fn map(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn yaml(text: &str) -> Settings {
        serde_yaml_ng::from_str(text).unwrap()
    }

    /// Each row: base layer, top layer, and what the merge must give.
    #[test]
    fn merge_rules_table() {
        let rows: &[(&str, &str, &str)] = &[
            // maps merge key by key, top wins per key
            (
                "env: {A: '1', B: '2'}",
                "env: {B: '3', C: '4'}",
                "env: {A: '1', B: '3', C: '4'}",
            ),
            (
                "kaniko: {build-args: {X: a}}",
                "kaniko: {build-args: {Y: b}}",
                "kaniko: {build-args: {X: a, Y: b}}",
            ),
            // the kaniko block merges field by field
            (
                "kaniko: {dockerfile: D, destination: r/app:1}",
                "kaniko: {dockerfile: D.arm64}",
                "kaniko: {dockerfile: D.arm64, destination: r/app:1}",
            ),
            // cache merges field by field too
            (
                "kaniko: {cache: {enable: true, repo: c/r, ttl: 24h}}",
                "kaniko: {cache: {ttl: 1h}}",
                "kaniko: {cache: {enable: true, repo: c/r, ttl: 1h}}",
            ),
            // scalars are replaced
            ("pre-script: a", "pre-script: b", "pre-script: b"),
            ("cpu: 1\nmemory: 2G", "cpu: '0.5'", "cpu: '0.5'\nmemory: 2G"),
            // lists are replaced, not appended
            (
                "kaniko: {ignore-path: [/a, /b]}",
                "kaniko: {ignore-path: [/c]}",
                "kaniko: {ignore-path: [/c]}",
            ),
            (
                "kaniko-credentials: [{registry: a, username: u, password: p}]",
                "kaniko-credentials: [{registry: b, username: v, password: q}]",
                "kaniko-credentials: [{registry: b, username: v, password: q}]",
            ),
            // an absent top value keeps the base
            (
                "platform: ecs\narch: amd64",
                "arch: arm64",
                "platform: ecs\narch: arm64",
            ),
            ("{}", "env: {A: '1'}", "env: {A: '1'}"),
        ];
        for (base, top, want) in rows {
            assert_eq!(yaml(base).overlay(&yaml(top)), yaml(want), "{base} + {top}");
        }
    }

    #[test]
    fn scalars_in_maps_are_text() {
        let s = yaml("env: {N: 1, B: true, F: 1.5, E: }");
        assert_eq!(
            s.env,
            map(&[("N", "1"), ("B", "true"), ("F", "1.5"), ("E", "")])
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let s = yaml("kaniko-credentials: [{registry: r, username: u, password: hunter2}]");
        let debug = format!("{s:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert_eq!(
            s.kaniko_credentials.unwrap()[0].password.expose(),
            "hunter2"
        );
    }
}
