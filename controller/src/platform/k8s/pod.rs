//! The agent pod of a task, and what a pod's status says about its agent.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, EnvVar, LocalObjectReference, Pod, PodSecurityContext, PodSpec,
    ResourceRequirements, SeccompProfile,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::settings::{K8sSettings, ARCH_LABEL, BUILD_LABEL, MANAGED_BY, OWNER_LABEL, TASK_LABEL};
use crate::platform::{ExitReason, Launch};
use bakery_protocol::api::agent_env::BuilderKind;

/// The pod name of a task: task ids are `<build>-<arch>`, already DNS-safe.
pub fn pod_name(task_id: &str, relaunch: bool) -> String {
    if relaunch {
        format!("bakery-{task_id}-2")
    } else {
        format!("bakery-{task_id}")
    }
}

/// The agent pod of a task. Its environment holds no secret besides the
/// task's own token: registry logins are fetched from the controller. It
/// mounts no service account token (the agent never calls the Kubernetes
/// API; a build's RUN steps must not get one either) and runs under the
/// runtime's default seccomp profile: Pod Security "baseline". Not
/// "restricted": Kaniko builds as root, unpacking and writing the image's
/// root filesystem inside its container.
pub fn agent_pod(s: &K8sSettings, launch: &Launch) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(&launch.task_id, launch.relaunch)),
            namespace: Some(s.namespace.clone()),
            labels: Some(labels(s, launch)),
            annotations: (!s.agent.annotations.is_empty()).then(|| s.agent.annotations.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            // The pod's pause container becomes PID 1 and reaps what a
            // build's processes leave behind (the agent alone would not):
            // the agent is the pod's only container, so it sees nothing new.
            share_process_namespace: Some(true),
            security_context: Some(PodSecurityContext {
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            active_deadline_seconds: Some(s.deadline_secs),
            service_account_name: s.agent.service_account_name.clone(),
            node_selector: Some(node_selector(s, launch)),
            tolerations: (!s.agent.tolerations.is_empty()).then(|| s.agent.tolerations.clone()),
            image_pull_secrets: (!s.agent.image_pull_secrets.is_empty()).then(|| {
                s.agent
                    .image_pull_secrets
                    .iter()
                    .map(|n| LocalObjectReference { name: n.clone() })
                    .collect()
            }),
            containers: vec![agent_container(s, launch)],
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// The configured labels, then ours (which win).
fn labels(s: &K8sSettings, launch: &Launch) -> BTreeMap<String, String> {
    let mut labels = s.agent.labels.clone();
    labels.extend([
        (MANAGED_BY.to_string(), "bakery".to_string()),
        (OWNER_LABEL.to_string(), s.owner.clone()),
        (TASK_LABEL.to_string(), launch.task_id.clone()),
        (BUILD_LABEL.to_string(), launch.build_id.clone()),
        (ARCH_LABEL.to_string(), launch.arch.to_string()),
    ]);
    labels
}

/// The configured node labels, the arch's own, then the arch and OS (which
/// no configuration can override: the agent must run on its arch).
fn node_selector(s: &K8sSettings, launch: &Launch) -> BTreeMap<String, String> {
    let mut node_selector = s.agent.node_selector.clone();
    if let Some(extra) = s.agent.arch_node_selector.get(launch.arch.as_str()) {
        node_selector.extend(extra.clone());
    }
    node_selector.insert("kubernetes.io/arch".into(), launch.arch.to_string());
    node_selector.insert("kubernetes.io/os".into(), "linux".into());
    node_selector
}

fn agent_container(s: &K8sSettings, launch: &Launch) -> Container {
    let var = |(k, v): (&String, &String)| EnvVar {
        name: k.clone(),
        value: Some(v.clone()),
        ..EnvVar::default()
    };
    let mut env: Vec<EnvVar> = launch.env.iter().map(var).collect();
    env.push(EnvVar {
        name: bakery_protocol::api::agent_env::BUILDER.into(),
        value: Some(BuilderKind::Kaniko.as_str().into()),
        ..EnvVar::default()
    });
    env.extend(s.agent_env.iter().map(|(k, v)| var((k, v))));
    // Requests equal limits: the build gets what it asked for, and the
    // scheduler places it where that fits (the original set limits only).
    let mut resources: BTreeMap<String, Quantity> = BTreeMap::from([
        (
            "cpu".to_string(),
            Quantity(format!("{}m", launch.cpu.millis())),
        ),
        (
            "memory".to_string(),
            Quantity(format!("{}Mi", launch.memory.mib())),
        ),
    ]);
    // The builder's scratch space (unpacked layers, snapshots): without a
    // request, a node may place the pod where it is evicted for disk, and
    // GKE Autopilot gives 1 GiB.
    if let Some(disk) = launch.disk {
        resources.insert(
            "ephemeral-storage".to_string(),
            Quantity(format!("{}Gi", disk.gib())),
        );
    }
    Container {
        name: "agent".into(),
        image: Some(s.image.clone()),
        env: Some(env),
        resources: Some(ResourceRequirements {
            requests: Some(resources.clone()),
            limits: Some(resources),
            ..ResourceRequirements::default()
        }),
        ..Container::default()
    }
}

/// What a pod's status says about its agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodOutcome {
    /// The agent container runs.
    Running,
    /// Not started yet; the reason, when Kubernetes gives one.
    Pending(Option<String>),
    /// The pod ended.
    Ended {
        /// Whether it ended well (phase `Succeeded`).
        success: bool,
        /// Why it ended, as a person debugging the pod would put it.
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

/// How an agent pod that `ended` (as [`pod_outcome`] put it) is reported.
/// Taken away by the cluster, the agent did nothing wrong and its task may
/// start a second one ([`ExitReason::Reclaimed`]): the kubelet evicted it
/// (node pressure), the scheduler preempted it, the node shut down, or it
/// was deleted by someone else (a node drain, Karpenter consolidation, a
/// spot node reclaimed; this controller forgets a pod before it deletes it
/// itself). Kubernetes 1.26+ marks such a pod with a `DisruptionTarget`
/// condition, which names the cause. Anything else is the platform's
/// failure ([`ExitReason::Platform`]).
pub fn exit_reason(pod: &Pod, ended: String, deleted: bool) -> ExitReason {
    let status = pod.status.as_ref();
    let condition = status.and_then(|s| s.conditions.as_ref()).and_then(|cs| {
        cs.iter()
            .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")
    });
    let evicted = matches!(
        status.and_then(|s| s.reason.as_deref()),
        Some("Evicted" | "Preempting" | "Terminated" | "NodeShutdown" | "NodeLost")
    );
    if let Some(c) = condition {
        let cause = match (&c.reason, &c.message) {
            (Some(r), Some(m)) => format!("{r}: {m}"),
            (Some(r), None) => r.clone(),
            (None, Some(m)) => m.clone(),
            (None, None) => "DisruptionTarget".into(),
        };
        return ExitReason::Reclaimed(format!("{ended} (the cluster took the pod away: {cause})"));
    }
    if evicted || deleted || pod.metadata.deletion_timestamp.is_some() {
        return ExitReason::Reclaimed(ended);
    }
    ExitReason::Platform(ended)
}
