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

use super::pod::{exit_reason, pod_outcome, PodOutcome};
use super::{lock, Pending, Watched};
use crate::platform::{ExitReason, ExitSender, Exited, Operation};

/// What the watch shares with the platform.
pub(super) struct Shared {
    /// The pods to report on.
    pub watched: Watched,
    /// Where it notes what each pod's agent waits for.
    pub pending: Pending,
    /// The note for a pod that runs: the agent's next step is reaching the
    /// controller, so a start timeout from then on is about that address.
    pub running: String,
}

/// Follows every pod of this controller and reports agents that ended.
pub(super) async fn watch(
    pods: Api<Pod>,
    selector: String,
    shared: Shared,
    exits: ExitSender,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let Shared {
        watched,
        pending,
        running,
    } = shared;
    metrics.platform_operations("k8s", &[Operation::Watch]);
    let config = watcher::Config::default().labels(&selector);
    let reaper = pods.clone();
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
            PodOutcome::Ended {
                success: false,
                reason,
            } => Some(exit_reason(&pod, reason, deleted)),
            PodOutcome::Ended { reason, .. } => Some(ExitReason::Platform(reason)),
            _ if deleted => Some(exit_reason(
                &pod,
                "the agent pod was deleted".to_string(),
                true,
            )),
            PodOutcome::Pending(Some(reason)) => {
                lock(&pending).insert(name.clone(), reason);
                None
            }
            PodOutcome::Running => {
                // Kubernetes' reason for waiting no longer holds.
                lock(&pending).insert(name.clone(), running.clone());
                None
            }
            PodOutcome::Pending(None) => None,
        };
        let Some(reason) = ended else { continue };
        // Once per pod: adopt() may have reported it meanwhile, and a
        // second report would reach the task's next agent.
        if lock(&watched).remove(&name).is_none() {
            continue;
        }
        lock(&pending).remove(&name);
        if matches!(reason, ExitReason::Reclaimed(_)) && !deleted {
            reap(&reaper, name);
        }
        let _ = exits.send(Exited { task_id, reason });
    }
}

/// Deletes, in the background, a reclaimed pod its task has replaced: an
/// evicted pod stays (Failed) until collected. The watch goes on meanwhile.
pub(super) fn reap(pods: &Api<Pod>, name: String) {
    let pods = pods.clone();
    tokio::spawn(async move { remove(&pods, &name).await });
}

/// Deletes an ended pod the controller no longer tracks, bounded in time.
/// A failure is logged; the start-up sweep of pods no journal knows
/// removes it later.
async fn remove(pods: &Api<Pod>, name: &str) {
    let params = kube::api::DeleteParams::default();
    let delete = pods.delete(name, &params);
    match tokio::time::timeout(std::time::Duration::from_secs(30), delete).await {
        Ok(Ok(_)) => {}
        Ok(Err(kube::Error::Api(e))) if e.code == 404 => {}
        Ok(Err(e)) => tracing::warn!("deleting the reclaimed agent pod {name}: {e}"),
        Err(_) => tracing::warn!("deleting the reclaimed agent pod {name}: no answer in 30 s"),
    }
}
