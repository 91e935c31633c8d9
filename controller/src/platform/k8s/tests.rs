use super::pod::{pod_outcome, PodOutcome};
use super::settings::{AgentPodConfig, K8sSettings, MANAGED_BY, OWNER_LABEL};
use k8s_openapi::api::core::v1::Pod;

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
