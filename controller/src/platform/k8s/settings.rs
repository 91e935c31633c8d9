//! The Kubernetes platform's settings: the namespace and agent image from
//! the environment, the agent pods' scheduling and identity from the
//! server-side `K8S_AGENT_CONFIG` file, and the labels that mark pods ours.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Toleration};
use serde::Deserialize;

use crate::config::Config;

/// The standard label naming the tool that manages a pod: `bakery` on every agent pod.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The label naming the owning controller (BAKERY_OWNER):
/// orphan cleanup deletes only its own pods.
pub const OWNER_LABEL: &str = "bakery.dev/owner";
/// The label with the pod's task id.
pub const TASK_LABEL: &str = "bakery.dev/task";
/// The label with the pod's build id.
pub const BUILD_LABEL: &str = "bakery.dev/build";
/// The label with the pod's arch.
pub const ARCH_LABEL: &str = "bakery.dev/arch";

/// The server-side agent settings (`K8S_AGENT_CONFIG`, a YAML file; in the
/// Kustomize example, the `configs/config.yaml` ConfigMap).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentPodConfig {
    /// The service account the agent pods run as (their cloud
    /// identity, if any); `None` is the namespace's default.
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
    /// Labels added to every agent pod (bakery's own win on a clash).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to every agent pod.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// What the Kubernetes platform needs, checked once at start-up.
#[derive(Debug, Clone)]
pub struct K8sSettings {
    /// K8S_NAMESPACE: where the agent pods run.
    pub namespace: String,
    /// AGENT_IMAGE: the agent container image.
    pub image: String,
    /// BAKERY_OWNER: the owner label on every pod.
    pub owner: String,
    /// The pods' scheduling and identity (K8S_AGENT_CONFIG).
    pub agent: AgentPodConfig,
    /// `activeDeadlineSeconds`: both timeouts, so Kubernetes ends the pod
    /// even if the controller that should have is gone.
    pub deadline_secs: i64,
    /// Extra non-secret agent environment (INSECURE_REGISTRIES).
    pub agent_env: Vec<(String, String)>,
}

impl K8sSettings {
    /// Reads the Kubernetes variables and K8S_AGENT_CONFIG, naming every missing variable at once.
    pub fn from_config(c: &Config) -> Result<K8sSettings, String> {
        let mut missing = Vec::new();
        if c.k8s_namespace.is_none() {
            missing.push("K8S_NAMESPACE");
        }
        if c.agent_image.is_none() {
            missing.push("AGENT_IMAGE");
        }
        if c.controller_url.is_none() && c.k8s_controller_url.is_none() {
            missing.push(
                "CONTROLLER_URL or K8S_CONTROLLER_URL (the URL agent pods reach the controller at)",
            );
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
