//! The controller's HTTP API, as types both sides compile against.
//!
//! Client-facing (`/v1/builds…`, `/v1/contexts…`, `/v1/info`) and
//! agent-facing (`/v1/agent/tasks/{task}/…`, authenticated with the task's
//! own token) endpoints share these shapes, so a change breaks the build of
//! every party rather than a production run.

use serde::{Deserialize, Serialize};

use crate::arch::{Arch, Platform};
use crate::context_key::ContextKey;
use crate::spec::BuildSpec;

/// `GET /v1/info`: what a client needs to know before submitting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Info {
    pub version: String,
    /// Where build contexts go.
    pub context_store: ContextStore,
    /// The platform used when a build names none.
    pub default_platform: Platform,
}

/// Where contexts are stored, as the controller is configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ContextStore {
    /// An S3 bucket: clients upload there with their own credentials.
    S3(S3Location),
    /// The controller's own disk: clients `PUT /v1/contexts/{key}`.
    Controller,
}

/// An S3 bucket and how to reach it (`S3_ENDPOINT`, `S3_REGION`, `S3_SSL`,
/// `S3_FORCE_PATH_STYLE`). A controller sends the region it resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Location {
    pub bucket: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub ssl: bool,
    /// `S3_FORCE_PATH_STYLE`; unset: path-style for endpoints other than
    /// AWS's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
}

/// `POST /v1/builds`: one service, all of its arches. Unknown fields are
/// refused: a misspelt field would otherwise be dropped without a word.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBuild {
    pub service: String,
    /// The multi-arch index tag, if the build pushes.
    pub destination: Option<String>,
    /// More tags for the same index; the controller copies the per-arch
    /// images into any other repository they name.
    #[serde(default)]
    pub tags: Vec<String>,
    pub tasks: Vec<TaskRequest>,
}

/// One arch of a build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    pub arch: Arch,
    pub push: Option<String>,
    /// The storage key of the context archive.
    pub context_key: ContextKey,
    /// Bytes of file content the context unpacks to, as the client packed
    /// it: the agent stops extracting past it, so an archive that inflates
    /// far beyond what was packed (a decompression bomb) cannot fill a disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_bytes: Option<u64>,
    pub spec: BuildSpec,
}

/// `POST /v1/builds` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildState {
    /// Agents are being started or are running.
    Running,
    /// Every arch pushed; the multi-arch index is being written.
    Indexing,
    Succeeded,
    Failed,
    Cancelled,
}

impl BuildState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            BuildState::Succeeded | BuildState::Failed | BuildState::Cancelled
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting for an agent slot (`MAX_CONCURRENT_AGENTS`), for at most
    /// `BUILD_QUEUE_TIMEOUT`.
    Queued,
    /// Being launched, or launched and the agent has not checked in yet.
    Starting,
    /// The agent fetched its spec and is working.
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
        )
    }
}

/// `GET /v1/builds/{id}`, and the `status`/`end` events of the log stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildStatus {
    pub id: String,
    pub service: String,
    pub state: BuildState,
    pub destination: Option<String>,
    /// The digest of the multi-arch index, once written.
    pub index_digest: Option<String>,
    /// Why the build failed or was cancelled.
    pub error: Option<String>,
    /// Unix milliseconds.
    pub created_ms: u64,
    pub finished_ms: Option<u64>,
    pub tasks: Vec<TaskStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub id: String,
    pub arch: Arch,
    /// Where the agent runs.
    pub platform: Platform,
    pub state: TaskState,
    pub push: Option<String>,
    /// The digest of the pushed per-arch manifest.
    pub digest: Option<String>,
    /// The images the agent built on, the final stage's base first (as
    /// the agent reported them): named when the image is of another
    /// architecture than asked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bases: Vec<String>,
    pub error: Option<String>,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
}

/// One line of a build's log, as followers receive it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEvent {
    /// Position in the build's log, from 1; `Last-Event-ID` resumes after it.
    pub seq: u64,
    pub task: String,
    pub arch: Arch,
    pub line: String,
    /// Unix milliseconds at which the controller received the line.
    pub ms: u64,
}

/// A [`LogEvent`] borrowed from where the controller keeps the line: the
/// same JSON, without copying the line and the task id for every reader
/// (the journal and each follower) of every line.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LogEventRef<'a> {
    pub seq: u64,
    pub task: &'a str,
    pub arch: Arch,
    pub line: &'a str,
    pub ms: u64,
}

/// Names of the server-sent events of `GET /v1/builds/{id}/logs`.
pub mod event {
    /// A [`super::LogEvent`]; its SSE id is the seq.
    pub const LOG: &str = "log";
    /// A [`super::BuildStatus`] whenever a task or the build changes state.
    pub const STATUS: &str = "status";
    /// The final [`super::BuildStatus`]; the stream closes after it.
    pub const END: &str = "end";
}

/// `GET /v1/agent/tasks/{task}/spec`: everything an agent needs. Fetching it
/// is the agent's check-in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentTask {
    pub build_id: String,
    pub task_id: String,
    pub arch: Arch,
    pub push: Option<String>,
    pub context: ContextSource,
    /// What the context unpacks to, as the client declared it
    /// ([`TaskRequest::context_bytes`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_bytes: Option<u64>,
    pub spec: BuildSpec,
}

/// Where the agent downloads its context from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ContextSource {
    S3 {
        #[serde(flatten)]
        location: S3Location,
        key: ContextKey,
    },
    /// `GET /v1/agent/tasks/{task}/context` on the controller.
    Controller { key: ContextKey },
}

/// `POST /v1/agent/tasks/{task}/logs`. `seq` numbers lines per task, so a
/// batch sent twice (a retry after a lost answer) is not logged twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentLogs {
    pub lines: Vec<AgentLine>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentLine {
    pub seq: u64,
    pub line: String,
}

/// `POST /v1/agent/tasks/{task}/result`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum AgentResult {
    /// Built and pushed; `digest` is the per-arch manifest digest.
    /// A build without push succeeds with no digest. `bases` are the
    /// images it was built on, the final stage's base first.
    Succeeded {
        digest: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        bases: Vec<String>,
    },
    Failed {
        error: String,
    },
}

/// The body of every 4xx/5xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// Environment variables the platforms set for an agent. The token is the
/// only sensitive one, and it is narrow: it reads this task's spec once (the
/// check-in; a second read is refused, so a token seen later in a task
/// description is worthless for that) and writes this task's log and result
/// until the task ends.
pub mod agent_env {
    pub const CONTROLLER_URL: &str = "BAKERY_CONTROLLER_URL";
    pub const TASK_ID: &str = "BAKERY_TASK_ID";
    pub const TASK_TOKEN: &str = "BAKERY_TASK_TOKEN";
    pub const BUILDER: &str = "BAKERY_BUILDER";
    pub const WORK_DIR: &str = "BAKERY_WORK_DIR";
    /// Seconds after its start by which the agent gives up on its own
    /// (the task and result timeouts together): a controller that is gone
    /// cannot leave an agent, and on ECS a billing task, running.
    pub const DEADLINE: &str = "BAKERY_DEADLINE";

    /// The daemonless builder an agent runs ([`BUILDER`]): Kaniko in the
    /// agent image (ECS, Kubernetes), buildah on the local platform.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum BuilderKind {
        Kaniko,
        Buildah,
    }

    impl BuilderKind {
        pub fn as_str(self) -> &'static str {
            match self {
                BuilderKind::Kaniko => "kaniko",
                BuilderKind::Buildah => "buildah",
            }
        }
    }

    impl std::fmt::Display for BuilderKind {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.as_str())
        }
    }

    impl std::str::FromStr for BuilderKind {
        type Err = String;

        fn from_str(s: &str) -> Result<BuilderKind, String> {
            match s {
                "kaniko" => Ok(BuilderKind::Kaniko),
                "buildah" => Ok(BuilderKind::Buildah),
                other => Err(format!(
                    "{BUILDER} `{other}` is not a builder; expected kaniko or buildah"
                )),
            }
        }
    }
}

/// Milliseconds since the Unix epoch, the time unit of the API.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_borrowed_log_event_is_the_same_json() {
        let owned = LogEvent {
            seq: 7,
            task: "b1-arm64".into(),
            arch: Arch::Arm64,
            line: "step \"1\"\tdone".into(),
            ms: 1_700_000_000_000,
        };
        let borrowed = LogEventRef {
            seq: owned.seq,
            task: &owned.task,
            arch: owned.arch,
            line: &owned.line,
            ms: owned.ms,
        };
        let json = serde_json::to_string(&borrowed).unwrap();
        assert_eq!(json, serde_json::to_string(&owned).unwrap());
        assert_eq!(serde_json::from_str::<LogEvent>(&json).unwrap(), owned);
    }
}
