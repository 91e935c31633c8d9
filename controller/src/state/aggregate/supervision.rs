//! The transitions the supervisor makes: slots, launches, deadlines,
//! stops, and the end of the build.

use std::collections::HashSet;
use std::time::Instant;

use bakery_protocol::api::{now_ms, BuildState, TaskState};
use bakery_protocol::Platform;
use tokio::sync::OwnedSemaphorePermit;

use super::{Aggregate, Change, Limits};
use crate::platform::{AgentHandle, ExitReason};

/// An agent to stop: its task, handle and platform.
pub struct ToStop {
    /// The task's position in the build.
    pub index: usize,
    /// The platform's handle of its agent.
    pub handle: AgentHandle,
    /// The platform it runs on.
    pub platform: Platform,
}

impl Aggregate {
    /// Moves task `index` to a terminal state, once; the error redacted.
    pub(in crate::state) fn finish_task(
        &mut self,
        index: usize,
        state: TaskState,
        error: Option<String>,
    ) -> bool {
        let error = error.map(|e| self.redactor.redact(&e));
        let finished = self.tasks[index].finish(state, error);
        if finished {
            self.changed(Change::State);
        }
        finished
    }

    /// Ends the build, once; finished builds forget their secrets.
    pub fn finish_build(&mut self, state: BuildState, error: Option<String>) {
        if self.head.state.is_terminal() {
            return;
        }
        self.head.state = state;
        self.head.error = error.map(|e| self.redactor.redact(&e));
        self.head.finished_ms = Some(now_ms());
        self.forget_secrets();
        self.changed(Change::State);
    }

    /// Fails the build with `error`, its tasks left as they are.
    pub fn fail(&mut self, error: String) {
        self.finish_build(BuildState::Failed, Some(error));
    }

    /// A finished build needs no registry password (its index is written),
    /// no build secret and no task token (its agents are refused): neither stays in memory
    /// or in the journal, which keeps finished builds for BUILD_RETENTION.
    /// The redactor keeps its own copy, for lines that arrive meanwhile.
    fn forget_secrets(&mut self) {
        for task in &mut self.tasks {
            task.request.spec.forget_secrets();
            task.runtime.token.clear();
        }
    }

    /// The first task that needs an agent slot, unless the build is over
    /// or cancelled. A task holding a slot without a handle is launching.
    pub fn next_to_launch(&self) -> Option<usize> {
        if self.cancel_requested || self.head.state.is_terminal() {
            return None;
        }
        self.tasks
            .iter()
            .position(|t| t.unlaunched() && t.runtime.slot.is_none())
    }

    /// No slot is free for task `index`: it and every task behind it on
    /// the same platform wait from `now`, each saying so (`why`, by
    /// platform) and each with BUILD_QUEUE_TIMEOUT from now.
    pub fn queue_from(&mut self, index: usize, now: Instant, why: impl Fn(Platform) -> String) {
        let platform = self.tasks[index].platform();
        for i in index..self.tasks.len() {
            let task = &mut self.tasks[i];
            let waits = task.unlaunched() && task.runtime.slot.is_none();
            if waits && task.platform() == platform && task.queue(now) {
                self.log(i, &why(platform));
                self.changed(Change::State);
            }
        }
    }

    /// Task `index` got its slot and launches. False (the slot goes back)
    /// when it is over or cancelled meanwhile.
    pub fn take_slot(&mut self, index: usize, slot: OwnedSemaphorePermit) -> bool {
        if self.tasks[index].is_terminal() || self.cancel_requested {
            return false;
        }
        // A task read back from the journal knows only its token's hash:
        // its agent gets a new token.
        if self.tasks[index].runtime.token.plain().is_none() {
            self.tasks[index].runtime.token =
                super::super::TaskToken::new(crate::state::random_token());
            self.redactor = super::redactor_for(&self.tasks);
        }
        if let Some(waited) = self.tasks[index].take_slot(slot) {
            self.log(index, &format!("got an agent slot after {waited:.1}s"));
        }
        self.changed(Change::State);
        true
    }

    /// A slot for an agent adopted after a restart (none if the cap was
    /// lowered meanwhile: it runs over it rather than being stopped).
    pub fn adopt_slot(&mut self, index: usize, slot: Option<OwnedSemaphorePermit>) {
        self.tasks[index].runtime.slot = slot;
    }

    /// The agent of task `index` was launched as `handle`
    /// at `now`: its start deadline runs from here.
    pub fn launched(&mut self, index: usize, handle: AgentHandle, now: Instant) {
        if handle.as_str() != self.tasks[index].id() {
            self.log(index, &format!("agent launched: {handle}"));
        }
        self.tasks[index].launched(handle, now);
        self.changed(Change::State);
    }

    /// The agent of task `index` could not be launched: the task fails with `error`.
    pub fn launch_failed(&mut self, index: usize, error: String) {
        self.finish_task(index, TaskState::Failed, Some(error));
    }

    /// The platform reports task `index`'s agent gone (or not found again):
    /// the task fails at the next evaluation. An agent whose capacity was
    /// reclaimed (a Spot interruption, a Kubernetes eviction or node drain)
    /// before it reported is started again instead, once (on demand, if the
    /// first ran on Spot): the build goes on as if the first agent had been
    /// slow to start.
    pub fn agent_exited(&mut self, index: usize, reason: &ExitReason) {
        if self.tasks[index].is_terminal() {
            return;
        }
        if matches!(reason, ExitReason::Reclaimed(_)) && self.may_relaunch(index) {
            let arch = self.tasks[index].arch();
            let (whose, how) = if self.tasks[index].wants_spot() {
                ("Spot took", " on demand")
            } else {
                ("the platform took", "")
            };
            self.log(
                index,
                &format!("{reason}: {whose} the {arch} agent's capacity back before it reported; starting the {arch} agent again{how} (once)"),
            );
            self.tasks[index].relaunch(crate::state::random_token());
            self.redactor = super::redactor_for(&self.tasks);
        } else {
            self.tasks[index].runtime.exited = Some(reason.to_string());
        }
        self.changed(Change::State);
    }

    /// Whether task `index` may get a second agent: its first was launched
    /// and is not being stopped, it has not reported, it has had no second,
    /// and the build goes on.
    fn may_relaunch(&self, index: usize) -> bool {
        let rt = &self.tasks[index].runtime;
        rt.handle.is_some()
            && !rt.relaunched
            && !rt.stopped
            && !rt.result_saving
            && !self.cancel_requested
            && !self.head.state.is_terminal()
    }

    /// The agents to stop now: of ended tasks not stopped yet and not
    /// `busy` (being launched or stopped). Ended tasks that never launched
    /// give their slot back at once. Nothing while a result is being saved:
    /// its agent waits to hear it is.
    pub fn to_stop(&mut self, busy: &HashSet<usize>) -> Vec<ToStop> {
        if self.saving_a_result() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (index, task) in self.tasks.iter_mut().enumerate() {
            if !task.is_terminal() || task.runtime.stopped || busy.contains(&index) {
                continue;
            }
            match task.runtime.handle.clone() {
                None => task.stopped(),
                Some(handle) => out.push(ToStop {
                    index,
                    handle,
                    platform: task.platform(),
                }),
            }
        }
        out
    }

    /// Every agent not stopped yet, ended or not.
    pub fn running_agents(&self) -> Vec<ToStop> {
        self.tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.runtime.stopped)
            .filter_map(|(index, t)| {
                Some(ToStop {
                    index,
                    handle: t.runtime.handle.clone()?,
                    platform: t.platform(),
                })
            })
            .collect()
    }

    /// Task `index`'s agent is stopped: its slot goes to a queued task.
    pub fn stopped(&mut self, index: usize) {
        self.tasks[index].stopped();
    }

    /// Every agent is stopped.
    pub fn all_stopped(&mut self) {
        self.tasks.iter_mut().for_each(super::Task::stopped);
    }

    /// Applies deadlines, exits and cancellation. Returns true when the
    /// build needs no more supervision (it ended, or every arch pushed).
    /// Nothing happens while a result is being saved: it is acted on once
    /// it is.
    pub fn evaluate(&mut self, now: Instant, limits: &Limits<'_>) -> bool {
        if self.saving_a_result() {
            return false;
        }
        for i in 0..self.tasks.len() {
            if self.tasks[i].is_terminal() {
                continue;
            }
            if let Some(error) = self.deadline_failure(i, now, limits) {
                self.log(i, &format!("error: {error}"));
                self.finish_task(i, TaskState::Failed, Some(error));
            }
        }
        if self.cancel_requested {
            for i in 0..self.tasks.len() {
                if self.finish_task(i, TaskState::Cancelled, Some("cancelled".into())) {
                    self.log(i, "cancelled");
                }
            }
            self.finish_build(BuildState::Cancelled, Some("cancelled by request".into()));
        }
        self.fail_on_first_failure();
        let all_succeeded = self.tasks.iter().all(|t| t.state() == TaskState::Succeeded);
        if all_succeeded && self.head.state == BuildState::Running {
            let pushed = self.tasks.iter().any(|t| t.status.digest.is_some());
            if self.destination.is_some() || pushed {
                // The pushed images are checked (and the index written).
                self.head.state = BuildState::Indexing;
                self.changed(Change::State);
            } else {
                self.finish_build(BuildState::Succeeded, None);
            }
        }
        self.head.state != BuildState::Running
    }

    /// One arch failed: the others are stopped and the build fails, named
    /// after the first.
    fn fail_on_first_failure(&mut self) {
        let Some(failed) = self.tasks.iter().find(|t| t.state() == TaskState::Failed) else {
            return;
        };
        let error = format!(
            "{} build failed: {}",
            failed.arch(),
            failed.status.error.clone().unwrap_or_default()
        );
        for i in 0..self.tasks.len() {
            if !self.tasks[i].is_terminal() {
                let arch = self.tasks[i].arch();
                self.log(
                    i,
                    &format!("stopping the {arch} agent: another arch failed"),
                );
                self.finish_task(
                    i,
                    TaskState::Cancelled,
                    Some("stopped: another arch failed".into()),
                );
            }
        }
        self.finish_build(BuildState::Failed, Some(error));
    }

    /// Why task `i` fails now, if a deadline passed or its agent is gone.
    fn deadline_failure(&self, i: usize, now: Instant, limits: &Limits<'_>) -> Option<String> {
        let task = &self.tasks[i];
        let rt = &task.runtime;
        let took = |d: std::time::Duration| humantime::format_duration(d).to_string();
        if let Some(reason) = &rt.exited {
            return Some(format!("{reason} before reporting a result"));
        }
        let past = |since: Option<Instant>, limit| since.is_some_and(|t| now - t > limit);
        if task.state() == TaskState::Queued && past(rt.queued_at, limits.queue_timeout) {
            return Some(format!(
                "no agent slot on {} within BUILD_QUEUE_TIMEOUT ({}): all {} (MAX_CONCURRENT_AGENTS) were busy the whole time; raise MAX_CONCURRENT_AGENTS or BUILD_QUEUE_TIMEOUT, or build less at once",
                task.platform(),
                took(limits.queue_timeout),
                (limits.slots)(task.platform())
            ));
        }
        if task.state() == TaskState::Starting && past(rt.launched_at, limits.task_timeout) {
            let last = rt
                .handle
                .as_ref()
                .and_then(|h| (limits.diagnose)(task.platform(), h));
            let timeout = took(limits.task_timeout);
            return Some(match last {
                Some(why) => format!(
                    "the agent did not start within BUILD_TASK_TIMEOUT ({timeout}): {why}"
                ),
                None => format!(
                    "the agent did not start within BUILD_TASK_TIMEOUT ({timeout}); check that the platform can schedule it and pull the agent image"
                ),
            });
        }
        if past(rt.checked_in_at, limits.result_timeout) {
            return Some(format!(
                "no result within BUILD_RESULT_TIMEOUT ({}) of the agent starting",
                took(limits.result_timeout)
            ));
        }
        None
    }

    /// The supervisor failed (a bug): every task and the build fail, named.
    pub fn supervisor_failed(&mut self, what: &str) {
        for i in 0..self.tasks.len() {
            self.finish_task(
                i,
                TaskState::Failed,
                Some("stopped: the controller failed".into()),
            );
        }
        self.finish_build(
            BuildState::Failed,
            Some(format!(
                "the controller failed while supervising this build ({what}); please report it"
            )),
        );
    }

    /// Arches whose image is of another platform fail after all, and so
    /// does the build; no index is written.
    pub fn wrong_platform(&mut self, wrong: &[(usize, String)]) {
        for (index, error) in wrong {
            let error = self.redactor.redact(error);
            let arch = self.tasks[*index].arch();
            let task = &mut self.tasks[*index];
            task.status.state = TaskState::Failed;
            task.status.error = Some(error.clone());
            self.log(
                *index,
                &format!("error: {arch}: {error}; the multi-arch index was not written"),
            );
        }
        if let Some((index, error)) = wrong.first() {
            let arch = self.tasks[*index].arch();
            self.finish_build(
                BuildState::Failed,
                Some(format!("{arch} build failed: {error}")),
            );
        }
    }

    /// The index is written: the build succeeded.
    pub fn index_written(&mut self, digest: &str) {
        self.head.index_digest = Some(digest.to_string());
        self.finish_build(BuildState::Succeeded, None);
        let destination = self.destination.clone().unwrap_or_default();
        self.log(0, &format!("pushed {destination}@{digest}"));
        for tag in self.tags.clone() {
            self.log(0, &format!("tagged {tag}@{digest}"));
        }
    }

    /// The images were checked (or the index failed): the build ends.
    pub fn index_failed(&mut self, error: String) {
        self.log(0, &format!("error: {error}"));
        self.finish_build(BuildState::Failed, Some(error));
    }

    /// A cancel heard while the index was being written.
    pub fn cancelled_while_indexing(&mut self) {
        let destination = self.destination.clone().unwrap_or_default();
        self.finish_build(
            BuildState::Cancelled,
            Some(format!("cancelled while the index was being written: {destination} may or may not point at the new images")),
        );
        self.log(0, "cancelled while writing the multi-arch index");
    }
}
