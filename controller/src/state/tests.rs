//! The build state machine, driven directly: every transition the API
//! handlers and the supervisor make, without a process, a socket or a
//! clock to wait for.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bakery_protocol::api::{
    AgentLine, AgentResult, BuildState, CreateBuild, TaskRequest, TaskState,
};
use bakery_protocol::spec::{BuildSpec, Credential, Secret};
use bakery_protocol::{Arch, Platform};
use tokio::sync::Semaphore;

use super::aggregate::Change;
use super::{Aggregate, AlreadyCheckedIn, Build, Limits};
use crate::platform::{AgentHandle, ExitReason};

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn spec(arch: Arch) -> BuildSpec {
    BuildSpec {
        credentials: vec![Credential {
            registry: "r.example".into(),
            username: "u".into(),
            password: Secret::new("hunter2-password"),
        }],
        ..BuildSpec::new("Dockerfile", arch)
    }
}

fn request(arches: &[Arch], push: bool) -> CreateBuild {
    CreateBuild {
        service: "svc".into(),
        destination: push.then(|| "r.example/app:1".into()),
        tags: vec![],
        tasks: arches
            .iter()
            .map(|a| TaskRequest {
                arch: *a,
                push: push.then(|| format!("r.example/app:1_{a}")),
                context_key: format!("contexts/sha256-{}.tar.gz", "0".repeat(64))
                    .parse()
                    .unwrap(),
                context_bytes: None,
                spec: spec(*a),
            })
            .collect(),
        provenance: None,
        index_annotations: Default::default(),
        descriptor_annotations: Default::default(),
    }
}

fn build(arches: &[Arch], push: bool) -> Aggregate {
    let mut b = Aggregate::new("b1".into(), request(arches, push), Platform::Local, 1 << 20);
    b.take_change();
    b
}

fn limits() -> Limits<'static> {
    Limits {
        task_timeout: Duration::from_secs(60),
        result_timeout: Duration::from_secs(60),
        queue_timeout: Duration::from_secs(60),
        slots: &|_| 1,
        diagnose: &|_, _| Some("image pull failed".into()),
    }
}

fn slot() -> tokio::sync::OwnedSemaphorePermit {
    Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap()
}

/// Launched and checked in: the task is running.
fn running(b: &mut Aggregate, index: usize, now: Instant) {
    assert!(b.take_slot(index, slot()));
    b.launched(index, AgentHandle::new(format!("pid {index}")), now);
    b.check_in(index, now).unwrap();
}

fn log_text(b: &Aggregate) -> String {
    b.events(0, b.log_len())
        .flat_map(|e| [e.line, "\n"])
        .collect()
}

#[test]
fn a_build_runs_pushes_and_asks_for_its_index() {
    let now = Instant::now();
    let mut b = build(&[Arch::Amd64, Arch::Arm64], true);
    assert_eq!(b.next_to_launch(), Some(0));
    running(&mut b, 0, now);
    assert_eq!(b.next_to_launch(), Some(1));
    running(&mut b, 1, now);
    assert_eq!(b.next_to_launch(), None);
    for i in 0..2 {
        let r = b.record_result(
            i,
            AgentResult::Succeeded {
                digest: Some(DIGEST.into()),
                bases: vec!["alpine:3".into()],
            },
        );
        assert!(r.refused.is_none());
        assert!(!b.evaluate(now, &limits()), "not acted on while saving");
        b.result_saved(i);
    }
    assert!(b.evaluate(now, &limits()));
    assert_eq!(b.state(), BuildState::Indexing);
    assert_eq!(b.pushed().len(), 2);
    b.index_written(DIGEST);
    assert_eq!(b.state(), BuildState::Succeeded);
    assert_eq!(b.status().index_digest.as_deref(), Some(DIGEST));
    let log = log_text(&b);
    assert!(log.contains("pushed r.example/app:1@sha256:"), "{log}");
}

#[test]
fn a_build_without_a_push_succeeds_without_an_index() {
    let now = Instant::now();
    let mut b = build(&[Arch::Amd64], false);
    running(&mut b, 0, now);
    b.record_result(
        0,
        AgentResult::Succeeded {
            // A digest for a task that pushes nothing is not kept.
            digest: Some(DIGEST.into()),
            bases: vec![],
        },
    );
    b.result_saved(0);
    assert!(b.evaluate(now, &limits()));
    assert_eq!(b.state(), BuildState::Succeeded);
    assert_eq!(b.status().tasks[0].digest, None);
}

#[test]
fn one_failed_arch_stops_the_others_and_names_itself() {
    let now = Instant::now();
    let mut b = build(&[Arch::Amd64, Arch::Arm64], true);
    running(&mut b, 0, now);
    running(&mut b, 1, now);
    b.record_result(
        1,
        AgentResult::Failed {
            error: "RUN make\nfailed".into(),
        },
    );
    b.result_saved(1);
    assert!(b.evaluate(now, &limits()));
    let status = b.status();
    assert_eq!(status.state, BuildState::Failed);
    assert_eq!(
        status.error.as_deref(),
        Some("arm64 build failed: RUN make failed")
    );
    assert_eq!(status.tasks[0].state, TaskState::Cancelled);
    let stop = b.to_stop(&Default::default());
    assert_eq!(stop.len(), 2, "both agents are stopped");
}

#[test]
fn a_second_check_in_is_refused_and_an_unsaved_one_is_undone() {
    let now = Instant::now();
    let mut b = build(&[Arch::Amd64], true);
    assert!(b.take_slot(0, slot()));
    b.launched(0, AgentHandle::new("pid 1"), now);
    b.check_in(0, now).unwrap();
    assert_eq!(b.check_in(0, now), Err(AlreadyCheckedIn));
    b.undo_check_in(0);
    assert_eq!(b.task(0).state(), TaskState::Starting);
    b.check_in(0, now).unwrap();
    assert_eq!(b.take_change(), Change::State);
}

#[test]
fn a_result_that_could_not_be_saved_is_undone_for_the_retry() {
    let now = Instant::now();
    let mut b = build(&[Arch::Amd64], true);
    running(&mut b, 0, now);
    b.record_result(
        0,
        AgentResult::Succeeded {
            digest: Some(DIGEST.into()),
            bases: vec![],
        },
    );
    assert!(b.saving_a_result());
    b.undo_result(0);
    assert!(!b.saving_a_result());
    assert_eq!(b.task(0).state(), TaskState::Running);
    assert_eq!(b.status().tasks[0].digest, None);
}

#[test]
fn a_bad_digest_fails_the_task_and_is_refused() {
    let now = Instant::now();
    let mut b = build(&[Arch::Amd64], true);
    running(&mut b, 0, now);
    let r = b.record_result(
        0,
        AgentResult::Succeeded {
            digest: Some("sha256:zz\nforged".into()),
            bases: vec![],
        },
    );
    assert!(r.refused.is_some());
    assert_eq!(b.task(0).state(), TaskState::Failed);
    let (none, _) = (
        b.record_result(
            0,
            AgentResult::Succeeded {
                digest: None,
                bases: vec![],
            },
        ),
        (),
    );
    assert!(none.refused.is_none());
    assert_eq!(
        b.task(0).state(),
        TaskState::Failed,
        "a finished task stays finished"
    );
}

#[test]
fn deadlines_fail_tasks_with_the_reason() {
    let start = Instant::now();
    let later = start + Duration::from_secs(61);
    // Queued too long.
    let mut b = build(&[Arch::Amd64, Arch::Arm64], true);
    b.queue_from(0, start, |p| format!("queued on {p}"));
    assert!(b.tasks().iter().all(|t| t.state() == TaskState::Queued));
    assert!(b.evaluate(later, &limits()));
    let error = b.status().error.unwrap();
    assert!(
        error.contains("BUILD_QUEUE_TIMEOUT (1m 1s)") || error.contains("BUILD_QUEUE_TIMEOUT"),
        "{error}"
    );
    // Launched, never checked in: the platform's word is in the error.
    let mut b = build(&[Arch::Amd64], true);
    assert!(b.take_slot(0, slot()));
    b.launched(0, AgentHandle::new("task/1"), start);
    assert!(b.evaluate(later, &limits()));
    let error = b.status().tasks[0].error.clone().unwrap();
    assert!(
        error.contains("BUILD_TASK_TIMEOUT") && error.contains("image pull failed"),
        "{error}"
    );
    // Checked in, no result.
    let mut b = build(&[Arch::Amd64], true);
    running(&mut b, 0, start);
    assert!(!b.evaluate(start, &limits()));
    assert!(b.evaluate(later, &limits()));
    assert!(b.status().error.unwrap().contains("BUILD_RESULT_TIMEOUT"));
    // The agent exited.
    let mut b = build(&[Arch::Amd64], true);
    running(&mut b, 0, start);
    b.agent_exited(0, &ExitReason::Signal(9));
    assert!(b.evaluate(start, &limits()));
    assert!(b
        .status()
        .error
        .unwrap()
        .contains("killed by signal 9 before reporting a result"));
}

/// A Spot interruption before the result: the task waits for a second
/// agent, on demand, with a new token, its lines kept and numbered on; a
/// second interruption fails it as any other exit does.
#[test]
fn an_agent_reclaimed_by_spot_is_started_again_on_demand_once() {
    let now = Instant::now();
    let mut spot = request(&[Arch::Amd64], true);
    spot.tasks[0].spec.spot = true;
    let mut b = Aggregate::new("b1".into(), spot, Platform::Local, 1 << 20);
    running(&mut b, 0, now);
    let line = |seq| AgentLine {
        seq,
        line: format!("step {seq}"),
    };
    assert_eq!(b.append_agent_lines(0, &[line(1), line(2)]), Some(2));
    let (old_token, task) = (b.task(0).token().to_string(), b.task(0));
    assert!(task.wants_spot());
    let reclaimed =
        ExitReason::Reclaimed("ECS task stopped: Your Spot Task was interrupted.".into());
    b.agent_exited(0, &reclaimed);
    assert!(!b.evaluate(now, &limits()), "the build goes on");
    let task = b.task(0);
    assert_eq!(task.state(), TaskState::Starting);
    assert!(task.handle().is_none() && !task.wants_spot());
    assert_ne!(
        task.token(),
        old_token,
        "the old agent's token is worthless"
    );
    assert!(!b.agent_may_speak(0, &old_token));
    assert!(b.record().tasks[0].relaunched, "a restart knows");
    assert_eq!(b.next_to_launch(), Some(0), "it needs a slot again");
    assert_eq!(b.task(0).lines_received(), 2);
    assert!(log_text(&b).contains("starting the amd64 agent again on demand"));
    // The second agent: its numbering continues, its lines are taken.
    running(&mut b, 0, now);
    assert_eq!(b.append_agent_lines(0, &[line(3)]), Some(1));
    b.agent_exited(0, &reclaimed);
    assert!(b.evaluate(now, &limits()), "no third agent");
    let error = b.status().tasks[0].error.clone().unwrap();
    assert!(
        error.contains("Spot Task was interrupted. before reporting"),
        "{error}"
    );
}

/// A Kubernetes eviction of an on-demand agent: started again, once, and
/// the log does not speak of Spot.
#[test]
fn an_evicted_agent_not_on_spot_is_started_again_once() {
    let now = Instant::now();
    let mut b = Aggregate::new(
        "b1".into(),
        request(&[Arch::Amd64], true),
        Platform::Local,
        1 << 20,
    );
    running(&mut b, 0, now);
    assert!(!b.task(0).is_relaunch());
    b.agent_exited(0, &ExitReason::Reclaimed("pod failed: Evicted".into()));
    assert!(!b.evaluate(now, &limits()), "the build goes on");
    assert!(b.task(0).is_relaunch());
    let log = log_text(&b);
    assert!(
        log.contains("pod failed: Evicted: the platform took the amd64 agent's capacity back before it reported; starting the amd64 agent again (once)"),
        "{log}"
    );
    running(&mut b, 0, now);
    b.agent_exited(0, &ExitReason::Reclaimed("pod failed: Evicted".into()));
    assert!(b.evaluate(now, &limits()), "no third agent");
}

#[test]
fn a_cancel_is_saved_before_it_is_acted_on() {
    let now = Instant::now();
    let mut b = build(&[Arch::Amd64], true);
    running(&mut b, 0, now);
    assert!(b.request_cancel());
    assert!(b.record().cancel_requested, "the record says so first");
    assert!(
        !b.evaluate(now, &limits()),
        "not acted on before it is saved"
    );
    b.cancel_saved(false);
    assert!(
        !b.evaluate(now, &limits()),
        "an unsaved cancel is as if never asked"
    );
    assert!(b.request_cancel());
    b.cancel_saved(true);
    assert!(b.evaluate(now, &limits()));
    assert_eq!(b.state(), BuildState::Cancelled);
    assert!(!b.request_cancel(), "nothing left to cancel");
}

#[test]
fn a_finished_build_forgets_passwords_and_tokens_but_still_redacts_them() {
    let now = Instant::now();
    let mut b = build(&[Arch::Amd64], true);
    running(&mut b, 0, now);
    let token = b.task(0).token().to_string();
    assert!(b.agent_may_speak(0, &token));
    b.fail("stopped".into());
    assert!(!b.agent_may_speak(0, &token));
    let record = serde_json::to_string(&b.record()).unwrap();
    assert!(!record.contains("hunter2-password") && !record.contains(&token));
    b.log(0, "echo hunter2-password");
    assert!(!log_text(&b).contains("hunter2-password"));
}

#[test]
fn slots_queue_in_order_and_are_given_back_on_stop() {
    let now = Instant::now();
    let mut b = build(&[Arch::Amd64, Arch::Arm64], true);
    b.queue_from(0, now, |_| "queued".into());
    assert!(b.take_slot(0, slot()));
    assert!(log_text(&b).contains("got an agent slot after"));
    assert_eq!(
        b.next_to_launch(),
        Some(1),
        "the launching task is not offered again"
    );
    b.launch_failed(0, "no capacity".into());
    assert!(b.evaluate(now, &limits()));
    // The never-launched one gives its slot back at once; nothing to stop.
    assert!(b.to_stop(&Default::default()).is_empty());
    assert!(b.running_agents().is_empty());
}

#[test]
fn a_cancelled_build_gives_a_granted_slot_back() {
    let mut b = build(&[Arch::Amd64], true);
    b.cancel();
    assert_eq!(b.next_to_launch(), None);
    assert!(!b.take_slot(0, slot()));
}

#[test]
fn agent_lines_are_deduplicated_capped_and_refused_once_over() {
    let now = Instant::now();
    let mut b = Aggregate::new(
        "b1".into(),
        request(&[Arch::Amd64], true),
        Platform::Local,
        100,
    );
    running(&mut b, 0, now);
    let line = |seq, text: &str| AgentLine {
        seq,
        line: text.into(),
    };
    assert_eq!(
        b.append_agent_lines(0, &[line(1, "one"), line(2, "two")]),
        Some(2)
    );
    assert_eq!(
        b.append_agent_lines(0, &[line(2, "two"), line(3, "three")]),
        Some(1)
    );
    assert_eq!(b.append_agent_lines(0, &[line(4, &"x".repeat(100))]), None);
    assert_eq!(b.task(0).state(), TaskState::Failed);
    assert_eq!(b.append_agent_lines(0, &[line(5, "late")]), None);
}

#[test]
fn the_index_check_fails_wrong_arches_by_name() {
    let now = Instant::now();
    let mut b = build(&[Arch::Amd64, Arch::Arm64], true);
    for i in 0..2 {
        running(&mut b, i, now);
        b.record_result(
            i,
            AgentResult::Succeeded {
                digest: Some(DIGEST.into()),
                bases: vec![],
            },
        );
        b.result_saved(i);
    }
    assert!(b.evaluate(now, &limits()));
    b.wrong_platform(&[(1, "the image is linux/amd64".into())]);
    let status = b.status();
    assert_eq!(status.state, BuildState::Failed);
    assert_eq!(status.tasks[1].state, TaskState::Failed);
    assert!(status.error.unwrap().starts_with("arm64 build failed"));
}

#[test]
fn a_supervisor_failure_fails_everything_named() {
    let mut b = build(&[Arch::Amd64], true);
    b.supervisor_failed("index out of bounds");
    let status = b.status();
    assert_eq!(status.state, BuildState::Failed);
    assert!(status.error.unwrap().contains("index out of bounds"));
    assert_eq!(status.tasks[0].state, TaskState::Failed);
}

#[test]
fn a_restored_build_is_the_build_that_was_saved() {
    let now = Instant::now();
    let mut b = build(&[Arch::Amd64, Arch::Arm64], true);
    running(&mut b, 0, now);
    b.log(0, "hello");
    let restored = Aggregate::restore(
        crate::journal::Restored {
            record: b.record(),
            log_len: b.log_len(),
            log_bytes: 5,
            tail: b
                .events(0, b.log_len())
                .map(|e| bakery_protocol::api::LogEvent {
                    seq: e.seq,
                    task: e.task.into(),
                    arch: e.arch,
                    line: e.line.into(),
                    ms: e.ms,
                })
                .collect(),
            agent_seqs: vec![0, 0],
        },
        1 << 20,
    );
    assert_eq!(restored.status(), b.status());
    assert_eq!(restored.request(), b.request());
    assert_eq!(
        restored.task(0).handle().map(AgentHandle::as_str),
        Some("pid 0")
    );
    assert_eq!(log_text(&restored), log_text(&b));
}

/// A transition wakes the supervisor and followers by itself: nobody has
/// to remember to.
#[tokio::test]
async fn updates_wake_the_supervisor_only_for_state() {
    let build = Build::new(
        "b1".into(),
        request(&[Arch::Amd64], true),
        Platform::Local,
        None,
        1 << 20,
    );
    let mut state = build.subscribe_state();
    let mut any = build.subscribe();
    state.mark_unchanged();
    any.mark_unchanged();
    build.log(0, "a line");
    assert!(any.has_changed().unwrap());
    assert!(
        !state.has_changed().unwrap(),
        "a line is not a state change"
    );
    build.update(|b| b.cancel());
    assert!(state.has_changed().unwrap());
}
