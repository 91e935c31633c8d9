//! One arch of a build: what was asked, what clients see, and what the
//! controller keeps to itself, together, changed only through the
//! transitions below.

use std::time::Instant;

use bakery_protocol::api::{now_ms, TaskRequest, TaskState, TaskStatus};
use bakery_protocol::Platform;
use tokio::sync::OwnedSemaphorePermit;

use crate::platform::AgentHandle;

/// What the controller keeps of a task besides its public status.
#[derive(Debug)]
pub(super) struct Runtime {
    pub(super) token: super::TaskToken,
    /// Highest agent line seq received, to drop resent lines.
    pub(super) agent_seq: u64,
    pub(super) launched_at: Option<Instant>,
    pub(super) checked_in_at: Option<Instant>,
    /// The platform's handle, once launched.
    pub(super) handle: Option<AgentHandle>,
    /// Set when the platform reports the agent gone.
    pub(super) exited: Option<String>,
    /// The platform slot this task holds while its agent runs: taken
    /// before launch, given back as soon as the agent is stopped (not when
    /// the whole build ends, or one build's finished agent would hold a
    /// slot its queued sibling waits for).
    pub(super) slot: Option<OwnedSemaphorePermit>,
    /// When the task started waiting for a slot (BUILD_QUEUE_TIMEOUT).
    pub(super) queued_at: Option<Instant>,
    /// The agent has been stopped (or was never started): nothing of this
    /// task runs any more.
    pub(super) stopped: bool,
    /// The agent's result is recorded and being saved: nothing acts on it
    /// until it is.
    pub(super) result_saving: bool,
    /// Its first agent's capacity was reclaimed and a second one started on
    /// demand ([`Task::relaunch`]): there is no third.
    pub(super) relaunched: bool,
}

impl Runtime {
    pub(super) fn new(token: String) -> Runtime {
        Runtime {
            token: super::TaskToken::new(token),
            agent_seq: 0,
            launched_at: None,
            checked_in_at: None,
            handle: None,
            exited: None,
            slot: None,
            queued_at: None,
            stopped: false,
            result_saving: false,
            relaunched: false,
        }
    }
}

/// One task: its request, its status and its runtime, which can no longer
/// drift apart (they were three vectors indexed alike).
#[derive(Debug)]
pub struct Task {
    pub(super) request: TaskRequest,
    pub(super) status: TaskStatus,
    pub(super) runtime: Runtime,
}

impl Task {
    pub(super) fn new(
        build_id: &str,
        request: TaskRequest,
        default: Platform,
        token: String,
    ) -> Task {
        let status = TaskStatus {
            id: format!("{build_id}-{}", request.arch),
            arch: request.arch,
            platform: request.spec.platform.unwrap_or(default),
            state: TaskState::Starting,
            push: request.push.clone(),
            digest: None,
            bases: Vec::new(),
            error: None,
            started_ms: None,
            finished_ms: None,
        };
        Task {
            request,
            status,
            runtime: Runtime::new(token),
        }
    }

    /// `<build>-<arch>`: what agents, platforms and logs name it by.
    pub fn id(&self) -> &str {
        &self.status.id
    }
    /// The arch this task builds.
    pub fn arch(&self) -> bakery_protocol::Arch {
        self.status.arch
    }
    /// The platform its agent runs on.
    pub fn platform(&self) -> Platform {
        self.status.platform
    }
    /// Where the task is.
    pub fn state(&self) -> TaskState {
        self.status.state
    }
    /// The task's status as clients see it.
    pub fn status(&self) -> &TaskStatus {
        &self.status
    }
    /// What the client asked of this task (its password gone once the build finished).
    pub fn request(&self) -> &TaskRequest {
        &self.request
    }
    /// The agent's own token (empty once the build has finished).
    pub fn token(&self) -> &str {
        self.runtime.token.plain().unwrap_or_default()
    }
    /// The platform's handle of the agent, once launched.
    pub fn handle(&self) -> Option<&AgentHandle> {
        self.runtime.handle.as_ref()
    }
    /// The highest seq of the lines its agents sent: where a new agent's
    /// numbering continues.
    pub fn lines_received(&self) -> u64 {
        self.runtime.agent_seq
    }
    /// Whether its agent may run on Spot capacity: if the build asked, and
    /// not once Spot took an agent of it away.
    pub fn wants_spot(&self) -> bool {
        self.request.spec.spot && !self.runtime.relaunched
    }
    /// Whether its agent is the second, after the first one's capacity
    /// was taken back ([`Task::relaunch`]).
    pub fn is_relaunch(&self) -> bool {
        self.runtime.relaunched
    }
    /// When the agent was launched, if it was.
    pub fn launched_at(&self) -> Option<Instant> {
        self.runtime.launched_at
    }
    /// Whether the task is over: succeeded, failed or cancelled.
    pub fn is_terminal(&self) -> bool {
        self.status.state.is_terminal()
    }
    /// Waiting for a slot or a launch: no agent handle, not finished.
    pub(super) fn unlaunched(&self) -> bool {
        !self.is_terminal() && self.runtime.handle.is_none()
    }

    /// Moves to a terminal state, once; `error` must be redacted already.
    pub(super) fn finish(&mut self, state: TaskState, error: Option<String>) -> bool {
        if self.is_terminal() {
            return false;
        }
        self.status.state = state;
        self.status.error = error;
        self.status.finished_ms = Some(now_ms());
        true
    }

    /// Starts waiting for a slot; false if it already was.
    pub(super) fn queue(&mut self, now: Instant) -> bool {
        if self.status.state == TaskState::Queued {
            return false;
        }
        self.status.state = TaskState::Queued;
        self.runtime.queued_at.get_or_insert(now);
        true
    }

    /// Holds `slot` and is about to launch. How long it waited, if it did.
    pub(super) fn take_slot(&mut self, slot: OwnedSemaphorePermit) -> Option<f64> {
        let waited = self
            .runtime
            .queued_at
            .take()
            .map(|t| t.elapsed().as_secs_f64());
        self.status.state = TaskState::Starting;
        self.runtime.slot = Some(slot);
        waited
    }

    pub(super) fn launched(&mut self, handle: AgentHandle, now: Instant) {
        self.runtime.handle = Some(handle);
        self.runtime.launched_at = Some(now);
        self.status.started_ms = Some(now_ms());
    }

    /// Its agent is gone without a result through no fault of its own (its
    /// Spot capacity was reclaimed): the task waits for a new agent, with a
    /// new slot and a new token (the old one, in the old agent's task
    /// description, is worthless from now on). The lines received stay, and
    /// the new agent numbers its own after them.
    pub(super) fn relaunch(&mut self, token: String) {
        self.runtime = Runtime {
            agent_seq: self.runtime.agent_seq,
            relaunched: true,
            ..Runtime::new(token)
        };
        self.status.state = TaskState::Starting;
        self.status.started_ms = None;
    }

    /// The agent is stopped (or was never started): its slot is free.
    pub(super) fn stopped(&mut self) {
        self.runtime.stopped = true;
        self.runtime.slot = None;
    }
}
