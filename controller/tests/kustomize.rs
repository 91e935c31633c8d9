//! examples/server/k8s renders with `kubectl kustomize` into the objects the
//! README lists, with least-privilege RBAC and settings the controller reads.

mod checkers;

use std::collections::BTreeMap;
use std::process::Command;

use bakery_controller::platform::k8s::AgentPodConfig;
use serde::Deserialize;
use serde_json::Value;

/// The example's objects as `kubectl kustomize` renders them (YAML).
fn rendered_yaml() -> Vec<u8> {
    rendered_yaml_of("k8s")
}

/// Example `name` under examples/server (the base, or an overlay of it).
fn rendered_yaml_of(name: &str) -> Vec<u8> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/server")
        .join(name);
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
    out.stdout
}

fn rendered() -> Vec<Value> {
    parse(&rendered_yaml())
}

fn parse(yaml: &[u8]) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_slice(yaml)
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
            "Namespace",
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
        .filter(|o| o["kind"] != "Namespace")
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

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

/// The agent pod the controller creates with the example's settings.
fn agent_pod() -> Value {
    use bakery_controller::platform::k8s::{agent_pod, K8sSettings};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/server/k8s");
    let mut vars: Vec<(String, String)> = std::fs::read_to_string(dir.join(".env"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .filter(|(k, _)| k != "CONTROLLER_TOKEN" && k != "K8S_AGENT_CONFIG")
        .collect();
    vars.push((
        "K8S_AGENT_CONFIG".into(),
        dir.join("configs/config.yaml").display().to_string(),
    ));
    let config = bakery_controller::Config::from_vars(vars).unwrap();
    let settings = K8sSettings::from_config(&config).unwrap();
    let launch = bakery_controller::platform::Launch {
        build_id: "b0123456789ab".into(),
        task_id: "b0123456789ab-arm64".into(),
        arch: bakery_protocol::Arch::Arm64,
        cpu: "1".parse().unwrap(),
        memory: "2G".parse().unwrap(),
        disk: Some("50G".parse().unwrap()),
        spot: false,
        relaunch: false,
        env: BTreeMap::from([(
            "BAKERY_TASK_ID".to_string(),
            "b0123456789ab-arm64".to_string(),
        )]),
    };
    serde_json::to_value(agent_pod(&settings, &launch)).unwrap()
}

/// `kubernetes-validate --strict` (the Kubernetes OpenAPI schemas it
/// ships; scripts/setup installs it) on every rendered object and the agent
/// pod, for 1.29 and for the newest version it knows.
#[test]
fn every_object_and_the_agent_pod_pass_the_kubernetes_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let postgres = parse(&rendered_yaml_of("k8s-postgres"));
    let objects = rendered().into_iter().chain(postgres).chain([agent_pod()]);
    for (i, object) in objects.enumerate() {
        let file = dir.path().join(format!("{i}.yaml"));
        // JSON (a YAML subset): a YAML writer leaves `off` unquoted, which
        // YAML 1.1 readers take for false.
        std::fs::write(&file, serde_json::to_string(&object).unwrap()).unwrap();
        files.push(file);
    }
    for version in [Some("1.29.0"), None] {
        let mut cmd = Command::new("kubernetes-validate");
        cmd.args(["--strict", "--quiet"]);
        if let Some(v) = version {
            cmd.args(["-k", v]);
        }
        let out = cmd
            .args(&files)
            .output()
            .expect("kubernetes-validate is installed (scripts/setup)");
        assert!(
            out.status.success(),
            "{version:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Pod Security Standards (kubernetes.io/docs/concepts/security/pod-security-standards),
/// the checks that apply to these pods: what `pod` breaks of `level`.
fn pod_security_violations(pod: &Value, restricted: bool) -> Vec<String> {
    let mut out = Vec::new();
    let containers: Vec<&Value> = pod["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(pod["initContainers"].as_array().into_iter().flatten())
        .collect();
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        if pod[host] == true {
            out.push(host.to_string());
        }
    }
    if pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|v| v.get("hostPath").is_some())
    {
        out.push("hostPath volume".into());
    }
    let baseline_caps = [
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    ];
    let pod_seccomp = pod["securityContext"]["seccompProfile"]["type"].as_str();
    for c in &containers {
        let sc = &c["securityContext"];
        let name = c["name"].as_str().unwrap_or("?");
        if sc["privileged"] == true {
            out.push(format!("{name}: privileged"));
        }
        for cap in sc["capabilities"]["add"].as_array().into_iter().flatten() {
            let cap = cap.as_str().unwrap_or("");
            let allowed = if restricted {
                cap == "NET_BIND_SERVICE"
            } else {
                baseline_caps.contains(&cap)
            };
            if !allowed {
                out.push(format!("{name}: adds capability {cap}"));
            }
        }
        if c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p.get("hostPort").is_some())
        {
            out.push(format!("{name}: hostPort"));
        }
        let seccomp = sc["seccompProfile"]["type"].as_str().or(pod_seccomp);
        if seccomp == Some("Unconfined") {
            out.push(format!("{name}: seccomp Unconfined"));
        }
        if !restricted {
            continue;
        }
        if sc["allowPrivilegeEscalation"] != false {
            out.push(format!("{name}: allowPrivilegeEscalation is not false"));
        }
        let non_root = sc["runAsNonRoot"]
            .as_bool()
            .or(pod["securityContext"]["runAsNonRoot"].as_bool());
        if non_root != Some(true) {
            out.push(format!("{name}: runAsNonRoot is not true"));
        }
        let user = sc["runAsUser"]
            .as_i64()
            .or(pod["securityContext"]["runAsUser"].as_i64());
        if user == Some(0) {
            out.push(format!("{name}: runAsUser 0"));
        }
        if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
            out.push(format!(
                "{name}: seccompProfile is not RuntimeDefault or Localhost"
            ));
        }
        let drops_all = sc["capabilities"]["drop"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| d == "ALL");
        if !drops_all {
            out.push(format!("{name}: capabilities do not drop ALL"));
        }
    }
    if restricted {
        let allowed = [
            "configMap",
            "csi",
            "downwardAPI",
            "emptyDir",
            "ephemeral",
            "persistentVolumeClaim",
            "projected",
            "secret",
            "name",
        ];
        for v in pod["volumes"].as_array().into_iter().flatten() {
            for key in v.as_object().unwrap().keys() {
                if !allowed.contains(&key.as_str()) {
                    out.push(format!("volume type {key}"));
                }
            }
        }
    }
    out
}

/// The controller passes Pod Security "restricted", the agent pod
/// "baseline" (the namespace enforces baseline and audits restricted), and
/// the agent pod mounts no service account token.
#[test]
fn pods_meet_the_pod_security_standards_the_namespace_sets() {
    let objects = rendered();
    let ns = find(&objects, "Namespace", "bakery");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "baseline"
    );
    let deploy = find(&objects, "Deployment", "bakery-server");
    let controller = &deploy["spec"]["template"]["spec"];
    assert_eq!(
        pod_security_violations(controller, true),
        Vec::<String>::new()
    );
    assert_eq!(
        controller["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
        true
    );
    let probe = &controller["containers"][0];
    assert!(
        probe["startupProbe"].is_object(),
        "start-up loads the journal before serving"
    );
    assert!(
        probe["readinessProbe"]["timeoutSeconds"].as_i64().unwrap() > 5,
        "above /readyz's 5 s"
    );
    let agent = agent_pod();
    let spec = &agent["spec"];
    assert_eq!(pod_security_violations(spec, false), Vec::<String>::new());
    assert_eq!(spec["automountServiceAccountToken"], false);
    let resources = &spec["containers"][0]["resources"];
    assert_eq!(
        resources["requests"]["ephemeral-storage"], "50Gi",
        "{resources}"
    );
    assert_eq!(resources["limits"]["ephemeral-storage"], "50Gi");
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    // The checker finds what it is for: the agent is not "restricted".
    assert!(!pod_security_violations(spec, true).is_empty());
    let mut privileged = spec.clone();
    privileged["containers"][0]["securityContext"] = serde_json::json!({"privileged": true});
    assert_eq!(
        pod_security_violations(&privileged, false),
        ["agent: privileged"]
    );
    // In-cluster agents reach the Service, not the Ingress.
    let secret = find(&objects, "Secret", "bakery-");
    let k8s_url = secret["data"]["K8S_CONTROLLER_URL"].as_str().unwrap();
    let k8s_url = String::from_utf8(base64_decode(k8s_url)).unwrap();
    assert!(k8s_url.contains(".svc:8080"), "{k8s_url}");
    let ing = find(&objects, "Ingress", "bakery-server");
    assert_eq!(ing["spec"]["ingressClassName"], "nginx");
    assert_eq!(
        ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-request-buffering"],
        "off"
    );
    assert!(ing["spec"]["tls"][0]["secretName"].is_string());
}

/// checkov's Kubernetes rules on the objects as applied: every finding is
/// fixed or skipped on the object with a written reason (deploy.yaml).
#[test]
fn checkov_passes_on_the_rendered_objects() {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("rendered.yaml");
    std::fs::write(&file, rendered_yaml()).unwrap();
    checkers::checkov_passes(&["-f", file.to_str().unwrap(), "--framework", "kubernetes"]);
}

/// The PostgreSQL overlay (examples/server/k8s-postgres, docs/state.md): the
/// base without its volume, two replicas (one a standby) kept one at a
/// time through a drain, the database's settings in a Secret of their own
/// that the controller reads; and checkov passes on it as on the base.
#[test]
fn the_postgres_overlay_needs_no_volume_and_its_secret_is_read() {
    let yaml = rendered_yaml_of("k8s-postgres");
    let objects = parse(&yaml);
    assert!(
        !objects.iter().any(|o| o["kind"] == "PersistentVolumeClaim"),
        "no volume claim"
    );
    let deploy = find(&objects, "Deployment", "bakery-server");
    assert_eq!(deploy["spec"]["replicas"], 2, "one active, one standby");
    let pdb = find(&objects, "PodDisruptionBudget", "bakery-server");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let pod = &deploy["spec"]["template"]["spec"];
    let data = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "data")
        .unwrap();
    assert!(data["emptyDir"].is_object() && data.get("persistentVolumeClaim").is_none());
    let env = pod["containers"][0]["env"].as_array().unwrap();
    let replica = env.iter().find(|e| e["name"] == "REPLICA_URL").unwrap();
    assert_eq!(replica["value"], "http://$(POD_IP):8080");
    let pod_ip = env.iter().position(|e| e["name"] == "POD_IP").unwrap();
    let position = env.iter().position(|e| e["name"] == "REPLICA_URL").unwrap();
    assert!(
        pod_ip < position,
        "POD_IP is defined before REPLICA_URL uses it"
    );
    assert!(
        env.iter().any(|e| e["name"] == "DATA_DIR"),
        "the base's env stays"
    );
    let state = find(&objects, "Secret", "bakery-state");
    let name = state["metadata"]["name"].as_str().unwrap();
    let from: Vec<&str> = pod["containers"][0]["envFrom"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["secretRef"]["name"].as_str().unwrap())
        .collect();
    // The base's settings and the database's.
    let base = |n: &&str| n.starts_with("bakery-") && !n.starts_with("bakery-state");
    assert!(from.contains(&name) && from.iter().any(base), "{from:?}");
    let vars: Vec<(String, String)> = state["data"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            // kubectl folds a long value over lines.
            let text: String = v.as_str().unwrap().split_whitespace().collect();
            let value = String::from_utf8(base64_decode(&text)).unwrap();
            (k.clone(), value)
        })
        .collect();
    let keys: Vec<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["DATABASE_URL", "STANDBY", "STATE_KEY"]);
    let config = bakery_controller::Config::from_vars(vars).unwrap();
    assert!(config.database_url.is_some() && config.state_key.is_some() && config.standby);

    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("rendered.yaml");
    std::fs::write(&file, &yaml).unwrap();
    checkers::checkov_passes(&["-f", file.to_str().unwrap(), "--framework", "kubernetes"]);
}
