//! bakery-agent: one build of one arch, then exit.
//!
//! Read top-down: [`run`] checks in with the controller (through
//! `bakery-client`'s `AgentApi`) and hands the build to `work`, which
//! downloads and safely unpacks the context (`context`, [`extract`]), writes
//! the registry logins (`login`), runs the pre-script, builds and pushes
//! with a daemonless [`builder`] (`step`), runs the post-script, and
//! returns the pushed digest for `run` to report. Every line printed on the
//! way is redacted and streamed to the controller as it happens ([`logs`]).
//!
//! Beside them: `sources` reads what a Dockerfile pulls before it runs, and
//! `registries` asks each registry once how to reach it; `secrets` writes
//! build secrets as files for the builder; `process` runs a command and
//! streams its lines; `error` says what stopped a build and where; `load`
//! is the controller benchmark's stand-in build.

pub mod builder;
mod context;
mod error;
pub mod extract;
pub mod load;
mod login;
pub mod logs;
pub mod process;
mod registries;
mod secrets;
pub mod sources;
mod step;
mod work;

use std::path::PathBuf;
use std::time::Instant;

use bakery_client::AgentApi;
use bakery_protocol::api::agent_env::BuilderKind;
use bakery_protocol::api::AgentResult;

pub use context::check_dockerfile;
pub use error::AgentError;

/// The agent's settings, from the environment the platform gave it.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The controller's URL (`BAKERY_CONTROLLER_URL`).
    pub controller_url: String,
    /// The task to build (`BAKERY_TASK_ID`).
    pub task_id: String,
    /// The task's own token (`BAKERY_TASK_TOKEN`), for every
    /// call to the controller; never passed to the build.
    pub token: String,
    /// The builder to run (`BAKERY_BUILDER`; Kaniko when unset).
    pub builder: BuilderKind,
    /// buildah's storage driver (`BAKERY_BUILDAH_STORAGE`; vfs when unset).
    pub buildah_storage: builder::Storage,
    /// The directory to unpack and build in (`BAKERY_WORK_DIR`).
    pub work_dir: PathBuf,
    /// Registries reached over plain HTTP (`INSECURE_REGISTRIES`);
    /// loopback registries are plain HTTP without being listed.
    pub insecure: Vec<String>,
    /// Benchmark mode: stream lines instead of building ([`load`]).
    pub load: Option<load::Load>,
    /// When to give up on its own, from the start.
    pub deadline: Option<std::time::Duration>,
    /// The seq its first log line follows (`BAKERY_FIRST_SEQ`): 0, or a
    /// reclaimed predecessor's last.
    pub first_seq: u64,
    /// The certificates it trusts for the controller's HTTPS
    /// (`BAKERY_CONTROLLER_CA`, PEM); `None`: the system's roots.
    pub controller_ca: Option<String>,
}

/// How long an agent past its deadline tries to send its last lines and
/// result.
const LAST_WORD: std::time::Duration = std::time::Duration::from_secs(10);

/// Deletes the work dir and the list of command groups beside it.
fn clean_up(work_dir: &std::path::Path) {
    let _ = std::fs::remove_dir_all(work_dir);
    let _ = std::fs::remove_file(bakery_protocol::api::agent_env::groups_file(work_dir));
}

/// Resolves when the agent is asked to stop, naming the signal: SIGTERM
/// (ECS StopTask and Spot interruptions, a pod deleted, evicted or drained,
/// the local platform stopping it) or SIGINT (Ctrl-C). Without it the agent,
/// PID 1 in its container, ignored SIGTERM and every stop waited out the
/// whole grace period.
async fn stop_requested() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Runs the task to the end and reports. Returns whether it succeeded.
pub async fn run(cfg: AgentConfig) -> bool {
    let born = Instant::now();
    let Some(controller) = connect(&cfg) else {
        return false;
    };
    process::record_groups_in(bakery_protocol::api::agent_env::groups_file(&cfg.work_dir));
    let (log, shipper) = logs::start_after(controller.clone(), cfg.first_seq);
    // Past the deadline the work (and the builder, killed on drop) is
    // abandoned and the failure reported, if anyone still listens.
    let work = async {
        match cfg.deadline {
            Some(limit) => tokio::time::timeout(limit, work::work(&cfg, &controller, &log, born))
                .await
                .unwrap_or(Err(AgentError::Deadline(limit))),
            None => work::work(&cfg, &controller, &log, born).await,
        }
    };
    // Listened to from here to the exit: a stop while the result is being
    // reported ends the reporting too.
    let stop = stop_requested();
    tokio::pin!(stop);
    let outcome = tokio::select! {
        outcome = work => outcome,
        signal = &mut stop => Err(AgentError::Stopped(signal)),
    };
    if let Err(AgentError::Stopped(signal)) = outcome {
        // The work, and with it the builder's process group, is gone. No
        // result: the platform says why the agent stopped (the controller
        // starts a reclaimed arch again; a stop it asked for needs none).
        log.line(format!(
            "bakery-agent: {signal}: {}",
            AgentError::Stopped(signal)
        ));
        let _ = tokio::time::timeout(LAST_WORD, shipper.finish(log)).await;
        clean_up(&cfg.work_dir);
        return false;
    }
    let past_deadline = matches!(outcome, Err(AgentError::Deadline(_)));
    let Some(result) = result_of(outcome) else {
        shipper.finish(log).await;
        clean_up(&cfg.work_dir);
        return false;
    };
    let ok = matches!(result, AgentResult::Succeeded { .. });
    let reported = report(&controller, shipper, log, &result, &mut stop, past_deadline).await;
    // After the report, not before: the build's end waits for the report
    // only, and a builder's storage can take seconds to delete. The local
    // platform deletes the work dir too once the agent is gone (it may be
    // stopped on the way); on ECS and Kubernetes it goes with the task.
    clean_up(&cfg.work_dir);
    if let Err(e) = reported {
        eprintln!("bakery-agent: could not report the result: {e}");
        return false;
    }
    ok
}

/// The controller's API for this task, trusting BAKERY_CONTROLLER_CA if
/// set. None if that CA cannot be read: said on stderr, since nothing can
/// reach the controller to say so (the platform shows the line and the
/// exit code).
fn connect(cfg: &AgentConfig) -> Option<AgentApi> {
    match &cfg.controller_ca {
        None => Some(AgentApi::new(&cfg.controller_url, &cfg.task_id, &cfg.token)),
        Some(pem) => match AgentApi::with_ca(&cfg.controller_url, &cfg.task_id, &cfg.token, pem) {
            Ok(api) => Some(api),
            Err(e) => {
                eprintln!("bakery-agent: {e}");
                None
            }
        },
    }
}

/// What to report of the work's outcome; None when the controller refused
/// the task (already checked in, finished, or cancelled): nothing to report.
fn result_of(outcome: Result<work::Built, AgentError>) -> Option<AgentResult> {
    match outcome {
        Ok(built) => Some(AgentResult::Succeeded {
            digest: built.digest,
            bases: built.bases,
        }),
        Err(AgentError::Controller(bakery_client::Error::Refused {
            status, message, ..
        })) if status == reqwest::StatusCode::CONFLICT
            || status == reqwest::StatusCode::UNAUTHORIZED =>
        {
            eprintln!("bakery-agent: the controller refused this task: {message}");
            None
        }
        // Not logged here: the controller logs the reported error as the
        // task's last line, and a line here would print it twice.
        Err(e) => Some(AgentResult::Failed {
            error: e.to_string(),
        }),
    }
}

/// Ships the last lines and reports `result`, until `stop` (the platform
/// stopping the agent) or, `past_deadline`, for [`LAST_WORD`] at most: the
/// controller has given up on this task (or is gone), so a last word,
/// briefly, rather than minutes of retries.
async fn report(
    controller: &AgentApi,
    shipper: logs::Shipper,
    log: logs::LogSink,
    result: &AgentResult,
    stop: &mut std::pin::Pin<&mut impl std::future::Future<Output = &'static str>>,
    past_deadline: bool,
) -> Result<(), bakery_client::Error> {
    let report = async {
        let report = async {
            shipper.finish(log).await;
            controller.result(result).await
        };
        tokio::select! {
            reported = report => reported,
            signal = stop => Err(bakery_client::Error::Local {
                what: "reporting the result",
                cause: std::io::Error::other(format!("{signal}: the platform is stopping this agent")),
            }),
        }
    };
    if !past_deadline {
        return report.await;
    }
    tokio::time::timeout(LAST_WORD, report)
        .await
        .unwrap_or_else(|_| {
            Err(bakery_client::Error::Local {
                what: "reporting the result",
                cause: std::io::Error::other(format!(
                    "no answer within {}s after the agent's deadline",
                    LAST_WORD.as_secs()
                )),
            })
        })
}
