//! What can stop a build on the agent, each with what it was doing.

use std::path::PathBuf;

use crate::extract;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Controller(#[from] bakery_client::Error),
    #[error(transparent)]
    Extract(#[from] extract::ExtractError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed ({status}){}", last_line.as_ref().map(|l| format!(": {l}")).unwrap_or_default())]
    Step {
        what: String,
        status: String,
        last_line: Option<String>,
    },
    #[error("downloading the context: {0}")]
    Download(#[from] bakery_store::StoreError),
    #[error("the builder did not write the pushed digest to {0}")]
    NoDigest(PathBuf),
    #[error("{0}")]
    Context(String),
    /// The agent's own deadline ([`bakery_protocol::api::agent_env::DEADLINE`]).
    #[error("the agent gave up after its deadline of {}s (the controller's task and result timeouts)", .0.as_secs())]
    Deadline(std::time::Duration),
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Io { what, source }
}
