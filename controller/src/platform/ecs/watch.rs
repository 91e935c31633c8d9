//! One watcher for every agent task of this controller: DescribeTasks in
//! batches of 100 every poll interval, backing off (doubling, up to a
//! minute) while ECS refuses, and reporting each task seen STOPPED.
//!
//! A task stays watched until ECS says it is STOPPED, also after bakery
//! asked to stop it: a StopTask that failed is tried again at each poll, so
//! a throttled or interrupted call cannot leave a billing task behind.
//! DescribeTasks is eventually consistent: a task launched a moment ago can
//! come back `MISSING`, so `MISSING` means gone only [`MISSING_GRACE`] after
//! the launch (or after a restarted controller adopted it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ecs::types::{Task, TaskStopCode};
use aws_sdk_ecs::Client;
use backon::{BackoffBuilder, ExponentialBuilder};

use super::sdk_error;
use super::settings::{EcsSettings, CONTAINER};
use crate::platform::{ExitReason, ExitSender, Exited, Operation};

/// How long after a launch `MISSING` is taken for "not visible yet".
pub const MISSING_GRACE: Duration = Duration::from_secs(90);

/// How long after a StopTask that did not take it is sent again.
const STOP_RETRY: Duration = Duration::from_secs(15);

/// One agent task being watched.
#[derive(Debug, Clone)]
pub(super) struct WatchedTask {
    task_id: String,
    since: Instant,
    /// When bakery last asked ECS to stop it, if it did.
    stop_sent: Option<Instant>,
    /// The controller address its agent was given (unknown for a task a
    /// restarted controller adopted).
    agent_url: Option<String>,
    /// What the last DescribeTasks said it waits for, for the start
    /// timeout's message.
    waiting: Option<String>,
}

impl WatchedTask {
    pub(super) fn new(task_id: &str, agent_url: Option<&str>) -> WatchedTask {
        WatchedTask {
            task_id: task_id.to_string(),
            since: Instant::now(),
            stop_sent: None,
            agent_url: agent_url.map(String::from),
            waiting: None,
        }
    }

    /// What the task was last seen waiting for.
    pub(super) fn waiting(&self) -> Option<&str> {
        self.waiting.as_deref()
    }
}

/// What a task that has not stopped waits for, as ECS describes it: still
/// being placed, its network interface attached, its image pulled (ECS's
/// status and the container's reason), or, once it runs, its agent
/// reaching the controller.
pub(super) fn waiting_for(task: &Task, agent_url: Option<&str>) -> String {
    let status = task.last_status().unwrap_or("unknown");
    if status == "RUNNING" {
        let url = agent_url.map_or(String::new(), |u| format!(" at {u}"));
        return format!(
            "the ECS task runs, but its agent never checked in with the controller{url} (CONTROLLER_URL): check that the agents' subnets and security groups (ECS_SUBNETS, ECS_SECURITY_GROUPS) reach that address"
        );
    }
    let mut note = format!(
        "the ECS task is still {status} (desired {})",
        task.desired_status().unwrap_or("RUNNING")
    );
    let interface = task
        .attachments()
        .iter()
        .find(|a| a.r#type() == Some("ElasticNetworkInterface"));
    if let Some(s) = interface.and_then(|a| a.status()) {
        if s != "ATTACHED" {
            note.push_str(&format!("; its network interface is {s}"));
        }
    }
    let container = task
        .containers()
        .iter()
        .find(|c| c.name() == Some(CONTAINER));
    if let Some(r) = container.and_then(|c| c.reason()) {
        note.push_str(&format!("; the agent container: {r}"));
    }
    if task.pull_started_at().is_some() && task.pull_stopped_at().is_none() {
        note.push_str("; pulling the agent image (AGENT_IMAGE)");
    }
    if let Some(r) = task.stopped_reason() {
        note.push_str(&format!("; {r}"));
    }
    note
}

/// Task ARN → what is known of it, for the tasks being watched.
pub(super) type Watched = Arc<Mutex<HashMap<String, WatchedTask>>>;

/// What one DescribeTasks answer means for the watch set.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Seen {
    /// Ended tasks bakery had not stopped: (task id, why).
    pub exited: Vec<(String, ExitReason)>,
    /// Tasks bakery stopped that still run: StopTask again.
    pub stop_again: Vec<String>,
}

/// Applies one DescribeTasks answer (`stopped`: ARNs with their reason;
/// `missing`: ARNs ECS does not know; `running`: the others) at `now`.
pub(super) fn apply(
    watched: &mut HashMap<String, WatchedTask>,
    stopped: Vec<(String, ExitReason)>,
    missing: &[String],
    running: &[String],
    now: Instant,
) -> Seen {
    let mut seen = Seen {
        exited: Vec::new(),
        stop_again: Vec::new(),
    };
    let mut gone = stopped;
    for arn in missing {
        match watched.get(arn) {
            Some(t) if now.duration_since(t.since) >= MISSING_GRACE => gone.push((
                arn.clone(),
                ExitReason::Platform(format!(
                    "ECS task no longer exists (DescribeTasks has answered MISSING since {}s after it started)",
                    MISSING_GRACE.as_secs()
                )),
            )),
            _ => {}
        }
    }
    for (arn, reason) in gone {
        if let Some(task) = watched.remove(&arn) {
            if task.stop_sent.is_none() {
                seen.exited.push((task.task_id, reason));
            }
        }
    }
    for arn in running {
        if let Some(task) = watched.get_mut(arn) {
            if task
                .stop_sent
                .is_some_and(|at| now.duration_since(at) >= STOP_RETRY)
            {
                task.stop_sent = Some(now);
                seen.stop_again.push(arn.clone());
            }
        }
    }
    seen
}

/// Marks `arn` as asked to stop; whether it was being watched.
pub(super) fn mark_stopping(watched: &Watched, arn: &str) -> bool {
    match lock(watched).get_mut(arn) {
        Some(task) => {
            task.stop_sent = Some(Instant::now());
            true
        }
        None => false,
    }
}

/// The delays between polls while DescribeTasks fails.
fn error_backoff(poll: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(poll.max(Duration::from_millis(1)))
        .with_max_delay(Duration::from_secs(60))
        .with_factor(2.0)
        .without_max_times()
        .build()
}

pub(super) async fn watch(
    client: Client,
    settings: EcsSettings,
    watched: Watched,
    exits: ExitSender,
    metrics: Arc<crate::metrics::Metrics>,
) {
    metrics.platform_operations("ecs", &[Operation::DescribeTasks]);
    let mut delays = error_backoff(settings.poll_interval);
    let mut delay = settings.poll_interval;
    loop {
        tokio::time::sleep(delay).await;
        let arns: Vec<String> = lock(&watched).keys().cloned().collect();
        let mut failed = false;
        for chunk in arns.chunks(100) {
            let out = match client
                .describe_tasks()
                .cluster(&settings.cluster)
                .set_tasks(Some(chunk.to_vec()))
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) => {
                    tracing::warn!("DescribeTasks failed, backing off: {}", sdk_error(&e));
                    metrics.platform_error("ecs", Operation::DescribeTasks);
                    failed = true;
                    break;
                }
            };
            let arn = |t: &Task| t.task_arn().unwrap_or_default().to_string();
            let (ended, running): (Vec<&Task>, Vec<&Task>) = out
                .tasks()
                .iter()
                .partition(|t| t.last_status() == Some("STOPPED"));
            let stopped = ended.iter().map(|t| (arn(t), stop_reason(t))).collect();
            {
                let mut watched = lock(&watched);
                for task in &running {
                    if let Some(w) = watched.get_mut(&arn(task)) {
                        w.waiting = Some(waiting_for(task, w.agent_url.as_deref()));
                    }
                }
            }
            let running: Vec<String> = running.iter().map(|t| arn(t)).collect();
            let missing: Vec<String> = out
                .failures()
                .iter()
                .filter(|f| f.reason() == Some("MISSING"))
                .filter_map(|f| f.arn().map(String::from))
                .collect();
            let seen = apply(
                &mut lock(&watched),
                stopped,
                &missing,
                &running,
                Instant::now(),
            );
            for (task_id, reason) in seen.exited {
                let _ = exits.send(Exited { task_id, reason });
            }
            for arn in seen.stop_again {
                super::send_stop(&client, &settings.cluster, &arn)
                    .await
                    .ok();
            }
        }
        delay = if failed {
            delays.next().unwrap_or(Duration::from_secs(60))
        } else {
            delays = error_backoff(settings.poll_interval);
            settings.poll_interval
        };
    }
}

/// ECS's stop reason, with the agent container's exit code and reason; a
/// Spot interruption is [`ExitReason::Reclaimed`] (the build may go on).
fn stop_reason(task: &Task) -> ExitReason {
    let container = task
        .containers()
        .iter()
        .find(|c| c.name() == Some(CONTAINER));
    let mut reason = format!(
        "ECS task stopped: {}",
        task.stopped_reason().unwrap_or("no reason given")
    );
    if let Some(code) = task.stop_code() {
        reason.push_str(&format!(" [{}]", code.as_str()));
    }
    if let Some(code) = container.and_then(|c| c.exit_code()) {
        reason.push_str(&format!("; agent exit code {code}"));
    }
    if let Some(r) = container.and_then(|c| c.reason()) {
        reason.push_str(&format!(" ({r})"));
    }
    match task.stop_code() {
        Some(TaskStopCode::SpotInterruption) => ExitReason::Reclaimed(reason),
        _ => ExitReason::Platform(reason),
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_that_has_not_started_says_what_it_waits_for() {
        use aws_sdk_ecs::types::{Attachment, Container};
        let provisioning = Task::builder()
            .last_status("PROVISIONING")
            .desired_status("RUNNING")
            .attachments(
                Attachment::builder()
                    .r#type("ElasticNetworkInterface")
                    .status("PRECREATED")
                    .build(),
            )
            .build();
        assert_eq!(
            waiting_for(&provisioning, None),
            "the ECS task is still PROVISIONING (desired RUNNING); its network interface is PRECREATED"
        );
        let pulling = Task::builder()
            .last_status("PENDING")
            .pull_started_at(aws_sdk_ecs::primitives::DateTime::from_secs(1))
            .containers(
                Container::builder()
                    .name(CONTAINER)
                    .reason("ResourceInitializationError: unable to pull secrets")
                    .build(),
            )
            .build();
        let note = waiting_for(&pulling, None);
        assert!(note.starts_with("the ECS task is still PENDING"), "{note}");
        assert!(
            note.contains(
                "the agent container: ResourceInitializationError: unable to pull secrets"
            ),
            "{note}"
        );
        assert!(note.contains("pulling the agent image"), "{note}");
        let running = Task::builder().last_status("RUNNING").build();
        assert!(
            waiting_for(&running, Some("http://10.0.0.5:8080")).contains(
                "never checked in with the controller at http://10.0.0.5:8080 (CONTROLLER_URL)"
            )
        );
    }

    #[test]
    fn errors_back_off_by_doubling_up_to_a_minute() {
        let delays: Vec<Duration> = error_backoff(Duration::from_secs(5)).take(6).collect();
        assert_eq!(delays[0], Duration::from_secs(5));
        assert_eq!(delays[1], Duration::from_secs(10));
        assert_eq!(delays[4], Duration::from_secs(60));
        assert_eq!(delays[5], Duration::from_secs(60));
    }

    fn set(arns: &[&str]) -> HashMap<String, WatchedTask> {
        arns.iter()
            .map(|a| {
                (
                    (*a).to_string(),
                    WatchedTask::new(&format!("task-{a}"), None),
                )
            })
            .collect()
    }

    /// DescribeTasks right after RunTask may not know the task yet.
    #[test]
    fn missing_means_gone_only_after_the_grace_period() {
        let mut w = set(&["a"]);
        let start = w["a"].since;
        let missing = ["a".to_string()];
        let seen = apply(
            &mut w,
            vec![],
            &missing,
            &[],
            start + Duration::from_secs(5),
        );
        assert!(seen.exited.is_empty() && w.contains_key("a"), "{seen:?}");
        let seen = apply(&mut w, vec![], &missing, &[], start + MISSING_GRACE);
        assert_eq!(seen.exited.len(), 1);
        assert_eq!(seen.exited[0].0, "task-a");
        assert!(seen.exited[0].1.to_string().contains("MISSING"), "{seen:?}");
        assert!(w.is_empty());
    }

    /// A task bakery stopped stays watched until STOPPED, StopTask sent
    /// again while it runs, and its end is not reported as an exit.
    #[test]
    fn a_stopped_task_is_watched_until_ecs_says_stopped() {
        let watched: Watched = Arc::new(Mutex::new(set(&["a", "b"])));
        assert!(mark_stopping(&watched, "a"));
        assert!(!mark_stopping(&watched, "nope"));
        let mut w = lock(&watched).clone();
        let t0 = w["a"].stop_sent.unwrap();
        let running = ["a".to_string(), "b".to_string()];
        let seen = apply(&mut w, vec![], &[], &running, t0 + Duration::from_secs(1));
        assert!(seen.stop_again.is_empty(), "too soon: {seen:?}");
        let seen = apply(&mut w, vec![], &[], &running, t0 + STOP_RETRY);
        assert_eq!(seen.stop_again, ["a"]);
        let stopped = vec![("a".to_string(), ExitReason::Platform("stopped".into()))];
        let seen = apply(
            &mut w,
            stopped,
            &[],
            &["b".to_string()],
            t0 + STOP_RETRY * 2,
        );
        assert!(seen.exited.is_empty(), "bakery stopped it: {seen:?}");
        assert!(!w.contains_key("a") && w.contains_key("b"));
        let oom = ExitReason::Platform("OutOfMemory".into());
        let stopped = vec![("b".to_string(), oom.clone())];
        let seen = apply(&mut w, stopped, &[], &[], t0 + STOP_RETRY * 3);
        assert_eq!(seen.exited, [("task-b".to_string(), oom)]);
    }
}
