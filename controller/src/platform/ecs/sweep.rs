//! At start-up: stop the agent tasks this controller's owner tag names
//! that no build in the journal knows. A controller that crashed, or lost
//! its journal, would otherwise leave them billing until they end by
//! themselves (each agent also has its own deadline, `BAKERY_DEADLINE`).

use std::collections::HashSet;

use aws_sdk_ecs::types::{DesiredStatus, TaskField};
use aws_sdk_ecs::Client;

use super::settings::OWNER_TAG;
use super::{sdk_error, send_stop};

/// Stops each running task of `cluster` tagged `OWNER_TAG=owner` whose ARN
/// is not in `keep`; returns how many. ECS errors are logged and end the
/// sweep (it is a cleanup, not a reason not to start).
pub(super) async fn stop_orphans(
    client: &Client,
    cluster: &str,
    owner: &str,
    keep: &HashSet<String>,
) -> usize {
    let mut arns = Vec::new();
    let mut pages = client
        .list_tasks()
        .cluster(cluster)
        .desired_status(DesiredStatus::Running)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        match page {
            Ok(page) => arns.extend(page.task_arns().iter().cloned()),
            Err(e) => {
                tracing::warn!(
                    "listing ECS tasks to find orphaned agents: {}",
                    sdk_error(&e)
                );
                return 0;
            }
        }
    }
    let mut stopped = 0;
    for chunk in arns.chunks(100) {
        let out = match client
            .describe_tasks()
            .cluster(cluster)
            .set_tasks(Some(chunk.to_vec()))
            .include(TaskField::Tags)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                tracing::warn!(
                    "describing ECS tasks to find orphaned agents: {}",
                    sdk_error(&e)
                );
                return stopped;
            }
        };
        for task in out.tasks() {
            let ours = task
                .tags()
                .iter()
                .any(|t| t.key() == Some(OWNER_TAG) && t.value() == Some(owner));
            let Some(arn) = task.task_arn() else { continue };
            if ours && !keep.contains(arn) && send_stop(client, cluster, arn).await.is_ok() {
                tracing::info!(task = arn, "stopped an agent task no build knows");
                stopped += 1;
            }
        }
    }
    stopped
}
