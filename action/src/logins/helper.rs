//! Docker credential helpers (`docker-credential-<name> get`), as Docker
//! runs them: the server URL on stdin, `{"Username", "Secret"}` on stdout.
//! ECR, GCR and ACR logins on runners come this way.

use std::process::Stdio;
use std::time::Duration;

use bakery_protocol::spec::Secret;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::{Login, LoginError, Source};

/// A helper that neither answers nor exits is not waited for longer (and
/// not asked again in this run: [`super::lookup`] skips it).
const TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Answer {
    username: String,
    secret: String,
}

/// The helper's login for `server`; `None` when it has none.
pub(super) async fn get(helper: &str, server: &str) -> Result<Option<Login>, LoginError> {
    let error = |cause: String| LoginError::Helper {
        helper: helper.to_string(),
        host: server.to_string(),
        cause,
    };
    if helper.contains('/') || helper.contains(char::is_whitespace) {
        return Err(error("not a helper name".into()));
    }
    let program = format!("docker-credential-{helper}");
    let mut child = tokio::process::Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group, so that what it started goes with it.
        .process_group(0)
        .spawn()
        .map_err(|e| error(format!("cannot run {program} ({e}): is it on PATH?")))?;
    let group = child.id();
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes()).await;
    }
    let output = if let Ok(done) = tokio::time::timeout(TIMEOUT, child.wait_with_output()).await {
        done.map_err(|e| error(e.to_string()))?
    } else {
        if let Some(pid) = group.and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        return Err(error(format!(
            "no answer within {}s (not asked again in this run)",
            TIMEOUT.as_secs()
        )));
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // Docker's helpers say so in these words when they hold nothing.
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        // What it printed is not repeated: it can hold the secret.
        return Err(error(format!(
            "{} (its output is not shown: it may hold a secret; run `echo {server} | {program} get` to see it)",
            output.status
        )));
    }
    let answer: Answer = serde_json::from_str(&stdout)
        .map_err(|_| error("its answer is not {\"Username\", \"Secret\"} JSON".into()))?;
    if answer.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Login {
        username: answer.username,
        password: Secret::new(answer.secret),
        source: Source::Helper(helper.to_string()),
    }))
}
