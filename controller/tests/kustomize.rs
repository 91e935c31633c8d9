//! examples/server/k8s renders with `kubectl kustomize` into the objects the
//! README lists, with least-privilege RBAC and settings the controller reads.

use std::collections::BTreeMap;
use std::process::Command;

use bakery_controller::platform::k8s::AgentPodConfig;
use serde::Deserialize;
use serde_json::Value;

fn rendered() -> Vec<Value> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/server/k8s");
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("kubectl is installed (it renders the Kustomize example)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml_ng::Deserializer::from_slice(&out.stdout)
        .map(|doc| Value::deserialize(doc).unwrap())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name_prefix: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| {
            o["kind"] == kind
                && o["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .starts_with(name_prefix)
        })
        .unwrap_or_else(|| panic!("no {kind} {name_prefix}*"))
}

#[test]
fn kustomize_example_renders_what_the_readme_lists() {
    let objects = rendered();
    let mut kinds: Vec<&str> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "Deployment",
            "Ingress",
            "PersistentVolumeClaim",
            "Role",
            "RoleBinding",
            "Secret",
            "Service",
            "ServiceAccount",
            "ServiceAccount"
        ]
    );
    assert!(objects
        .iter()
        .all(|o| o["metadata"]["namespace"] == "bakery"));

    // RBAC: pods only, and only the verbs the controller uses.
    let role = find(&objects, "Role", "bakery-server");
    assert_eq!(role["rules"].as_array().unwrap().len(), 1);
    assert_eq!(role["rules"][0]["resources"], serde_json::json!(["pods"]));
    assert_eq!(
        role["rules"][0]["verbs"],
        serde_json::json!(["create", "get", "list", "watch", "delete"])
    );
    let binding = find(&objects, "RoleBinding", "bakery-server");
    assert_eq!(binding["subjects"][0]["name"], "bakery-server");

    // The .env became the Secret the Deployment reads, with the variables the controller needs.
    let secret = find(&objects, "Secret", "bakery-");
    let data: BTreeMap<String, String> = serde_json::from_value(secret["data"].clone()).unwrap();
    for key in [
        "CONTROLLER_URL",
        "S3_BUCKET",
        "K8S_NAMESPACE",
        "AGENT_IMAGE",
        "K8S_AGENT_CONFIG",
        "DEFAULT_PLATFORM",
    ] {
        assert!(data.contains_key(key), "{key} missing from the Secret");
    }
    let deploy = find(&objects, "Deployment", "bakery-server");
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "bakery-server");
    assert_eq!(
        pod["containers"][0]["envFrom"][0]["secretRef"]["name"],
        secret["metadata"]["name"]
    );

    // The ConfigMap is mounted where K8S_AGENT_CONFIG points, and parses as agent settings.
    let config_map = find(&objects, "ConfigMap", "bakery-agent-config");
    let named = |list: &serde_json::Value, name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {list}"))
    };
    assert_eq!(
        named(&pod["volumes"], "agent-config")["configMap"]["name"],
        config_map["metadata"]["name"]
    );
    // Probes and the image's user, as the controller image and routes have them.
    let container = &pod["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(pod["securityContext"]["fsGroup"], 65532);
    assert_eq!(
        deploy["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"],
        "/metrics"
    );
    let dockerfile = include_str!("../../Dockerfile");
    assert!(dockerfile.contains("USER 65532:65532"));
    assert!(container["image"]
        .as_str()
        .unwrap()
        .contains("/bakery-controller:"));
    let mounts = &pod["containers"][0]["volumeMounts"];
    assert_eq!(named(mounts, "agent-config")["mountPath"], "/etc/bakery");
    // DATA_DIR (the build journal) is on the persistent volume.
    let pvc = find(&objects, "PersistentVolumeClaim", "bakery-data");
    assert_eq!(
        named(&pod["volumes"], "data")["persistentVolumeClaim"]["claimName"],
        pvc["metadata"]["name"]
    );
    assert_eq!(
        named(&pod["containers"][0]["env"], "DATA_DIR")["value"],
        named(mounts, "data")["mountPath"]
    );
    let agent: AgentPodConfig =
        serde_yaml_ng::from_str(config_map["data"]["config.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(agent.service_account_name.as_deref(), Some("bakery-agent"));
    assert_eq!(agent.tolerations.len(), 1);

    let svc = find(&objects, "Service", "bakery-server");
    assert_eq!(svc["spec"]["clusterIP"], "None", "headless");
    let ing = find(&objects, "Ingress", "bakery-server");
    assert_eq!(
        ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"],
        "bakery-server"
    );
    let sas: Vec<&str> = objects
        .iter()
        .filter(|o| o["kind"] == "ServiceAccount")
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    assert!(sas.contains(&"bakery-server") && sas.contains(&"bakery-agent"));
}
