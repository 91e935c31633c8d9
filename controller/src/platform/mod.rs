//! Where agents run. Each platform starts one agent per task and stops it;
//! it reports agents that end on their own through a channel, so the
//! controller learns of a crash at once instead of at a timeout.

#[cfg(feature = "ecs")]
pub mod ecs;
#[cfg(feature = "k8s")]
pub mod k8s;
pub mod local;

use std::collections::BTreeMap;

use bakery_protocol::api::agent_env::BuilderKind;
use bakery_protocol::resources::{Cpu, Memory};
use bakery_protocol::Arch;
use tokio::sync::mpsc;

/// The builder a platform's agents run: Kaniko in the agent image (ECS,
/// Kubernetes), buildah on the local platform.
pub fn builder_of(platform: bakery_protocol::Platform) -> BuilderKind {
    match platform {
        bakery_protocol::Platform::Local => BuilderKind::Buildah,
        bakery_protocol::Platform::Ecs | bakery_protocol::Platform::K8s => BuilderKind::Kaniko,
    }
}

/// What of `spec` a `kind` builder cannot do, if anything: Kaniko has no
/// named build contexts and no SSH mounts.
pub fn unsupported(kind: BuilderKind, spec: &bakery_protocol::BuildSpec) -> Option<&'static str> {
    match kind {
        BuilderKind::Kaniko if !spec.ssh.is_empty() => Some("SSH mounts (--ssh)"),
        BuilderKind::Kaniko if !spec.build_contexts.is_empty() => {
            Some("named build contexts (--build-context)")
        }
        _ => None,
    }
}

/// What a platform needs to start one agent.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The build the agent is for (labels, names).
    pub build_id: String,
    /// The task the agent builds, `<build>-<arch>`.
    pub task_id: String,
    /// The arch of the machine it must run on.
    pub arch: Arch,
    /// The CPU it gets (the build's, or DEFAULT_BUILD_CPU).
    pub cpu: Cpu,
    /// The memory it gets (the build's, or DEFAULT_BUILD_MEMORY).
    pub memory: Memory,
    /// Its scratch disk (the build's, or DEFAULT_BUILD_DISK); `None`: the
    /// platform's default.
    pub disk: Option<bakery_protocol::resources::Disk>,
    /// Run on Spot capacity where the platform has it (ECS Fargate Spot).
    pub spot: bool,
    /// The task's second agent, after the platform took the first one's
    /// capacity back: a platform that names agents after their task names
    /// this one apart (the first may still exist, as an evicted pod does).
    pub relaunch: bool,
    /// The agent's environment: controller URL, task id and token.
    pub env: BTreeMap<String, String>,
}

/// The platform's name for one running agent: a process id, an ECS task
/// ARN, a pod name. Kept in the journal, so a restarted controller can stop
/// or adopt what an earlier run launched.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct AgentHandle(String);

impl AgentHandle {
    /// A handle as the platform spells it.
    pub fn new(handle: impl Into<String>) -> AgentHandle {
        AgentHandle(handle.into())
    }

    /// The handle's text (what the journal keeps).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for AgentHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why an agent ended, as far as its platform knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The agent process exited with this code.
    Code(i32),
    /// The agent process was killed by this signal.
    Signal(i32),
    /// What the platform said: an ECS stop reason, a pod's phase and reason.
    Platform(String),
    /// The platform took the capacity back (ECS: `stopCode`
    /// `SpotInterruption`; Kubernetes: an eviction, a node drain or
    /// shutdown, a pod deleted by someone else):
    /// the agent did nothing wrong, so its task may run again on capacity
    /// that is not reclaimed ([`crate::state::Aggregate::agent_exited`]).
    Reclaimed(String),
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Code(code) => write!(f, "agent exited with code {code}"),
            ExitReason::Signal(signal) => write!(f, "agent was killed by signal {signal}"),
            ExitReason::Platform(text) | ExitReason::Reclaimed(text) => f.write_str(text),
        }
    }
}

/// An agent that ended by itself.
#[derive(Debug, Clone)]
pub struct Exited {
    /// The task whose agent ended.
    pub task_id: String,
    /// How it ended.
    pub reason: ExitReason,
}

/// What the controller asks of a platform, for the error counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Starting an agent.
    Launch,
    /// Stopping an agent.
    Stop,
    /// Taking back an agent after a restart.
    Adopt,
    /// ECS: the poll of watched tasks.
    DescribeTasks,
    /// Kubernetes: the pod watch.
    Watch,
}

impl Operation {
    /// The operation's name, as the `operation` label of `bakery_platform_api_errors`.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Launch => "launch",
            Operation::Stop => "stop",
            Operation::Adopt => "adopt",
            Operation::DescribeTasks => "DescribeTasks",
            Operation::Watch => "watch",
        }
    }
}

/// Where platforms report agents that ended by themselves.
pub type ExitSender = mpsc::UnboundedSender<Exited>;

/// Why a platform could not be set up, or could not start or stop an agent.
///
/// The SDK's error arrives here as text ([`bakery_protocol::error_chain`]):
/// what decides anything is read from the typed error before that (ECS's
/// capacity shortage, a task StopTask no longer finds, a pod already
/// gone), and these end as a task's error, shown to the user. A chained
/// `#[source]` as well would print the cause twice in the binaries'
/// `{:#}` chains.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// The platform's settings are missing or wrong, or its API cannot be reached at start-up.
    #[error("{0}")]
    Config(String),
    /// The agent could not be started; the task fails with this.
    #[error("could not start the agent: {0}")]
    Launch(String),
    /// The agent could not be stopped.
    #[error("could not stop the agent: {0}")]
    Stop(String),
}

/// A place to run agents: local processes, ECS tasks, Kubernetes pods.
#[async_trait::async_trait]
pub trait AgentPlatform: Send + Sync + 'static {
    /// The platform's name (`local`, `ecs`, `k8s`), for logs and metrics.
    fn name(&self) -> &'static str;

    /// Whether one build's agent is kept from other builds' files,
    /// processes and secrets (its own task, pod or namespaces). The local
    /// platform without namespaces is not.
    fn isolates_builds(&self) -> bool {
        true
    }

    /// Starts the agent of `launch`; returns a handle for [`AgentPlatform::stop`].
    async fn launch(&self, launch: Launch) -> Result<AgentHandle, PlatformError>;

    /// Stops an agent. Stopping one that already ended is not an error.
    async fn stop(&self, handle: &AgentHandle) -> Result<(), PlatformError>;

    /// Takes back an agent that an earlier run of this controller launched
    /// (a restart mid-build): [`AgentPlatform::stop`] works on it again, and
    /// its end is reported like any other. An agent that is already gone is
    /// reported as ended, not returned as an error.
    async fn adopt(&self, task_id: &str, handle: &AgentHandle) -> Result<(), PlatformError>;

    /// What the platform last said about an agent that has not started
    /// (unschedulable, pulling its image…), for the timeout message.
    fn diagnosis(&self, _handle: &AgentHandle) -> Option<String> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bakery_protocol::spec::NamedContext;

    #[test]
    fn kaniko_platforms_refuse_what_kaniko_cannot_build() {
        let mut spec = bakery_protocol::BuildSpec::new("Dockerfile", bakery_protocol::Arch::Amd64);
        let ecs = builder_of(bakery_protocol::Platform::Ecs);
        let local = builder_of(bakery_protocol::Platform::Local);
        assert_eq!(unsupported(ecs, &spec), None);
        spec.build_contexts
            .insert("shared".into(), NamedContext::Archive(0));
        assert!(unsupported(ecs, &spec).unwrap().contains("--build-context"));
        assert!(unsupported(builder_of(bakery_protocol::Platform::K8s), &spec).is_some());
        assert_eq!(unsupported(local, &spec), None);
    }
}
