//! Kubernetes: one Pod per agent, on a node of the build's arch.
//!
//! A bare Pod, not a Job: bakery already does what a Job would (it watches
//! the agent, fails the build, and deletes what it started), and a Job with
//! `backoffLimit: 0` only adds a second object whose TTL was the original
//! tool's sole cleanup. With a Pod we watch and delete exactly what we
//! created, and its `activeDeadlineSeconds` stops it even if the controller
//! is gone.
//!
//! Pods are watched with kube's watcher (one watch for all agents of this
//! controller, selected by label), not polled. A pod that fails ends its
//! task at once with Kubernetes' reason. A pod the cluster takes away
//! (evicted, preempted, its node drained or shut down, deleted by someone
//! else) is reported reclaimed: its task starts a second pod, once, and
//! fails with the reason if that one is taken too. A pod stuck in
//! Pending (unschedulable, image pull back-off) is reported with that reason
//! when BUILD_TASK_TIMEOUT expires. At start-up, pods labelled as this
//! controller's are orphans of an earlier run and are deleted; pods without
//! our owner label are never touched.

mod pod;
mod settings;
#[cfg(test)]
mod tests;
mod watch;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

pub use pod::{agent_pod, exit_reason, pod_name, pod_outcome, PodOutcome};
pub use settings::{
    AgentPodConfig, K8sSettings, ARCH_LABEL, BUILD_LABEL, MANAGED_BY, OWNER_LABEL, TASK_LABEL,
};

use super::{AgentHandle, AgentPlatform, ExitReason, ExitSender, Exited, Launch, PlatformError};
use crate::config::Config;

/// Pod name → task id, for the pods being watched.
type Watched = Arc<Mutex<HashMap<String, String>>>;
/// Pod name → what its agent waits for: the last Pending reason seen, or
/// (the pod runs) the controller address its agent has not reached yet.
type Pending = Arc<Mutex<HashMap<String, String>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The Kubernetes platform: each agent a pod on a node of its arch, watched through the API.
pub struct K8sPlatform {
    pods: Api<Pod>,
    settings: K8sSettings,
    watched: Watched,
    pending: Pending,
    exits: ExitSender,
}

impl K8sPlatform {
    /// Connects (in-cluster service account, else the kubeconfig), deletes
    /// this controller's orphaned pods (all but `keep`: the agents of builds
    /// a restarted controller resumes), and starts the watch.
    pub async fn start(
        config: &Config,
        exits: ExitSender,
        keep: &HashSet<String>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<K8sPlatform, PlatformError> {
        let settings = K8sSettings::from_config(config).map_err(PlatformError::Config)?;
        let client = kube::Client::try_default()
            .await
            .map_err(|e| PlatformError::Config(format!("connecting to Kubernetes: {e}")))?;
        let pods: Api<Pod> = Api::namespaced(client, &settings.namespace);
        let platform = K8sPlatform {
            pods,
            settings,
            watched: Arc::default(),
            pending: Arc::default(),
            exits: exits.clone(),
        };
        let removed = platform.delete_orphans(keep).await?;
        if removed > 0 {
            tracing::info!(removed, "deleted orphaned agent pods of an earlier run");
        }
        let (url, var) = match (&config.k8s_controller_url, &config.controller_url) {
            (Some(url), _) => (url.as_str(), "K8S_CONTROLLER_URL"),
            (None, url) => (url.as_deref().unwrap_or_default(), "CONTROLLER_URL"),
        };
        let running = format!(
            "its pod runs, but its agent never checked in with the controller at {url} ({var}): check that pods in namespace {} reach that address (a Service's cluster DNS name, not localhost) and that a NetworkPolicy allows it",
            platform.settings.namespace
        );
        tokio::spawn(watch::watch(
            platform.pods.clone(),
            platform.settings.selector(),
            watch::Shared {
                watched: Arc::clone(&platform.watched),
                pending: Arc::clone(&platform.pending),
                running,
            },
            exits,
            metrics,
        ));
        Ok(platform)
    }

    async fn delete_orphans(&self, keep: &HashSet<String>) -> Result<usize, PlatformError> {
        let list = self
            .pods
            .list(&ListParams::default().labels(&self.settings.selector()))
            .await
            .map_err(|e| PlatformError::Config(format!("listing agent pods: {e}")))?;
        let mut removed = 0;
        for pod in list.items {
            // The selector already says this; checking again costs nothing and
            // keeps a permissive API server (or a bad selector) from costing
            // someone else their pod.
            if !self.settings.owns(&pod) {
                continue;
            }
            let Some(name) = pod.metadata.name else {
                continue;
            };
            if keep.contains(&name) {
                continue;
            }
            match self.pods.delete(&name, &DeleteParams::default()).await {
                Ok(_) => removed += 1,
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    return Err(PlatformError::Config(format!(
                        "deleting orphaned pod {name}: {e}"
                    )))
                }
            }
        }
        Ok(removed)
    }
}

#[async_trait::async_trait]
impl AgentPlatform for K8sPlatform {
    fn name(&self) -> &'static str {
        "k8s"
    }

    async fn launch(&self, launch: Launch) -> Result<AgentHandle, PlatformError> {
        let pod = agent_pod(&self.settings, &launch);
        let name = pod_name(&launch.task_id, launch.relaunch);
        lock(&self.watched).insert(name.clone(), launch.task_id.clone());
        if let Err(e) = self.pods.create(&PostParams::default(), &pod).await {
            lock(&self.watched).remove(&name);
            return Err(PlatformError::Launch(format!(
                "creating pod {name} in {}: {e}",
                self.settings.namespace
            )));
        }
        Ok(AgentHandle::new(name))
    }

    async fn adopt(&self, task_id: &str, handle: &AgentHandle) -> Result<(), PlatformError> {
        let name = handle.as_str();
        lock(&self.watched).insert(name.to_string(), task_id.to_string());
        // The watch only reports changes: a pod that ended while the
        // controller was down changes no more, so look at it once now.
        let ended = match self.pods.get_opt(name).await {
            // Deleted while no controller watched: not by this one, which
            // forgets a pod before it deletes it.
            Ok(None) => Some(ExitReason::Reclaimed(
                "the agent pod is gone (deleted while the controller was down)".to_string(),
            )),
            Ok(Some(pod)) => match pod_outcome(&pod) {
                PodOutcome::Ended {
                    success: false,
                    reason,
                } => Some(exit_reason(&pod, reason, false)),
                PodOutcome::Ended { reason, .. } => Some(ExitReason::Platform(reason)),
                _ => None,
            },
            Err(e) => {
                return Err(PlatformError::Config(format!(
                    "reading pod {name} in {}: {e}",
                    self.settings.namespace
                )))
            }
        };
        // Once per pod: the watch may have reported it meanwhile.
        if let Some(reason) = ended.filter(|_| lock(&self.watched).remove(name).is_some()) {
            if matches!(reason, ExitReason::Reclaimed(_)) {
                watch::reap(&self.pods, name.to_string());
            }
            let _ = self.exits.send(Exited {
                task_id: task_id.to_string(),
                reason,
            });
        }
        Ok(())
    }

    async fn stop(&self, handle: &AgentHandle) -> Result<(), PlatformError> {
        let name = handle.as_str();
        lock(&self.watched).remove(name);
        lock(&self.pending).remove(name);
        match self.pods.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(PlatformError::Stop(format!("deleting pod {name}: {e}"))),
        }
    }

    fn diagnosis(&self, handle: &AgentHandle) -> Option<String> {
        lock(&self.pending).get(handle.as_str()).cloned()
    }
}
