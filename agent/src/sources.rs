//! What a build pulls, read from its Dockerfile before it runs: the base
//! images (reported with the result, so that an image of the wrong
//! architecture names the base responsible), the registries they come from
//! (loopback ones are plain HTTP for pulls as much as for the push), and
//! whether a build for another architecture than this machine's runs
//! programs of that architecture (which needs emulation here).

use std::path::Path;

use bakery_protocol::api::AgentTask;
use bakery_protocol::dockerfile::{self, Base};
use bakery_protocol::spec::NamedContext;
use bakery_protocol::Arch;

use crate::AgentError;

/// What the Dockerfile says the build pulls and runs.
#[derive(Debug, Default)]
pub struct Sources {
    /// Images built on, the final stage's base first.
    pub bases: Vec<String>,
    /// Registry hosts the build pulls from (bases, cache, `cache-from`).
    pub hosts: Vec<String>,
    /// The line of a `RUN` step in a stage built for the task's platform.
    pub first_run: Option<usize>,
}

/// Reads the task's Dockerfile. A Dockerfile the builder would refuse is
/// left for the builder to report (it says more); nothing is known then.
pub fn read(dockerfile: &Path, task: &AgentTask) -> Sources {
    let Ok(text) = std::fs::read_to_string(dockerfile) else {
        return Sources::default();
    };
    let mut args = dockerfile::platform_args(&task.spec.custom_platform, Arch::host().platform());
    args.extend(task.spec.build_args.clone());
    let Ok(stages) = dockerfile::stages(&text, &args) else {
        return Sources::default();
    };
    let target = task.spec.target.as_deref();
    let platform = &task.spec.custom_platform;
    let pulls = dockerfile::pulls(&stages, target).unwrap_or_default();
    // What the build pulls for the platform it builds (a stage pinned to
    // another with `--platform` is meant to be of that one).
    // A named build context stands in for the image of its name: an
    // image context is pulled instead, a directory is not pulled at all.
    let named = &task.spec.build_contexts;
    let resolve = |image: &String| match named.get(image) {
        Some(NamedContext::DockerImage(other)) => Some(other.clone()),
        Some(NamedContext::Archive(_)) => None,
        None => Some(image.clone()),
    };
    let mut bases: Vec<String> = dockerfile::root_base(&stages, target)
        .iter()
        .filter_map(resolve)
        .collect();
    for pull in pulls
        .iter()
        .filter(|p| p.platform.as_ref().is_none_or(|p| p == platform))
        .filter_map(|p| resolve(&p.image))
    {
        if !bases.contains(&pull) {
            bases.push(pull);
        }
    }
    let mut hosts: Vec<String> = Vec::new();
    let cache = task.spec.cache.repo.iter().chain(&task.spec.cache_from);
    let images = named.values().filter_map(|c| match c {
        NamedContext::DockerImage(image) => Some(image.clone()),
        NamedContext::Archive(_) => None,
    });
    let pulled: Vec<String> = pulls.iter().filter_map(|p| resolve(&p.image)).collect();
    for image in pulled.iter().cloned().chain(cache.cloned()).chain(images) {
        let image = &image;
        let host = bakery_protocol::reference::registry_of(image).to_string();
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    let first_run = dockerfile::needed(&stages, target)
        .unwrap_or_default()
        .into_iter()
        .map(|i| &stages[i])
        .filter(|s| {
            s.platform
                .as_deref()
                .is_none_or(|p| p == task.spec.custom_platform)
        })
        .filter(|s| !matches!(s.base, Base::Scratch))
        .filter_map(|s| s.runs)
        .min();
    Sources {
        bases,
        hosts,
        first_run,
    }
}

/// Plain-HTTP registries for this build: the configured ones, and every
/// loopback registry it pushes to or pulls from (a base image on a second
/// local registry was refused with "HTTP response to HTTPS client").
pub fn plain_http(task: &AgentTask, sources: &Sources, configured: &[String]) -> Vec<String> {
    let mut out = configured.to_vec();
    let push = task
        .push
        .iter()
        .map(|p| bakery_protocol::reference::registry_of(p).to_string());
    for host in push.chain(sources.hosts.iter().cloned()) {
        if bakery_protocol::registry::is_insecure(&host, configured) && !out.contains(&host) {
            out.push(host);
        }
    }
    out
}

/// A build for another architecture than this machine's that runs
/// programs of that architecture needs them emulated (qemu-user registered
/// with binfmt_misc): fail before the builder starts, with what to do,
/// rather than at the first RUN step with `exec format error`.
pub fn check_emulation(task: &AgentTask, sources: &Sources) -> Result<(), AgentError> {
    let told: Vec<Arch> = std::env::var(bakery_protocol::api::agent_env::EMULATED)
        .unwrap_or_default()
        .split(',')
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    check_emulation_in(
        task,
        sources,
        Path::new(bakery_protocol::arch::BINFMT_MISC),
        &told,
    )
}

/// `told`: the arches the agent's launcher says its machine emulates
/// ([`bakery_protocol::api::agent_env::EMULATED`]), for an agent that
/// cannot read binfmt_misc itself.
fn check_emulation_in(
    task: &AgentTask,
    sources: &Sources,
    binfmt: &Path,
    told: &[Arch],
) -> Result<(), AgentError> {
    let host = Arch::host();
    let Some(line) = sources.first_run else {
        return Ok(());
    };
    if task.arch == host || told.contains(&task.arch) || task.arch.emulated_in(binfmt) {
        return Ok(());
    }
    Err(AgentError::Context(format!(
        "{arch}: {dockerfile}:{line} runs a program for linux/{arch}, but this agent's machine is linux/{host} and cannot run {arch} programs: install qemu-user-static and register it with binfmt_misc (on Debian: apt-get install qemu-user-static binfmt-support), or build {arch} on an {arch} machine (the ECS and Kubernetes platforms run each arch natively); COPY-only stages need neither",
        arch = task.arch,
        dockerfile = task.spec.dockerfile,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bakery_protocol::api::ContextSource;

    fn task(
        arch: Arch,
        dockerfile: &str,
        build_args: &[(&str, &str)],
    ) -> (tempfile::TempDir, AgentTask) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
        let mut spec = bakery_protocol::BuildSpec::new("Dockerfile", arch);
        spec.build_args = build_args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let task = AgentTask {
            build_id: "b".into(),
            service: "app".into(),
            task_id: format!("b-{arch}"),
            arch,
            push: Some("127.0.0.1:5000/app:1".into()),
            context: ContextSource::Controller {
                key: format!("contexts/sha256-{}.tar.gz", "0".repeat(64))
                    .parse()
                    .unwrap(),
            },
            context_bytes: None,
            spec,
        };
        (dir, task)
    }

    /// Every loopback registry the build pulls from is plain HTTP, as the
    /// one it pushes to is.
    #[test]
    fn bases_are_reported_and_their_loopback_registries_are_plain_http() {
        let (dir, task) = task(
            Arch::Arm64,
            "ARG BASE
FROM --platform=$BUILDPLATFORM 127.0.0.1:6000/tools:1 AS tools
FROM ${BASE}
COPY --from=tools /t /t
",
            &[("BASE", "127.0.0.1:7000/base:1")],
        );
        let sources = read(&dir.path().join("Dockerfile"), &task);
        assert_eq!(
            sources.bases,
            ["127.0.0.1:7000/base:1"],
            "the pinned stage is not the arch's base"
        );
        let plain = plain_http(&task, &sources, &["registry.lan".into()]);
        assert_eq!(
            plain,
            [
                "registry.lan",
                "127.0.0.1:5000",
                "127.0.0.1:6000",
                "127.0.0.1:7000"
            ]
        );
    }

    /// RUN steps for another arch without emulation fail before the build,
    /// with what to do; COPY-only builds and a machine that emulates pass.
    #[test]
    fn run_steps_for_another_arch_need_emulation() {
        let other = match Arch::host() {
            Arch::Amd64 => Arch::Arm64,
            Arch::Arm64 => Arch::Amd64,
        };
        let none = tempfile::tempdir().unwrap();
        let (dir, t) = task(
            other,
            "FROM alpine
COPY a /a
RUN make
",
            &[],
        );
        let sources = read(&dir.path().join("Dockerfile"), &t);
        assert_eq!(sources.first_run, Some(3));
        let e = check_emulation_in(&t, &sources, none.path(), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("Dockerfile:3 runs a program for linux/"), "{e}");
        assert!(e.contains("qemu-user-static"), "{e}");
        let (dir, copy_only) = task(
            other,
            "FROM alpine
COPY a /a
",
            &[],
        );
        check_emulation_in(
            &copy_only,
            &read(&dir.path().join("Dockerfile"), &copy_only),
            none.path(),
            &[],
        )
        .unwrap();
        let qemu = tempfile::tempdir().unwrap();
        let name = if other == Arch::Arm64 {
            "qemu-aarch64"
        } else {
            "qemu-x86_64"
        };
        std::fs::write(
            qemu.path().join(name),
            "enabled\ninterpreter /usr/bin/qemu\n",
        )
        .unwrap();
        check_emulation_in(&t, &sources, qemu.path(), &[]).unwrap();
        // What the launcher says, for an agent that cannot see binfmt_misc.
        check_emulation_in(&t, &sources, none.path(), &[other]).unwrap();
        let (dir, native) = task(
            Arch::host(),
            "FROM alpine
RUN make
",
            &[],
        );
        check_emulation_in(
            &native,
            &read(&dir.path().join("Dockerfile"), &native),
            none.path(),
            &[],
        )
        .unwrap();
    }
}
