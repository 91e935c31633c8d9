//! One build from launch to cleanup.
//!
//! The supervisor starts an agent per arch as agent slots allow, then
//! watches the build until it ends: a task that waits for a slot longer
//! than BUILD_QUEUE_TIMEOUT, an agent that does not check in within
//! BUILD_TASK_TIMEOUT, does not report within BUILD_RESULT_TIMEOUT of
//! checking in, or exits without reporting fails its task; a failed task
//! stops its siblings (no point paying for an image that will not be
//! published).
//!
//! A slot belongs to a running agent: it is taken just before the launch
//! and given back as soon as that agent is stopped, not when the whole
//! build ends. (Held to the build's end, four two-arch builds under four
//! slots each held one with a finished agent while their second arch waited
//! for one: a deadlock.) Launches and stops run beside the supervision
//! loop, so a slow platform call holds up no deadline and no cancel.
//! Whatever happens, every agent the build started is stopped before the
//! supervisor returns.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bakery_protocol::api::{agent_env, now_ms, BuildState, TaskState};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;

use crate::index::IndexError;
use crate::platform::{Exited, Launch};
use crate::state::Build;
use crate::App;

/// How often deadlines are checked when nothing else wakes the supervisor.
const TICK: Duration = Duration::from_millis(500);

/// Longest a platform may take to stop an agent before the build moves on
/// (with a warning in its log): a hung platform API cannot hold a build.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

type SlotWait =
    Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, tokio::sync::AcquireError>> + Send>>;

/// What the supervisor has under way besides watching.
#[derive(Default)]
struct Work {
    /// Launches and stops in flight, each ending with its task's index.
    calls: JoinSet<usize>,
    launching: HashSet<usize>,
    stopping: HashSet<usize>,
    /// The task at the head of this build's queue, waiting for a slot (one
    /// at a time, in arch order: the semaphore serves waiters first come,
    /// first served, across builds).
    waiting: Option<(usize, SlotWait)>,
}

/// The slot the head of the queue waits for, once it is free.
async fn next_slot(
    waiting: &mut Option<(usize, SlotWait)>,
) -> Option<(usize, OwnedSemaphorePermit)> {
    let (index, wait) = waiting.as_mut()?;
    let permit = wait.await.ok()?;
    let index = *index;
    *waiting = None;
    Some((index, permit))
}

pub async fn run(app: Arc<App>, build: Arc<Build>) {
    supervise(app, build).await;
}

/// Takes over a build that a previous run of this controller left
/// unfinished: re-attaches its agents, launches the ones it had not yet
/// started, and supervises it as if nothing happened. A build that was
/// writing its index writes it again (the same digests, so the same index).
pub async fn resume(app: Arc<App>, build: Arc<Build>) {
    if build.status().state != BuildState::Indexing {
        reattach(&app, &build).await;
    }
    supervise(app, build).await;
}

async fn reattach(app: &App, build: &Build) {
    let launched: Vec<(usize, String, String, bakery_protocol::Platform, bool)> = {
        let inner = build.lock();
        inner
            .status
            .tasks
            .iter()
            .zip(&inner.runtime)
            .enumerate()
            .filter_map(|(i, (t, rt))| {
                let handle = rt.handle.clone()?;
                Some((i, t.id.clone(), handle, t.platform, t.state.is_terminal()))
            })
            .collect()
    };
    for (index, task_id, handle, platform, ended) in launched {
        // A finished task's agent is adopted only to be stopped.
        if !ended {
            // The agent holds a slot as before; if the cap was lowered
            // meanwhile it runs over it rather than being stopped.
            let slot = Arc::clone(&app.slots[&platform]).try_acquire_owned().ok();
            build.lock().runtime[index].slot = slot;
        }
        match app.platform(platform).adopt(&task_id, &handle).await {
            Ok(()) if !ended => build.log(
                index,
                &format!("the controller restarted: following the agent {handle} again"),
            ),
            Ok(()) => {}
            Err(e) => {
                app.metrics
                    .platform_error(app.platform(platform).name(), "adopt");
                let mut inner = build.lock();
                if !ended {
                    inner.runtime[index].exited = Some(format!(
                        "the controller restarted and cannot find the agent again ({e})"
                    ));
                }
                drop(inner);
                build.touch();
            }
        }
    }
}

/// Launches, watches and stops a build's agents to its end, then writes
/// the index.
async fn supervise(app: Arc<App>, build: Arc<Build>) {
    let index_client = prepare_index_client(&app, &build);
    let mut changed = build.subscribe_state();
    let mut work = Work::default();
    loop {
        let done = evaluate(&app, &build);
        stop_ended(&app, &build, &mut work);
        if done {
            break;
        }
        start_ready(&app, &build, &mut work);
        tokio::select! {
            _ = changed.changed() => {}
            _ = tokio::time::sleep(TICK) => {}
            Some((index, permit)) = next_slot(&mut work.waiting) => {
                got_slot(&app, &build, &mut work, index, permit);
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
            write_index_unless_cancelled(&app, &build, index_client),
            stop_all(&app, &build)
        );
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

/// Takes slots for the tasks that wait for one, in order, and launches
/// each task that has one. A task that finds no free slot is queued (said
/// in its log and its state) and the supervisor waits for the slot.
fn start_ready(app: &Arc<App>, build: &Arc<Build>, work: &mut Work) {
    let mut inner = build.lock();
    if inner.cancel_requested || inner.status.state.is_terminal() {
        work.waiting = None;
        return;
    }
    if let Some((i, _)) = &work.waiting {
        if inner.status.tasks[*i].state.is_terminal() {
            work.waiting = None;
        } else {
            return; // the head of the queue is still waiting
        }
    }
    for i in 0..inner.status.tasks.len() {
        let unlaunched = !inner.status.tasks[i].state.is_terminal()
            && inner.runtime[i].handle.is_none()
            && !work.launching.contains(&i);
        if !unlaunched {
            continue;
        }
        let platform = inner.status.tasks[i].platform;
        let slots = Arc::clone(&app.slots[&platform]);
        match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => {
                drop(inner);
                got_slot(app, build, work, i, permit);
                inner = build.lock();
            }
            Err(_) => {
                if inner.status.tasks[i].state != TaskState::Queued {
                    inner.status.tasks[i].state = TaskState::Queued;
                    inner.runtime[i].queued_at.get_or_insert_with(Instant::now);
                    let message = format!(
                        "queued: every agent slot on {platform} is taken (MAX_CONCURRENT_AGENTS={}); waiting up to BUILD_QUEUE_TIMEOUT ({}) for one",
                        slots_of(app, platform),
                        humantime::format_duration(app.config.build_queue_timeout)
                    );
                    inner.push_line(i, &message);
                    drop(inner);
                    build.touch();
                }
                work.waiting = Some((i, Box::pin(slots.acquire_owned())));
                return;
            }
        }
    }
}

/// How many slots a platform has in all.
fn slots_of(app: &App, platform: bakery_protocol::Platform) -> usize {
    app.config
        .max_concurrent_agents
        .unwrap_or(if platform == bakery_protocol::Platform::Local {
            4
        } else {
            100
        })
        .max(1)
}

/// A task has its slot: launch its agent beside the supervision loop.
fn got_slot(
    app: &Arc<App>,
    build: &Arc<Build>,
    work: &mut Work,
    index: usize,
    permit: OwnedSemaphorePermit,
) {
    {
        let mut inner = build.lock();
        if inner.status.tasks[index].state.is_terminal() || inner.cancel_requested {
            return; // the permit goes back
        }
        if let Some(since) = inner.runtime[index].queued_at.take() {
            let waited = since.elapsed().as_secs_f64();
            inner.push_line(index, &format!("got an agent slot after {waited:.1}s"));
        }
        inner.status.tasks[index].state = TaskState::Starting;
        inner.runtime[index].slot = Some(permit);
    }
    build.touch();
    work.launching.insert(index);
    let (app, build) = (Arc::clone(app), Arc::clone(build));
    work.calls.spawn(async move {
        launch_one(&app, &build, index).await;
        index
    });
}

async fn launch_one(app: &App, build: &Build, index: usize) {
    let (launch, platform_name) = {
        let inner = build.lock();
        let (req, status, rt) = (
            &inner.request.tasks[index],
            &inner.status.tasks[index],
            &inner.runtime[index],
        );
        let launch = Launch {
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
        };
        (launch, status.platform)
    };
    let platform = app.platform(platform_name);
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
                inner.finish_task(index, TaskState::Failed, Some(e));
            }
        }
    }
    build.touch();
}

/// Stops the agent of every task that has ended, beside the loop, and
/// gives its slot back once it is stopped. A task that never launched
/// gives its slot (if it had one) back at once.
fn stop_ended(app: &Arc<App>, build: &Arc<Build>, work: &mut Work) {
    let mut inner = build.lock();
    for i in 0..inner.status.tasks.len() {
        let busy = work.launching.contains(&i) || work.stopping.contains(&i);
        if !inner.status.tasks[i].state.is_terminal() || inner.runtime[i].stopped || busy {
            continue;
        }
        let Some(handle) = inner.runtime[i].handle.clone() else {
            inner.runtime[i].stopped = true;
            inner.runtime[i].slot = None;
            continue;
        };
        let platform = inner.status.tasks[i].platform;
        work.stopping.insert(i);
        let (app, build) = (Arc::clone(app), Arc::clone(build));
        work.calls.spawn(async move {
            stop_one(&app, &build, i, &handle, platform).await;
            i
        });
    }
}

async fn stop_one(
    app: &App,
    build: &Build,
    index: usize,
    handle: &str,
    platform: bakery_protocol::Platform,
) {
    let platform = app.platform(platform);
    let stopped = match tokio::time::timeout(STOP_TIMEOUT, platform.stop(handle)).await {
        Ok(stopped) => stopped.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "could not stop the agent {handle}: the platform did not answer within {}s",
            STOP_TIMEOUT.as_secs()
        )),
    };
    if let Err(e) = stopped {
        app.metrics.platform_error(platform.name(), "stop");
        build.log(index, &format!("warning: {e}"));
    }
    let mut inner = build.lock();
    inner.runtime[index].stopped = true;
    // The agent is gone: its slot goes to a queued task.
    inner.runtime[index].slot = None;
}

/// Applies deadlines, exits and cancellation. Returns true when the build
/// needs no more supervision (it ended, or every arch pushed).
fn evaluate(app: &App, build: &Build) -> bool {
    let mut messages: Vec<(usize, String)> = Vec::new();
    let (done, changed) = {
        let mut inner = build.lock();
        let before = inner.status.clone();
        let now = Instant::now();
        for i in 0..inner.status.tasks.len() {
            if inner.status.tasks[i].state.is_terminal() {
                continue;
            }
            if let Some(error) = deadline_failure(app, &inner, i, now) {
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
            let pushed = inner.status.tasks.iter().any(|t| t.digest.is_some());
            if inner.request.destination.is_some() || pushed {
                // The pushed images are checked (and the index written).
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

/// Why task `i` fails now, if a deadline passed or its agent is gone.
fn deadline_failure(
    app: &App,
    inner: &crate::state::Inner,
    i: usize,
    now: Instant,
) -> Option<String> {
    let (task_timeout, result_timeout, queue_timeout) = (
        app.config.build_task_timeout,
        app.config.build_result_timeout,
        app.config.build_queue_timeout,
    );
    let rt = &inner.runtime[i];
    let task = &inner.status.tasks[i];
    let took = |d: Duration| humantime::format_duration(d).to_string();
    if let Some(reason) = &rt.exited {
        return Some(format!("{reason} before reporting a result"));
    }
    if task.state == TaskState::Queued && rt.queued_at.is_some_and(|t| now - t > queue_timeout) {
        return Some(format!(
            "no agent slot on {} within BUILD_QUEUE_TIMEOUT ({}): all {} (MAX_CONCURRENT_AGENTS) were busy the whole time; raise MAX_CONCURRENT_AGENTS or BUILD_QUEUE_TIMEOUT, or build less at once",
            task.platform,
            took(queue_timeout),
            slots_of(app, task.platform)
        ));
    }
    if task.state == TaskState::Starting && rt.launched_at.is_some_and(|t| now - t > task_timeout) {
        let platform = app.platform(task.platform);
        let last = rt.handle.as_deref().and_then(|h| platform.diagnosis(h));
        return Some(match last {
            Some(why) => format!(
                "the agent did not start within BUILD_TASK_TIMEOUT ({}): {why}",
                took(task_timeout)
            ),
            None => format!(
                "the agent did not start within BUILD_TASK_TIMEOUT ({}); check that the platform can schedule it and pull the agent image",
                took(task_timeout)
            ),
        });
    }
    if rt.checked_in_at.is_some_and(|t| now - t > result_timeout) {
        return Some(format!(
            "no result within BUILD_RESULT_TIMEOUT ({}) of the agent starting",
            took(result_timeout)
        ));
    }
    None
}

/// Stops every agent of this build that is not stopped yet; failures are
/// logged, not fatal.
async fn stop_all(app: &App, build: &Build) {
    let handles: Vec<(usize, String, bakery_protocol::Platform)> = {
        let inner = build.lock();
        inner
            .runtime
            .iter()
            .zip(&inner.status.tasks)
            .enumerate()
            .filter(|(_, (rt, _))| !rt.stopped)
            .filter_map(|(i, (rt, t))| rt.handle.clone().map(|h| (i, h, t.platform)))
            .collect()
    };
    let stops = handles
        .iter()
        .map(|(i, handle, platform)| stop_one(app, build, *i, handle, *platform));
    futures_util::future::join_all(stops).await;
    for rt in build.lock().runtime.iter_mut() {
        rt.stopped = true;
        rt.slot = None;
    }
}

/// Starts making the registry client for the build's check and index on a
/// blocking thread, so that it is ready by the time the agents have pushed
/// (see [`crate::index::registry_client`]). `None` when nothing is pushed.
fn prepare_index_client(
    app: &App,
    build: &Build,
) -> Option<tokio::task::JoinHandle<oci_client::Client>> {
    let (destination, pushes) = {
        let inner = build.lock();
        let pushes: Vec<String> = inner
            .request
            .tasks
            .iter()
            .filter_map(|t| t.push.clone())
            .collect();
        (inner.request.destination.clone(), pushes)
    };
    let destination = destination.or_else(|| pushes.first().cloned())?;
    // Every loopback registry an arch pushed to is plain HTTP too.
    let mut insecure = app.config.insecure_registries();
    for push in &pushes {
        let host = bakery_protocol::reference::registry_of(push).to_string();
        if bakery_protocol::registry::is_insecure(&host, &insecure) && !insecure.contains(&host) {
            insecure.push(host);
        }
    }
    let timeout = app.config.registry_timeout;
    Some(tokio::task::spawn_blocking(move || {
        crate::index::registry_client(&destination, &insecure, timeout)
    }))
}

/// Checks the pushed images and writes the index, unless the build is
/// cancelled first: a cancel is heard in every state, this one included
/// (the registry may be slow).
async fn write_index_unless_cancelled(
    app: &App,
    build: &Build,
    client: Option<tokio::task::JoinHandle<oci_client::Client>>,
) {
    let cancelled = async {
        let mut changed = build.subscribe_state();
        while !build.lock().cancel_requested {
            if changed.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = finish_pushed(app, build, client) => {}
        () = cancelled => {
            let destination = build.lock().request.destination.clone().unwrap_or_default();
            {
                let mut inner = build.lock();
                inner.finish_build(
                    BuildState::Cancelled,
                    Some(format!("cancelled while the index was being written: {destination} may or may not point at the new images")),
                );
            }
            build.log(0, "cancelled while writing the multi-arch index");
        }
    }
}

/// One pushed arch, as the check needs it.
struct Pushed {
    index: usize,
    arch: bakery_protocol::Arch,
    digest: String,
    push: String,
    bases: Vec<String>,
}

/// Every arch has pushed: checks each image is of its arch (an arch whose
/// image is not fails, naming the base responsible, and no index is
/// written), then writes the index over what was checked.
async fn finish_pushed(
    app: &App,
    build: &Build,
    client: Option<tokio::task::JoinHandle<oci_client::Client>>,
) {
    build.log(0, "checking that each pushed image is its architecture");
    let (destination, tags, pushed, credentials) = {
        let inner = build.lock();
        let pushed: Vec<Pushed> = inner
            .status
            .tasks
            .iter()
            .enumerate()
            .filter_map(|(index, t)| {
                Some(Pushed {
                    index,
                    arch: t.arch,
                    digest: t.digest.clone()?,
                    push: t.push.clone()?,
                    bases: t.bases.clone(),
                })
            })
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
            pushed,
            credentials,
        )
    };
    let client = match client {
        Some(made) => made.await,
        None => {
            prepare_index_client(app, build)
                .expect("pushed images have a registry")
                .await
        }
    };
    let client = match client {
        Ok(client) => client,
        Err(e) => return end_with(build, Err(IndexError::Client(e.to_string()))),
    };
    let policy = crate::index::RetryPolicy::default();
    let bases_client = bases_client(app, &client, &pushed).await;
    let auth = |host: &str| crate::index::auth_for(&credentials, host);
    let mut checked = Vec::new();
    let mut wrong = Vec::new();
    for p in &pushed {
        let config = async {
            let repo = crate::index::parse_reference(&p.push)?;
            crate::verify::check(
                &client,
                &repo,
                p.arch,
                &p.digest,
                &auth(repo.registry()),
                policy,
            )
            .await
        };
        let bases = crate::verify::check_bases(&bases_client, &p.bases, p.arch, auth);
        match (config.await, bases.await) {
            (Ok(c), Ok(())) => checked.push(c),
            (Ok(_) | Err(IndexError::WrongPlatform { .. }), Err((found, why))) => {
                wrong.push((p, format!("the image is {found}: {why}")));
            }
            (Err(IndexError::WrongPlatform { found, .. }), Ok(())) => {
                let why = match p.bases.first() {
                    Some(base) => format!(
                        "it was built FROM {base}; check that it has a linux/{} variant, and `--platform` on the FROM lines",
                        p.arch
                    ),
                    None => "check `--platform` on the Dockerfile's FROM lines and `custom-platform`".into(),
                };
                wrong.push((p, format!("the image is {found}: {why}")));
            }
            (Err(e), _) => return end_with(build, Err(e)),
        }
    }
    if !wrong.is_empty() {
        return wrong_platform(build, wrong);
    }
    let Some(destination) = destination else {
        build.lock().finish_build(BuildState::Succeeded, None);
        build.touch();
        return;
    };
    build.log(0, &format!("writing the multi-arch index {destination}"));
    let result = async {
        let reference = crate::index::parse_reference(&destination)?;
        let auth = crate::index::auth_for(&credentials, reference.registry());
        crate::index::write_checked(&client, &destination, &tags, &checked, &auth, policy).await
    }
    .await;
    end_with(build, result.map(|digest| (destination, tags, digest)));
}

/// Fails each arch whose image is of another platform; no index is written.
fn wrong_platform(build: &Build, wrong: Vec<(&Pushed, String)>) {
    {
        let mut inner = build.lock();
        for (p, error) in &wrong {
            inner.fail_verified_task(p.index, error.clone());
        }
        let (p, error) = &wrong[0];
        inner.finish_build(
            BuildState::Failed,
            Some(format!("{} build failed: {error}", p.arch)),
        );
    }
    for (p, error) in wrong {
        build.log(
            p.index,
            &format!(
                "error: {}: {error}; the multi-arch index was not written",
                p.arch
            ),
        );
    }
    build.touch();
}

/// A registry client for the base images: the index's client, unless a base
/// is on a loopback registry that client would speak HTTPS to.
async fn bases_client(
    app: &App,
    client: &oci_client::Client,
    pushed: &[Pushed],
) -> oci_client::Client {
    let configured = app.config.insecure_registries();
    let hosts: Vec<String> = pushed
        .iter()
        .flat_map(|p| p.bases.iter().chain(std::iter::once(&p.push)))
        .map(|r| bakery_protocol::reference::registry_of(r).to_string())
        .filter(|h| bakery_protocol::registry::is_insecure(h, &configured))
        .collect();
    let pushes_cover = hosts.iter().all(|h| {
        configured.contains(h)
            || pushed
                .iter()
                .any(|p| bakery_protocol::reference::registry_of(&p.push) == h)
    });
    if hosts.is_empty() || pushes_cover {
        return client.clone();
    }
    let timeout = app.config.registry_timeout;
    let mut insecure = configured;
    insecure.extend(hosts);
    tokio::task::spawn_blocking(move || crate::index::registry_client("", &insecure, timeout))
        .await
        .unwrap_or_else(|_| client.clone())
}

/// Ends the build with the index's outcome.
fn end_with(build: &Build, result: Result<(String, Vec<String>, String), IndexError>) {
    match result {
        Ok((destination, tags, digest)) => {
            {
                let mut inner = build.lock();
                inner.status.index_digest = Some(digest.clone());
                inner.finish_build(BuildState::Succeeded, None);
            }
            build.log(0, &format!("pushed {destination}@{digest}"));
            for tag in &tags {
                build.log(0, &format!("tagged {tag}@{digest}"));
            }
        }
        Err(e) => {
            build
                .lock()
                .finish_build(BuildState::Failed, Some(e.to_string()));
            build.log(0, &format!("error: {e}"));
        }
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
