//! Where agents run. Each platform starts one agent per task and stops it;
//! it reports agents that end on their own through a channel, so the
//! controller learns of a crash at once instead of at a timeout.

#[cfg(feature = "ecs")]
pub mod ecs;
#[cfg(feature = "ecs")]
pub mod fargate;
#[cfg(feature = "k8s")]
pub mod k8s;
pub mod local;

use std::collections::BTreeMap;

use bakery_protocol::resources::{Cpu, Memory};
use bakery_protocol::Arch;
use tokio::sync::mpsc;

/// What a platform needs to start one agent.
#[derive(Debug, Clone)]
pub struct Launch {
    pub build_id: String,
    pub task_id: String,
    pub arch: Arch,
    pub cpu: Cpu,
    pub memory: Memory,
    pub spot: bool,
    /// The agent's environment: controller URL, task id and token.
    pub env: BTreeMap<String, String>,
}

/// An agent that ended by itself.
#[derive(Debug, Clone)]
pub struct Exited {
    pub task_id: String,
    /// What the platform knows: exit code, signal, stop reason.
    pub reason: String,
    pub success: bool,
}

pub type ExitSender = mpsc::UnboundedSender<Exited>;

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("{0}")]
    Config(String),
    #[error("could not start the agent: {0}")]
    Launch(String),
    #[error("could not stop the agent: {0}")]
    Stop(String),
}

/// A place to run agents: local processes, ECS tasks, Kubernetes pods.
#[async_trait::async_trait]
pub trait AgentPlatform: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Starts the agent of `launch`; returns a handle for [`AgentPlatform::stop`].
    async fn launch(&self, launch: Launch) -> Result<String, PlatformError>;

    /// Stops an agent. Stopping one that already ended is not an error.
    async fn stop(&self, handle: &str) -> Result<(), PlatformError>;

    /// Takes back an agent that an earlier run of this controller launched
    /// (a restart mid-build): [`AgentPlatform::stop`] works on it again, and
    /// its end is reported like any other. An agent that is already gone is
    /// reported as ended, not returned as an error.
    async fn adopt(&self, task_id: &str, handle: &str) -> Result<(), PlatformError>;

    /// What the platform last said about an agent that has not started
    /// (unschedulable, pulling its image…), for the timeout message.
    fn diagnosis(&self, _handle: &str) -> Option<String> {
        None
    }
}
