//! Buildah, rootful with chroot isolation: daemonless, unprivileged-friendly,
//! and runnable on a plain Linux host. The local platform and the tests use it.
//!
//! Each task gets its own storage under the work dir (vfs driver: no kernel
//! overlay needed), so parallel agents never contend for locks and cleanup is
//! deleting one directory.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bakery_protocol::spec::NamedContext;

use super::{Builder, Job, Step};

/// Buildah as a [`Builder`]: `buildah build`, then `buildah push` unless the build does not push.
pub struct Buildah {
    /// The buildah binary to run; `buildah` (found on `PATH`) by default.
    pub program: String,
}

impl Default for Buildah {
    fn default() -> Self {
        Buildah {
            program: "buildah".into(),
        }
    }
}

impl Builder for Buildah {
    fn name(&self) -> &'static str {
        "buildah"
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
        vec![
            self.program.clone(),
            "--storage-driver=vfs".into(),
            format!("--root={}", job.work_dir.join("storage").display()),
            format!("--runroot={}", job.work_dir.join("run").display()),
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
