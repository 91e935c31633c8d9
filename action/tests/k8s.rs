//! The k8s platform against kmock (scripts/kmock-server.py), a Kubernetes API
//! emulator, not a cluster: it stores pods and streams watch events, but
//! schedules and runs nothing. The test plays the kubelet: it patches pod
//! status (Running, Failed with a reason, Pending with a waiting reason) and,
//! for the full flow, starts `bakery-agent` with exactly the pod's environment
//! (buildah in place of the Kaniko image), so the build runs to a pushed image.

mod support;
use support::provenance::image_entries;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

struct Kube {
    api: Server,
    controller: Server,
    registry: Server,
    base: String,
    agents: Vec<Child>,
    work: tempfile::TempDir,
}

impl Drop for Kube {
    fn drop(&mut self) {
        for a in &mut self.agents {
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}

fn kmock() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kmock-server.py");
    let child = Command::new("python3")
        .arg(script)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server { child, dir, port };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Command::new("curl")
        .args([
            "-fs",
            "-o",
            "/dev/null",
            &format!("{}/api/v1/namespaces/bakery/pods", server.url()),
        ])
        .status()
        .map_or(true, |s| !s.success())
    {
        assert!(Instant::now() < deadline, "kmock did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}

fn curl_json(args: &[&str]) -> Value {
    let out = Command::new("curl")
        .arg("-fsS")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

impl Kube {
    fn start(extra_env: &[(&str, &str)], pre: impl FnOnce(&Server)) -> Kube {
        let registry = registry();
        let base = push_base_image(&registry);
        let api = kmock();
        pre(&api);
        let kubeconfig = api.dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: kmock\n  cluster:\n    server: {}\nusers:\n- name: test\n  user:\n    token: test\ncontexts:\n- name: kmock\n  context:\n    cluster: kmock\n    user: test\n    namespace: bakery\ncurrent-context: kmock\n",
                api.url()
            ),
        )
        .unwrap();
        let agent_config = api.dir.path().join("agent.yaml");
        std::fs::write(
            &agent_config,
            "serviceAccountName: bakery-agent\nnodeSelector:\n  pool: builds\narchNodeSelector:\n  arm64:\n    pool: builds-arm\ntolerations:\n- key: arch\n  operator: Equal\n  value: arm64\n  effect: NoSchedule\nimagePullSecrets: [agent-pull]\n",
        )
        .unwrap();
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let mut env = vec![
            ("DEFAULT_PLATFORM", "k8s"),
            ("K8S_NAMESPACE", "bakery"),
            ("AGENT_IMAGE", "registry.example/bakery-agent:test"),
            ("CONTROLLER_URL", url.as_str()),
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("K8S_AGENT_CONFIG", agent_config.to_str().unwrap()),
        ];
        env.extend_from_slice(extra_env);
        let controller = controller_on(port, &env);
        Kube {
            api,
            controller,
            registry,
            base,
            agents: Vec::new(),
            work: tempfile::tempdir().unwrap(),
        }
    }

    fn pods(&self) -> Vec<Value> {
        curl_json(&[&format!("{}/api/v1/namespaces/bakery/pods", self.api.url())])["items"]
            .as_array()
            .unwrap()
            .clone()
    }

    fn pod_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .pods()
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    }

    fn patch_status(&self, name: &str, status: Value) {
        curl_json(&[
            "-X",
            "PATCH",
            "-H",
            "content-type: application/merge-patch+json",
            &format!(
                "{}/api/v1/namespaces/bakery/pods/{name}/status",
                self.api.url()
            ),
            "-d",
            &json!({ "status": status }).to_string(),
        ]);
    }

    fn submit(&self, dockerfile_arm64: &str) -> (String, tempfile::TempDir) {
        self.submit_both(
            "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo ok > /ok.txt\n",
            dockerfile_arm64,
        )
    }

    fn submit_both(&self, dockerfile: &str, dockerfile_arm64: &str) -> (String, tempfile::TempDir) {
        let repo = project(&[
            ("Dockerfile", dockerfile),
            ("Dockerfile.arm64", dockerfile_arm64),
            (
                "config.yaml",
                &format!(
                    "global:\n  cpu: 1\n  memory: 2G\n  kaniko-credentials:\n    - {{registry: {r}, username: ci, password: k8s-registry-pw-5521}}\n  kaniko:\n    destination: {r}/k8s/app:1\n    build-args: {{BASE_IMAGE: {b}}}\nbake:\n  - arch: amd64\n  - arch: arm64\n    kaniko: {{dockerfile: Dockerfile.arm64}}\n",
                    r = self.registry.host(),
                    b = self.base
                ),
            ),
        ]);
        (submit_detached(repo.path(), &self.controller.url()), repo)
    }

    fn status(&self, id: &str) -> Value {
        curl_json(&[&format!("{}/v1/builds/{id}", self.controller.url())])
    }

    fn wait_pods(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pods: Vec<Value> = self
                .pods()
                .into_iter()
                .filter(|p| p["metadata"]["labels"]["bakery.dev/task"].is_string())
                .collect();
            if pods.len() >= n {
                return pods;
            }
            assert!(Instant::now() < deadline, "pods not created");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_end(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let s = self.status(id);
            if ["succeeded", "failed", "cancelled"].contains(&s["state"].as_str().unwrap()) {
                return s;
            }
            assert!(Instant::now() < deadline, "build still running: {s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Plays the kubelet for one pod: Running, then the agent with the pod's env.
    fn run(&mut self, pod: &Value) {
        let name = pod["metadata"]["name"].as_str().unwrap();
        self.patch_status(name, json!({"phase": "Running"}));
        let mut cmd = Command::new(sibling_binary("bakery-agent"));
        cmd.env_clear().env("PATH", std::env::var("PATH").unwrap());
        for e in pod["spec"]["containers"][0]["env"].as_array().unwrap() {
            cmd.env(e["name"].as_str().unwrap(), e["value"].as_str().unwrap());
        }
        cmd.env("BAKERY_BUILDER", "buildah")
            .env("BAKERY_WORK_DIR", self.work.path().join(name));
        self.agents.push(cmd.spawn().unwrap());
    }
}

fn labelled(name: &str, labels: Value) -> String {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "bakery", "labels": labels}}).to_string()
}

#[test]
fn k8s_build_runs_in_agent_pods_on_each_arch() {
    let mut kube = Kube::start(&[], |api| {
        let url = format!("{}/api/v1/namespaces/bakery/pods", api.url());
        for (name, labels) in [
            (
                "bakery-orphan-amd64",
                json!({"app.kubernetes.io/managed-by": "bakery", "bakery.dev/owner": "bakery"}),
            ),
            (
                "other-owner",
                json!({"app.kubernetes.io/managed-by": "bakery", "bakery.dev/owner": "someone-else"}),
            ),
            ("unrelated", json!({"app": "web"})),
        ] {
            curl_json(&[
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                &url,
                "-d",
                &labelled(name, labels),
            ]);
        }
    });
    // Start-up removed our orphan only.
    assert_eq!(kube.pod_names(), ["other-owner", "unrelated"]);

    let (id, _repo) = kube.submit("FROM scratch\nCOPY Dockerfile /\n");
    let pods = kube.wait_pods(2);
    for pod in &pods {
        let arch = pod["metadata"]["labels"]["bakery.dev/arch"]
            .as_str()
            .unwrap();
        let spec = &pod["spec"];
        assert_eq!(pod["metadata"]["name"], format!("bakery-{id}-{arch}"));
        assert_eq!(pod["metadata"]["labels"]["bakery.dev/build"], id.as_str());
        assert_eq!(pod["metadata"]["labels"]["bakery.dev/owner"], "bakery");
        assert_eq!(spec["restartPolicy"], "Never");
        assert_eq!(
            spec["shareProcessNamespace"], true,
            "the pause container is PID 1 and reaps"
        );
        assert_eq!(
            spec["activeDeadlineSeconds"], 1200,
            "BUILD_TASK_TIMEOUT + BUILD_RESULT_TIMEOUT"
        );
        assert_eq!(spec["serviceAccountName"], "bakery-agent");
        assert_eq!(spec["nodeSelector"]["kubernetes.io/arch"], arch);
        assert_eq!(
            spec["nodeSelector"]["pool"],
            if arch == "arm64" {
                "builds-arm"
            } else {
                "builds"
            }
        );
        assert_eq!(spec["tolerations"][0]["key"], "arch");
        assert_eq!(spec["imagePullSecrets"][0]["name"], "agent-pull");
        let c = &spec["containers"][0];
        assert_eq!(c["image"], "registry.example/bakery-agent:test");
        assert_eq!(
            c["resources"]["requests"],
            json!({"cpu": "1000m", "memory": "2048Mi"})
        );
        assert_eq!(
            c["resources"]["limits"],
            json!({"cpu": "1000m", "memory": "2048Mi"})
        );
        let names: Vec<&str> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "BAKERY_CONTROLLER_URL",
                "BAKERY_DEADLINE",
                "BAKERY_TASK_ID",
                "BAKERY_TASK_TOKEN",
                "BAKERY_BUILDER"
            ]
        );
        assert!(
            !pod.to_string().contains("k8s-registry-pw-5521"),
            "no secret in the pod spec"
        );
    }
    for pod in &pods {
        kube.run(pod);
    }
    let status = kube.wait_end(&id);
    assert_eq!(status["state"], "succeeded", "{status}");
    let index = raw_manifest(&format!("{}/k8s/app:1", kube.registry.host()));
    assert_eq!(image_entries(&index).len(), 2);
    // Our pods are deleted; the others stay.
    wait_for("our pods deleted, the others kept", || {
        kube.pod_names() == ["other-owner", "unrelated"]
    });
}

/// The kubelet evicting a pod for memory pressure.
fn evicted() -> Value {
    json!({
        "phase": "Failed",
        "reason": "Evicted",
        "message": "The node was low on resource: memory. Container agent was using 2100Mi, which exceeds its request of 2048Mi.",
        "containerStatuses": [{"name": "agent", "ready": false, "restartCount": 0, "image": "x", "imageID": "", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]
    })
}

impl Kube {
    /// The pod named `name`, once it exists.
    fn wait_pod(&self, name: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(pod) = self
                .pods()
                .into_iter()
                .find(|p| p["metadata"]["name"] == name)
            {
                return pod;
            }
            assert!(
                Instant::now() < deadline,
                "no pod {name}: {:?}",
                self.pod_names()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The build's log as `curl` reads it from the controller.
    fn log(&self, id: &str) -> String {
        let out = Command::new("curl")
            .args(["-fsS", "--max-time", "20"])
            .arg(format!("{}/v1/builds/{id}/logs", self.controller.url()))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn an_evicted_pod_is_started_again_once_then_fails_the_build_with_the_reason() {
    let kube = Kube::start(&[], |_| {});
    let (id, _repo) = kube.submit("FROM scratch\nCOPY Dockerfile /\n");
    kube.wait_pods(2);
    let first = format!("bakery-{id}-amd64");
    kube.patch_status(&first, evicted());
    // A second pod, under another name: the first is deleted, not reused.
    let second = format!("bakery-{id}-amd64-2");
    let pod = kube.wait_pod(&second);
    assert_eq!(
        pod["metadata"]["labels"]["bakery.dev/task"],
        format!("{id}-amd64")
    );
    wait_for("the evicted pod deleted", || {
        !kube.pod_names().contains(&first)
    });
    assert_eq!(kube.status(&id)["state"], "running");
    // Evicted again: there is no third pod.
    kube.patch_status(&second, evicted());
    let started = Instant::now();
    let status = kube.wait_end(&id);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(status["state"], "failed");
    let error = status["error"].as_str().unwrap();
    assert!(
        error.contains("pod failed: Evicted: The node was low on resource: memory.")
            && error.contains("exit code 137 (OOMKilled)"),
        "{error}"
    );
    let log = kube.log(&id);
    assert_eq!(
        log.matches("starting the amd64 agent again (once)").count(),
        1,
        "{log}"
    );
    wait_for("every agent pod deleted", || kube.pod_names().is_empty());
}

/// `kubectl drain` (or Karpenter consolidating a node) evicts the pod
/// through the Eviction API: Kubernetes marks it with a DisruptionTarget
/// condition and deletes it. The arch starts again and the build succeeds.
#[test]
fn a_pod_drained_off_its_node_is_started_again_and_the_build_succeeds() {
    let mut kube = Kube::start(&[], |_| {});
    let (id, _repo) = kube.submit("FROM scratch\nCOPY Dockerfile /\n");
    let pods = kube.wait_pods(2);
    let first = format!("bakery-{id}-amd64");
    kube.patch_status(
        &first,
        json!({"phase": "Running", "conditions": [{"type": "DisruptionTarget", "status": "True",
            "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting"}]}),
    );
    curl_json(&[
        "-X",
        "DELETE",
        &format!("{}/api/v1/namespaces/bakery/pods/{first}", kube.api.url()),
    ]);
    let second = kube.wait_pod(&format!("bakery-{id}-amd64-2"));
    let arm64 = pods
        .iter()
        .find(|p| p["metadata"]["labels"]["bakery.dev/arch"] == "arm64")
        .unwrap()
        .clone();
    kube.run(&arm64);
    kube.run(&second);
    let status = kube.wait_end(&id);
    assert_eq!(status["state"], "succeeded", "{status}");
    let log = kube.log(&id);
    assert!(
        log.contains(
            "the cluster took the pod away: EvictionByEvictionAPI: Eviction API: evicting"
        ) && log.contains("starting the amd64 agent again (once)"),
        "{log}"
    );
    let index = raw_manifest(&format!("{}/k8s/app:1", kube.registry.host()));
    assert_eq!(image_entries(&index).len(), 2);
    wait_for("every agent pod deleted", || kube.pod_names().is_empty());
}

#[test]
fn a_pod_stuck_pulling_its_image_fails_at_the_task_timeout_with_the_reason() {
    let kube = Kube::start(&[("BUILD_TASK_TIMEOUT", "2s")], |_| {});
    let waiting = |reason: &str, message: &str| {
        json!({
            "phase": "Pending",
            "containerStatuses": [{"name": "agent", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
                "state": {"waiting": {"reason": reason, "message": message}}}]
        })
    };
    let (id, _repo) = kube.submit("FROM scratch\nCOPY Dockerfile /\n");
    for pod in kube.wait_pods(2) {
        let name = pod["metadata"]["name"].as_str().unwrap();
        kube.patch_status(
            name,
            waiting(
                "ImagePullBackOff",
                "Back-off pulling image \"registry.example/bakery-agent:test\"",
            ),
        );
    }
    let status = kube.wait_end(&id);
    assert_eq!(status["state"], "failed");
    let error = status["error"].as_str().unwrap();
    assert!(
        error.contains("did not start within BUILD_TASK_TIMEOUT (2s): ImagePullBackOff: Back-off pulling image"),
        "{error}"
    );
    wait_for("every agent pod deleted", || kube.pod_names().is_empty());

    // Pods that get past ContainerCreating and run, but whose agents never
    // reach the controller: the stale reason is not blamed, the address is.
    let (id, _repo) = kube.submit("FROM scratch\nCOPY Dockerfile /\n");
    for pod in kube.wait_pods(2) {
        let name = pod["metadata"]["name"].as_str().unwrap();
        kube.patch_status(name, waiting("ContainerCreating", "creating"));
        std::thread::sleep(Duration::from_millis(200));
        kube.patch_status(name, json!({"phase": "Running", "containerStatuses": []}));
    }
    let status = kube.wait_end(&id);
    assert_eq!(status["state"], "failed");
    let error = status["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "did not start within BUILD_TASK_TIMEOUT (2s): its pod runs, but its agent never checked in with the controller at {} (CONTROLLER_URL)",
            kube.controller.url()
        )) && !error.contains("ContainerCreating"),
        "{error}"
    );
    wait_for("every agent pod deleted", || kube.pod_names().is_empty());
}

/// A pod deleted mid-`RUN` (kubectl delete, a drain, a cancelled build):
/// Kubernetes sends the agent, PID 1 of its container, SIGTERM. It stops
/// the builder with everything the step started, says so in the build log,
/// and exits at once rather than after the grace period.
#[test]
fn an_agent_told_to_stop_ends_its_build_s_processes_and_exits_at_once() {
    let mut kube = Kube::start(&[], |_| {});
    let marker = format!("{}", 40_000 + std::process::id() % 20_000);
    let (id, _repo) = kube.submit_both(
        &format!("ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}}\nRUN sleep {marker} & sleep {marker}\n"),
        "FROM scratch\nCOPY Dockerfile /\n",
    );
    let pods = kube.wait_pods(2);
    let amd64 = pods
        .iter()
        .find(|p| p["metadata"]["labels"]["bakery.dev/arch"] == "amd64")
        .unwrap()
        .clone();
    kube.run(&amd64);
    let running = || {
        let out = Command::new("pgrep")
            .args(["-f", &format!("^sleep {marker}$")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while running() < 2 {
        assert!(Instant::now() < deadline, "the RUN step never started");
        std::thread::sleep(Duration::from_millis(200));
    }
    let agent = kube.agents.last_mut().unwrap();
    let stopped = Instant::now();
    Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .unwrap();
    loop {
        if agent.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(15),
            "the agent was still running 15 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(running(), 0, "the RUN step's processes were stopped too");
    let status = kube.status(&id);
    assert_eq!(
        status["state"], "running",
        "no result: the platform says why"
    );
    let cancel = Command::new("curl")
        .args(["-fsS", "-X", "POST"])
        .arg(format!("{}/v1/builds/{id}/cancel", kube.controller.url()))
        .status()
        .unwrap();
    assert!(cancel.success());
    kube.wait_end(&id);
    let log = kube.log(&id);
    assert!(
        log.contains("bakery-agent: SIGTERM: the platform is stopping this agent"),
        "{log}"
    );
}
