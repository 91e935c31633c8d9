//! The controller's HTTP API, as types both sides compile against.
//!
//! Client-facing (`/v1/builds…`, `/v1/contexts…`, `/v1/info`) and
//! agent-facing (`/v1/agent/tasks/{task}/…`, authenticated with the task's
//! own token) endpoints share these shapes, so a change breaks the build of
//! every party rather than a production run.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::arch::{Arch, Platform};
use crate::context_key::ContextKey;
use crate::spec::BuildSpec;

/// `GET /v1/info`: what a client needs to know before submitting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Info {
    /// The controller's version, its Cargo package version (as in the release it came from).
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
    /// The bucket contexts are stored in, under `contexts/`.
    pub bucket: String,
    /// `S3_ENDPOINT`: a host (`minio:9000`) or a URL; `None` for AWS's own endpoint.
    pub endpoint: Option<String>,
    /// `S3_REGION`; with `None`, clients and agents use us-east-1.
    pub region: Option<String>,
    /// `S3_SSL`: whether a host-only endpoint is reached over HTTPS (true unless set to `false`).
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
    /// The service's name (from config.yaml or the compose file): it
    /// prefixes log lines and names the build in statuses and CI reports.
    pub service: String,
    /// The multi-arch index tag, if the build pushes.
    pub destination: Option<String>,
    /// More tags for the same index; the controller copies the per-arch
    /// images into any other repository they name.
    #[serde(default)]
    pub tags: Vec<String>,
    /// One task per arch, each arch at most once.
    #[serde(deserialize_with = "crate::object::objects")]
    pub tasks: Vec<TaskRequest>,
    /// The SLSA provenance attestation to attach to each pushed image;
    /// `None` attaches none.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::object::optional_object"
    )]
    pub provenance: Option<crate::provenance::Provenance>,
    /// Annotations on the multi-arch index (`index:` level).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub index_annotations: BTreeMap<String, String>,
    /// Annotations on each image's entry in the index
    /// (`manifest-descriptor:` level, and Kaniko images' `manifest:` ones).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub descriptor_annotations: BTreeMap<String, String>,
}

/// One arch of a build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    /// The arch this task builds, natively, on an agent of that arch.
    pub arch: Arch,
    /// The per-arch tag the agent pushes (`app:1.0_amd64`);
    /// `None` only when the spec has `no_push`.
    pub push: Option<String>,
    /// The storage key of the context archive.
    pub context_key: ContextKey,
    /// Bytes of file content the context unpacks to, as the client packed
    /// it: the agent stops extracting past it, so an archive that inflates
    /// far beyond what was packed (a decompression bomb) cannot fill a disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_bytes: Option<u64>,
    /// The fully resolved build the agent runs.
    #[serde(deserialize_with = "crate::object::object")]
    pub spec: BuildSpec,
}

/// `POST /v1/builds` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    /// The new build's id (`b` and 12 hex digits): the key of every later call about it.
    pub id: String,
}

/// Where a build is: running, writing its index, or
/// finished (the last three, which never change again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildState {
    /// Agents are being started or are running.
    Running,
    /// Every arch pushed; the multi-arch index is being written.
    Indexing,
    /// Every arch pushed and the index (if any) written.
    Succeeded,
    /// An arch failed, the index could not be written, or a timeout ran out; `error` says which.
    Failed,
    /// Cancelled by the client (`DELETE /v1/builds/{id}`), or by the controller
    /// shutting down (it stops every unfinished build and its agents).
    Cancelled,
}

impl BuildState {
    /// Whether the build is over: succeeded, failed or cancelled.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            BuildState::Succeeded | BuildState::Failed | BuildState::Cancelled
        )
    }
}

/// Where one arch's task is, from waiting for a slot to
/// finished (the last three, which never change again).
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
    /// The agent built (and pushed, unless `no_push`) its image and reported success.
    Succeeded,
    /// The agent reported a failure, or the task was failed for it (the
    /// agent exited or vanished, or a timeout ran out); `error` says why.
    Failed,
    /// Stopped because the build was cancelled, or because another arch failed.
    Cancelled,
}

impl TaskState {
    /// Whether the task is over: succeeded, failed or cancelled.
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
    /// The build's id, as [`Created::id`] returned it.
    pub id: String,
    /// The service the build is for ([`CreateBuild::service`]).
    pub service: String,
    /// Where the build as a whole is.
    pub state: BuildState,
    /// The multi-arch index tag, as asked ([`CreateBuild::destination`]);
    /// `None` when the build does not push.
    pub destination: Option<String>,
    /// The digest of the multi-arch index, once written.
    pub index_digest: Option<String>,
    /// Why the build failed or was cancelled.
    pub error: Option<String>,
    /// Unix milliseconds.
    pub created_ms: u64,
    /// Unix milliseconds at which the build reached a terminal state; `None` while it runs.
    pub finished_ms: Option<u64>,
    /// One status per arch, in the order of the request.
    pub tasks: Vec<TaskStatus>,
    /// Who created the build, as the controller authenticated them (never
    /// a token); `None` for builds of controllers from before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<Creator>,
}

/// Who created a build: what the controller knew of the caller when it
/// accepted the build. Recorded so that an operator can tell who built
/// what, and so that a CI job sees only its own repository's builds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Creator {
    /// The controller takes no token (loopback, or the client's embedded
    /// controller): anyone who reached it.
    Anonymous,
    /// A holder of the static CONTROLLER_TOKEN (an administrator).
    ControllerToken,
    /// A CI job with an OpenID Connect ID token.
    Oidc(OidcIdentity),
}

/// The claims of a CI job's ID token that say who it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OidcIdentity {
    /// The token's issuer (`iss`).
    pub issuer: String,
    /// The token's subject (`sub`), e.g. `repo:org/app:ref:refs/heads/main`.
    pub subject: String,
    /// GitHub's `repository` claim (`org/app`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// GitLab's `project_path` claim (`group/app`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_path: Option<String>,
}

impl OidcIdentity {
    /// The tenant the identity belongs to: its issuer, and its repository
    /// (GitHub), else its project (GitLab), else its subject, each kind
    /// apart: a GitLab project `org/a` is not the GitHub repository
    /// `org/a`, even on one issuer. Builds are visible to the tenant that
    /// created them.
    pub fn tenant(&self) -> (&str, &'static str, &str) {
        let (kind, who) = match (&self.repository, &self.project_path) {
            (Some(r), _) => ("repository", r.as_str()),
            (None, Some(p)) => ("project", p.as_str()),
            (None, None) => ("subject", self.subject.as_str()),
        };
        (&self.issuer, kind, who)
    }
}

impl std::fmt::Display for Creator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Creator::Anonymous => f.write_str("anonymous (no token configured)"),
            Creator::ControllerToken => f.write_str("CONTROLLER_TOKEN"),
            Creator::Oidc(id) => {
                let (issuer, kind, who) = id.tenant();
                write!(f, "{kind} {who} via {issuer} (sub {})", id.subject)
            }
        }
    }
}

/// One arch's task as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// The task's id, `<build>-<arch>`: what log events, agents and platforms name it by.
    pub id: String,
    /// The arch this task builds.
    pub arch: Arch,
    /// Where the agent runs.
    pub platform: Platform,
    /// Where the task is.
    pub state: TaskState,
    /// The per-arch tag the agent pushes, as asked ([`TaskRequest::push`]).
    pub push: Option<String>,
    /// The digest of the pushed per-arch manifest.
    pub digest: Option<String>,
    /// The images the agent built on, the final stage's base first (as
    /// the agent reported them): named when the image is of another
    /// architecture than asked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bases: Vec<String>,
    /// Why the task failed or was cancelled, redacted and cut to a bounded length.
    pub error: Option<String>,
    /// Unix milliseconds at which the agent was launched;
    /// `None` until then (queued, or being launched).
    pub started_ms: Option<u64>,
    /// Unix milliseconds at which the task reached a terminal state; `None` while it runs.
    pub finished_ms: Option<u64>,
}

/// One line of a build's log, as followers receive it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEvent {
    /// Position in the build's log, from 1; `Last-Event-ID` resumes after it.
    pub seq: u64,
    /// The id of the task that printed the line ([`TaskStatus::id`]).
    pub task: String,
    /// The arch of that task, so a follower can prefix the line without a lookup.
    pub arch: Arch,
    /// The line as the agent printed it, secrets redacted, without its line break.
    pub line: String,
    /// Unix milliseconds at which the controller received the line.
    pub ms: u64,
}

/// A [`LogEvent`] borrowed from where the controller keeps the line: the
/// same JSON, without copying the line and the task id for every reader
/// (the journal and each follower) of every line.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LogEventRef<'a> {
    /// See [`LogEvent::seq`].
    pub seq: u64,
    /// See [`LogEvent::task`].
    pub task: &'a str,
    /// See [`LogEvent::arch`].
    pub arch: Arch,
    /// See [`LogEvent::line`].
    pub line: &'a str,
    /// See [`LogEvent::ms`].
    pub ms: u64,
}

impl LogEventRef<'_> {
    /// The owned event, for a reader that keeps it (an in-process follower).
    pub fn to_event(self) -> LogEvent {
        LogEvent {
            seq: self.seq,
            task: self.task.to_string(),
            arch: self.arch,
            line: self.line.to_string(),
            ms: self.ms,
        }
    }
}

impl LogEvent {
    /// The same event, borrowed.
    pub fn borrowed(&self) -> LogEventRef<'_> {
        LogEventRef {
            seq: self.seq,
            task: &self.task,
            arch: self.arch,
            line: &self.line,
            ms: self.ms,
        }
    }
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
    /// The id of the build the task belongs to.
    pub build_id: String,
    /// The service the build is of: scripts get it as `BAKERY_SERVICE`.
    /// (Empty from a controller older than this field.)
    #[serde(default)]
    pub service: String,
    /// The task's id, `<build>-<arch>`, as in the agent's URLs.
    pub task_id: String,
    /// The arch to build; the agent runs on a machine of that arch.
    pub arch: Arch,
    /// The per-arch tag to push to; `None` for a build without push.
    pub push: Option<String>,
    /// Where to download the context archive from.
    pub context: ContextSource,
    /// What the context unpacks to, as the client declared it
    /// ([`TaskRequest::context_bytes`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_bytes: Option<u64>,
    /// What to build and how.
    pub spec: BuildSpec,
}

/// Where the agent downloads its context from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ContextSource {
    /// In the controller's S3 bucket: the agent downloads it with the AWS
    /// credentials of its own environment (on ECS, its task role).
    S3 {
        /// The bucket and how to reach it, flattened into this object.
        #[serde(flatten)]
        location: S3Location,
        /// The archive's key in the bucket.
        key: ContextKey,
    },
    /// `GET /v1/agent/tasks/{task}/context` on the controller.
    Controller {
        /// The archive's key in the controller's own context store.
        key: ContextKey,
    },
}

/// `POST /v1/agent/tasks/{task}/logs`. `seq` numbers lines per task, so a
/// batch sent twice (a retry after a lost answer) is not logged twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentLogs {
    /// The lines of this batch, in order.
    #[serde(deserialize_with = "crate::object::objects")]
    pub lines: Vec<AgentLine>,
}

/// One line of an agent's output, numbered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentLine {
    /// The line's number in this task's log, from 1 and one more per line: the
    /// controller keeps the highest it has and drops any line at or below it.
    pub seq: u64,
    /// The text of the line, without its line break; the controller
    /// cleans it again ([`crate::validate::clean_line`]).
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
        /// The per-arch manifest digest (`sha256:…`); `None` when nothing was pushed.
        digest: Option<String>,
        /// The images the build was built on, the final stage's base first;
        /// empty when the agent could not read the Dockerfile, or nothing
        /// was pulled (`FROM scratch`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        bases: Vec<String>,
    },
    /// The build, a script or the push failed.
    Failed {
        /// What failed, as the agent tells it (redacted); the controller
        /// cleans and cuts it ([`crate::validate::clean_error`]).
        error: String,
    },
}

/// The body of every 4xx/5xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What was refused or went wrong, in words meant for the person who ran the build.
    pub error: String,
}

/// Environment variables the platforms set for an agent. The token is the
/// only sensitive one, and it is narrow: it reads this task's spec once (the
/// check-in; a second read is refused, so a token seen later in a task
/// description is worthless for that) and writes this task's log and result
/// until the task ends.
pub mod agent_env {
    /// The URL the agent reaches the controller at: the controller's
    /// `CONTROLLER_URL`, or else its own listen address.
    pub const CONTROLLER_URL: &str = "BAKERY_CONTROLLER_URL";
    /// The task this agent builds, `<build>-<arch>`.
    pub const TASK_ID: &str = "BAKERY_TASK_ID";
    /// The task's own token, sent as the bearer token of
    /// every agent call (see above for what it can do).
    pub const TASK_TOKEN: &str = "BAKERY_TASK_TOKEN";
    /// PEM certificates the agent trusts for the controller's HTTPS, and
    /// nothing else for it: a private CA (the controller's AGENT_CA_FILE).
    /// Unset: the system's roots.
    pub const CONTROLLER_CA: &str = "BAKERY_CONTROLLER_CA";
    /// Which builder the agent runs: `kaniko` (the default when unset) or `buildah`.
    pub const BUILDER: &str = "BAKERY_BUILDER";
    /// The directory the agent unpacks and builds in; unset, a
    /// `bakery-agent` directory under the system's temporary directory.
    pub const WORK_DIR: &str = "BAKERY_WORK_DIR";

    /// Where an agent lists the process groups of the commands it runs
    /// (one id a line), beside its work dir: each command leads a group of
    /// its own, and a local platform that has to kill the agent ends those
    /// groups too (on ECS and Kubernetes they die with the container).
    pub fn groups_file(work_dir: &std::path::Path) -> std::path::PathBuf {
        let mut name = work_dir.as_os_str().to_owned();
        name.push(".groups");
        name.into()
    }
    /// Seconds after its start by which the agent gives up on its own
    /// (the task and result timeouts together): a controller that is gone
    /// cannot leave an agent, and on ECS a billing task, running.
    pub const DEADLINE: &str = "BAKERY_DEADLINE";
    /// The seq after which the agent numbers its log lines; unset, 0. Set
    /// for an agent that takes over from one whose capacity was reclaimed
    /// (a Spot interruption), so its lines are not taken for resends of
    /// its predecessor's.
    pub const FIRST_SEQ: &str = "BAKERY_FIRST_SEQ";
    /// The arches the agent's machine runs through emulation, comma-separated
    /// (`arm64`), as the platform that launched it sees them: the local
    /// platform reads the host's binfmt_misc, which an agent behind its own
    /// `/proc` cannot (the kernel still runs its programs through qemu).
    pub const EMULATED: &str = "BAKERY_EMULATED";
    /// The storage driver a buildah agent asks for: `vfs` (the default:
    /// works anywhere, copies every layer whole) or `overlay` (native
    /// overlay mounts: a cached layer costs its download only). The local
    /// platform asks for `overlay` when its agents run in their own mount
    /// namespace, where no mount outlives the agent; an agent that finds
    /// overlay unusable (an old kernel, a data directory on overlayfs)
    /// falls back to vfs and says so.
    pub const BUILDAH_STORAGE: &str = "BAKERY_BUILDAH_STORAGE";

    /// The daemonless builder an agent runs ([`BUILDER`]): Kaniko in the
    /// agent image (ECS, Kubernetes), buildah on the local platform.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum BuilderKind {
        /// Kaniko's executor (`/kaniko/executor`), which builds and pushes in one step.
        Kaniko,
        /// `buildah build`, then `buildah push`, each
        /// task with its own storage under the work dir.
        Buildah,
    }

    impl BuilderKind {
        /// The value of [`BUILDER`] that names this builder.
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
        let borrowed = owned.borrowed();
        assert_eq!(borrowed.to_event(), owned);
        let json = serde_json::to_string(&borrowed).unwrap();
        assert_eq!(json, serde_json::to_string(&owned).unwrap());
        assert_eq!(serde_json::from_str::<LogEvent>(&json).unwrap(), owned);
    }
}
