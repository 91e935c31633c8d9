//! Agent slots, launches and stops, run beside the supervision loop.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bakery_protocol::api::agent_env;
use bakery_protocol::Platform;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;

use crate::platform::{AgentHandle, ExitReason, Launch, Operation};
use crate::state::{Build, ToStop};
use crate::App;

/// Longest a platform may take to stop an agent before the build moves on
/// (with a warning in its log): a hung platform API cannot hold a build.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

type SlotWait =
    Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, tokio::sync::AcquireError>> + Send>>;

/// What the supervisor has under way besides watching.
#[derive(Default)]
pub(super) struct Work {
    /// Launches and stops in flight, each ending with its task's index.
    pub calls: JoinSet<usize>,
    pub launching: HashSet<usize>,
    pub stopping: HashSet<usize>,
    /// The task at the head of this build's queue, waiting for a slot (one
    /// at a time, in arch order: the semaphore serves waiters first come,
    /// first served, across builds).
    pub waiting: Option<(usize, SlotWait)>,
}

/// The slot the head of the queue waits for, once it is free.
pub(super) async fn next_slot(
    waiting: &mut Option<(usize, SlotWait)>,
) -> Option<(usize, OwnedSemaphorePermit)> {
    let (index, wait) = waiting.as_mut()?;
    let permit = wait.await.ok()?;
    let index = *index;
    *waiting = None;
    Some((index, permit))
}

/// How many slots a platform has in all.
pub(super) fn slots_of(app: &App, platform: Platform) -> usize {
    app.config.agent_slots(platform)
}

/// Takes slots for the tasks that wait for one, in order, and launches
/// each task that has one. A task that finds no free slot is queued (said
/// in its log and its state) and the supervisor waits for the slot.
pub(super) fn start_ready(app: &Arc<App>, build: &Arc<Build>, work: &mut Work) {
    if let Some((i, _)) = &work.waiting {
        let read = build.read();
        if read.task(*i).is_terminal() || read.next_to_launch().is_none() {
            work.waiting = None;
        } else {
            return; // the head of the queue is still waiting
        }
    }
    loop {
        // Read apart from the `let`: a guard in a `while let` scrutinee
        // would be held through the body (a deadlock on the next read).
        let next = build.read().next_to_launch();
        let Some(i) = next else { return };
        let platform = build.read().task(i).platform();
        let slots = Arc::clone(&app.slots[&platform]);
        match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => {
                if !got_slot(app, build, work, i, permit) {
                    return;
                }
            }
            Err(_) => {
                let why = |platform| {
                    format!(
                        "queued: every agent slot on {platform} is taken (MAX_CONCURRENT_AGENTS={}); waiting up to BUILD_QUEUE_TIMEOUT ({}) for one",
                        slots_of(app, platform),
                        humantime::format_duration(app.config.build_queue_timeout)
                    )
                };
                build.update(|b| b.queue_from(i, Instant::now(), why));
                work.waiting = Some((i, Box::pin(slots.acquire_owned())));
                return;
            }
        }
    }
}

/// A task has its slot: launch its agent beside the supervision loop.
/// False when the task no longer launches (the slot goes back).
pub(super) fn got_slot(
    app: &Arc<App>,
    build: &Arc<Build>,
    work: &mut Work,
    index: usize,
    permit: OwnedSemaphorePermit,
) -> bool {
    if !build.update(|b| b.take_slot(index, permit)) {
        return false;
    }
    work.launching.insert(index);
    let (app, build) = (Arc::clone(app), Arc::clone(build));
    work.calls.spawn(async move {
        launch_one(&app, &build, index).await;
        index
    });
    true
}

async fn launch_one(app: &App, build: &Build, index: usize) {
    let launch = {
        let read = build.read();
        let task = read.task(index);
        let spec = &task.request().spec;
        Launch {
            build_id: build.id.clone(),
            task_id: task.id().to_string(),
            arch: task.arch(),
            cpu: spec.cpu.unwrap_or(app.config.default_build_cpu),
            memory: spec.memory.unwrap_or(app.config.default_build_memory),
            disk: spec.disk.or(app.config.default_build_disk),
            spot: task.wants_spot(),
            relaunch: task.is_relaunch(),
            env: agent_environment(app, task),
        }
    };
    let platform = app.platform(build.read().task(index).platform());
    let arch = launch.arch;
    build.log(
        index,
        &format!("starting the {arch} agent on {}", platform.name()),
    );
    // A platform API that hangs must not hold the task forever: the launch
    // is part of the time the agent has to start.
    let limit = app.config.build_task_timeout;
    let result = match tokio::time::timeout(limit, platform.launch(launch)).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "could not start the agent: the platform did not answer within BUILD_TASK_TIMEOUT ({})",
            humantime::format_duration(limit)
        )),
    };
    match result {
        Ok(handle) => build.update(|b| b.launched(index, handle, Instant::now())),
        Err(e) => {
            app.metrics
                .platform_error(platform.name(), Operation::Launch);
            build.update(|b| b.launch_failed(index, e));
        }
    }
}

/// What a task's agent is told: where the controller is, who it is, its
/// token and deadline, and (for an agent that takes over from a reclaimed
/// one) where its log numbering continues.
fn agent_environment(app: &App, task: &crate::state::Task) -> BTreeMap<String, String> {
    let deadline = app.config.build_task_timeout + app.config.build_result_timeout;
    let mut env = BTreeMap::from([
        (
            agent_env::CONTROLLER_URL.to_string(),
            app.agent_url_for(task.platform()).to_string(),
        ),
        (agent_env::TASK_ID.to_string(), task.id().to_string()),
        (agent_env::TASK_TOKEN.to_string(), task.token().to_string()),
        (
            agent_env::DEADLINE.to_string(),
            deadline.as_secs().to_string(),
        ),
    ]);
    if let Some(ca) = &app.agent_ca {
        env.insert(agent_env::CONTROLLER_CA.to_string(), ca.clone());
    }
    if task.lines_received() > 0 {
        env.insert(
            agent_env::FIRST_SEQ.to_string(),
            task.lines_received().to_string(),
        );
    }
    env
}

/// Follows again the agents a previous run of this controller started.
pub(super) async fn reattach(app: &App, build: &Build) {
    let launched: Vec<(usize, String, AgentHandle, Platform, bool)> = build
        .read()
        .tasks()
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let handle = t.handle()?.clone();
            Some((i, t.id().to_string(), handle, t.platform(), t.is_terminal()))
        })
        .collect();
    for (index, task_id, handle, platform, ended) in launched {
        // A finished task's agent is adopted only to be stopped.
        if !ended {
            let slot = Arc::clone(&app.slots[&platform]).try_acquire_owned().ok();
            build.update(|b| b.adopt_slot(index, slot));
        }
        match app.platform(platform).adopt(&task_id, &handle).await {
            Ok(()) if !ended => build.log(
                index,
                &format!("the controller restarted: following the agent {handle} again"),
            ),
            Ok(()) => {}
            Err(e) => {
                app.metrics
                    .platform_error(app.platform(platform).name(), Operation::Adopt);
                let reason =
                    format!("the controller restarted and cannot find the agent again ({e})");
                build.update(|b| b.agent_exited(index, &ExitReason::Platform(reason)));
            }
        }
    }
}

/// Stops the agent of every task that has ended, beside the loop, and
/// gives its slot back once it is stopped. A task that never launched
/// gives its slot (if it had one) back at once.
pub(super) fn stop_ended(app: &Arc<App>, build: &Arc<Build>, work: &mut Work) {
    let busy: HashSet<usize> = work.launching.union(&work.stopping).copied().collect();
    for agent in build.update(|b| b.to_stop(&busy)) {
        work.stopping.insert(agent.index);
        let (app, build) = (Arc::clone(app), Arc::clone(build));
        work.calls.spawn(async move {
            stop_one(&app, &build, &agent).await;
            agent.index
        });
    }
}

async fn stop_one(app: &App, build: &Build, agent: &ToStop) {
    let platform = app.platform(agent.platform);
    let handle = &agent.handle;
    let stopped = match tokio::time::timeout(STOP_TIMEOUT, platform.stop(handle)).await {
        Ok(stopped) => stopped.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "could not stop the agent {handle}: the platform did not answer within {}s",
            STOP_TIMEOUT.as_secs()
        )),
    };
    if let Err(e) = stopped {
        app.metrics.platform_error(platform.name(), Operation::Stop);
        build.log(agent.index, &format!("warning: {e}"));
    }
    build.update(|b| b.stopped(agent.index));
}

/// Stops every agent of this build that is not stopped yet; failures are
/// logged, not fatal.
pub(super) async fn stop_all(app: &App, build: &Build) {
    let agents = build.read().running_agents();
    let stops = agents.iter().map(|agent| stop_one(app, build, agent));
    futures_util::future::join_all(stops).await;
    build.update(|b| b.all_stopped());
}
