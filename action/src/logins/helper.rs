//! Docker credential helpers (`docker-credential-<name> get`), as Docker
//! runs them: the server URL on stdin, `{"Username", "Secret"}` on stdout.
//! ECR, GCR and ACR logins on runners come this way.

use std::process::Stdio;
use std::time::Duration;

use bakery_protocol::spec::Secret;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::{Login, LoginError, Source};

/// A helper that neither answers nor exits is not waited for longer.
const TIMEOUT: Duration = Duration::from_secs(30);

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
        .spawn()
        .map_err(|e| error(format!("cannot run {program} ({e}): is it on PATH?")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes()).await;
    }
    let output = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| error(format!("no answer within {}s", TIMEOUT.as_secs())))?
        .map_err(|e| error(e.to_string()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // Docker's helpers say so in these words when they hold nothing.
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let said = stderr.lines().chain(stdout.lines()).next().unwrap_or("");
        return Err(error(format!(
            "{} ({})",
            output.status,
            said.chars().take(200).collect::<String>()
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
