//! Running a command and streaming its output line by line.

use std::process::Stdio;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

use crate::logs::LogSink;

/// Something told every line a command prints, as the user sees it (the
/// buildah cache hints read the cache keys buildah pushes).
pub type Watcher = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

/// Runs `cmd`, sending stdout and stderr to `log` as lines arrive, and keeps
/// the last lines for the failure report. Returns the exit status and the tail.
pub async fn run_streaming(
    cmd: Command,
    log: &LogSink,
    tail_len: usize,
) -> std::io::Result<(std::process::ExitStatus, Vec<String>)> {
    run_watched(cmd, log, tail_len, None).await
}

/// [`run_streaming`], with every line also shown to `watch`.
pub async fn run_watched(
    mut cmd: Command,
    log: &LogSink,
    tail_len: usize,
    watch: Option<Watcher>,
) -> std::io::Result<(std::process::ExitStatus, Vec<String>)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group: what it starts (a RUN step's processes,
        // buildah's helpers) is stopped with it.
        .process_group(0);
    let mut child = cmd.spawn()?;
    let group = child.id().and_then(Group::new);
    let tail = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
    let pump = |stream: Option<Box<dyn AsyncRead + Send + Unpin>>| {
        let log = log.clone();
        let tail = std::sync::Arc::clone(&tail);
        let watch = watch.clone();
        tokio::spawn(async move {
            let Some(stream) = stream else { return };
            // A pipe holds 64 KiB: read it whole, not 8 KiB at a time.
            let mut reader = BufReader::with_capacity(64 << 10, stream);
            let mut buf = Vec::new();
            while next_line(&mut reader, &mut buf).await {
                let text = String::from_utf8_lossy(&buf);
                // Progress bars redraw with \r: keep the last state of the line.
                let line = text.rsplit('\r').find(|s| !s.is_empty()).unwrap_or("");
                // Borrowed until the tail keeps it: one copy per line.
                let Some(line) = crate::builder::user_line(line) else {
                    continue;
                };
                if let Some(watch) = &watch {
                    watch(&line);
                }
                log.line(&line);
                {
                    let mut t = tail
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    t.push_back(line.into_owned());
                    if t.len() > tail_len {
                        t.pop_front();
                    }
                }
                // A full queue stops the reading: the command then waits
                // on its pipe until the controller catches up.
                log.room().await;
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
    // Before the output is drained to its end: a process the command left
    // behind holding the pipes open would keep the pumps reading forever.
    drop(group);
    let _ = out.await;
    let _ = err.await;
    let tail = tail
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .cloned()
        .collect();
    Ok((status, tail))
}

/// Where the agent lists the groups of its commands
/// ([`bakery_protocol::api::agent_env::groups_file`]); set once by [`crate::run`].
static GROUPS_FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Lists every command's process group in `file` from now on.
pub(crate) fn record_groups_in(file: std::path::PathBuf) {
    let _ = GROUPS_FILE.set(file);
}

/// A command's process group, killed when the command is done with or
/// abandoned (the agent stopping, a deadline): `kill_on_drop` reaches only
/// the command itself, and what it started would otherwise outlive it.
struct Group(i32);

impl Group {
    fn new(pid: u32) -> Option<Group> {
        let pid = i32::try_from(pid).ok()?;
        if let Some(file) = GROUPS_FILE.get() {
            use std::io::Write;
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
                .and_then(|mut f| writeln!(f, "{pid}"));
        }
        Some(Group(pid))
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // Only while a process is in it: a group with none left may have
        // had its id given to another program's group since.
        if bakery_protocol::process_group::group_has_members(self.0) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.0),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Longest line kept whole; the rest of a longer one is skipped (the log
/// cuts lines at 64 KiB anyway), so a builder printing megabytes without a
/// newline costs the agent no more than this.
const MAX_LINE: usize = 128 << 10;

/// Reads the next line (without its `\n`) into `buf`; false at the end.
/// Whatever the bytes are: output that is not UTF-8 (a binary `cat` in a
/// RUN step) is shown lossily, and the pipe keeps being drained — a reader
/// that stopped at the first bad byte left the builder blocked on a full
/// pipe until the build timed out.
async fn next_line(reader: &mut (impl AsyncBufRead + Unpin), buf: &mut Vec<u8>) -> bool {
    buf.clear();
    let mut any = false;
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) => return any,
            Ok(chunk) => chunk,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return any,
        };
        any = true;
        let (part, done) = match memchr::memchr(b'\n', chunk) {
            Some(at) => (&chunk[..at], at + 1),
            None => (chunk, chunk.len()),
        };
        let room = MAX_LINE.saturating_sub(buf.len());
        buf.extend_from_slice(&part[..part.len().min(room)]);
        let ended = done > part.len();
        reader.consume(done);
        if ended {
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A controller that acknowledges nothing holds the command at its
    /// pipe once the queue is full; room made lets it finish, every line
    /// delivered.
    #[tokio::test]
    async fn a_full_log_queue_holds_the_command_back_and_loses_nothing() {
        let (log, mut lines, budget) = LogSink::capture_within(64 << 10);
        let mut cmd = Command::new("sh");
        // 20,000 lines of ~100 bytes: 2 MB, far past the 64 KiB queue and
        // the pipe's own 64 KiB.
        cmd.args(["-c", "seq 1 20000 | sed 's/$/ xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx/'"]);
        let run = tokio::spawn(async move { run_streaming(cmd, &log, 5).await });
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert!(!run.is_finished(), "the command was held back");
        let queued = lines.len();
        assert!(
            queued > 0 && queued < 20_000,
            "some lines queued, not all: {queued}"
        );
        // The shipper's part: release what is taken, as acknowledgements do.
        let released = tokio::spawn(async move {
            let mut got = Vec::new();
            while got.len() < 20_000 {
                let mut bytes = 0;
                while let Ok(line) = lines.try_recv() {
                    bytes += crate::logs::weight(&line);
                    got.push(line);
                }
                budget.release(bytes);
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            got
        });
        let (status, _) = tokio::time::timeout(std::time::Duration::from_secs(30), run)
            .await
            .expect("the command finishes once there is room")
            .unwrap()
            .unwrap();
        assert!(status.success());
        let got = released.await.unwrap();
        assert_eq!(got.len(), 20_000);
        assert!(got[19_999].starts_with("20000 "), "{}", got[19_999]);
    }
}
