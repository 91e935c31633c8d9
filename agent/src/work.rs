//! One build, phase by phase: check in, fetch the context, pre-script,
//! build and push, read the pushed digest, post-script.

use std::path::PathBuf;
use std::time::Instant;

use bakery_client::AgentApi;
use bakery_protocol::api::AgentTask;
use bakery_protocol::redact::Redactor;

use crate::builder::{self, ArgCache, Builder, Job};
use crate::context::{check_dockerfile, download, extraction_limits, take_beside, take_named};
use crate::error::{io, AgentError};
use crate::logs::LogSink;
use crate::step::{run_builder_step, script_step};
use crate::{load, login, sources, AgentConfig};

/// What a finished build reports.
pub(crate) struct Built {
    pub digest: Option<String>,
    pub bases: Vec<String>,
}

impl Built {
    /// A run that built nothing (load mode).
    fn nothing() -> Built {
        Built {
            digest: None,
            bases: Vec::new(),
        }
    }
}

/// Runs the build's pre- or post-script (`which`), if it has one.
async fn run_script(
    which: &'static str,
    script: Option<&str>,
    cfg: &AgentConfig,
    context_dir: &std::path::Path,
    task: &AgentTask,
    log: &LogSink,
) -> Result<(), AgentError> {
    let Some(script) = script else {
        return Ok(());
    };
    log.line(format!("running {which}"));
    script_step(which, script, &cfg.work_dir, context_dir, task, log).await
}

pub(crate) async fn work(
    cfg: &AgentConfig,
    controller: &AgentApi,
    log: &LogSink,
    born: Instant,
) -> Result<Built, AgentError> {
    let task = controller.spec().await?;
    log.set_redactor(Redactor::for_spec(&task.spec));
    if let Some(load) = cfg.load {
        log.line(format!(
            "bakery-agent {} in load mode: {} lines at {}/s",
            env!("CARGO_PKG_VERSION"),
            load.lines,
            load.per_second
        ));
        load::run(load, log).await;
        return Ok(Built::nothing());
    }
    let builder = builder::for_agent(cfg.builder, cfg.buildah_storage, &cfg.work_dir);
    log.line(format!(
        "bakery-agent {} building {} for {} with {}",
        env!("CARGO_PKG_VERSION"),
        task.push.as_deref().unwrap_or("(no push)"),
        task.spec.custom_platform,
        builder.describe()
    ));
    let context_dir = fetch_context(cfg, controller, &task, log).await?;
    log.set_paths(&context_dir, &cfg.work_dir);
    let dockerfile = crate::context::dockerfile_path(&context_dir, &cfg.work_dir, &task.spec);
    let sources = sources::read(&dockerfile, &task);
    sources::check_emulation(&task, &sources)?;
    let docker_config = login::write_docker_config(&cfg.work_dir, &task)?;
    let secret_files = crate::secrets::write_files(&cfg.work_dir, "secrets", &task.spec.secrets)?;
    let ssh_files = crate::secrets::write_files(&cfg.work_dir, "ssh", &task.spec.ssh)?;
    let insecure = sources::plain_http(&task, &sources, &cfg.insecure);
    let push = task.push.as_deref().filter(|_| !task.spec.no_push);
    crate::registries::check(
        crate::registries::uses(&sources.hosts, push),
        &insecure,
        crate::registries::PROBE_TIMEOUT,
    )
    .await?;
    let script = |which, script| run_script(which, script, cfg, &context_dir, &task, log);
    script("pre-script", task.spec.pre_script.as_deref()).await?;
    let job = Job {
        task: &task,
        context_dir: &context_dir,
        work_dir: &cfg.work_dir,
        docker_config: docker_config.as_deref(),
        secret_files: &secret_files,
        ssh_files: &ssh_files,
        insecure: &insecure,
    };
    build(builder.as_ref(), &job, log, born).await?;
    let digest = pushed_digest(&job)?;
    script("post-script", task.spec.post_script.as_deref()).await?;
    Ok(Built {
        digest,
        bases: sources.bases,
    })
}

/// Downloads and unpacks the context into `<work>/context`; checks the
/// Dockerfile is in it.
async fn fetch_context(
    cfg: &AgentConfig,
    controller: &AgentApi,
    task: &AgentTask,
    log: &LogSink,
) -> Result<PathBuf, AgentError> {
    let context_dir = cfg.work_dir.join("context");
    std::fs::create_dir_all(&context_dir)
        .map_err(io(format!("creating {}", context_dir.display())))?;
    let limits = extraction_limits(&cfg.work_dir, task.context_bytes)?;
    let started = Instant::now();
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let progress = tokio::spawn(download_progress(
        log.clone(),
        std::sync::Arc::clone(&received),
        std::time::Duration::from_secs(10),
    ));
    let extracted = download(controller, task, &context_dir, limits, received).await;
    progress.abort();
    let extracted = extracted?;
    check_dockerfile(&context_dir, &task.spec.dockerfile)?;
    take_beside(&context_dir, &cfg.work_dir, &task.spec)?;
    take_named(&context_dir, &cfg.work_dir, &task.spec)?;
    log.line(format!(
        "context: {} entries, {} bytes, unpacked in {:.2}s",
        extracted.entries,
        extracted.bytes,
        started.elapsed().as_secs_f64()
    ));
    Ok(context_dir)
}

/// Runs the builder's steps one after another, each timed in the log.
async fn build(
    builder: &dyn Builder,
    job: &Job<'_>,
    log: &LogSink,
    born: Instant,
) -> Result<(), AgentError> {
    let steps = builder.steps(job).map_err(io("preparing the builder"))?;
    let hints = builder
        .arg_cache(job)
        .map_err(io("preparing the builder"))?;
    if let Some(hints) = &hints {
        hints.prefetch(log).await;
    }
    // Cold start as a user feels it (check-in, context download and
    // extraction, pre-script): what bench/run reports as start-to-builder.
    log.line(format!(
        "{} starting {:.3}s after the agent did",
        builder.name(),
        born.elapsed().as_secs_f64()
    ));
    for step in steps {
        let started = Instant::now();
        let watch = hints
            .as_ref()
            .filter(|_| step.what == "build")
            .map(ArgCache::watcher);
        run_builder_step(builder.name(), &step, job.context_dir, job.task, log, watch).await?;
        log.line(format!(
            "{} {} finished in {:.3}s",
            builder.name(),
            step.what,
            started.elapsed().as_secs_f64()
        ));
    }
    if let Some(hints) = &hints {
        hints.record(log).await;
    }
    Ok(())
}

/// The digest the builder wrote, when the task pushes.
fn pushed_digest(job: &Job<'_>) -> Result<Option<String>, AgentError> {
    if job.task.push.is_none() || job.task.spec.no_push {
        return Ok(None);
    }
    let file = job.digest_file();
    let text = std::fs::read_to_string(&file).map_err(|_| AgentError::NoDigest(file.clone()))?;
    let digest = text.trim().to_string();
    if !digest.starts_with("sha256:") {
        return Err(AgentError::NoDigest(file));
    }
    Ok(Some(digest))
}

/// Every 10 s while a context is fetched and unpacked, a line saying how
/// far it got: a big context never looks like a hung agent.
async fn download_progress(
    log: LogSink,
    received: std::sync::Arc<std::sync::atomic::AtomicU64>,
    every: std::time::Duration,
) {
    let started = Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let mib = received.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1_048_576.0;
        log.line(format!(
            "fetching and unpacking the context: {mib:.1} MiB received after {}s",
            started.elapsed().as_secs()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_long_download_says_how_far_it_got() {
        let (log, mut lines) = LogSink::capture();
        let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(5 << 20));
        let progress = tokio::spawn(download_progress(
            log,
            received,
            std::time::Duration::from_millis(20),
        ));
        let line = tokio::time::timeout(std::time::Duration::from_secs(5), lines.recv())
            .await
            .expect("a line within the deadline")
            .expect("the sink is open");
        progress.abort();
        assert!(
            line.starts_with("fetching and unpacking the context: 5.0 MiB received after "),
            "{line}"
        );
    }
}
