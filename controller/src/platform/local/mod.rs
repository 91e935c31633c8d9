//! The embedded default: agents as child processes of the controller.
//!
//! Each agent runs in its own process group, so stopping it also stops the
//! builder it started, and writes its own output to `<task>.log` beside its
//! work dir rather than to a pipe: an agent must outlive a controller crash
//! (it keeps retrying until the controller is back), and a pipe to a dead
//! parent would break its first write. Its handle is `pid <pgid>`, which a
//! restarted controller adopts after checking, in /proc, that the process
//! is still that task's agent. Once an agent is stopped, its work dir (the
//! context, the builder's storage, the registry credentials) is deleted in
//! the background. Both arches run here: arm64 builds without emulation
//! can only do COPY-style steps (see the README), which is what the remote
//! platforms are for.
//!
//! Where the host allows it, each agent runs in its own namespaces
//! ([`sandbox`]): it sees no other build's files or processes, nor the
//! controller's. Elsewhere agents run as the controller's user: one trust
//! domain, said at start-up.
//!
//! An agent starts with a cleared environment plus an allow-list
//! ([`INHERITED`]): the controller's own environment holds its client token
//! and cloud credentials (an embedded controller's, the whole CI job's), and
//! a `pre-script: env` would print them into the build log.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bakery_protocol::process_group::group_has_members;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::sync::watch;

pub mod sandbox;

pub use sandbox::{Isolation, Sandbox};

use super::{AgentHandle, AgentPlatform, ExitReason, ExitSender, Exited, Launch, PlatformError};
use crate::config::ConfigError;
use bakery_protocol::api::agent_env;
use bakery_protocol::Arch;

/// One agent as stop() needs it.
struct Agent {
    /// Its process group (the agent leads it).
    group: i32,
    /// Turns true when the agent itself has exited.
    exited: watch::Receiver<bool>,
    work: PathBuf,
}

/// How long a stopped agent gets to exit after SIGTERM before its group is
/// killed. One that has reported is usually gone within milliseconds.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How often an adopted agent (not our child: no wait()) is looked at.
const ADOPTED_POLL: Duration = Duration::from_millis(250);

/// What a local agent inherits from the controller's environment: what a
/// process needs to run (search path, home, locale, time zone, temporary
/// directory), to reach registries through the site's proxy and trust its
/// certificate authorities, where the containers tools' own configuration
/// is, and the benchmarks' load knob. Nothing else; the controller adds the
/// agent's own variables and `INSECURE_REGISTRIES`.
pub const INHERITED: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "XDG_RUNTIME_DIR",
    "CONTAINERS_CONF",
    "CONTAINERS_STORAGE_CONF",
    "RUST_BACKTRACE",
    "BAKERY_AGENT_LOAD",
];

/// The local platform: agents as child processes of the controller, on its own machine.
pub struct LocalPlatform {
    agent: PathBuf,
    work_root: PathBuf,
    /// The controller's INSECURE_REGISTRIES, passed on to its agents.
    insecure: String,
    exits: ExitSender,
    /// Agents by process group. Kept until stop(): the group may outlive
    /// its agent.
    running: Arc<Mutex<HashMap<i32, Agent>>>,
    /// Where agents are confined, if the host allows it.
    sandbox: Option<Sandbox>,
}

impl LocalPlatform {
    /// A platform starting `agent`, with work dirs under `work_root`, passing
    /// `insecure` (INSECURE_REGISTRIES) on and reporting ended agents to `exits`.
    pub fn new(agent: PathBuf, work_root: PathBuf, insecure: String, exits: ExitSender) -> Self {
        LocalPlatform {
            agent,
            work_root,
            insecure,
            exits,
            running: Arc::default(),
            sandbox: None,
        }
    }

    /// Runs its agents in `sandbox` ([`Sandbox::detect`]).
    #[must_use]
    pub fn confined(mut self, sandbox: Option<Sandbox>) -> Self {
        self.sandbox = sandbox;
        self
    }

    /// Keeps an agent for stop(); the returned sender tells it the agent exited.
    fn register(&self, group: i32, work: PathBuf) -> watch::Sender<bool> {
        let (exited, exited_rx) = watch::channel(false);
        self.running.lock().expect("lock").insert(
            group,
            Agent {
                group,
                exited: exited_rx,
                work,
            },
        );
        exited
    }

    /// The agent executable: AGENT_BINARY when set, else [`find_agent`]'s
    /// pick; either must be an executable file now, not at the first build.
    ///
    /// [`find_agent`]: LocalPlatform::find_agent
    pub fn resolve_agent(configured: Option<&Path>) -> Result<PathBuf, ConfigError> {
        use std::os::unix::fs::PermissionsExt;
        let (path, from) = match configured {
            Some(p) => (p.to_path_buf(), "AGENT_BINARY"),
            None => (
                Self::find_agent(),
                "the default agent (next to bakery-controller, then on PATH)",
            ),
        };
        let found = if path.components().count() == 1 && !path.is_file() {
            let dirs = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&dirs)
                .map(|d| d.join(&path))
                .find(|p| p.is_file())
        } else {
            Some(path.clone())
        };
        match found.as_ref().map(std::fs::metadata) {
            Some(Ok(m)) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(path),
            _ => Err(ConfigError::new(format!(
                "{from} `{}` is not an executable file; set AGENT_BINARY to the bakery-agent executable (scripts/setup builds it)",
                path.display()
            ))),
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

    fn isolates_builds(&self) -> bool {
        self.sandbox.is_some()
    }

    async fn launch(&self, launch: Launch) -> Result<AgentHandle, PlatformError> {
        let work = self.work_root.join(&launch.task_id);
        let log_path = self.work_root.join(format!("{}.log", launch.task_id));
        let log = std::fs::create_dir_all(&self.work_root)
            .and_then(|()| std::fs::File::create(&log_path))
            .map_err(|e| PlatformError::Launch(format!("{}: {e}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(|e| PlatformError::Launch(format!("{}: {e}", log_path.display())))?;
        let mut cmd = match &self.sandbox {
            Some(sandbox) => {
                sandbox
                    .prepare(&work)
                    .map_err(|e| PlatformError::Launch(format!("{}: {e}", work.display())))?;
                sandbox.command(&self.agent, &work)
            }
            None => Command::new(&self.agent),
        };
        cmd.env_clear()
            .envs(
                INHERITED
                    .iter()
                    .filter_map(|k| Some((*k, std::env::var_os(k)?))),
            )
            .envs(
                self.sandbox
                    .as_ref()
                    .map(|_| Sandbox::env(&work))
                    .into_iter()
                    .flatten(),
            )
            .envs(&launch.env)
            .env(agent_env::WORK_DIR, &work)
            .env(agent_env::BUILDER, agent_env::BuilderKind::Buildah.as_str())
            .env(agent_env::EMULATED, emulated_here())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        if !self.insecure.is_empty() {
            cmd.env("INSECURE_REGISTRIES", &self.insecure);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| PlatformError::Launch(format!("{}: {e}", self.agent.display())))?;
        let pid = child
            .id()
            .ok_or_else(|| PlatformError::Launch("agent exited at once".into()))?
            as i32;
        let handle = handle_of(pid);
        tracing::debug!(task = %launch.task_id, log = %log_path.display(), "agent started as {handle}");
        let exited = self.register(pid, work);

        let exits = self.exits.clone();
        let task_id = launch.task_id.clone();
        // The group stays registered after the agent exits: its builder may
        // outlive it (an agent killed mid-build), and stop() ends the group.
        tokio::spawn(async move {
            let status = child.wait().await;
            exited.send_replace(true);
            let reason = match status {
                Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                    (Some(code), _) => ExitReason::Code(code),
                    (None, Some(sig)) => ExitReason::Signal(sig),
                    _ => ExitReason::Platform("agent exited".into()),
                },
                Err(e) => ExitReason::Platform(format!("could not wait for the agent: {e}")),
            };
            let _ = exits.send(Exited { task_id, reason });
        });
        Ok(handle)
    }

    async fn adopt(&self, task_id: &str, handle: &AgentHandle) -> Result<(), PlatformError> {
        let pid = pid_of(handle)?;
        let gone = |reason: &str| {
            let _ = self.exits.send(Exited {
                task_id: task_id.to_string(),
                reason: ExitReason::Platform(reason.to_string()),
            });
        };
        if !is_agent_of(pid, task_id) {
            // Its work dir holds the build's logins and secrets, which no
            // stop will delete now: the agent is not this process's child.
            let work = self.work_root.join(task_id);
            tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&work) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("could not delete {}: {e}", work.display()),
            });
            gone("the agent ended while the controller was down");
            return Ok(());
        }
        let exited = self.register(pid, self.work_root.join(task_id));
        let exits = self.exits.clone();
        let task_id = task_id.to_string();
        tokio::spawn(async move {
            while is_agent_of(pid, &task_id) {
                tokio::time::sleep(ADOPTED_POLL).await;
            }
            exited.send_replace(true);
            let _ = exits.send(Exited {
                task_id,
                reason: ExitReason::Platform(
                    "the agent exited (its exit code is unknown: it was adopted after a controller restart)".into(),
                ),
            });
        });
        Ok(())
    }

    async fn stop(&self, handle: &AgentHandle) -> Result<(), PlatformError> {
        let pid = pid_of(handle)?;
        let Some(mut agent) = self.running.lock().expect("lock").remove(&pid) else {
            return Ok(());
        };
        let group = Pid::from_raw(agent.group);
        if !*agent.exited.borrow() {
            // Ask the agent to stop, and give it a moment to do so (one
            // that has reported is already on its way out).
            let _ = killpg(group, Signal::SIGTERM);
            let _ = tokio::time::timeout(STOP_GRACE, agent.exited.wait_for(|gone| *gone)).await;
        }
        // Whatever is left of its group (a builder the agent left behind,
        // or the agent itself if it would not stop) is killed; a group with
        // no process left is not signalled at all: its id is free, and may
        // by now be another program's group.
        let killed = if group_has_members(agent.group) {
            match killpg(group, Signal::SIGKILL) {
                // EPERM: the id is another user's group by now, not ours.
                Ok(()) | Err(nix::errno::Errno::ESRCH | nix::errno::Errno::EPERM) => Ok(()),
                Err(e) => Err(PlatformError::Stop(e.to_string())),
            }
        } else {
            Ok(())
        };
        // Each command the agent ran leads a group of its own (a RUN step's
        // processes with it): those it left are ended too.
        end_command_groups(&agent.work);
        // Nothing writes to the work dir any more. The build's end does not
        // wait for it to go: a builder's storage can take seconds to delete.
        let work = agent.work;
        tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&work) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("could not delete {}: {e}", work.display()),
        });
        killed
    }
}

/// Kills the process groups an agent with work dir `work` listed
/// ([`agent_env::groups_file`]) that still have a process, and forgets the list.
fn end_command_groups(work: &std::path::Path) {
    let file = agent_env::groups_file(work);
    let Ok(list) = std::fs::read_to_string(&file) else {
        return;
    };
    for group in list.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        if group > 1 && group_has_members(group) {
            let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
        }
    }
    let _ = std::fs::remove_file(&file);
}

/// A local agent's handle: `pid <pgid>` (the agent leads its group).
fn handle_of(pid: i32) -> AgentHandle {
    AgentHandle::new(format!("pid {pid}"))
}

/// The process group a handle of [`handle_of`] names.
fn pid_of(handle: &AgentHandle) -> Result<i32, PlatformError> {
    handle
        .as_str()
        .strip_prefix("pid ")
        .and_then(|p| p.parse().ok())
        // Never 1: a signal to group 1 is a signal to every process.
        .filter(|&p: &i32| p > 1)
        .ok_or_else(|| PlatformError::Config(format!("not a local agent handle: {handle}")))
}

/// Deletes the agents' own logs (`<task>.log`) of forgotten builds.
pub fn delete_agent_logs(work_root: &std::path::Path, builds: &[String]) {
    let Ok(entries) = std::fs::read_dir(work_root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(task) = name.strip_suffix(".log") else {
            continue;
        };
        let of_forgotten = builds.iter().any(|b| {
            task.strip_prefix(b.as_str())
                .is_some_and(|rest| rest.starts_with('-'))
        });
        if of_forgotten {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!("could not delete {}: {e}", entry.path().display());
            }
        }
    }
}

/// Whether `pid` is alive (not a zombie) and is the agent of `task_id`: a
/// pid can be reused, so its environment must name the task.
fn is_agent_of(pid: i32, task_id: &str) -> bool {
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the parenthesised command name.
            let after = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(after != 'Z' && after != 'X')
        })
        .unwrap_or(false);
    if !alive {
        return false;
    }
    let wanted = format!("{}={task_id}", agent_env::TASK_ID);
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == wanted.as_bytes()))
}

/// The arches this machine runs through qemu, as its binfmt_misc says: an
/// agent in the sandbox has its own `/proc`, where binfmt_misc is not
/// mounted, though the kernel runs its programs through qemu all the same.
fn emulated_here() -> String {
    let binfmt = Path::new(bakery_protocol::arch::BINFMT_MISC);
    [Arch::Amd64, Arch::Arm64]
        .into_iter()
        .filter(|a| *a != Arch::host() && a.emulated_in(binfmt))
        .map(|a| a.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_agent_logs_of_forgotten_builds_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b1-amd64.log", "b1-arm64.log", "b12-amd64.log", "b1-amd64"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        delete_agent_logs(dir.path(), &["b1".to_string()]);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["b1-amd64", "b12-amd64.log"]);
    }

    /// A wrong AGENT_BINARY fails the start, named, not the first build.
    #[test]
    fn the_agent_must_be_an_executable_file() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("agent");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        for bad in [
            dir.path().join("missing"),
            plain.clone(),
            dir.path().to_path_buf(),
        ] {
            let e = LocalPlatform::resolve_agent(Some(&bad))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("AGENT_BINARY") && e.contains("not an executable"),
                "{e}"
            );
        }
        assert!(
            LocalPlatform::resolve_agent(Some(Path::new("sh"))).is_ok(),
            "found on PATH"
        );
        assert!(LocalPlatform::resolve_agent(Some(Path::new("/bin/sh"))).is_ok());
    }
}
