//! What can stop a build on the agent, each with what it was doing.

use std::path::PathBuf;

use crate::extract;

/// Why the agent's build failed: reported to the controller
/// as the task's error, so each says what was being done.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A call to the controller failed (after the client's retries), or was refused.
    #[error(transparent)]
    Controller(#[from] bakery_client::Error),
    /// The context archive could not be unpacked, or was refused.
    #[error(transparent)]
    Extract(#[from] extract::ExtractError),
    /// A local file or process could not be written, read or started.
    #[error("{what}: {source}")]
    Io {
        /// What was being done ("writing the pre-script").
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A script or a builder step exited unsuccessfully.
    #[error("{what} failed ({status}){}", last_line.as_ref().map(|l| format!(": {l}")).unwrap_or_default())]
    Step {
        /// The step ("pre-script", "kaniko build and push").
        what: String,
        /// How it ended: `exit code N` or `killed by a signal`.
        status: String,
        /// Its last line that says something, cut to 500 characters: usually the reason.
        last_line: Option<String>,
    },
    /// The context could not be downloaded from S3.
    #[error("downloading the context: {0}")]
    Download(#[from] bakery_store::StoreError),
    /// The build pushes, but this file, where the builder writes the pushed
    /// digest, is missing or holds no `sha256:` digest.
    #[error("the builder did not write the pushed digest to {0}")]
    NoDigest(PathBuf),
    /// The context cannot be built here: a bad or escaping Dockerfile, too
    /// little disk for it, or a RUN step for an arch this machine cannot run.
    #[error("{0}")]
    Context(String),
    /// A registry the build needs accepted the connection and did not answer.
    #[error("registry {host} did not answer within {}s (GET /v2/); the {step} would hang on it: is the registry up, and is {host} its address?", .waited.as_secs())]
    Registry {
        /// The registry host.
        host: String,
        /// The step that needs it.
        step: &'static str,
        /// How long it was given.
        waited: std::time::Duration,
    },
    /// The agent's own deadline ([`bakery_protocol::api::agent_env::DEADLINE`]).
    #[error("the agent gave up after its deadline of {}s (the controller's task and result timeouts)", .0.as_secs())]
    Deadline(std::time::Duration),
    /// The platform asked the agent to stop (the signal's name).
    #[error("the platform is stopping this agent (a cancelled or failed build, a Spot interruption, a pod evicted or drained off its node); the build was stopped")]
    Stopped(&'static str),
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Io { what, source }
}
