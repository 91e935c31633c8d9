//! The embedded default: agents as child processes of the controller.
//!
//! Each agent runs in its own process group, so stopping it also stops the
//! builder it started. Both arches run here: arm64 builds without emulation
//! can only do COPY-style steps (see the README), which is what the remote
//! platforms are for.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use super::{AgentPlatform, ExitSender, Exited, Launch, PlatformError};
use bakery_core::api::agent_env;

/// An agent's process group, and whether the agent (the group's leader) has exited.
type Agent = (i32, Arc<AtomicBool>);

pub struct LocalPlatform {
    agent: PathBuf,
    work_root: PathBuf,
    exits: ExitSender,
    /// Agents by task id. Kept until stop(): the group may outlive its agent.
    running: Arc<Mutex<HashMap<String, Agent>>>,
}

impl LocalPlatform {
    pub fn new(agent: PathBuf, work_root: PathBuf, exits: ExitSender) -> Self {
        LocalPlatform {
            agent,
            work_root,
            exits,
            running: Arc::default(),
        }
    }

    /// `bakery-agent` next to the running executable, else on PATH.
    pub fn find_agent() -> PathBuf {
        std::env::current_exe()
            .ok()
            .and_then(|exe| {
                // Test binaries live in target/<profile>/deps; the agent one level up.
                let dir = exe.parent()?;
                [dir.join("bakery-agent"), dir.parent()?.join("bakery-agent")]
                    .into_iter()
                    .find(|p| p.is_file())
            })
            .unwrap_or_else(|| PathBuf::from("bakery-agent"))
    }
}

#[async_trait::async_trait]
impl AgentPlatform for LocalPlatform {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn launch(&self, launch: Launch) -> Result<String, PlatformError> {
        let work = self.work_root.join(&launch.task_id);
        let mut cmd = Command::new(&self.agent);
        cmd.envs(&launch.env)
            .env(agent_env::WORK_DIR, &work)
            .env(agent_env::BUILDER, "buildah")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| PlatformError::Launch(format!("{}: {e}", self.agent.display())))?;
        let pid = child
            .id()
            .ok_or_else(|| PlatformError::Launch("agent exited at once".into()))?
            as i32;
        let exited = Arc::new(AtomicBool::new(false));
        self.running
            .lock()
            .expect("lock")
            .insert(launch.task_id.clone(), (pid, Arc::clone(&exited)));

        // The agent sends its build log to the controller over HTTP; what it
        // prints itself is the controller's diagnostics.
        for (stream, name) in [
            (
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
                "stdout",
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
                "stderr",
            ),
        ] {
            let Some(stream) = stream else { continue };
            let task = launch.task_id.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!(task = %task, stream = name, "agent: {line}");
                }
            });
        }

        let exits = self.exits.clone();
        let task_id = launch.task_id.clone();
        // The group stays registered after the agent exits: its builder may
        // outlive it (an agent killed mid-build), and stop() ends the group.
        tokio::spawn(async move {
            let status = child.wait().await;
            exited.store(true, Ordering::SeqCst);
            let (success, reason) = match status {
                Ok(s) if s.success() => (true, "agent exited with code 0".to_string()),
                Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                    (Some(code), _) => (false, format!("agent exited with code {code}")),
                    (None, Some(sig)) => (false, format!("agent was killed by signal {sig}")),
                    _ => (false, "agent exited".to_string()),
                },
                Err(e) => (false, format!("could not wait for the agent: {e}")),
            };
            let _ = exits.send(Exited {
                task_id,
                reason,
                success,
            });
        });
        Ok(launch.task_id)
    }

    async fn stop(&self, handle: &str) -> Result<(), PlatformError> {
        let Some((pgid, exited)) = self.running.lock().expect("lock").remove(handle) else {
            return Ok(());
        };
        let group = Pid::from_raw(pgid);
        if !exited.load(Ordering::SeqCst) {
            // Ask the agent to stop, and give it a moment to do so.
            let _ = killpg(group, Signal::SIGTERM);
            for _ in 0..50 {
                if exited.load(Ordering::SeqCst) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // Whatever is left of its group (a builder the agent left behind,
        // or the agent itself if it would not stop) is killed.
        match killpg(group, Signal::SIGKILL) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(PlatformError::Stop(e.to_string())),
        }
    }
}
