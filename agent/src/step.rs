//! Running the build's own code (pre- and post-scripts, builder steps) with
//! its output streamed to the log and the agent's token kept out of it.

use std::path::Path;

use bakery_protocol::api::AgentTask;
use tokio::process::Command;

use crate::error::{io, AgentError};
use crate::logs::LogSink;
use crate::process;

/// Runs a pre- or post-script with `sh -e`, in the context directory. The
/// script goes to the shell as a file (readable by the agent only), not on
/// its command line, where every user of the machine could read it (it may
/// hold a password the plan masks).
pub(crate) async fn script_step(
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
        .envs(&task.spec.env)
        .envs(script_env(task));
    without_agent_secrets(&mut cmd);
    let (status, tail) = process::run_streaming(cmd, log, 20)
        .await
        .map_err(io(format!("starting the {what}")))?;
    if !status.success() {
        return Err(AgentError::Step {
            what: what.to_string(),
            status: describe(status),
            last_line: last_meaningful(&tail).map(|l| log.name_paths(l)),
        });
    }
    Ok(())
}

/// What a script is told about its build, as a Dockerfile is told by its
/// platform args: one script can then serve every arch (`curl
/// …-$TARGETARCH.tar.gz`). Set after the spec's `env`, so they are true.
pub(crate) fn script_env(task: &AgentTask) -> [(&'static str, String); 6] {
    [
        ("BAKERY_ARCH", task.arch.to_string()),
        ("BAKERY_SERVICE", task.service.clone()),
        ("BAKERY_BUILD_ID", task.build_id.clone()),
        ("TARGETARCH", task.arch.to_string()),
        ("TARGETOS", "linux".to_string()),
        ("TARGETPLATFORM", task.arch.platform().to_string()),
    ]
}

/// Scripts and builders run the build's own code: they get the agent's
/// environment without its task token, which speaks for this task to the
/// controller (the agent keeps it to itself).
pub(crate) fn without_agent_secrets(cmd: &mut Command) {
    cmd.env_remove(bakery_protocol::api::agent_env::TASK_TOKEN);
}

/// Writes `bytes` to `path`, readable and writable by the agent only.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
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

pub(crate) fn describe(status: std::process::ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit code {code}"),
        None => "killed by a signal".into(),
    }
}

/// The last line that says something: builders end with blank lines and
/// generic trailers ("error building at STEP").
pub(crate) fn last_meaningful(tail: &[String]) -> Option<String> {
    tail.iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| !l.is_empty())
        .map(|l| l.chars().take(500).collect())
}

/// Runs one builder step in the context directory, with the build's `env`
/// and the step's own (build-arg values, never on its command line).
pub(crate) async fn run_builder_step(
    builder: &str,
    step: &crate::builder::Step,
    dir: &Path,
    task: &AgentTask,
    log: &LogSink,
    watch: Option<process::Watcher>,
) -> Result<(), AgentError> {
    let mut cmd = Command::new(&step.argv[0]);
    cmd.args(&step.argv[1..])
        .envs(&task.spec.env)
        .envs(&step.env)
        .current_dir(dir);
    without_agent_secrets(&mut cmd);
    let (status, tail) = process::run_watched(cmd, log, 20, watch)
        .await
        .map_err(io(format!("starting {}", step.argv[0])))?;
    if !status.success() {
        return Err(AgentError::Step {
            what: format!("{builder} {}", step.what),
            status: describe(status),
            last_line: last_meaningful(&tail).map(|l| log.name_paths(l)),
        });
    }
    Ok(())
}
