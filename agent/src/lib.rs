//! bakery-agent: one build of one arch, then exit.
//!
//! Read top-down: [`run`] checks in with the controller ([`controller`]),
//! downloads and safely unpacks the context ([`extract`]), runs the
//! pre-script, builds and pushes with a daemonless [`builder`], runs the
//! post-script, and reports the pushed digest. Every line printed on the way
//! is redacted and streamed to the controller as it happens ([`logs`]).

pub mod builder;
pub mod extract;
pub mod load;
pub mod logs;
pub mod process;
pub mod sources;

use std::path::{Path, PathBuf};
use std::time::Instant;

use bakery_protocol::api::{AgentResult, AgentTask, ContextSource};
use bakery_protocol::redact::Redactor;
use bakery_protocol::ContextKey;
use base64::Engine;
use futures_util::TryStreamExt;
use tokio::process::Command;

use bakery_client::AgentApi;
use builder::Job;
use logs::LogSink;

/// The agent's settings, from the environment the platform gave it.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub controller_url: String,
    pub task_id: String,
    pub token: String,
    pub builder: String,
    pub work_dir: PathBuf,
    pub insecure: Vec<String>,
    /// Benchmark mode: stream lines instead of building ([`load`]).
    pub load: Option<load::Load>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Controller(#[from] bakery_client::Error),
    #[error(transparent)]
    Extract(#[from] extract::ExtractError),
    #[error("unknown builder `{0}`; expected kaniko or buildah")]
    UnknownBuilder(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed ({status}){}", last_line.as_ref().map(|l| format!(": {l}")).unwrap_or_default())]
    Step {
        what: String,
        status: String,
        last_line: Option<String>,
    },
    #[error("downloading the context: {0}")]
    Download(#[from] bakery_store::StoreError),
    #[error("the builder did not write the pushed digest to {0}")]
    NoDigest(PathBuf),
    #[error("{0}")]
    Context(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Io { what, source }
}

/// Runs the task to the end and reports. Returns whether it succeeded.
pub async fn run(cfg: AgentConfig) -> bool {
    let born = Instant::now();
    let controller = AgentApi::new(&cfg.controller_url, &cfg.task_id, &cfg.token);
    let (log, shipper) = logs::start(controller.clone());
    let outcome = work(&cfg, &controller, &log, born).await;
    let result = match outcome {
        Ok(built) => AgentResult::Succeeded {
            digest: built.digest,
            bases: built.bases,
        },
        Err(AgentError::Controller(bakery_client::Error::Refused {
            status, message, ..
        })) if status == reqwest::StatusCode::CONFLICT
            || status == reqwest::StatusCode::UNAUTHORIZED =>
        {
            // The controller does not want this agent (already checked in,
            // finished, or cancelled): nothing to report.
            eprintln!("bakery-agent: the controller refused this task: {message}");
            shipper.finish(log).await;
            let _ = std::fs::remove_dir_all(&cfg.work_dir);
            return false;
        }
        Err(e) => {
            log.line(format!("error: {e}"));
            AgentResult::Failed {
                error: e.to_string(),
            }
        }
    };
    shipper.finish(log).await;
    let ok = matches!(result, AgentResult::Succeeded { .. });
    let reported = controller.result(&result).await;
    // After the report, not before: the build's end waits for the report
    // only, and a builder's storage can take seconds to delete. The local
    // platform deletes the work dir too once the agent is gone (it may be
    // stopped on the way); on ECS and Kubernetes it goes with the task.
    let _ = std::fs::remove_dir_all(&cfg.work_dir);
    if let Err(e) = reported {
        eprintln!("bakery-agent: could not report the result: {e}");
        return false;
    }
    ok
}

/// What a finished build reports.
struct Built {
    digest: Option<String>,
    bases: Vec<String>,
}

async fn work(
    cfg: &AgentConfig,
    controller: &AgentApi,
    log: &LogSink,
    born: Instant,
) -> Result<Built, AgentError> {
    let builder = builder::by_name(&cfg.builder)
        .ok_or_else(|| AgentError::UnknownBuilder(cfg.builder.clone()))?;
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
        return Ok(Built {
            digest: None,
            bases: Vec::new(),
        });
    }
    log.line(format!(
        "bakery-agent {} building {} for {} with {}",
        env!("CARGO_PKG_VERSION"),
        task.push.as_deref().unwrap_or("(no push)"),
        task.spec.custom_platform,
        builder.name()
    ));

    let context_dir = cfg.work_dir.join("context");
    std::fs::create_dir_all(&context_dir)
        .map_err(io(format!("creating {}", context_dir.display())))?;
    let limits = extraction_limits(&cfg.work_dir, task.context_bytes)?;
    let started = Instant::now();
    let extracted = download(controller, &task, &context_dir, limits).await?;
    check_dockerfile(&context_dir, &task.spec.dockerfile)?;
    log.line(format!(
        "context: {} entries, {} bytes, unpacked in {:.2}s",
        extracted.entries,
        extracted.bytes,
        started.elapsed().as_secs_f64()
    ));

    let sources = sources::read(&context_dir, &task);
    sources::check_emulation(&task, &sources)?;
    let docker_config = write_docker_config(&cfg.work_dir, &task)?;
    let insecure = sources::plain_http(&task, &sources, &cfg.insecure);

    if let Some(script) = &task.spec.pre_script {
        log.line("running pre-script");
        script_step(
            "pre-script",
            script,
            &cfg.work_dir,
            &context_dir,
            &task,
            log,
        )
        .await?;
    }

    let job = Job {
        task: &task,
        context_dir: &context_dir,
        work_dir: &cfg.work_dir,
        docker_config: docker_config.as_deref(),
        insecure: &insecure,
    };
    let steps = builder.steps(&job).map_err(io("preparing the builder"))?;
    // Cold start as a user feels it (check-in, context download and
    // extraction, pre-script): what bench/run reports as start-to-builder.
    log.line(format!(
        "{} starting {:.3}s after the agent did",
        builder.name(),
        born.elapsed().as_secs_f64()
    ));
    for step in steps {
        let mut cmd = Command::new(&step.argv[0]);
        cmd.args(&step.argv[1..])
            .envs(&task.spec.env)
            .envs(&step.env)
            .current_dir(&context_dir);
        without_agent_secrets(&mut cmd);
        let started = Instant::now();
        let (status, tail) = process::run_streaming(cmd, log, 20)
            .await
            .map_err(io(format!("starting {}", step.argv[0])))?;
        if !status.success() {
            return Err(AgentError::Step {
                what: format!("{} {}", builder.name(), step.what),
                status: describe(status),
                last_line: last_meaningful(&tail),
            });
        }
        log.line(format!(
            "{} {} finished in {:.3}s",
            builder.name(),
            step.what,
            started.elapsed().as_secs_f64()
        ));
    }

    let digest = if task.push.is_some() && !task.spec.no_push {
        let file = job.digest_file();
        let text =
            std::fs::read_to_string(&file).map_err(|_| AgentError::NoDigest(file.clone()))?;
        let digest = text.trim().to_string();
        if !digest.starts_with("sha256:") {
            return Err(AgentError::NoDigest(file));
        }
        Some(digest)
    } else {
        None
    };

    if let Some(script) = &task.spec.post_script {
        log.line("running post-script");
        script_step(
            "post-script",
            script,
            &cfg.work_dir,
            &context_dir,
            &task,
            log,
        )
        .await?;
    }
    Ok(Built {
        digest,
        bases: sources.bases,
    })
}

/// Streams the context from where the controller says it is into the
/// extractor: no temporary archive on disk.
async fn download(
    controller: &AgentApi,
    task: &AgentTask,
    dest: &Path,
    limits: extract::Limits,
) -> Result<extract::Extracted, AgentError> {
    let (key, reader): (&ContextKey, Box<dyn tokio::io::AsyncRead + Send + Unpin>) =
        match &task.context {
            ContextSource::Controller { key } => {
                let stream = controller
                    .context()
                    .await?
                    .bytes_stream()
                    .map_err(std::io::Error::other);
                (key, Box::new(tokio_util::io::StreamReader::new(stream)))
            }
            ContextSource::S3 { location, key } => {
                let store = bakery_store::S3Store::connect(bakery_store::S3Settings {
                    bucket: location.bucket.clone(),
                    endpoint: location.endpoint.clone(),
                    region: location.region.clone(),
                    ssl: location.ssl,
                })
                .await;
                (key, Box::new(store.download(key).await?))
            }
        };
    let codec = key.codec();
    let dest = dest.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let sync = tokio_util::io::SyncIoBridge::new(reader);
        extract::extract_compressed(sync, codec, &dest, limits)
    })
    .await
    .map_err(|e| AgentError::Io {
        what: "unpacking the context".into(),
        source: std::io::Error::other(e),
    })?
    .map_err(AgentError::from)
}

/// Registry logins as a Docker `config.json`, readable by the agent only.
fn write_docker_config(work: &Path, task: &AgentTask) -> Result<Option<PathBuf>, AgentError> {
    if task.spec.credentials.is_empty() {
        return Ok(None);
    }
    let mut auths = serde_json::Map::new();
    for c in &task.spec.credentials {
        let key = if c.registry == "docker.io" || c.registry == "index.docker.io" {
            "https://index.docker.io/v1/".to_string()
        } else {
            c.registry.clone()
        };
        let token = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            c.username,
            c.password.expose()
        ));
        auths.insert(key, serde_json::json!({ "auth": token }));
    }
    let dir = work.join("docker");
    std::fs::create_dir_all(&dir).map_err(io("creating the registry config dir"))?;
    let path = dir.join("config.json");
    let body = serde_json::to_vec(&serde_json::json!({ "auths": auths })).expect("json serialises");
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(io("writing the registry config"))?;
        f.write_all(&body)
            .map_err(io("writing the registry config"))?;
    }
    Ok(Some(dir))
}

/// Runs a pre- or post-script with `sh -e`, in the context directory. The
/// script goes to the shell as a file (readable by the agent only), not on
/// its command line, where every user of the machine could read it (it may
/// hold a password the plan masks).
async fn script_step(
    what: &str,
    script: &str,
    work: &Path,
    dir: &Path,
    task: &AgentTask,
    log: &LogSink,
) -> Result<(), AgentError> {
    let file = work.join(format!("{what}.sh"));
    write_private(&file, script.as_bytes()).map_err(io(format!("writing the {what}")))?;
    let mut cmd = Command::new("sh");
    cmd.arg("-e")
        .arg(&file)
        .current_dir(dir)
        .envs(&task.spec.env);
    without_agent_secrets(&mut cmd);
    let (status, tail) = process::run_streaming(cmd, log, 20)
        .await
        .map_err(io(format!("starting the {what}")))?;
    if !status.success() {
        return Err(AgentError::Step {
            what: what.to_string(),
            status: describe(status),
            last_line: last_meaningful(&tail),
        });
    }
    Ok(())
}

/// Scripts and builders run the build's own code: they get the agent's
/// environment without its task token, which speaks for this task to the
/// controller (the agent keeps it to itself).
fn without_agent_secrets(cmd: &mut Command) {
    cmd.env_remove(bakery_protocol::api::agent_env::TASK_TOKEN);
}

/// What the context may unpack to: what the client packed (its declared
/// size, when it sent one), never more than 16 GiB, and never more than
/// 90 % of the free space on the agent's disk, which other agents may
/// share. A context that cannot fit fails before a byte is written.
fn extraction_limits(work: &Path, declared: Option<u64>) -> Result<extract::Limits, AgentError> {
    let mut limits = extract::Limits::default();
    let free = nix::sys::statvfs::statvfs(work)
        .ok()
        .map(|s| s.blocks_available() * s.fragment_size());
    let room = free.map(|f| f / 10 * 9);
    if let (Some(declared), Some(room)) = (declared, room) {
        if declared > room {
            return Err(AgentError::Context(format!(
                "the context unpacks to {declared} bytes, but the agent's disk has only {room} bytes to spare; give the agent more disk or send a smaller context (.dockerignore)"
            )));
        }
    }
    limits.max_bytes = [Some(limits.max_bytes), declared, room]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(limits.max_bytes);
    limits.declared = declared.is_some_and(|d| d == limits.max_bytes);
    Ok(limits)
}

/// The Dockerfile must be a file inside the context: a Dockerfile that is
/// a symlink (or under one) leading out of the context would have the
/// builder read any file of the agent's machine.
pub fn check_dockerfile(context: &Path, dockerfile: &str) -> Result<(), AgentError> {
    let refuse = |why: String| AgentError::Context(format!("dockerfile `{dockerfile}`: {why}"));
    bakery_protocol::validate::check_relative_path("dockerfile", dockerfile)
        .map_err(|e| refuse(e.message))?;
    let root = context
        .canonicalize()
        .map_err(|e| refuse(format!("the context directory: {e}")))?;
    let path = context
        .join(dockerfile)
        .canonicalize()
        .map_err(|_| refuse("not found in the build context".into()))?;
    if !path.starts_with(&root) {
        return Err(refuse(
            "it is a symlink that leads out of the build context; the Dockerfile must be a file in the context".into(),
        ));
    }
    if !path.is_file() {
        return Err(refuse("not a file".into()));
    }
    Ok(())
}

/// Writes `bytes` to `path`, readable and writable by the agent only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

fn describe(status: std::process::ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit code {code}"),
        None => "killed by a signal".into(),
    }
}

/// The last line that says something: builders end with blank lines and
/// generic trailers ("error building at STEP").
fn last_meaningful(tail: &[String]) -> Option<String> {
    tail.iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| !l.is_empty())
        .map(|l| l.chars().take(500).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_is_capped_at_what_was_packed_and_what_the_disk_holds() {
        let dir = tempfile::tempdir().unwrap();
        let packed = extraction_limits(dir.path(), Some(1000)).unwrap();
        assert_eq!(packed.max_bytes, 1000);
        assert!(
            packed.declared,
            "past it, the archive is not what was packed"
        );
        let undeclared = extraction_limits(dir.path(), None).unwrap();
        assert!(undeclared.max_bytes <= 16 << 30);
        assert!(!undeclared.declared);
        let e = extraction_limits(dir.path(), Some(u64::MAX / 2))
            .unwrap_err()
            .to_string();
        assert!(e.contains("has only") && e.contains("to spare"), "{e}");
    }
}
