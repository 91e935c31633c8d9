//! Buildah, rootful with chroot isolation: daemonless, unprivileged-friendly,
//! and runnable on a plain Linux host. The local platform and the tests use it.
//!
//! Each task gets its own storage under the work dir, so parallel agents
//! never contend for locks and cleanup is deleting one directory. The
//! driver is vfs unless the platform asks for overlay
//! ([`agent_env::BUILDAH_STORAGE`]) and the kernel allows it here: vfs
//! copies the whole file system for every layer, which made a rebuild
//! from the layer cache of a Debian + gcc image cost half its cold build
//! (pulling eight cached layers meant eight copies of 300 MB); with overlay
//! a cached layer costs its download.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bakery_protocol::api::agent_env;
use bakery_protocol::spec::NamedContext;

use super::arg_cache::ArgCache;
use super::{Builder, Job, Step};

/// Buildah as a [`Builder`]: `buildah build`, then `buildah push` unless the build does not push.
pub struct Buildah {
    /// The buildah binary to run; `buildah` (found on `PATH`) by default.
    pub program: String,
    /// The storage driver every buildah command of the task uses.
    pub storage: Storage,
    /// Why overlay was asked for and not used, for the agent's first line.
    pub fallback: Option<String>,
}

impl Default for Buildah {
    fn default() -> Self {
        Buildah {
            program: "buildah".into(),
            storage: Storage::Vfs,
            fallback: None,
        }
    }
}

/// buildah's storage driver ([`agent_env::BUILDAH_STORAGE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// Plain directories: works anywhere, every layer a full copy.
    #[default]
    Vfs,
    /// Native overlay mounts (rootless in a user namespace: kernel 5.11+).
    Overlay,
}

impl Storage {
    /// The `--storage-driver` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Storage::Vfs => "vfs",
            Storage::Overlay => "overlay",
        }
    }

    /// The driver asked for in the agent's environment: vfs when unset.
    pub fn from_env() -> Result<Storage, String> {
        Storage::parse(std::env::var(agent_env::BUILDAH_STORAGE).ok().as_deref())
    }

    fn parse(value: Option<&str>) -> Result<Storage, String> {
        match value {
            None | Some("" | "vfs") => Ok(Storage::Vfs),
            Some("overlay") => Ok(Storage::Overlay),
            Some(other) => Err(format!(
                "{} is `{other}`; use vfs or overlay",
                agent_env::BUILDAH_STORAGE
            )),
        }
    }
}

impl Buildah {
    /// Buildah with `wanted` storage under `work_dir`, if buildah can
    /// use it there (it is asked once: `buildah info` sets the driver up,
    /// mounting a test overlay); else vfs, with the reason kept for the log.
    pub fn with_storage(wanted: Storage, work_dir: &std::path::Path) -> Buildah {
        let mut b = Buildah::default();
        if wanted == Storage::Vfs {
            return b;
        }
        b.storage = wanted;
        let mut argv = b.base_in(work_dir);
        argv.push("info".into());
        if let Err(why) = probe(&argv) {
            b.storage = Storage::Vfs;
            b.fallback = Some(why);
        }
        b
    }
}

/// Runs `argv` to its end, or kills it after 30 s: `Err` with the last
/// line of its standard error when it fails.
fn probe(argv: &[String]) -> Result<(), String> {
    use std::process::{Command, Stdio};
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {}: {e}", argv[0]))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("`buildah info` gave no answer in 30 s".into());
            }
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    Err(last.chars().take(300).collect())
}

impl Builder for Buildah {
    fn name(&self) -> &'static str {
        "buildah"
    }

    fn describe(&self) -> String {
        match &self.fallback {
            None => format!("buildah ({} storage)", self.storage.as_str()),
            Some(why) => format!("buildah (vfs storage: overlay is not usable here: {why})"),
        }
    }

    fn arg_cache(&self, job: &Job) -> std::io::Result<Option<ArgCache>> {
        let spec = &job.task.spec;
        let (Some(true), Some(repo)) = (spec.cache.enable, &spec.cache.repo) else {
            return Ok(None);
        };
        Ok(Some(ArgCache::new(
            self.base(job),
            Self::environment(job)?,
            repo.clone(),
        )))
    }

    fn steps(&self, job: &Job) -> std::io::Result<Vec<Step>> {
        let env = Self::environment(job)?;
        let image = format!("localhost/bakery-task:{}", job.task.arch);
        let (build, arg_env) = self.build_argv(job, &image);
        let mut build_env = env.clone();
        build_env.extend(arg_env);
        let mut steps = vec![Step {
            argv: build,
            env: build_env,
            what: "build",
        }];
        if let (Some(dest), false) = (&job.task.push, job.task.spec.no_push) {
            steps.push(Step {
                argv: self.push_argv(job, image, dest),
                env,
                what: "push",
            });
        }
        Ok(steps)
    }
}

impl Buildah {
    /// Writes this task's `registries.conf` (plain-HTTP registries and the
    /// short-name default) and returns the environment that points buildah
    /// at it and at the registry logins.
    fn environment(job: &Job) -> std::io::Result<BTreeMap<String, String>> {
        let mut conf = String::from("unqualified-search-registries = [\"docker.io\"]\n");
        for registry in job.insecure {
            let _ = write!(
                conf,
                "\n[[registry]]\nlocation = \"{registry}\"\ninsecure = true\n"
            );
        }
        let conf_path = job.work_dir.join("registries.conf");
        std::fs::write(&conf_path, conf)?;
        let mut env = BTreeMap::from([(
            "CONTAINERS_REGISTRIES_CONF".to_string(),
            conf_path.display().to_string(),
        )]);
        // Only the build's own logins: never a login file the agent's
        // environment happens to have (a local agent inherits the runner's),
        // which would push the arch images with a login the index writer
        // does not have.
        let auth_file = if let Some(dir) = job.docker_config {
            dir.join("config.json")
        } else {
            let empty = job.work_dir.join("no-logins.json");
            std::fs::write(&empty, "{\"auths\":{}}")?;
            empty
        };
        env.insert(
            "REGISTRY_AUTH_FILE".to_string(),
            auth_file.display().to_string(),
        );
        Ok(env)
    }

    /// `buildah` with this task's own storage.
    fn base(&self, job: &Job) -> Vec<String> {
        self.base_in(job.work_dir)
    }

    /// `buildah` with its storage in `work_dir`.
    fn base_in(&self, work_dir: &std::path::Path) -> Vec<String> {
        vec![
            self.program.clone(),
            format!("--storage-driver={}", self.storage.as_str()),
            format!("--root={}", work_dir.join("storage").display()),
            format!("--runroot={}", work_dir.join("run").display()),
        ]
    }

    /// `buildah build`, and the build-arg values for its environment.
    fn build_argv(&self, job: &Job, image: &str) -> (Vec<String>, BTreeMap<String, String>) {
        let spec = &job.task.spec;
        let mut build = self.base(job);
        build.extend([
            "build".into(),
            "--isolation=chroot".into(),
            format!("--platform={}", spec.custom_platform),
            format!("--file={}", job.dockerfile().display()),
            format!("--tag={image}"),
        ]);
        // Buildah defines TARGETPLATFORM and friends from --platform itself.
        let (arg_flags, arg_env) = super::build_arg_flags(&spec.build_args);
        build.extend(arg_flags);
        build.extend(crate::secrets::flags(job.secret_files));
        build.extend(crate::secrets::ssh_flags(job.ssh_files));
        for (name, context) in &spec.build_contexts {
            let value = match context {
                NamedContext::Archive(n) => crate::context::named_dir(job.work_dir, *n)
                    .display()
                    .to_string(),
                NamedContext::DockerImage(image) => format!("docker-image://{image}"),
            };
            build.push(format!("--build-context={name}={value}"));
        }
        if let Some(target) = &spec.target {
            build.push(format!("--target={target}"));
        }
        for (k, v) in &spec.labels {
            build.push(format!("--label={k}={v}"));
        }
        // On the OCI manifest buildah writes (its default format).
        for (k, v) in &spec.annotations {
            build.push(format!("--annotation={k}={v}"));
        }
        if spec.cache.enable == Some(true) {
            build.push("--layers".into());
            if let Some(repo) = &spec.cache.repo {
                build.push(format!("--cache-from={repo}"));
                build.push(format!("--cache-to={repo}"));
            }
            if let Some(ttl) = &spec.cache.ttl {
                build.push(format!("--cache-ttl={ttl}"));
            }
        }
        for from in &spec.cache_from {
            build.push(format!("--cache-from={from}"));
        }
        build.extend(spec.extra_flags.iter().cloned());
        build.push(job.context_dir.display().to_string());
        (build, arg_env)
    }

    /// `buildah push` of the built image to `dest`, writing the digest file.
    fn push_argv(&self, job: &Job, image: String, dest: &str) -> Vec<String> {
        let spec = &job.task.spec;
        let mut push = self.base(job);
        push.extend([
            "push".into(),
            format!("--digestfile={}", job.digest_file().display()),
        ]);
        if let Some(c) = spec.compression {
            push.push(format!("--compression-format={c}"));
        }
        if let Some(level) = spec.compression_level {
            push.push(format!("--compression-level={level}"));
        }
        push.extend([image, format!("docker://{dest}")]);
        push
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A driver buildah cannot set up here leaves the task on vfs, with
    /// buildah's own reason for the agent's first line.
    #[test]
    fn overlay_that_buildah_refuses_falls_back_to_vfs() {
        let fails = [
            "sh",
            "-c",
            "echo 'kernel does not support overlay fs' >&2; exit 1",
        ]
        .map(String::from);
        assert_eq!(
            probe(&fails).unwrap_err(),
            "kernel does not support overlay fs"
        );
        assert_eq!(probe(&["true".to_string()]), Ok(()));
        let dir = tempfile::tempdir().unwrap();
        let vfs = Buildah::with_storage(Storage::Vfs, dir.path());
        assert_eq!(vfs.storage, Storage::Vfs);
        assert_eq!(vfs.describe(), "buildah (vfs storage)");
    }

    #[test]
    fn an_unknown_storage_driver_is_named() {
        assert_eq!(Storage::parse(None), Ok(Storage::Vfs));
        assert_eq!(Storage::parse(Some("overlay")), Ok(Storage::Overlay));
        assert_eq!(
            Storage::parse(Some("btrfs")).unwrap_err(),
            "BAKERY_BUILDAH_STORAGE is `btrfs`; use vfs or overlay"
        );
    }
}
