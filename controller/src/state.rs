//! Builds, their tasks and their logs, in memory (and, through
//! [`crate::journal`], on disk).
//!
//! Each build keeps its whole log, so any number of followers can read it
//! from any point: every follower sees every line (the original tool's
//! followers shared one channel and split the lines between them). A
//! `watch` channel wakes followers and the supervisor on every change.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bakery_protocol::api::{
    now_ms, AgentLine, BuildState, BuildStatus, CreateBuild, LogEventRef, TaskState, TaskStatus,
};
use bakery_protocol::redact::Redactor;
use bakery_protocol::Platform;
use tokio::sync::watch;

use crate::journal::{self, Record, Restored, TaskRecord};

/// A task's private bookkeeping, beside its public [`TaskStatus`].
#[derive(Debug)]
pub struct TaskRuntime {
    pub token: String,
    /// Highest agent line seq received, to drop resent batches.
    pub agent_seq: u64,
    pub launched_at: Option<Instant>,
    pub checked_in_at: Option<Instant>,
    /// The platform's handle, once launched.
    pub handle: Option<String>,
    /// Set when the platform reports the agent gone.
    pub exited: Option<String>,
    /// The platform slot this task holds while its agent runs: taken
    /// before launch, given back as soon as the agent is stopped (not when
    /// the whole build ends, or one build's finished agent would hold a
    /// slot its queued sibling waits for).
    pub slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// When the task started waiting for a slot (BUILD_QUEUE_TIMEOUT).
    pub queued_at: Option<Instant>,
    /// The agent has been stopped (or was never started): nothing of this
    /// task runs any more.
    pub stopped: bool,
}

impl TaskRuntime {
    fn new(token: String) -> TaskRuntime {
        TaskRuntime {
            token,
            agent_seq: 0,
            launched_at: None,
            checked_in_at: None,
            handle: None,
            exited: None,
            slot: None,
            queued_at: None,
            stopped: false,
        }
    }
}

#[derive(Debug)]
pub struct Inner {
    pub status: BuildStatus,
    pub request: CreateBuild,
    pub runtime: Vec<TaskRuntime>,
    pub logs: Vec<StoredLine>,
    /// Bytes of log held, against [`Build::log_limit`].
    pub log_bytes: u64,
    /// A cancel the supervisor acts on: saved before it is set.
    pub cancel_requested: bool,
    /// A cancel being saved: in the journal's record already, not yet
    /// acted on (undone if it cannot be saved).
    pub cancel_pending: bool,
    pub redactor: Redactor,
    /// The client was (or is about to be) told the build exists. A build
    /// saved but never acknowledged (its creation answered 503, or the
    /// controller stopped in between) is never started: see
    /// [`crate::routes`]'s create handler and [`crate::resume_builds`].
    pub acknowledged: bool,
    /// The client's `Idempotency-Key`, if it sent one.
    pub idempotency_key: Option<String>,
}

/// A log line as kept in memory: its task by index, its seq by position.
/// Every build's whole log stays in memory for followers and `bakery logs`,
/// so at 1,000 concurrent builds these are most of the controller's RSS; a
/// [`LogEvent`] (with its own copy of the task id) is made only to send.
#[derive(Debug, Clone)]
pub struct StoredLine {
    task: u32,
    line: Box<str>,
    ms: u64,
}

/// What the journal has yet to save of a build ([`Build::to_record`]).
pub struct Unsaved {
    /// The build's record, when more than its log changed.
    pub record: Option<Record>,
    /// The new lines as a journal chunk.
    pub chunk: Option<Vec<u8>>,
    /// How many lines the build holds once this is saved.
    pub logs_end: usize,
}

/// One build: shared by the API handlers, its supervisor and its followers.
#[derive(Debug)]
pub struct Build {
    pub id: String,
    inner: Mutex<Inner>,
    /// Anything a follower shows changed: saved lines, the status.
    changed: watch::Sender<u64>,
    /// The build's or a task's state changed (not its log): what the
    /// supervisor acts on. Kept apart so that a chatty build's lines do not
    /// wake its supervisor dozens of times a second.
    state_changed: watch::Sender<u64>,
    /// Where changes are announced to the journal writer, if there is one.
    journal: Option<Arc<journal::Signal>>,
    /// Changed since the journal last saved it.
    dirty: AtomicBool,
    /// More than the log changed (state, tasks, handles): the record must
    /// be rewritten, not only the new lines appended.
    meta_dirty: AtomicBool,
    /// How many log lines the journal holds.
    persisted: AtomicUsize,
    /// Most log bytes the build may hold (BUILD_LOG_LIMIT).
    log_limit: u64,
}

impl Build {
    /// `default` is the platform of tasks whose spec names none.
    pub fn new(
        id: String,
        request: CreateBuild,
        default: Platform,
        journal: Option<Arc<journal::Signal>>,
        log_limit: u64,
    ) -> Build {
        let tasks: Vec<TaskStatus> = request
            .tasks
            .iter()
            .map(|t| TaskStatus {
                id: format!("{id}-{}", t.arch),
                arch: t.arch,
                platform: t.spec.platform.unwrap_or(default),
                state: TaskState::Starting,
                push: t.push.clone(),
                digest: None,
                bases: Vec::new(),
                error: None,
                started_ms: None,
                finished_ms: None,
            })
            .collect();
        let runtime: Vec<TaskRuntime> = tasks
            .iter()
            .map(|_| TaskRuntime::new(random_token()))
            .collect();
        let redactor = redactor_for(&request, &runtime);
        let status = BuildStatus {
            id: id.clone(),
            service: request.service.clone(),
            state: BuildState::Running,
            destination: request.destination.clone(),
            index_digest: None,
            error: None,
            created_ms: now_ms(),
            finished_ms: None,
            tasks,
        };
        Build {
            id,
            inner: Mutex::new(Inner {
                status,
                request,
                runtime,
                logs: Vec::new(),
                log_bytes: 0,
                cancel_requested: false,
                cancel_pending: false,
                redactor,
                acknowledged: false,
                idempotency_key: None,
            }),
            changed: watch::channel(0).0,
            state_changed: watch::channel(0).0,
            journal,
            dirty: AtomicBool::new(true),
            meta_dirty: AtomicBool::new(true),
            persisted: AtomicUsize::new(0),
            log_limit,
        }
    }

    /// A build read back from the journal after a restart. Its agents, if
    /// any were running, are re-attached by the supervisor.
    pub fn restore(
        saved: Restored,
        journal: Option<Arc<journal::Signal>>,
        log_limit: u64,
    ) -> Build {
        let Restored {
            record,
            logs,
            agent_seqs,
        } = saved;
        let runtime: Vec<TaskRuntime> = record
            .tasks
            .into_iter()
            .enumerate()
            .map(|(i, t)| TaskRuntime {
                // The chunks carry the newer value when only lines changed.
                agent_seq: t.agent_seq.max(agent_seqs.get(i).copied().unwrap_or(0)),
                launched_at: t.launched_ms.map(journal::instant_from_ms),
                checked_in_at: t.checked_in_ms.map(journal::instant_from_ms),
                handle: t.handle,
                queued_at: t.queued_ms.map(journal::instant_from_ms),
                ..TaskRuntime::new(t.token)
            })
            .collect();
        let redactor = redactor_for(&record.request, &runtime);
        let persisted = logs.len();
        let log_bytes = logs.iter().map(|e| e.line.len() as u64).sum();
        let logs = logs
            .into_iter()
            .map(|e| StoredLine {
                task: record
                    .status
                    .tasks
                    .iter()
                    .position(|t| t.id == e.task)
                    .unwrap_or(0) as u32,
                line: e.line.into_boxed_str(),
                ms: e.ms,
            })
            .collect();
        Build {
            id: record.status.id.clone(),
            inner: Mutex::new(Inner {
                status: record.status,
                request: record.request,
                runtime,
                logs,
                log_bytes,
                cancel_requested: record.cancel_requested,
                cancel_pending: false,
                redactor,
                acknowledged: record.acknowledged,
                idempotency_key: record.idempotency_key,
            }),
            changed: watch::channel(0).0,
            state_changed: watch::channel(0).0,
            journal,
            dirty: AtomicBool::new(false),
            meta_dirty: AtomicBool::new(false),
            persisted: AtomicUsize::new(persisted),
            log_limit,
        }
    }

    /// What the journal saves: the record (if it changed), and the lines
    /// from `from` on as a chunk (their JSON, with each task's agent seq
    /// as of those lines), serialised straight from the
    /// log. Also how many lines the build holds once that is saved.
    pub fn to_record(&self, from: usize) -> Result<Unsaved, serde_json::Error> {
        let meta = self.meta_dirty.swap(false, Ordering::SeqCst);
        let inner = self.lock();
        let end = inner.logs.len();
        let from = from.min(end);
        let chunk = if from < end {
            let agent_seqs: Vec<u64> = inner.runtime.iter().map(|rt| rt.agent_seq).collect();
            Some(journal::encode_chunk(&agent_seqs, inner.events(from, end))?)
        } else {
            None
        };
        if !meta {
            return Ok(Unsaved {
                record: None,
                chunk,
                logs_end: end,
            });
        }
        let tasks = inner
            .runtime
            .iter()
            .map(|rt| TaskRecord {
                token: rt.token.clone(),
                agent_seq: rt.agent_seq,
                handle: rt.handle.clone(),
                launched_ms: rt.launched_at.map(journal::ms_from_instant),
                checked_in_ms: rt.checked_in_at.map(journal::ms_from_instant),
                queued_ms: rt.queued_at.map(journal::ms_from_instant),
            })
            .collect();
        let record = Record {
            status: inner.status.clone(),
            request: inner.request.clone(),
            tasks,
            cancel_requested: inner.cancel_requested || inner.cancel_pending,
            acknowledged: inner.acknowledged,
            idempotency_key: inner.idempotency_key.clone(),
        };
        Ok(Unsaved {
            record: Some(record),
            chunk,
            logs_end: end,
        })
    }

    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::SeqCst)
    }

    /// Has the journal rewrite the whole record, at once: a state change
    /// is what clients, agents and supervisors wait for.
    pub fn mark_dirty(&self) {
        self.meta_dirty.store(true, Ordering::SeqCst);
        self.dirty.store(true, Ordering::SeqCst);
        if let Some(j) = &self.journal {
            j.wake_urgent();
        }
    }

    /// Has the journal append the new lines at its next paced commit.
    fn mark_log_dirty(&self) {
        self.dirty.store(true, Ordering::SeqCst);
        if let Some(j) = &self.journal {
            j.wake();
        }
    }

    pub fn persisted(&self) -> usize {
        self.persisted.load(Ordering::SeqCst)
    }

    /// Records what the journal saved, and wakes followers for those lines.
    pub fn set_persisted(&self, lines: usize) {
        let before = self.persisted.swap(lines, Ordering::SeqCst);
        if before != lines {
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// Locks the build. Callers that change it call [`Build::touch`] after.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes everyone waiting on this build, and has the journal save it.
    pub fn touch(&self) {
        self.mark_dirty();
        self.changed.send_modify(|v| *v += 1);
        self.state_changed.send_modify(|v| *v += 1);
    }

    /// Like [`Build::touch`] when only lines were added: the journal appends
    /// them (with the agents' seqs) without rewriting the record. With a
    /// journal, followers are woken once the lines are saved
    /// ([`Build::set_persisted`]), since they are shown saved lines only.
    pub fn touch_log(&self) {
        self.mark_log_dirty();
        if self.journal.is_none() {
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// Wakes on new saved lines and on status changes: for followers.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Wakes on state changes only: for the supervisor.
    pub fn subscribe_state(&self) -> watch::Receiver<u64> {
        self.state_changed.subscribe()
    }

    pub fn status(&self) -> BuildStatus {
        self.lock().status.clone()
    }

    /// Lines after `seq`, and the status as of the same moment. With a
    /// journal, only lines already on disk: a line a follower has seen must
    /// keep its seq through a crash, or a resumed follower would see it
    /// twice (the agent resends what was not saved, under new seqs).
    /// At most `max` lines, each handed to `each` under the lock (nothing
    /// is copied): a follower that is behind catches up in steps, and holds
    /// one step's events, not the whole backlog, at a time.
    /// The flag says whether these are all the lines there are.
    pub fn snapshot_after(
        &self,
        seq: u64,
        max: usize,
        each: impl FnMut(LogEventRef<'_>),
    ) -> (BuildStatus, bool) {
        let inner = self.lock();
        let visible = match self.journal {
            Some(_) => self.persisted().min(inner.logs.len()),
            None => inner.logs.len(),
        };
        let start = (seq as usize).min(visible);
        let end = visible.min(start.saturating_add(max));
        inner.events(start, end).for_each(each);
        (inner.status.clone(), end == inner.logs.len())
    }

    /// Appends a line on behalf of task `index`, redacted.
    pub fn log(&self, index: usize, line: &str) {
        {
            let mut inner = self.lock();
            inner.push_line(index, line);
        }
        // Callers log right after changing state under the same lock
        // (check-in, result): save the record too.
        self.touch();
    }

    /// Appends an agent's batch, skipping lines already received.
    /// Returns how many lines were new (a retried batch repeats some), or
    /// `None` once the task has ended: a finished task's agent has no say.
    /// Past the build's log limit the task fails (and with it the build),
    /// and the rest is refused.
    pub fn append_agent_lines(&self, index: usize, lines: &[AgentLine]) -> Option<usize> {
        let mut added = 0;
        let mut over = false;
        {
            let mut inner = self.lock();
            if inner.status.tasks[index].state.is_terminal() {
                return None;
            }
            for l in lines {
                if l.seq <= inner.runtime[index].agent_seq {
                    continue;
                }
                if inner.log_bytes + l.line.len() as u64 > self.log_limit {
                    let error = format!(
                        "the build log passed BUILD_LOG_LIMIT ({} bytes); the build was stopped (print less, e.g. quieter package installs, or raise BUILD_LOG_LIMIT on the controller)",
                        self.log_limit
                    );
                    inner.push_line(index, &format!("error: {error}"));
                    inner.finish_task(index, TaskState::Failed, Some(error));
                    over = true;
                    break;
                }
                inner.runtime[index].agent_seq = l.seq;
                inner.push_line(index, &bakery_protocol::validate::clean_line(&l.line));
                added += 1;
            }
        }
        if over {
            self.touch();
            return None;
        }
        if added > 0 {
            self.touch_log();
        }
        Some(added)
    }
}

/// Registry passwords and the agents' own tokens never reach a log line, an
/// error or a status.
fn redactor_for(request: &CreateBuild, runtime: &[TaskRuntime]) -> Redactor {
    Redactor::new(
        request
            .tasks
            .iter()
            .flat_map(|t| {
                t.spec
                    .credentials
                    .iter()
                    .map(|c| c.password.expose().to_string())
            })
            .chain(runtime.iter().map(|rt| rt.token.clone())),
    )
}

impl Inner {
    pub fn push_line(&mut self, index: usize, line: &str) {
        let line = self.redactor.redact(line);
        self.log_bytes += line.len() as u64;
        self.logs.push(StoredLine {
            task: index as u32,
            line: line.into_boxed_str(),
            ms: now_ms(),
        });
    }

    /// Lines `from..to` (0-based positions) as followers and the journal
    /// receive them.
    pub fn events(&self, from: usize, to: usize) -> impl Iterator<Item = LogEventRef<'_>> {
        self.logs[from..to].iter().enumerate().map(move |(i, l)| {
            let task = &self.status.tasks[l.task as usize];
            LogEventRef {
                seq: (from + i) as u64 + 1,
                task: &task.id,
                arch: task.arch,
                line: &l.line,
                ms: l.ms,
            }
        })
    }

    /// Moves a task to a terminal state, once.
    pub fn finish_task(&mut self, index: usize, state: TaskState, error: Option<String>) -> bool {
        let task = &mut self.status.tasks[index];
        if task.state.is_terminal() {
            return false;
        }
        task.state = state;
        task.error = error.map(|e| self.redactor.redact(&e));
        task.finished_ms = Some(now_ms());
        true
    }

    /// An arch that reported success but whose image turned out not to be
    /// of its architecture ([`crate::verify`]): failed after all.
    pub fn fail_verified_task(&mut self, index: usize, error: String) {
        let task = &mut self.status.tasks[index];
        task.state = TaskState::Failed;
        task.error = Some(self.redactor.redact(&error));
    }

    pub fn finish_build(&mut self, state: BuildState, error: Option<String>) {
        if self.status.state.is_terminal() {
            return;
        }
        self.status.state = state;
        self.status.error = error.map(|e| self.redactor.redact(&e));
        self.status.finished_ms = Some(now_ms());
        self.forget_secrets();
    }

    /// A finished build needs no registry password (its index is written)
    /// and no task token (its agents are refused): neither stays in memory
    /// or in the journal, which keeps finished builds for BUILD_RETENTION.
    /// The redactor keeps its own copy, for lines that arrive meanwhile.
    fn forget_secrets(&mut self) {
        for task in &mut self.request.tasks {
            for c in &mut task.spec.credentials {
                c.password = bakery_protocol::spec::Secret::new("");
            }
        }
        for rt in &mut self.runtime {
            rt.token.clear();
        }
    }
}

/// Every build this controller knows, and which task belongs to which.
#[derive(Debug, Default)]
pub struct Registry {
    builds: Mutex<HashMap<String, Arc<Build>>>,
    tasks: Mutex<HashMap<String, (Arc<Build>, usize)>>,
}

impl Registry {
    pub fn insert(&self, build: Arc<Build>) {
        let task_ids: Vec<String> = build
            .lock()
            .status
            .tasks
            .iter()
            .map(|t| t.id.clone())
            .collect();
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        for (i, id) in task_ids.into_iter().enumerate() {
            tasks.insert(id, (Arc::clone(&build), i));
        }
        drop(tasks);
        self.builds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(build.id.clone(), build);
    }

    /// Forgets a finished build (and its tasks).
    pub fn remove(&self, id: &str) {
        let removed = self
            .builds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        if let Some(build) = removed {
            let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
            for t in &build.lock().status.tasks {
                tasks.remove(&t.id);
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Build>> {
        self.builds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    pub fn task(&self, task_id: &str) -> Option<(Arc<Build>, usize)> {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(task_id)
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<Build>> {
        self.builds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// 256 random bits, hex: build ids and task tokens.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    hex::encode(bytes)
}

/// A short id that is still unique enough for the life of a controller.
pub fn new_build_id() -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    format!("b{}", hex::encode(bytes))
}

/// Constant-time comparison, so a token cannot be guessed byte by byte.
/// An empty expected token (a finished task's, forgotten) matches nothing.
pub fn token_matches(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    if b.is_empty() || a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
