//! A build's state, private, behind the transitions the API handlers and
//! the supervisor make. Each transition records what it changed
//! ([`Change`]); the [`super::Build`] around it wakes followers and the
//! supervisor and has the journal save it accordingly, so no caller has to
//! remember to.

use std::collections::BTreeMap;
use std::time::Instant;

use bakery_protocol::api::{
    now_ms, AgentLine, AgentResult, BuildState, BuildStatus, CreateBuild, Creator, LogEventRef,
    TaskRequest, TaskState,
};
use bakery_protocol::provenance::Provenance;
use bakery_protocol::redact::Redactor;
use bakery_protocol::spec::Credential;
use bakery_protocol::validate;
use bakery_protocol::Platform;

use super::log::{Log, StoredLine};
use super::task::Task;

/// What a transition changed, and so who must hear of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Change {
    /// Nothing anyone waits on (a slot given back).
    None,
    /// Log lines only: the journal appends them, followers read them.
    Log,
    /// State: the journal rewrites the record; the supervisor, followers
    /// and clients waiting on the status are woken.
    State,
}

/// The build-wide part of the status.
#[derive(Debug, Clone)]
struct Head {
    state: BuildState,
    index_digest: Option<String>,
    error: Option<String>,
    created_ms: u64,
    finished_ms: Option<u64>,
    /// Who created it ([`Aggregate::set_origin`]).
    created_by: Option<Creator>,
}

/// What recording an agent's result says back.
pub struct RecordedResult {
    /// Why the report itself is refused (answered 422), if it is.
    pub refused: Option<String>,
}

/// An arch whose agent pushed, as the image check needs it.
pub struct Pushed {
    /// The task's position in the build.
    pub index: usize,
    /// The arch it built.
    pub arch: bakery_protocol::Arch,
    /// The manifest digest it reported.
    pub digest: String,
    /// The per-arch tag it pushed.
    pub push: String,
    /// The images it was built on, the final stage's base first.
    pub bases: Vec<String>,
}

/// The deadlines [`Aggregate::evaluate`] applies, and what it needs to say
/// why one passed.
pub struct Limits<'a> {
    /// BUILD_TASK_TIMEOUT: how long an agent may take to start and check in.
    pub task_timeout: std::time::Duration,
    /// BUILD_RESULT_TIMEOUT: how long a checked-in agent may take to report.
    pub result_timeout: std::time::Duration,
    /// BUILD_QUEUE_TIMEOUT: how long a task may wait for an agent slot.
    pub queue_timeout: std::time::Duration,
    /// How many agent slots a platform has (MAX_CONCURRENT_AGENTS).
    pub slots: &'a dyn Fn(Platform) -> usize,
    /// The platform's last word on an agent that did not start.
    pub diagnose: &'a dyn Fn(Platform, &crate::platform::AgentHandle) -> Option<String>,
}

/// What a build asks of its index besides the images (see
/// [`CreateBuild`]): provenance attestations and annotations.
#[derive(Debug, Clone, Default)]
pub struct IndexAsks {
    /// The provenance attestation each image gets, if any.
    pub provenance: Option<Provenance>,
    /// On the index itself.
    pub index_annotations: BTreeMap<String, String>,
    /// On each image's entry in the index.
    pub descriptor_annotations: BTreeMap<String, String>,
}

/// A check-in that is not taken.
#[derive(Debug, PartialEq, Eq)]
pub struct AlreadyCheckedIn;

/// One build's request, status, tasks and log.
#[derive(Debug)]
pub struct Aggregate {
    id: String,
    service: String,
    destination: Option<String>,
    tags: Vec<String>,
    /// What the client asked of the index besides its images.
    asks: IndexAsks,
    head: Head,
    tasks: Vec<Task>,
    logs: Log,
    /// Most log bytes the build may hold (BUILD_LOG_LIMIT).
    log_limit: u64,
    /// A cancel the supervisor acts on: saved before it is set.
    cancel_requested: bool,
    /// A cancel being saved: in the journal's record already, not yet
    /// acted on (undone if it cannot be saved).
    cancel_pending: bool,
    redactor: Redactor,
    /// The client was (or is about to be) told the build exists. A build
    /// saved but never acknowledged (its creation answered 503, or the
    /// controller stopped in between) is never started.
    acknowledged: bool,
    /// The client's `Idempotency-Key`, if it sent one.
    idempotency_key: Option<String>,
    change: Change,
}

impl Aggregate {
    /// A new build; `default` is the platform of tasks whose spec names none.
    pub(super) fn new(id: String, request: CreateBuild, default: Platform, log_limit: u64) -> Self {
        let CreateBuild {
            service,
            destination,
            tags,
            tasks,
            provenance,
            index_annotations,
            descriptor_annotations,
        } = request;
        let asks = IndexAsks {
            provenance,
            index_annotations,
            descriptor_annotations,
        };
        let tasks: Vec<Task> = tasks
            .into_iter()
            .map(|t| Task::new(&id, t, default, super::random_token()))
            .collect();
        let head = Head {
            state: BuildState::Running,
            index_digest: None,
            error: None,
            created_ms: now_ms(),
            finished_ms: None,
            created_by: None,
        };
        let redactor = redactor_for(&tasks);
        Aggregate {
            id,
            service,
            destination,
            tags,
            asks,
            head,
            tasks,
            logs: Log::default(),
            log_limit,
            cancel_requested: false,
            cancel_pending: false,
            redactor,
            acknowledged: false,
            idempotency_key: None,
            change: Change::State,
        }
    }

    /// Each task's last agent seq, saved with the lines they sent.
    pub(super) fn agent_seqs(&self) -> Vec<u64> {
        self.tasks.iter().map(|t| t.runtime.agent_seq).collect()
    }

    pub(super) fn take_change(&mut self) -> Change {
        std::mem::replace(&mut self.change, Change::None)
    }

    fn changed(&mut self, change: Change) {
        self.change = self.change.max(change);
    }

    // ---- reading ----

    /// The build's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The service the build is of, as the client named it.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The status as clients see it.
    pub fn status(&self) -> BuildStatus {
        BuildStatus {
            id: self.id.clone(),
            service: self.service.clone(),
            state: self.head.state,
            destination: self.destination.clone(),
            index_digest: self.head.index_digest.clone(),
            error: self.head.error.clone(),
            created_ms: self.head.created_ms,
            finished_ms: self.head.finished_ms,
            tasks: self.tasks.iter().map(|t| t.status.clone()).collect(),
            created_by: self.head.created_by.clone(),
        }
    }

    /// Where the build as a whole is.
    pub fn state(&self) -> BuildState {
        self.head.state
    }

    /// The request as the client sent it (passwords gone once finished).
    pub fn request(&self) -> CreateBuild {
        CreateBuild {
            service: self.service.clone(),
            destination: self.destination.clone(),
            tags: self.tags.clone(),
            tasks: self.tasks.iter().map(|t| t.request.clone()).collect(),
            provenance: self.asks.provenance.clone(),
            index_annotations: self.asks.index_annotations.clone(),
            descriptor_annotations: self.asks.descriptor_annotations.clone(),
        }
    }

    /// What the client asked of the index besides its images.
    pub fn index_asks(&self) -> &IndexAsks {
        &self.asks
    }

    /// The build's tasks, one per arch, in the order of the request.
    pub fn tasks(&self) -> &[Task] {
        &self.tasks
    }

    /// The task at `index`.
    pub fn task(&self, index: usize) -> &Task {
        &self.tasks[index]
    }

    /// The multi-arch index tag, when the build pushes.
    pub fn destination(&self) -> Option<&str> {
        self.destination.as_deref()
    }

    /// More tags for the same index.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// The registry logins of every task, for the index.
    pub fn credentials(&self) -> Vec<Credential> {
        self.tasks
            .iter()
            .flat_map(|t| t.request.spec.credentials.clone())
            .collect()
    }

    /// Each task's request, in order (passwords gone once finished).
    pub fn requests(&self) -> impl Iterator<Item = &TaskRequest> {
        self.tasks.iter().map(|t| &t.request)
    }

    /// Whether a cancel was asked for and not yet carried out.
    pub fn cancel_requested(&self) -> bool {
        self.cancel_requested
    }

    /// Whether the client was told the build exists.
    pub fn acknowledged(&self) -> bool {
        self.acknowledged
    }

    /// The `Idempotency-Key` it was created with, if any.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }

    /// Whether a result is being saved: nothing acts on the build meanwhile.
    pub fn saving_a_result(&self) -> bool {
        self.tasks.iter().any(|t| t.runtime.result_saving)
    }

    /// How many log lines the build has.
    pub fn log_len(&self) -> usize {
        self.logs.len()
    }

    /// The position of the first line in memory: the ones before it are
    /// saved, and read from the journal.
    pub fn log_held_from(&self) -> usize {
        self.logs.held_from()
    }

    /// The journal saved the first `saved` lines: most of them leave memory.
    pub(in crate::state) fn let_go_of_lines(&mut self, saved: usize) {
        self.logs.let_go(saved);
    }

    /// Lines `from..to` (0-based positions) as followers and the journal
    /// receive them; those no longer in memory ([`Self::log_held_from`])
    /// are left out.
    pub fn events(&self, from: usize, to: usize) -> impl Iterator<Item = LogEventRef<'_>> {
        self.logs.range(from, to).map(move |(position, l)| {
            let task = &self.tasks[l.task as usize];
            LogEventRef {
                seq: position as u64 + 1,
                task: task.id(),
                arch: task.arch(),
                line: &l.line,
                ms: l.ms,
            }
        })
    }

    /// Every arch that pushed, for the image check and the index.
    pub fn pushed(&self) -> Vec<Pushed> {
        self.tasks
            .iter()
            .enumerate()
            .filter_map(|(index, t)| {
                Some(Pushed {
                    index,
                    arch: t.arch(),
                    digest: t.status.digest.clone()?,
                    push: t.status.push.clone()?,
                    bases: t.status.bases.clone(),
                })
            })
            .collect()
    }

    /// Whether `given` is the token of task `index`, which is not over.
    pub fn agent_may_speak(&self, index: usize, given: &str) -> bool {
        let task = &self.tasks[index];
        task.runtime.token.matches(given) && !task.is_terminal()
    }

    // ---- the log ----

    /// Appends a line on behalf of task `index`, redacted.
    pub fn log(&mut self, index: usize, line: &str) {
        let line = self.redactor.redact(line);
        self.logs.push(StoredLine {
            task: index as u32,
            line: line.into_boxed_str(),
            ms: now_ms(),
        });
        self.changed(Change::Log);
    }

    /// Appends an agent's lines, skipping those already received. Returns
    /// how many were new (a retried batch repeats some), or `None` once the
    /// task has ended: a finished task's agent has no say. Past the
    /// build's log limit the task fails (and with it the build), and the
    /// rest is refused.
    pub fn append_agent_lines(&mut self, index: usize, lines: &[AgentLine]) -> Option<usize> {
        if self.tasks[index].is_terminal() {
            return None;
        }
        let mut added = 0;
        for l in lines {
            if l.seq <= self.tasks[index].runtime.agent_seq {
                continue;
            }
            if self.logs.bytes() + l.line.len() as u64 > self.log_limit {
                let error = format!(
                    "the build log passed BUILD_LOG_LIMIT ({} bytes); the build was stopped (print less, e.g. quieter package installs, or raise BUILD_LOG_LIMIT on the controller)",
                    self.log_limit
                );
                self.log(index, &format!("error: {error}"));
                self.finish_task(index, TaskState::Failed, Some(error));
                return None;
            }
            self.tasks[index].runtime.agent_seq = l.seq;
            self.log(index, &validate::clean_line(&l.line));
            added += 1;
        }
        Some(added)
    }

    // ---- what clients do ----

    /// The client is (about to be) told the build exists.
    pub fn acknowledge(&mut self) {
        self.acknowledged = true;
        self.changed(Change::State);
    }

    /// Records who created the build and the `Idempotency-Key` they sent.
    pub fn set_origin(&mut self, creator: Creator, key: Option<String>) {
        self.head.created_by = Some(creator);
        self.idempotency_key = key;
        self.changed(Change::State);
    }

    /// Who created the build, if known.
    pub fn created_by(&self) -> Option<&Creator> {
        self.head.created_by.as_ref()
    }

    /// A cancel asked for: saved first ([`Aggregate::cancel_saved`]), acted
    /// on after. False when there is nothing to cancel.
    pub fn request_cancel(&mut self) -> bool {
        if self.head.state.is_terminal() || self.cancel_requested {
            return false;
        }
        self.cancel_pending = true;
        self.changed(Change::State);
        true
    }

    /// The cancel is saved (`true`: the supervisor acts on it) or could not
    /// be (`false`: as if it was never asked).
    pub fn cancel_saved(&mut self, saved: bool) {
        self.cancel_pending = false;
        if saved {
            self.cancel_requested = true;
        }
        self.changed(Change::State);
    }

    /// A cancel that needs no saving: the controller itself shutting down.
    pub fn cancel(&mut self) {
        self.cancel_requested = true;
        self.changed(Change::State);
    }

    /// Ends a build that must never run (its creation was not confirmed
    /// to the client), every task with it.
    pub fn withdraw(&mut self, error: &str) {
        for i in 0..self.tasks.len() {
            self.finish_task(i, TaskState::Cancelled, None);
        }
        self.finish_build(BuildState::Failed, Some(error.to_string()));
    }

    // ---- what agents do ----

    /// The agent fetched its spec: it runs.
    pub fn check_in(&mut self, index: usize, now: Instant) -> Result<(), AlreadyCheckedIn> {
        let task = &mut self.tasks[index];
        if task.status.state != TaskState::Starting {
            return Err(AlreadyCheckedIn);
        }
        task.status.state = TaskState::Running;
        task.runtime.checked_in_at = Some(now);
        self.log(index, "agent started");
        self.changed(Change::State);
        Ok(())
    }

    /// The check-in could not be saved: the agent's retry is taken.
    pub fn undo_check_in(&mut self, index: usize) {
        let task = &mut self.tasks[index];
        if task.status.state == TaskState::Running {
            task.status.state = TaskState::Starting;
            task.runtime.checked_in_at = None;
            self.changed(Change::State);
        }
    }

    /// Records what task `index`'s agent reports, checked: a digest must be
    /// a sha256 digest, an error is cleaned, a digest for a task that pushes
    /// nothing is not kept. The task is marked as saving its result until
    /// [`Aggregate::result_saved`] or [`Aggregate::undo_result`].
    pub fn record_result(&mut self, index: usize, result: AgentResult) -> RecordedResult {
        self.tasks[index].runtime.result_saving = true;
        let arch = self.tasks[index].arch();
        let push = self.tasks[index].status.push.clone();
        let (line, refused) = match result {
            AgentResult::Succeeded { digest, bases } => {
                self.tasks[index].status.bases = validate::clean_bases(&bases);
                // A task that pushes nothing has no digest, whatever is said.
                match (digest.filter(|_| push.is_some()), push) {
                    (Some(digest), Some(push)) => match validate::check_digest(&digest) {
                        Err(why) => {
                            self.finish_task(index, TaskState::Failed, Some(why.clone()));
                            (format!("error: {why}"), Some(why))
                        }
                        Ok(()) => {
                            let line = format!("pushed {push}@{digest}");
                            self.tasks[index].status.digest = Some(digest);
                            self.finish_task(index, TaskState::Succeeded, None);
                            (line, None)
                        }
                    },
                    (None, Some(_)) => {
                        let why = "the agent reported success without a digest".to_string();
                        self.finish_task(index, TaskState::Failed, Some(why));
                        (
                            format!("error: the {arch} agent reported success without a digest"),
                            None,
                        )
                    }
                    (_, None) => {
                        self.finish_task(index, TaskState::Succeeded, None);
                        ("built (not pushed)".to_string(), None)
                    }
                }
            }
            AgentResult::Failed { error } => {
                let error = validate::clean_error(&error);
                self.finish_task(index, TaskState::Failed, Some(error.clone()));
                (format!("error: {error}"), None)
            }
        };
        self.log(index, &line);
        RecordedResult { refused }
    }

    /// The recorded result is saved: the supervisor may act on it.
    pub fn result_saved(&mut self, index: usize) {
        self.tasks[index].runtime.result_saving = false;
        self.changed(Change::State);
    }

    /// The recorded result could not be saved: the task is running again,
    /// as it was, so that the agent's retry is taken.
    pub fn undo_result(&mut self, index: usize) {
        let task = &mut self.tasks[index];
        task.runtime.result_saving = false;
        task.status.state = TaskState::Running;
        task.status.digest = None;
        task.status.bases.clear();
        task.status.error = None;
        task.status.finished_ms = None;
        self.log(
            index,
            "the result could not be saved yet; waiting for the agent to send it again",
        );
        self.changed(Change::State);
    }
}

mod journaled;
mod supervision;
pub use supervision::ToStop;

/// Registry passwords, build secrets and the agents' own tokens never reach
/// a log line, an error or a status.
fn redactor_for(tasks: &[Task]) -> Redactor {
    Redactor::new(
        tasks
            .iter()
            .flat_map(|t| {
                t.request
                    .spec
                    .secret_values()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .chain(
                tasks
                    .iter()
                    .filter_map(|t| t.runtime.token.plain().map(str::to_string)),
            ),
    )
}
