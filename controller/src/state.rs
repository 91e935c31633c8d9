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

use bakery_core::api::{
    now_ms, AgentLine, BuildState, BuildStatus, CreateBuild, LogEvent, TaskState, TaskStatus,
};
use bakery_core::redact::Redactor;
use bakery_core::Platform;
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
    /// The platform slot this task holds while its agent runs.
    pub slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

#[derive(Debug)]
pub struct Inner {
    pub status: BuildStatus,
    pub request: CreateBuild,
    pub runtime: Vec<TaskRuntime>,
    pub logs: Vec<StoredLine>,
    pub cancel_requested: bool,
    pub redactor: Redactor,
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

/// One build: shared by the API handlers, its supervisor and its followers.
#[derive(Debug)]
pub struct Build {
    pub id: String,
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
    /// Where changes are announced to the journal writer, if there is one.
    journal: Option<Arc<journal::Signal>>,
    /// Changed since the journal last saved it.
    dirty: AtomicBool,
    /// More than the log changed (state, tasks, handles): the record must
    /// be rewritten, not only the new lines appended.
    meta_dirty: AtomicBool,
    /// How many log lines the journal holds.
    persisted: AtomicUsize,
}

impl Build {
    /// `default` is the platform of tasks whose spec names none.
    pub fn new(
        id: String,
        request: CreateBuild,
        default: Platform,
        journal: Option<Arc<journal::Signal>>,
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
                error: None,
                started_ms: None,
                finished_ms: None,
            })
            .collect();
        let runtime: Vec<TaskRuntime> = tasks
            .iter()
            .map(|_| TaskRuntime {
                token: random_token(),
                agent_seq: 0,
                launched_at: None,
                checked_in_at: None,
                handle: None,
                exited: None,
                slot: None,
            })
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
                cancel_requested: false,
                redactor,
            }),
            changed: watch::channel(0).0,
            journal,
            dirty: AtomicBool::new(true),
            meta_dirty: AtomicBool::new(true),
            persisted: AtomicUsize::new(0),
        }
    }

    /// A build read back from the journal after a restart. Its agents, if
    /// any were running, are re-attached by the supervisor.
    pub fn restore(saved: Restored, journal: Option<Arc<journal::Signal>>) -> Build {
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
                token: t.token,
                // The chunks carry the newer value when only lines changed.
                agent_seq: t.agent_seq.max(agent_seqs.get(i).copied().unwrap_or(0)),
                launched_at: t.launched_ms.map(journal::instant_from_ms),
                checked_in_at: t.checked_in_ms.map(journal::instant_from_ms),
                handle: t.handle,
                exited: None,
                slot: None,
            })
            .collect();
        let redactor = redactor_for(&record.request, &runtime);
        let persisted = logs.len();
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
                cancel_requested: record.cancel_requested,
                redactor,
            }),
            changed: watch::channel(0).0,
            journal,
            dirty: AtomicBool::new(false),
            meta_dirty: AtomicBool::new(false),
            persisted: AtomicUsize::new(persisted),
        }
    }

    /// What the journal saves: the record (if it changed), the lines from
    /// `from` on, and each task's agent seq as of those lines.
    pub fn to_record(&self, from: usize) -> (Option<Record>, Vec<LogEvent>, Vec<u64>) {
        let meta = self.meta_dirty.swap(false, Ordering::SeqCst);
        let inner = self.lock();
        let agent_seqs = inner.runtime.iter().map(|rt| rt.agent_seq).collect();
        let from = from.min(inner.logs.len());
        let lines = inner.events(from, inner.logs.len());
        if !meta {
            return (None, lines, agent_seqs);
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
            })
            .collect();
        let record = Record {
            status: inner.status.clone(),
            request: inner.request.clone(),
            tasks,
            cancel_requested: inner.cancel_requested,
        };
        (Some(record), lines, agent_seqs)
    }

    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::SeqCst)
    }

    /// Has the journal rewrite the whole record at its next commit.
    pub fn mark_dirty(&self) {
        self.meta_dirty.store(true, Ordering::SeqCst);
        self.mark_log_dirty();
    }

    /// Has the journal append the new lines at its next commit.
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
    }

    /// Like [`Build::touch`] when only lines were added: the journal appends
    /// them (with the agents' seqs) without rewriting the record.
    pub fn touch_log(&self) {
        self.mark_log_dirty();
        self.changed.send_modify(|v| *v += 1);
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn status(&self) -> BuildStatus {
        self.lock().status.clone()
    }

    /// Lines after `seq`, and the status as of the same moment. With a
    /// journal, only lines already on disk: a line a follower has seen must
    /// keep its seq through a crash, or a resumed follower would see it
    /// twice (the agent resends what was not saved, under new seqs).
    /// The flag says whether these are all the lines there are.
    pub fn snapshot_after(&self, seq: u64) -> (Vec<LogEvent>, BuildStatus, bool) {
        let inner = self.lock();
        let visible = match self.journal {
            Some(_) => self.persisted().min(inner.logs.len()),
            None => inner.logs.len(),
        };
        let start = (seq as usize).min(visible);
        (
            inner.events(start, visible),
            inner.status.clone(),
            visible == inner.logs.len(),
        )
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
    /// Returns how many lines were new (a retried batch repeats some).
    pub fn append_agent_lines(&self, index: usize, lines: &[AgentLine]) -> usize {
        let mut added = 0;
        {
            let mut inner = self.lock();
            for l in lines {
                if l.seq <= inner.runtime[index].agent_seq {
                    continue;
                }
                inner.runtime[index].agent_seq = l.seq;
                inner.push_line(index, &l.line);
                added += 1;
            }
        }
        self.touch_log();
        added
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
        self.logs.push(StoredLine {
            task: index as u32,
            line: line.into_boxed_str(),
            ms: now_ms(),
        });
    }

    /// Lines `from..to` (0-based positions) as followers and the journal
    /// receive them.
    pub fn events(&self, from: usize, to: usize) -> Vec<LogEvent> {
        self.logs[from..to]
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let task = &self.status.tasks[l.task as usize];
                LogEvent {
                    seq: (from + i) as u64 + 1,
                    task: task.id.clone(),
                    arch: task.arch,
                    line: l.line.to_string(),
                    ms: l.ms,
                }
            })
            .collect()
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

    pub fn finish_build(&mut self, state: BuildState, error: Option<String>) {
        if self.status.state.is_terminal() {
            return;
        }
        self.status.state = state;
        self.status.error = error.map(|e| self.redactor.redact(&e));
        self.status.finished_ms = Some(now_ms());
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
pub fn token_matches(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
