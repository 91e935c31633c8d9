//! Kaniko's executor, as in the production agent image.

use super::{Builder, Job, Step};

/// Kaniko's executor as a [`Builder`]: one step that builds and pushes.
pub struct Kaniko {
    /// The executor binary; `/kaniko/executor` (where the Kaniko image has it) by default.
    pub executor: String,
}

impl Default for Kaniko {
    fn default() -> Self {
        Kaniko {
            executor: "/kaniko/executor".into(),
        }
    }
}

impl Builder for Kaniko {
    fn name(&self) -> &'static str {
        "kaniko"
    }

    fn steps(&self, job: &Job) -> std::io::Result<Vec<Step>> {
        let spec = &job.task.spec;
        // The controller refuses these for Kaniko agents; a task that has
        // them anyway fails here rather than building without them.
        if !spec.build_contexts.is_empty() || !spec.ssh.is_empty() {
            return Err(std::io::Error::other(
                "Kaniko has no named build contexts or SSH mounts: this build needs an agent with buildah (the local platform)",
            ));
        }
        let mut a = vec![
            self.executor.clone(),
            format!("--context=dir://{}", job.context_dir.display()),
            format!("--dockerfile={}", job.dockerfile().display()),
        ];
        match (&job.task.push, spec.no_push) {
            (Some(dest), false) => a.push(format!("--destination={dest}")),
            _ => a.push("--no-push".into()),
        }
        a.push(format!("--digest-file={}", job.digest_file().display()));
        a.push(format!("--custom-platform={}", spec.custom_platform));
        // Build only the stages the target needs, as BuildKit does: a
        // Dockerfile with alternative stages (bakery's own) must not fail
        // on a stage nothing uses.
        a.push("--skip-unused-stages".into());
        let (arg_flags, arg_env) = super::build_arg_flags(&job.build_args());
        a.extend(arg_flags);
        a.extend(crate::secrets::flags(job.secret_files));
        if let Some(target) = &spec.target {
            a.push(format!("--target={target}"));
        }
        for (k, v) in &spec.labels {
            a.push(format!("--label={k}={v}"));
        }
        a.extend(cache_flags(&spec.cache));
        if let Some(c) = spec.compression {
            a.push(format!("--compression={c}"));
        }
        if let Some(level) = spec.compression_level {
            a.push(format!("--compression-level={level}"));
        }
        if let Some(mode) = &spec.snapshot_mode {
            a.push(format!("--snapshot-mode={mode}"));
        }
        if spec.use_new_run {
            a.push("--use-new-run".into());
        }
        if spec.cleanup {
            a.push("--cleanup".into());
        }
        for path in &spec.ignore_path {
            a.push(format!("--ignore-path={path}"));
        }
        // The agent's own work dir must never end up in the image.
        a.push(format!("--ignore-path={}", job.work_dir.display()));
        for registry in job.insecure {
            a.push(format!("--insecure-registry={registry}"));
        }
        a.extend(spec.extra_flags.iter().cloned());
        let mut env = arg_env;
        if let Some(dir) = job.docker_config {
            env.insert("DOCKER_CONFIG".to_string(), dir.display().to_string());
        }
        Ok(vec![Step {
            argv: a,
            env,
            what: "build and push",
        }])
    }
}

/// Kaniko's layer cache flags, when the cache is on.
fn cache_flags(cache: &bakery_protocol::spec::Cache) -> Vec<String> {
    let mut a = Vec::new();
    if cache.enable != Some(true) {
        return a;
    }
    a.push("--cache=true".into());
    if let Some(repo) = &cache.repo {
        a.push(format!("--cache-repo={repo}"));
    }
    if let Some(ttl) = &cache.ttl {
        a.push(format!("--cache-ttl={ttl}"));
    }
    if cache.copy_layers == Some(true) {
        a.push("--cache-copy-layers".into());
    }
    if let Some(run) = cache.run_layers {
        a.push(format!("--cache-run-layers={run}"));
    }
    if let Some(compressed) = cache.compressed {
        a.push(format!("--compressed-caching={compressed}"));
    }
    a
}
