//! One build from launch to cleanup.
//!
//! The supervisor starts an agent per arch as agent slots allow, then
//! watches the build until it ends: a task that waits for a slot longer
//! than BUILD_QUEUE_TIMEOUT, an agent that does not check in within
//! BUILD_TASK_TIMEOUT, does not report within BUILD_RESULT_TIMEOUT of
//! checking in, or exits without reporting fails its task; a failed task
//! stops its siblings (no point paying for an image that will not be
//! published). What each of those means for the build is the build's own
//! business ([`crate::state::Aggregate::evaluate`]); the supervisor makes
//! the platform calls and waits.
//!
//! A slot belongs to a running agent: it is taken just before the launch
//! and given back as soon as that agent is stopped, not when the whole
//! build ends. (Held to the build's end, four two-arch builds under four
//! slots each held one with a finished agent while their second arch waited
//! for one: a deadlock.) Launches and stops run beside the supervision
//! loop, so a slow platform call holds up no deadline and no cancel.
//! Whatever happens, every agent the build started is stopped before the
//! supervisor returns.

mod agents;
mod images;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bakery_protocol::api::BuildState;

use crate::platform::{AgentHandle, Exited};
use crate::state::{Build, Limits};
use crate::App;
use agents::Work;

/// How often deadlines are checked when nothing else wakes the supervisor.
const TICK: Duration = Duration::from_millis(500);

/// Supervises `build` until it ends and its agents are stopped: launches, deadlines, the image
/// check and the index, then cleanup. A panic fails the build instead of leaving it hanging.
pub async fn run(app: Arc<App>, build: Arc<Build>) {
    guarded(Arc::clone(&app), Arc::clone(&build), supervise(app, build)).await;
}

/// Runs a build's supervision so that a bug in it cannot leave the build
/// hanging: a panic fails the build, named, and its agents are stopped.
async fn guarded(app: Arc<App>, build: Arc<Build>, supervision: impl Future<Output = ()> + Send) {
    use futures_util::FutureExt;
    let Err(panic) = std::panic::AssertUnwindSafe(supervision)
        .catch_unwind()
        .await
    else {
        return;
    };
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into());
    tracing::error!(build = %build.id, "the build's supervisor failed: {what}");
    build.update(|b| b.supervisor_failed(&what));
    agents::stop_all(&app, &build).await;
}

/// Takes over a build that a previous run of this controller left
/// unfinished: re-attaches its agents, launches the ones it had not yet
/// started, and supervises it as if nothing happened. A build that was
/// writing its index writes it again (the same digests, so the same index).
pub async fn resume(app: Arc<App>, build: Arc<Build>) {
    let (guard_app, guard_build) = (Arc::clone(&app), Arc::clone(&build));
    let resumed = async move {
        if build.status().state != BuildState::Indexing {
            agents::reattach(&app, &build).await;
        }
        supervise(app, build).await;
    };
    guarded(guard_app, guard_build, resumed).await;
}

/// Launches, watches and stops a build's agents to its end, then writes
/// the index.
async fn supervise(app: Arc<App>, build: Arc<Build>) {
    let index_client = images::prepare_client(&app, &build);
    let mut changed = build.subscribe_state();
    let mut work = Work::default();
    loop {
        let done = evaluate(&app, &build);
        agents::stop_ended(&app, &build, &mut work);
        if done {
            break;
        }
        agents::start_ready(&app, &build, &mut work);
        tokio::select! {
            _ = changed.changed() => {}
            _ = tokio::time::sleep(TICK) => {}
            Some((index, permit)) = agents::next_slot(&mut work.waiting) => {
                agents::got_slot(&app, &build, &mut work, index, permit);
            }
            Some(ended) = work.calls.join_next(), if !work.calls.is_empty() => {
                if let Ok(index) = ended {
                    work.launching.remove(&index);
                    work.stopping.remove(&index);
                }
            }
        }
    }
    work.waiting = None;
    // Launches still in flight may yet produce agents to stop.
    while work.calls.join_next().await.is_some() {}
    // Every arch has pushed: the index needs nothing from the agents, so it
    // is pushed while they exit rather than after; the build is declared
    // done only once both are over, so "succeeded" still means "nothing left
    // running".
    if build.status().state == BuildState::Indexing {
        let ((), ()) = tokio::join!(
            images::write_index_unless_cancelled(&app, &build, index_client),
            agents::stop_all(&app, &build)
        );
    } else {
        agents::stop_all(&app, &build).await;
    }
    finished(&app, &build);
}

/// Applies deadlines, exits and cancellation. Returns true when the build
/// needs no more supervision (it ended, or every arch pushed).
fn evaluate(app: &App, build: &Build) -> bool {
    let slots = |p| agents::slots_of(app, p);
    let diagnose = |p, handle: &AgentHandle| app.platform(p).diagnosis(handle);
    let limits = Limits {
        task_timeout: app.config.build_task_timeout,
        result_timeout: app.config.build_result_timeout,
        queue_timeout: app.config.build_queue_timeout,
        slots: &slots,
        diagnose: &diagnose,
    };
    build.update(|b| b.evaluate(Instant::now(), &limits))
}

/// Metrics and a log line for a build that ended.
fn finished(app: &App, build: &Build) {
    let status = build.status();
    for task in &status.tasks {
        if let (Some(start), Some(end)) = (task.started_ms, task.finished_ms) {
            let outcome = serde_json::to_value(task.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let took = Duration::from_millis(end.saturating_sub(start));
            app.metrics.arch_finished(task.arch, &outcome, took);
        }
    }
    tracing::info!(build = %build.id, state = ?status.state, error = ?status.error, "build finished");
}

/// Records agents that ended by themselves; the supervisor acts on it.
pub async fn watch_exits(app: Arc<App>, mut exits: tokio::sync::mpsc::UnboundedReceiver<Exited>) {
    while let Some(exit) = exits.recv().await {
        if let Some((build, index)) = app.builds.task(&exit.task_id) {
            build.update(|b| b.agent_exited(index, &exit.reason));
        }
    }
}
