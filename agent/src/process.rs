//! Running a command and streaming its output line by line.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

use crate::logs::LogSink;

/// Runs `cmd`, sending stdout and stderr to `log` as lines arrive, and keeps
/// the last lines for the failure report. Returns the exit status and the tail.
pub async fn run_streaming(
    mut cmd: Command,
    log: &LogSink,
    tail_len: usize,
) -> std::io::Result<(std::process::ExitStatus, Vec<String>)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let tail = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
    let pump = |stream: Option<Box<dyn AsyncRead + Send + Unpin>>| {
        let log = log.clone();
        let tail = std::sync::Arc::clone(&tail);
        tokio::spawn(async move {
            let Some(stream) = stream else { return };
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                // Progress bars redraw with \r: keep the last state of the line.
                let line = line
                    .rsplit('\r')
                    .find(|s| !s.is_empty())
                    .unwrap_or("")
                    .to_string();
                log.line(&line);
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                t.push_back(line);
                if t.len() > tail_len {
                    t.pop_front();
                }
            }
        })
    };
    let out = pump(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
    );
    let err = pump(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
    );
    let status = child.wait().await?;
    let _ = out.await;
    let _ = err.await;
    let tail = tail
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect();
    Ok((status, tail))
}
