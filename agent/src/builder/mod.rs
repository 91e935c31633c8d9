//! Daemonless builders. Each turns a task into the command lines that build
//! and push it and leave the pushed manifest digest in `<work>/digest`.
//! Command lines are plain data so tests can check them exactly.

mod arg_cache;
mod buildah;
mod kaniko;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bakery_protocol::api::agent_env::BuilderKind;
use bakery_protocol::api::AgentTask;
use bakery_protocol::Arch;

pub use arg_cache::ArgCache;
pub use buildah::{Buildah, Storage};
pub use kaniko::Kaniko;

/// Everything a builder needs besides the task.
pub struct Job<'a> {
    /// The task as the controller handed it: arch, push tag and spec.
    pub task: &'a AgentTask,
    /// The unpacked context: what the builder builds, and the directory its steps run in.
    pub context_dir: &'a Path,
    /// The task's own directory (digest file, logins,
    /// secrets, builder storage); never part of the image.
    pub work_dir: &'a Path,
    /// A directory holding `config.json` with registry logins, if any.
    pub docker_config: Option<&'a Path>,
    /// Build secrets as `(id, file)`, for `--secret id=…,src=…`.
    pub secret_files: &'a [(String, PathBuf)],
    /// SSH keys as `(id, file)`, for buildah's `--ssh id=file`.
    pub ssh_files: &'a [(String, PathBuf)],
    /// Registries reached over plain HTTP.
    pub insecure: &'a [String],
}

impl Job<'_> {
    /// Where the builder writes the pushed manifest digest: `<work>/digest`.
    pub fn digest_file(&self) -> PathBuf {
        self.work_dir.join("digest")
    }

    /// The Dockerfile the builder reads: in the context, or
    /// in the work dir when it was sent beside the context.
    pub fn dockerfile(&self) -> PathBuf {
        crate::context::dockerfile_path(self.context_dir, self.work_dir, &self.task.spec)
    }

    /// Build args: the platform variables BuildKit defines
    /// ([`PLATFORM_ARGS`]), then the user's (which win on a clash).
    pub fn build_args(&self) -> BTreeMap<String, String> {
        let target = &self.task.spec.custom_platform;
        let mut parts = target.split('/');
        let (os, arch, variant) = (
            parts.next().unwrap_or("linux").to_string(),
            parts.next().unwrap_or(self.task.arch.as_str()).to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let host = Arch::host();
        let mut args = BTreeMap::from([
            ("TARGETPLATFORM".to_string(), target.clone()),
            ("TARGETOS".to_string(), os),
            ("TARGETARCH".to_string(), arch),
            ("TARGETVARIANT".to_string(), variant),
            ("BUILDPLATFORM".to_string(), host.platform().to_string()),
            ("BUILDOS".to_string(), "linux".to_string()),
            ("BUILDARCH".to_string(), host.as_str().to_string()),
        ]);
        args.extend(self.task.spec.build_args.clone());
        args
    }
}

/// The build args bakery passes to every build, as BuildKit defines them.
pub const PLATFORM_ARGS: [&str; 7] = [
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
];

/// A builder's output line as the user should see it. buildah warns
/// `[Warning] one or more build args were not consumed: [TARGETARCH …]`
/// about the platform args bakery passes to every build; the warning names
/// only the user's own args, and is dropped (`None`) when none is left.
pub fn user_line(line: &str) -> Option<std::borrow::Cow<'_, str>> {
    const WARNING: &str = "one or more build args were not consumed: [";
    // Built once: a searcher built per line cost more than the rest of
    // the agent's work on a chatty build's line.
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(WARNING));
    let Some(at) = FINDER.find(line.as_bytes()) else {
        return Some(line.into());
    };
    let listed = &line[at + WARNING.len()..];
    let Some(end) = listed.find(']') else {
        return Some(line.into());
    };
    let users: Vec<&str> = listed[..end]
        .split_whitespace()
        .filter(|a| !PLATFORM_ARGS.contains(a))
        .collect();
    if users.is_empty() {
        return None;
    }
    Some(
        format!(
            "{}{WARNING}{}{}",
            &line[..at],
            users.join(" "),
            &listed[end..]
        )
        .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::user_line;

    #[test]
    fn the_platform_args_bakery_passes_are_not_reported_as_unused() {
        let only_ours = "[Warning] one or more build args were not consumed: [TARGETARCH TARGETOS TARGETPLATFORM]";
        assert_eq!(user_line(only_ours), None);
        let mixed = "[Warning] one or more build args were not consumed: [NPM_TOKEN TARGETARCH]";
        assert_eq!(
            user_line(mixed).as_deref(),
            Some("[Warning] one or more build args were not consumed: [NPM_TOKEN]")
        );
        assert_eq!(
            user_line("STEP 1/2: FROM x").as_deref(),
            Some("STEP 1/2: FROM x")
        );
    }
}

/// Build args as the builder's command line and environment: each value
/// goes in the builder's environment and only its name on the command line
/// (`--build-arg=NAME`, which buildah and Kaniko both fill from their
/// environment), so no value — often a password — shows in `ps` to every
/// user of the machine. A name the builder itself reads from its
/// environment keeps its value on the command line instead.
pub fn build_arg_flags(args: &BTreeMap<String, String>) -> (Vec<String>, BTreeMap<String, String>) {
    let mut argv = Vec::new();
    let mut env = BTreeMap::new();
    for (k, v) in args {
        if builder_reads(k) {
            argv.push(format!("--build-arg={k}={v}"));
        } else {
            argv.push(format!("--build-arg={k}"));
            env.insert(k.clone(), v.clone());
        }
    }
    (argv, env)
}

/// Whether the builders (or what they run) read `name` from their own
/// environment, so that a build arg of that name must not be put there.
fn builder_reads(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "PATH",
        "HOME",
        "USER",
        "TMPDIR",
        "SHELL",
        "PWD",
        "TZ",
        "LANG",
        "REGISTRY_AUTH_FILE",
        "DOCKER_CONFIG",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "XDG_RUNTIME_DIR",
        // Go's runtime (Kaniko, buildah) reads these.
        "GODEBUG",
        "GOGC",
        "GOMAXPROCS",
        "GOMEMLIMIT",
        "GOTRACEBACK",
    ];
    // Cloud credentials would change which identity the builder pushes
    // with (Kaniko reads them for ECR, GCR and ACR logins).
    const PREFIXES: &[&str] = &[
        "BUILDAH_",
        "CONTAINERS_",
        "STORAGE_",
        "LD_",
        "LC_",
        "BAKERY_",
        "KANIKO_",
        "AWS_",
        "GOOGLE_",
        "AZURE_",
    ];
    EXACT.iter().any(|e| e.eq_ignore_ascii_case(name))
        || PREFIXES
            .iter()
            .any(|p| name.to_ascii_uppercase().starts_with(p))
}

/// One process to run: argv and extra environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The program and its arguments; never a build-arg value or a password.
    pub argv: Vec<String>,
    /// Environment for this step on top of the build's `env`: build-arg values,
    /// and where the builder finds its registry configuration and logins.
    pub env: BTreeMap<String, String>,
    /// What the step is, for messages ("build", "push").
    pub what: &'static str,
}

/// A daemonless builder: turns a [`Job`] into the processes that build and push it.
pub trait Builder: Send + Sync {
    /// The builder's name for messages and logs (`kaniko`, `buildah`).
    fn name(&self) -> &'static str;
    /// Prepares files the steps need (configuration), then lists the steps.
    fn steps(&self, job: &Job) -> std::io::Result<Vec<Step>>;
    /// The builder as the agent's first line names it (with its storage).
    fn describe(&self) -> String {
        self.name().to_string()
    }
    /// The cache hints for steps after an ARG, for a builder that does not
    /// find them in the layer cache itself (see [`ArgCache`]).
    fn arg_cache(&self, _job: &Job) -> std::io::Result<Option<ArgCache>> {
        Ok(None)
    }
}

/// The builder of a kind (`BAKERY_BUILDER`), buildah on vfs storage.
pub fn of_kind(kind: BuilderKind) -> Box<dyn Builder> {
    match kind {
        BuilderKind::Kaniko => Box::new(Kaniko::default()),
        BuilderKind::Buildah => Box::new(Buildah::default()),
    }
}

/// The builder an agent runs: [`of_kind`], with buildah on `storage` in
/// `work_dir` where buildah can use it there.
pub fn for_agent(kind: BuilderKind, storage: Storage, work_dir: &Path) -> Box<dyn Builder> {
    match kind {
        BuilderKind::Buildah => Box::new(Buildah::with_storage(storage, work_dir)),
        BuilderKind::Kaniko => of_kind(BuilderKind::Kaniko),
    }
}
