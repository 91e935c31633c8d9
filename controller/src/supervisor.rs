//! One build from launch to cleanup.
//!
//! The supervisor starts an agent per arch, then watches the build until it
//! ends: an agent that does not check in within BUILD_TASK_TIMEOUT, does not
//! report within BUILD_RESULT_TIMEOUT of checking in, or exits without
//! reporting fails its task; a failed task stops its siblings (no point
//! paying for an image that will not be published). Whatever happens, every
//! agent it started is stopped before it returns.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bakery_core::api::{agent_env, now_ms, BuildState, TaskState};

use crate::platform::{Exited, Launch};
use crate::state::Build;
use crate::App;

/// How often deadlines are checked when nothing else wakes the supervisor.
const TICK: Duration = Duration::from_millis(500);

pub async fn run(app: Arc<App>, build: Arc<Build>) {
    launch_all(&app, &build).await;
    supervise(app, build).await;
}

/// Takes over a build that a previous run of this controller left
/// unfinished: re-attaches its agents, launches the ones it had not yet
/// started, and supervises it as if nothing happened. A build that was
/// writing its index writes it again (the same digests, so the same index).
pub async fn resume(app: Arc<App>, build: Arc<Build>) {
    if build.status().state != BuildState::Indexing {
        reattach(&app, &build).await;
        launch_all(&app, &build).await;
    }
    supervise(app, build).await;
}

async fn reattach(app: &App, build: &Build) {
    let running: Vec<(usize, String, String, bakery_core::Platform)> = {
        let inner = build.lock();
        inner
            .status
            .tasks
            .iter()
            .zip(&inner.runtime)
            .enumerate()
            .filter(|(_, (t, _))| !t.state.is_terminal())
            .filter_map(|(i, (t, rt))| rt.handle.clone().map(|h| (i, t.id.clone(), h, t.platform)))
            .collect()
    };
    for (index, task_id, handle, platform) in running {
        // The agent holds a slot as before; if the cap was lowered meanwhile
        // it runs over it rather than being stopped.
        let slot = Arc::clone(&app.slots[&platform]).try_acquire_owned().ok();
        build.lock().runtime[index].slot = slot;
        match app.platform(platform).adopt(&task_id, &handle).await {
            Ok(()) => build.log(
                index,
                &format!("the controller restarted: following the agent {handle} again"),
            ),
            Err(e) => {
                app.metrics
                    .platform_error(app.platform(platform).name(), "adopt");
                build.lock().runtime[index].exited = Some(format!(
                    "the controller restarted and cannot find the agent again ({e})"
                ));
                build.touch();
            }
        }
    }
}

/// Watches a launched build to its end, then cleans up and writes the index.
async fn supervise(app: Arc<App>, build: Arc<Build>) {
    let index_client = prepare_index_client(&app, &build);
    let mut changed = build.subscribe_state();
    loop {
        if evaluate(&app, &build) {
            break;
        }
        tokio::select! {
            _ = changed.changed() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
    }
    // Every arch has pushed: the index needs nothing from the agents, so it
    // is pushed while they exit rather than after; the build is declared
    // done only once both are over, so "succeeded" still means "nothing left
    // running".
    if build.status().state == BuildState::Indexing {
        let (pushed, ()) = tokio::join!(
            push_index(&app, &build, index_client),
            stop_all(&app, &build)
        );
        if let Some(pushed) = pushed {
            record_index(&build, pushed);
        }
    } else {
        stop_all(&app, &build).await;
    }
    let status = build.status();
    for task in &status.tasks {
        if let (Some(start), Some(end)) = (task.started_ms, task.finished_ms) {
            let outcome = serde_json::to_value(task.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let took = std::time::Duration::from_millis(end.saturating_sub(start));
            app.metrics.arch_finished(task.arch, &outcome, took);
        }
    }
    tracing::info!(build = %build.id, state = ?status.state, error = ?status.error, "build finished");
}

async fn launch_all(app: &App, build: &Build) {
    let launches: Vec<(usize, Launch, bakery_core::Platform)> = {
        let inner = build.lock();
        inner
            .request
            .tasks
            .iter()
            .zip(&inner.status.tasks)
            .zip(&inner.runtime)
            .enumerate()
            // Finished or already running (a resumed build): nothing to start.
            .filter(|(_, ((_, status), rt))| !status.state.is_terminal() && rt.handle.is_none())
            .map(|(index, ((req, status), rt))| {
                (
                    index,
                    Launch {
                        build_id: build.id.clone(),
                        task_id: status.id.clone(),
                        arch: req.arch,
                        cpu: req.spec.cpu.unwrap_or(app.config.default_build_cpu),
                        memory: req.spec.memory.unwrap_or(app.config.default_build_memory),
                        spot: req.spec.spot,
                        env: BTreeMap::from([
                            (agent_env::CONTROLLER_URL.to_string(), app.agent_url.clone()),
                            (agent_env::TASK_ID.to_string(), status.id.clone()),
                            (agent_env::TASK_TOKEN.to_string(), rt.token.clone()),
                        ]),
                    },
                    status.platform,
                )
            })
            .collect()
    };
    for (index, launch, platform_name) in launches {
        let Some(slot) = wait_for_slot(app, build, index, platform_name).await else {
            break; // cancelled while queued
        };
        build.lock().runtime[index].slot = Some(slot);
        let platform = app.platform(platform_name);
        if build.lock().cancel_requested {
            break;
        }
        let arch = launch.arch;
        build.log(
            index,
            &format!("starting the {arch} agent on {}", platform.name()),
        );
        let result = platform.launch(launch).await;
        {
            let mut inner = build.lock();
            match result {
                Ok(handle) => {
                    if handle != inner.status.tasks[index].id {
                        inner.push_line(index, &format!("agent launched: {handle}"));
                    }
                    inner.runtime[index].handle = Some(handle);
                    inner.runtime[index].launched_at = Some(Instant::now());
                    inner.status.tasks[index].started_ms = Some(now_ms());
                }
                Err(e) => {
                    app.metrics.platform_error(platform.name(), "launch");
                    inner.finish_task(index, TaskState::Failed, Some(e.to_string()));
                }
            }
        }
        build.touch();
    }
}

/// Waits for a free agent slot on the platform, logging that the task is
/// queued. Returns `None` if the build is cancelled meanwhile.
async fn wait_for_slot(
    app: &App,
    build: &Build,
    index: usize,
    platform: bakery_core::Platform,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let slots = Arc::clone(&app.slots[&platform]);
    if let Ok(permit) = Arc::clone(&slots).try_acquire_owned() {
        return Some(permit);
    }
    build.log(
        index,
        &format!("queued: every agent slot on {platform} is taken (MAX_CONCURRENT_AGENTS); waiting for one"),
    );
    let mut changed = build.subscribe_state();
    loop {
        {
            // Cancelled, or an arch already failed: nothing to wait for.
            let inner = build.lock();
            if inner.cancel_requested || inner.runtime.iter().any(|rt| rt.exited.is_some()) {
                return None;
            }
        }
        tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => return permit.ok(),
            _ = changed.changed() => {}
        }
    }
}

/// Applies deadlines, exits and cancellation. Returns true when the build
/// needs no more supervision (it ended, or every arch pushed).
fn evaluate(app: &App, build: &Build) -> bool {
    let task_timeout = app.config.build_task_timeout;
    let result_timeout = app.config.build_result_timeout;
    let mut messages: Vec<(usize, String)> = Vec::new();
    let (done, changed) = {
        let mut inner = build.lock();
        let before = inner.status.clone();
        let now = Instant::now();
        for i in 0..inner.status.tasks.len() {
            if inner.status.tasks[i].state.is_terminal() {
                continue;
            }
            let rt = &inner.runtime[i];
            let failure = if let Some(reason) = &rt.exited {
                Some(format!("{reason} before reporting a result"))
            } else if inner.status.tasks[i].state == TaskState::Starting
                && rt.launched_at.is_some_and(|t| now - t > task_timeout)
            {
                let platform = app.platform(inner.status.tasks[i].platform);
                let last = rt.handle.as_deref().and_then(|h| platform.diagnosis(h));
                Some(match last {
                    Some(why) => format!(
                        "the agent did not start within BUILD_TASK_TIMEOUT ({}): {why}",
                        humantime::format_duration(task_timeout)
                    ),
                    None => format!(
                        "the agent did not start within BUILD_TASK_TIMEOUT ({}); check that the platform can schedule it and pull the agent image",
                        humantime::format_duration(task_timeout)
                    ),
                })
            } else if rt.checked_in_at.is_some_and(|t| now - t > result_timeout) {
                Some(format!(
                    "no result within BUILD_RESULT_TIMEOUT ({}) of the agent starting",
                    humantime::format_duration(result_timeout)
                ))
            } else {
                None
            };
            if let Some(error) = failure {
                messages.push((i, format!("error: {error}")));
                inner.finish_task(i, TaskState::Failed, Some(error));
            }
        }

        if inner.cancel_requested {
            for i in 0..inner.status.tasks.len() {
                if inner.finish_task(i, TaskState::Cancelled, Some("cancelled".into())) {
                    messages.push((i, "cancelled".into()));
                }
            }
            inner.finish_build(BuildState::Cancelled, Some("cancelled by request".into()));
        }

        let first_failure = inner
            .status
            .tasks
            .iter()
            .find(|t| t.state == TaskState::Failed)
            .map(|t| {
                format!(
                    "{} build failed: {}",
                    t.arch,
                    t.error.clone().unwrap_or_default()
                )
            });
        if let Some(error) = first_failure {
            for i in 0..inner.status.tasks.len() {
                if !inner.status.tasks[i].state.is_terminal() {
                    let arch = inner.status.tasks[i].arch;
                    messages.push((i, format!("stopping the {arch} agent: another arch failed")));
                    inner.finish_task(
                        i,
                        TaskState::Cancelled,
                        Some("stopped: another arch failed".into()),
                    );
                }
            }
            inner.finish_build(BuildState::Failed, Some(error));
        }

        let all_pushed = inner
            .status
            .tasks
            .iter()
            .all(|t| t.state == TaskState::Succeeded);
        if all_pushed && inner.status.state == BuildState::Running {
            if inner.request.destination.is_some() {
                inner.status.state = BuildState::Indexing;
            } else {
                inner.finish_build(BuildState::Succeeded, None);
            }
        }
        (
            inner.status.state != BuildState::Running,
            inner.status != before,
        )
    };
    for (i, m) in messages {
        build.log(i, &m);
    }
    // Only a real change wakes anyone: the supervisor itself waits on these
    // notifications, so an unconditional one would spin it.
    if changed {
        build.touch();
    }
    done
}

/// Stops every agent this build launched; failures are logged, not fatal.
async fn stop_all(app: &App, build: &Build) {
    let handles: Vec<(usize, String, bakery_core::Platform)> = {
        let inner = build.lock();
        inner
            .runtime
            .iter()
            .zip(&inner.status.tasks)
            .enumerate()
            .filter_map(|(i, (rt, t))| rt.handle.clone().map(|h| (i, h, t.platform)))
            .collect()
    };
    for (i, handle, platform) in handles {
        let platform = app.platform(platform);
        if let Err(e) = platform.stop(&handle).await {
            app.metrics.platform_error(platform.name(), "stop");
            build.log(i, &format!("warning: {e}"));
        }
    }
    // The agents are gone: their slots go to queued tasks.
    for rt in build.lock().runtime.iter_mut() {
        rt.slot = None;
    }
}

/// Starts making the registry client for the build's index on a blocking
/// thread, so that it is ready by the time the agents have pushed (see
/// [`crate::index::registry_client`]). `None` when the build has no destination.
fn prepare_index_client(
    app: &App,
    build: &Build,
) -> Option<tokio::task::JoinHandle<oci_client::Client>> {
    let destination = build.lock().request.destination.clone()?;
    let insecure = app.config.insecure_registries();
    Some(tokio::task::spawn_blocking(move || {
        crate::index::registry_client(&destination, &insecure)
    }))
}

/// Pushes the multi-arch index; `None` when the build has no destination.
async fn push_index(
    app: &App,
    build: &Build,
    client: Option<tokio::task::JoinHandle<oci_client::Client>>,
) -> Option<(
    String,
    Vec<String>,
    Result<String, crate::index::IndexError>,
)> {
    let (destination, tags, entries, credentials) = {
        let inner = build.lock();
        let entries: Vec<_> = inner
            .status
            .tasks
            .iter()
            .filter_map(|t| t.digest.clone().map(|d| (t.arch, d)))
            .collect();
        let credentials: Vec<_> = inner
            .request
            .tasks
            .iter()
            .flat_map(|t| t.spec.credentials.clone())
            .collect();
        (
            inner.request.destination.clone(),
            inner.request.tags.clone(),
            entries,
            credentials,
        )
    };
    let destination = destination?;
    build.log(0, &format!("writing the multi-arch index {destination}"));
    let client = match client {
        Some(made) => made.await,
        None => prepare_index_client(app, build)?.await,
    };
    let result = match client {
        Ok(client) => {
            crate::index::write_index(
                &client,
                &destination,
                &tags,
                &entries,
                &credentials,
                crate::index::RetryPolicy::default(),
            )
            .await
        }
        Err(e) => Err(crate::index::IndexError::Client(e.to_string())),
    };
    Some((destination, tags, result))
}

/// Ends the build with the index push's outcome.
fn record_index(
    build: &Build,
    (destination, tags, result): (
        String,
        Vec<String>,
        Result<String, crate::index::IndexError>,
    ),
) {
    {
        let mut inner = build.lock();
        match result {
            Ok(digest) => {
                inner.status.index_digest = Some(digest);
                inner.finish_build(BuildState::Succeeded, None);
            }
            Err(e) => {
                inner.finish_build(BuildState::Failed, Some(e.to_string()));
            }
        }
    }
    let status = build.status();
    match (&status.index_digest, &status.error) {
        (Some(d), _) => {
            build.log(0, &format!("pushed {destination}@{d}"));
            for tag in &tags {
                build.log(0, &format!("tagged {tag}@{d}"));
            }
        }
        (None, Some(e)) => build.log(0, &format!("error: {e}")),
        _ => {}
    }
}

/// Records agents that ended by themselves; the supervisor acts on it.
pub async fn watch_exits(app: Arc<App>, mut exits: tokio::sync::mpsc::UnboundedReceiver<Exited>) {
    while let Some(exit) = exits.recv().await {
        let Some((build, index)) = app.builds.task(&exit.task_id) else {
            continue;
        };
        {
            let mut inner = build.lock();
            if !inner.status.tasks[index].state.is_terminal() {
                inner.runtime[index].exited = Some(exit.reason.clone());
            }
        }
        build.touch();
    }
}
