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
//! controller, selected by label), not polled. A pod that fails or is
//! evicted ends its task at once with Kubernetes' reason; a pod stuck in
//! Pending (unschedulable, image pull back-off) is reported with that reason
//! when BUILD_TASK_TIMEOUT expires. At start-up, pods labelled as this
//! controller's are orphans of an earlier run and are deleted; pods without
//! our owner label are never touched.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{
    Container, EnvVar, LocalObjectReference, Pod, PodSpec, ResourceRequirements, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use serde::Deserialize;

use super::{AgentPlatform, ExitSender, Exited, Launch, PlatformError};
use crate::config::Config;

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const OWNER_LABEL: &str = "bakery.dev/owner";
pub const TASK_LABEL: &str = "bakery.dev/task";
pub const BUILD_LABEL: &str = "bakery.dev/build";
pub const ARCH_LABEL: &str = "bakery.dev/arch";

/// The server-side agent settings (`K8S_AGENT_CONFIG`, a YAML file; in the
/// Kustomize example, the `configs/config.yaml` ConfigMap).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentPodConfig {
    pub service_account_name: Option<String>,
    /// Node labels besides `kubernetes.io/arch`, e.g. a dedicated pool.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Per-arch node labels (arm64 pools are often separate).
    #[serde(default)]
    pub arch_node_selector: BTreeMap<String, BTreeMap<String, String>>,
    /// Tolerations, e.g. for tainted arm64 node pools.
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    /// Secrets for pulling the agent image.
    #[serde(default)]
    pub image_pull_secrets: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct K8sSettings {
    pub namespace: String,
    pub image: String,
    pub owner: String,
    pub agent: AgentPodConfig,
    /// `activeDeadlineSeconds`: both timeouts, so Kubernetes ends the pod
    /// even if the controller that should have is gone.
    pub deadline_secs: i64,
    pub agent_env: Vec<(String, String)>,
}

impl K8sSettings {
    pub fn from_config(c: &Config) -> Result<K8sSettings, String> {
        let mut missing = Vec::new();
        if c.k8s_namespace.is_none() {
            missing.push("K8S_NAMESPACE");
        }
        if c.agent_image.is_none() {
            missing.push("AGENT_IMAGE");
        }
        if c.controller_url.is_none() {
            missing.push("CONTROLLER_URL (the URL agent pods reach the controller at)");
        }
        if !missing.is_empty() {
            return Err(format!("the k8s platform needs {}", missing.join(", ")));
        }
        let agent = match &c.k8s_agent_config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("K8S_AGENT_CONFIG {}: {e}", path.display()))?;
                serde_yaml_ng::from_str(&text)
                    .map_err(|e| format!("K8S_AGENT_CONFIG {}: {e}", path.display()))?
            }
            None => AgentPodConfig::default(),
        };
        let mut agent_env = Vec::new();
        if !c.insecure_registries.is_empty() {
            agent_env.push((
                "INSECURE_REGISTRIES".to_string(),
                c.insecure_registries.clone(),
            ));
        }
        Ok(K8sSettings {
            namespace: c.k8s_namespace.clone().unwrap_or_default(),
            image: c.agent_image.clone().unwrap_or_default(),
            owner: c.bakery_owner.clone(),
            agent,
            deadline_secs: (c.build_task_timeout + c.build_result_timeout).as_secs() as i64,
            agent_env,
        })
    }

    /// Whether `pod` carries this controller's owner labels.
    pub fn owns(&self, pod: &Pod) -> bool {
        let labels = pod.metadata.labels.as_ref();
        let get = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
        get(MANAGED_BY) == Some("bakery") && get(OWNER_LABEL) == Some(self.owner.as_str())
    }

    /// The label selector of every pod this controller owns.
    pub fn selector(&self) -> String {
        format!("{MANAGED_BY}=bakery,{OWNER_LABEL}={}", self.owner)
    }
}

/// The pod name of a task: task ids are `<build>-<arch>`, already DNS-safe.
pub fn pod_name(task_id: &str) -> String {
    format!("bakery-{task_id}")
}

/// The agent pod of a task. Its environment holds no secret besides the
/// task's own token: registry logins are fetched from the controller.
pub fn agent_pod(s: &K8sSettings, launch: &Launch) -> Pod {
    let mut labels = s.agent.labels.clone();
    labels.extend([
        (MANAGED_BY.to_string(), "bakery".to_string()),
        (OWNER_LABEL.to_string(), s.owner.clone()),
        (TASK_LABEL.to_string(), launch.task_id.clone()),
        (BUILD_LABEL.to_string(), launch.build_id.clone()),
        (ARCH_LABEL.to_string(), launch.arch.to_string()),
    ]);
    let mut node_selector = s.agent.node_selector.clone();
    if let Some(extra) = s.agent.arch_node_selector.get(launch.arch.as_str()) {
        node_selector.extend(extra.clone());
    }
    node_selector.insert("kubernetes.io/arch".into(), launch.arch.to_string());
    node_selector.insert("kubernetes.io/os".into(), "linux".into());

    let mut env: Vec<EnvVar> = launch
        .env
        .iter()
        .map(|(k, v)| EnvVar {
            name: k.clone(),
            value: Some(v.clone()),
            ..EnvVar::default()
        })
        .collect();
    env.push(EnvVar {
        name: bakery_protocol::api::agent_env::BUILDER.into(),
        value: Some("kaniko".into()),
        ..EnvVar::default()
    });
    env.extend(s.agent_env.iter().map(|(k, v)| EnvVar {
        name: k.clone(),
        value: Some(v.clone()),
        ..EnvVar::default()
    }));
    // Requests equal limits: the build gets what it asked for, and the
    // scheduler places it where that fits (the original set limits only).
    let resources: BTreeMap<String, Quantity> = BTreeMap::from([
        (
            "cpu".to_string(),
            Quantity(format!("{}m", launch.cpu.millis())),
        ),
        (
            "memory".to_string(),
            Quantity(format!("{}Mi", launch.memory.mib())),
        ),
    ]);
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(&launch.task_id)),
            namespace: Some(s.namespace.clone()),
            labels: Some(labels),
            annotations: (!s.agent.annotations.is_empty()).then(|| s.agent.annotations.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            active_deadline_seconds: Some(s.deadline_secs),
            service_account_name: s.agent.service_account_name.clone(),
            node_selector: Some(node_selector),
            tolerations: (!s.agent.tolerations.is_empty()).then(|| s.agent.tolerations.clone()),
            image_pull_secrets: (!s.agent.image_pull_secrets.is_empty()).then(|| {
                s.agent
                    .image_pull_secrets
                    .iter()
                    .map(|n| LocalObjectReference { name: n.clone() })
                    .collect()
            }),
            containers: vec![Container {
                name: "agent".into(),
                image: Some(s.image.clone()),
                env: Some(env),
                resources: Some(ResourceRequirements {
                    requests: Some(resources.clone()),
                    limits: Some(resources),
                    ..ResourceRequirements::default()
                }),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// What a pod's status says about its agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodOutcome {
    Running,
    /// Not started yet; the reason, when Kubernetes gives one.
    Pending(Option<String>),
    Ended {
        success: bool,
        reason: String,
    },
}

/// Reads a pod's status the way a person debugging it would: the pod's own
/// reason (Evicted, DeadlineExceeded), then the agent container's
/// termination or waiting reason, then an unschedulable condition.
pub fn pod_outcome(pod: &Pod) -> PodOutcome {
    let Some(status) = &pod.status else {
        return PodOutcome::Pending(None);
    };
    let agent = status
        .container_statuses
        .as_ref()
        .and_then(|cs| cs.iter().find(|c| c.name == "agent"));
    let terminated = agent
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref());
    let waiting = agent
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.as_ref());
    match status.phase.as_deref() {
        Some("Succeeded") => PodOutcome::Ended {
            success: true,
            reason: "pod succeeded".into(),
        },
        Some("Failed") => {
            let mut parts = Vec::new();
            match (&status.reason, &status.message) {
                (Some(r), Some(m)) => parts.push(format!("{r}: {m}")),
                (Some(r), None) => parts.push(r.clone()),
                (None, Some(m)) => parts.push(m.clone()),
                (None, None) => {}
            }
            if let Some(t) = terminated {
                let mut s = format!("agent container exit code {}", t.exit_code);
                if let Some(r) = &t.reason {
                    s.push_str(&format!(" ({r})"));
                }
                parts.push(s);
            }
            let detail = if parts.is_empty() {
                "no reason given".to_string()
            } else {
                parts.join("; ")
            };
            PodOutcome::Ended {
                success: false,
                reason: format!("pod failed: {detail}"),
            }
        }
        Some("Running") => PodOutcome::Running,
        _ => {
            if let Some(w) = waiting {
                let reason = w.reason.clone().unwrap_or_else(|| "Waiting".into());
                return PodOutcome::Pending(Some(match &w.message {
                    Some(m) => format!("{reason}: {m}"),
                    None => reason,
                }));
            }
            let unschedulable = status
                .conditions
                .as_ref()
                .and_then(|cs| {
                    cs.iter()
                        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
                })
                .map(|c| {
                    format!(
                        "{}: {}",
                        c.reason.clone().unwrap_or_else(|| "Unschedulable".into()),
                        c.message.clone().unwrap_or_default()
                    )
                });
            PodOutcome::Pending(unschedulable)
        }
    }
}

pub struct K8sPlatform {
    pods: Api<Pod>,
    settings: K8sSettings,
    /// Pod name → task id, for the pods being watched.
    watched: Arc<Mutex<HashMap<String, String>>>,
    /// Pod name → the last Pending reason seen.
    pending: Arc<Mutex<HashMap<String, String>>>,
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
        tokio::spawn(watch(
            platform.pods.clone(),
            platform.settings.selector(),
            Arc::clone(&platform.watched),
            Arc::clone(&platform.pending),
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

    async fn launch(&self, launch: Launch) -> Result<String, PlatformError> {
        let pod = agent_pod(&self.settings, &launch);
        let name = pod_name(&launch.task_id);
        self.watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), launch.task_id.clone());
        if let Err(e) = self.pods.create(&PostParams::default(), &pod).await {
            self.watched
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&name);
            return Err(PlatformError::Launch(format!(
                "creating pod {name} in {}: {e}",
                self.settings.namespace
            )));
        }
        Ok(name)
    }

    async fn adopt(&self, task_id: &str, handle: &str) -> Result<(), PlatformError> {
        self.watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(handle.to_string(), task_id.to_string());
        // The watch only reports changes: a pod that ended while the
        // controller was down changes no more, so look at it once now.
        let ended = match self.pods.get_opt(handle).await {
            Ok(None) => Some((false, "the agent pod is gone".to_string())),
            Ok(Some(pod)) => match pod_outcome(&pod) {
                PodOutcome::Ended { success, reason } => Some((success, reason)),
                _ => None,
            },
            Err(e) => {
                return Err(PlatformError::Config(format!(
                    "reading pod {handle} in {}: {e}",
                    self.settings.namespace
                )))
            }
        };
        if let Some((success, reason)) = ended {
            self.watched
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(handle);
            let _ = self.exits.send(Exited {
                task_id: task_id.to_string(),
                reason,
                success,
            });
        }
        Ok(())
    }

    async fn stop(&self, handle: &str) -> Result<(), PlatformError> {
        self.watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(handle);
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(handle);
        match self.pods.delete(handle, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(PlatformError::Stop(format!("deleting pod {handle}: {e}"))),
        }
    }

    fn diagnosis(&self, handle: &str) -> Option<String> {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(handle)
            .cloned()
    }
}

/// Follows every pod of this controller and reports agents that ended.
async fn watch(
    pods: Api<Pod>,
    selector: String,
    watched: Arc<Mutex<HashMap<String, String>>>,
    pending: Arc<Mutex<HashMap<String, String>>>,
    exits: ExitSender,
    metrics: Arc<crate::metrics::Metrics>,
) {
    metrics.platform_operations("k8s", &["watch"]);
    let config = watcher::Config::default().labels(&selector);
    let mut stream = watcher(pods, config).boxed();
    while let Some(event) = stream.next().await {
        let (pod, deleted) = match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => (pod, false),
            Ok(watcher::Event::Delete(pod)) => (pod, true),
            Ok(_) => continue,
            Err(e) => {
                // The watcher re-lists and resumes by itself; back off a little.
                tracing::warn!("pod watch: {e}");
                metrics.platform_error("k8s", "watch");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(name) = pod.metadata.name.clone() else {
            continue;
        };
        let task_id = watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&name)
            .cloned();
        let Some(task_id) = task_id else { continue };
        let ended = match pod_outcome(&pod) {
            PodOutcome::Ended { success, reason } => Some((success, reason)),
            _ if deleted => Some((false, "the agent pod was deleted".to_string())),
            PodOutcome::Pending(Some(reason)) => {
                pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name.clone(), reason);
                None
            }
            PodOutcome::Pending(None) | PodOutcome::Running => None,
        };
        if let Some((success, reason)) = ended {
            watched
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&name);
            let _ = exits.send(Exited {
                task_id,
                reason,
                success,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "labels": {MANAGED_BY: "bakery", OWNER_LABEL: "bakery"}},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn reads_pod_status_like_a_person_debugging_it() {
        let unschedulable = pod(serde_json::json!({"phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."}]}));
        assert_eq!(
            pod_outcome(&unschedulable),
            PodOutcome::Pending(Some(
                "Unschedulable: 0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.".into()
            ))
        );
        assert_eq!(
            pod_outcome(&pod(serde_json::json!({"phase": "Pending"}))),
            PodOutcome::Pending(None)
        );
        assert_eq!(
            pod_outcome(&pod(serde_json::json!({"phase": "Running"}))),
            PodOutcome::Running
        );
        assert_eq!(
            pod_outcome(&pod(serde_json::json!({"phase": "Succeeded"}))),
            PodOutcome::Ended {
                success: true,
                reason: "pod succeeded".into()
            }
        );
        let deadline = pod(
            serde_json::json!({"phase": "Failed", "reason": "DeadlineExceeded",
            "message": "Pod was active on the node longer than the specified deadline"}),
        );
        assert_eq!(
            pod_outcome(&deadline),
            PodOutcome::Ended {
                success: false,
                reason: "pod failed: DeadlineExceeded: Pod was active on the node longer than the specified deadline".into()
            }
        );
    }

    #[test]
    fn ownership_needs_both_labels() {
        let s = K8sSettings {
            namespace: "n".into(),
            image: "i".into(),
            owner: "bakery".into(),
            agent: AgentPodConfig::default(),
            deadline_secs: 60,
            agent_env: vec![],
        };
        assert!(s.owns(&pod(serde_json::json!({}))));
        let mut other = pod(serde_json::json!({}));
        other
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(OWNER_LABEL.into(), "other".into());
        assert!(!s.owns(&other));
        assert_eq!(
            s.selector(),
            "app.kubernetes.io/managed-by=bakery,bakery.dev/owner=bakery"
        );
    }
}
