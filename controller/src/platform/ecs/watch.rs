//! One watcher for every agent task of this controller: DescribeTasks in
//! batches of 100 every poll interval, backing off (doubling, up to a
//! minute) while ECS refuses, and reporting each task seen STOPPED.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ecs::types::Task;
use aws_sdk_ecs::Client;
use backon::{BackoffBuilder, ExponentialBuilder};

use super::sdk_error;
use super::settings::{EcsSettings, CONTAINER};
use crate::platform::{ExitReason, ExitSender, Exited, Operation};

/// Task ARN → task id, for the tasks being watched.
pub(super) type Watched = Arc<Mutex<HashMap<String, String>>>;

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
            let mut stopped: Vec<(String, String)> = out
                .tasks()
                .iter()
                .filter(|t| t.last_status() == Some("STOPPED"))
                .map(|t| (t.task_arn().unwrap_or_default().to_string(), stop_reason(t)))
                .collect();
            for failure in out.failures() {
                if failure.reason() == Some("MISSING") {
                    let arn = failure.arn().unwrap_or_default().to_string();
                    stopped.push((arn, "ECS task no longer exists".into()));
                }
            }
            for (arn, reason) in stopped {
                if let Some(task_id) = lock(&watched).remove(&arn) {
                    let _ = exits.send(Exited {
                        task_id,
                        reason: ExitReason::Platform(reason),
                    });
                }
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

/// ECS's stop reason, with the agent container's exit code and reason.
fn stop_reason(task: &Task) -> String {
    let container = task
        .containers()
        .iter()
        .find(|c| c.name() == Some(CONTAINER));
    let mut reason = format!(
        "ECS task stopped: {}",
        task.stopped_reason().unwrap_or("no reason given")
    );
    if let Some(code) = container.and_then(|c| c.exit_code()) {
        reason.push_str(&format!("; agent exit code {code}"));
    }
    if let Some(r) = container.and_then(|c| c.reason()) {
        reason.push_str(&format!(" ({r})"));
    }
    reason
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_back_off_by_doubling_up_to_a_minute() {
        let delays: Vec<Duration> = error_backoff(Duration::from_secs(5)).take(6).collect();
        assert_eq!(delays[0], Duration::from_secs(5));
        assert_eq!(delays[1], Duration::from_secs(10));
        assert_eq!(delays[4], Duration::from_secs(60));
        assert_eq!(delays[5], Duration::from_secs(60));
    }
}
