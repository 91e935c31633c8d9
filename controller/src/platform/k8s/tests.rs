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

#[test]
fn a_pod_the_cluster_took_away_is_reclaimed_and_a_failed_one_is_not() {
    use super::pod::exit_reason;
    use crate::platform::ExitReason;
    let ended = || "pod failed: x".to_string();
    let evicted = pod(serde_json::json!({"phase": "Failed", "reason": "Evicted"}));
    assert_eq!(
        exit_reason(&evicted, ended(), false),
        ExitReason::Reclaimed(ended())
    );
    let shutdown = pod(
        serde_json::json!({"phase": "Failed", "reason": "Terminated",
        "message": "Pod was terminated in response to imminent node shutdown."}),
    );
    assert!(matches!(
        exit_reason(&shutdown, ended(), false),
        ExitReason::Reclaimed(_)
    ));
    let drained = pod(serde_json::json!({"phase": "Failed", "conditions": [{
        "type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
        "message": "Eviction API: evicting"}]}));
    assert_eq!(
        exit_reason(&drained, ended(), false),
        ExitReason::Reclaimed(
            "pod failed: x (the cluster took the pod away: EvictionByEvictionAPI: Eviction API: evicting)"
                .into()
        )
    );
    // Deleted by someone else (this controller forgets a pod first).
    let running = pod(serde_json::json!({"phase": "Running"}));
    assert!(matches!(
        exit_reason(&running, ended(), true),
        ExitReason::Reclaimed(_)
    ));
    // The build's own failure, and a condition that is not true.
    let failed = pod(
        serde_json::json!({"phase": "Failed", "reason": "DeadlineExceeded",
        "conditions": [{"type": "DisruptionTarget", "status": "False"}]}),
    );
    assert_eq!(
        exit_reason(&failed, ended(), false),
        ExitReason::Platform(ended())
    );
}

#[test]
fn a_second_agent_pod_has_a_name_of_its_own() {
    use super::pod::pod_name;
    assert_eq!(pod_name("b1-amd64", false), "bakery-b1-amd64");
    assert_eq!(pod_name("b1-amd64", true), "bakery-b1-amd64-2");
}
