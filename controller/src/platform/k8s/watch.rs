//! One watch for every agent pod of this controller (selected by label):
//! a pod that ended, or was deleted, ends its task at once; a Pending
//! reason is kept for the start timeout's message. kube's watcher re-lists
//! after a 410 and resumes by itself; `default_backoff` paces it while the
//! API server refuses.

use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};

use super::pod::{pod_outcome, PodOutcome};
use super::{lock, Pending, Watched};
use crate::platform::{ExitReason, ExitSender, Exited, Operation};

/// Follows every pod of this controller and reports agents that ended.
pub(super) async fn watch(
    pods: Api<Pod>,
    selector: String,
    watched: Watched,
    pending: Pending,
    exits: ExitSender,
    metrics: Arc<crate::metrics::Metrics>,
) {
    metrics.platform_operations("k8s", &[Operation::Watch]);
    let config = watcher::Config::default().labels(&selector);
    let mut stream = watcher(pods, config).default_backoff().boxed();
    while let Some(event) = stream.next().await {
        let (pod, deleted) = match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => (pod, false),
            Ok(watcher::Event::Delete(pod)) => (pod, true),
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!("pod watch: {e}");
                metrics.platform_error("k8s", Operation::Watch);
                continue;
            }
        };
        let Some(name) = pod.metadata.name.clone() else {
            continue;
        };
        let Some(task_id) = lock(&watched).get(&name).cloned() else {
            continue;
        };
        let ended = match pod_outcome(&pod) {
            PodOutcome::Ended { reason, .. } => Some(reason),
            _ if deleted => Some("the agent pod was deleted".to_string()),
            PodOutcome::Pending(Some(reason)) => {
                lock(&pending).insert(name.clone(), reason);
                None
            }
            PodOutcome::Pending(None) | PodOutcome::Running => None,
        };
        if let Some(reason) = ended {
            lock(&watched).remove(&name);
            let _ = exits.send(Exited {
                task_id,
                reason: ExitReason::Platform(reason),
            });
        }
    }
}
