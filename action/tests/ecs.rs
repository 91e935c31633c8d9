//! The ECS platform against moto_server (through scripts/moto-compat-proxy.py,
//! which only fixes moto's number-for-string container fields).
//!
//! moto registers task definitions and records tasks but runs no container,
//! so the test plays Fargate: for each RUNNING task it starts `bakery-agent`
//! with exactly the environment the task's RunTask override gives it (with
//! buildah in place of the Kaniko image, which cannot run here), and the build
//! runs to a pushed image in a real registry.

mod support;
use support::provenance::image_entries;

use std::collections::HashSet;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const SECRET: &str = "ecs-registry-password-7f3a";
const IMAGE_PULL_SECRET: &str = "agent-image-pull-password-91c2";

struct Ecs {
    /// Every ECS and Secrets Manager request, as the controller sent it.
    requests: tempfile::TempDir,
    moto: Server,
    _proxy: Server,
    controller: Server,
    registry: Server,
    base: String,
    /// The agents started: (bakery task id, ECS task ARN, process).
    agents: Vec<(String, String, Child)>,
    started: HashSet<String>,
    work: tempfile::TempDir,
}

impl Drop for Ecs {
    fn drop(&mut self) {
        for (_, _, a) in &mut self.agents {
            kill_group(a);
        }
    }
}

impl Ecs {
    /// moto with the account set up, `pre` run against it, then a controller on ECS.
    fn start(pre: impl FnOnce(&str)) -> Ecs {
        Ecs::start_with(|moto, _| pre(moto), &[])
    }

    /// The requests so far, parsed.
    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(self.requests.path().join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// scripts/validate-aws-requests.py: every request against botocore's
    /// ECS and Secrets Manager models, and every call against the
    /// Terraform example's server policy.
    fn validate_requests(&self) -> String {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = Command::new("python3")
            .arg(root.join("scripts/validate-aws-requests.py"))
            .arg(self.requests.path().join("requests.jsonl"))
            .arg("--iam")
            .arg(root.join("examples/server/terraform/main.tf"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// With fault injection in the proxy (see scripts/moto-compat-proxy.py).
    fn start_with(pre: impl FnOnce(&str, &Value), proxy_env: &[(&str, &str)]) -> Ecs {
        Ecs::start_full(pre, proxy_env, &[])
    }

    /// As [`Ecs::start_with`], the controller with `controller_env` too.
    fn start_full(
        pre: impl FnOnce(&str, &Value),
        proxy_env: &[(&str, &str)],
        controller_env: &[(&str, &str)],
    ) -> Ecs {
        let registry = registry();
        let base = push_base_image(&registry);
        let moto = moto();
        let fixture = ecs_fixture(&["setup", &moto.url()]);
        pre(&moto.url(), &fixture);
        let requests = tempfile::tempdir().unwrap();
        let log = requests.path().join("requests.jsonl");
        let mut proxy_env = proxy_env.to_vec();
        // The default placement, a capacity provider, which moto cannot take.
        proxy_env.extend([
            ("REQUEST_LOG", log.to_str().unwrap()),
            ("CAPACITY_PROVIDERS", "translate"),
        ]);
        let proxy = moto_proxy_with(&moto, &proxy_env);
        let port = free_port();
        let controller_url = format!("http://127.0.0.1:{port}");
        let env = [
            ("DEFAULT_PLATFORM", "ecs"),
            ("AWS_ENDPOINT_URL", &*proxy.url()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            ("ECS_CLUSTER", fixture["cluster"].as_str().unwrap()),
            ("ECS_SUBNETS", fixture["subnet"].as_str().unwrap()),
            (
                "ECS_SECURITY_GROUPS",
                fixture["security_group"].as_str().unwrap(),
            ),
            ("ECS_EXEC_ROLE_ARN", fixture["exec_role"].as_str().unwrap()),
            ("ECS_TASK_ROLE_ARN", fixture["task_role"].as_str().unwrap()),
            ("AGENT_IMAGE", "registry.example/bakery-agent:test"),
            ("CONTROLLER_URL", &controller_url),
            ("ECS_POLL_INTERVAL", "200ms"),
            ("CLEANUP_ECS_TASK_DEFINITIONS", "true"),
            ("AGENT_IMAGE_USERNAME", "puller"),
            ("AGENT_IMAGE_PASSWORD", IMAGE_PULL_SECRET),
            ("ECS_LOG_GROUP", "/bakery/agents"),
        ];
        let mut env = env.to_vec();
        env.extend_from_slice(controller_env);
        let controller = controller_on(port, &env);
        Ecs {
            requests,
            moto,
            _proxy: proxy,
            controller,
            registry,
            base,
            agents: Vec::new(),
            started: HashSet::new(),
            work: tempfile::tempdir().unwrap(),
        }
    }

    fn dump(&self) -> Value {
        ecs_fixture(&["dump", &self.moto.url()])
    }

    fn project(&self) -> tempfile::TempDir {
        project(&[
            ("Dockerfile", "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo ok > /ok.txt\n"),
            ("Dockerfile.arm64", "FROM scratch\nCOPY Dockerfile /\n"),
            (
                "config.yaml",
                &format!(
                    "global:\n  spot: true\n  kaniko-credentials:\n    - {{registry: {r}, username: ci, password: {SECRET}}}\n  kaniko:\n    destination: {r}/ecs/app:1\n    build-args: {{BASE_IMAGE: {b}}}\nbake:\n  - arch: amd64\n  - arch: arm64\n    cpu: 1\n    memory: 3G\n    disk: 30G\n    kaniko: {{dockerfile: Dockerfile.arm64}}\n",
                    r = self.registry.host(),
                    b = self.base
                ),
            ),
        ])
    }

    fn submit(&self, repo: &std::path::Path) -> String {
        submit_detached(repo, &self.controller.url())
    }

    /// Plays Fargate: starts an agent for every RUNNING task not started yet.
    fn run_agents(&mut self) {
        for task in self.dump()["tasks"].as_array().unwrap() {
            let arn = task["taskArn"].as_str().unwrap().to_string();
            if task["lastStatus"] != "RUNNING" || self.started.contains(&arn) {
                continue;
            }
            let env = &task["overrides"]["containerOverrides"][0]["environment"];
            if !env.is_array() {
                continue; // not one of bakery's (a test's stand-in orphan)
            }
            let task_id = env
                .as_array()
                .unwrap()
                .iter()
                .find(|kv| kv["name"] == "BAKERY_TASK_ID")
                .and_then(|kv| kv["value"].as_str())
                .unwrap_or_default()
                .to_string();
            let mut cmd = Command::new(sibling_binary("bakery-agent"));
            // Its own group, so that the builder dies with it when a test
            // plays ECS taking the task away.
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            cmd.env_clear().env("PATH", std::env::var("PATH").unwrap());
            for kv in env.as_array().unwrap() {
                cmd.env(kv["name"].as_str().unwrap(), kv["value"].as_str().unwrap());
            }
            cmd.env("BAKERY_BUILDER", "buildah").env(
                "BAKERY_WORK_DIR",
                self.work.path().join(arn.rsplit('/').next().unwrap()),
            );
            self.agents
                .push((task_id, arn.clone(), cmd.spawn().unwrap()));
            self.started.insert(arn);
        }
    }

    fn status(&self, id: &str) -> Value {
        let out = Command::new("curl")
            .args(["-fsS", &format!("{}/v1/builds/{id}", self.controller.url())])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn wait(&mut self, id: &str, play_fargate: bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if play_fargate {
                self.run_agents();
            }
            let status = self.status(id);
            if ["succeeded", "failed", "cancelled"].contains(&status["state"].as_str().unwrap()) {
                return status;
            }
            assert!(Instant::now() < deadline, "build still running: {status}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Kills an agent and its builder (its process group), as ECS ends a task.
fn kill_group(agent: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", agent.id())])
        .status();
    let _ = agent.kill();
    let _ = agent.wait();
}

fn family_revisions(dump: &Value, family: &str, status: &str) -> Vec<u64> {
    dump["task_definitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["family"] == family && d["status"] == status)
        .map(|d| d["revision"].as_u64().unwrap())
        .collect()
}

#[test]
fn ecs_builds_run_on_fargate_task_definitions_per_arch() {
    let mut ecs = Ecs::start(|moto| {
        // Left over by this controller with other settings: stale, ours.
        ecs_fixture(&[
            "register",
            moto,
            "bakery-agent-amd64-512cpu-2048mib",
            "bakery",
            "0000000000000000",
        ]);
        // Someone else's, although the family name matches our prefix.
        ecs_fixture(&[
            "register",
            moto,
            "bakery-agent-amd64-512cpu-2048mib",
            "-",
            "-",
        ]);
        ecs_fixture(&["register", moto, "bakery-agent-custom", "other-team", "x"]);
        ecs_fixture(&["register", moto, "unrelated-service", "-", "-"]);
    });

    // Start-up cleanup removed exactly our stale revision.
    let dump = ecs.dump();
    assert_eq!(
        family_revisions(&dump, "bakery-agent-amd64-512cpu-2048mib", "INACTIVE"),
        [1]
    );
    assert_eq!(
        family_revisions(&dump, "bakery-agent-amd64-512cpu-2048mib", "ACTIVE"),
        [2]
    );
    assert_eq!(
        family_revisions(&dump, "bakery-agent-custom", "ACTIVE"),
        [1]
    );
    assert_eq!(family_revisions(&dump, "unrelated-service", "ACTIVE"), [1]);

    let repo = ecs.project();
    let id = ecs.submit(repo.path());
    let status = ecs.wait(&id, true);
    assert_eq!(status["state"], "succeeded", "{status}");
    assert!(status["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["platform"] == "ecs"));

    // The index joins both arches in the real registry.
    let index = raw_manifest(&format!("{}/ecs/app:1", ecs.registry.host()));
    assert_eq!(image_entries(&index).len(), 2);
    // Each image's provenance names Kaniko on ECS, the production builder.
    let statements = support::provenance::provenance_statements(
        &format!("{}/ecs/app", ecs.registry.host()),
        &index,
    );
    for s in &statements {
        let predicate = &s["predicate"];
        assert_eq!(
            predicate["runDetails"]["builder"]["version"]["builder"],
            "kaniko"
        );
        assert_eq!(
            predicate["buildDefinition"]["internalParameters"]["agentPlatform"],
            "ecs"
        );
    }

    let dump = ecs.dump();
    // One family per (arch, size); arm64 asked for 1 vCPU / 3G, a valid Fargate pair.
    let ours: Vec<&Value> = dump["task_definitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| {
            d["status"] == "ACTIVE"
                && d["tags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|t| t["key"] == "bakery:owner" && t["value"] == "bakery")
                && d["containerDefinitions"][0]["image"] == "registry.example/bakery-agent:test"
        })
        .collect();
    let mut families: Vec<&str> = ours.iter().map(|d| d["family"].as_str().unwrap()).collect();
    families.sort_unstable();
    assert_eq!(
        families,
        [
            "bakery-agent-amd64-512cpu-2048mib",
            "bakery-agent-arm64-1024cpu-3072mib"
        ]
    );
    for d in &ours {
        let arm = d["family"].as_str().unwrap().contains("arm64");
        assert_eq!(
            d["runtimePlatform"]["cpuArchitecture"],
            if arm { "ARM64" } else { "X86_64" }
        );
        assert_eq!(d["runtimePlatform"]["operatingSystemFamily"], "LINUX");
        assert_eq!(d["networkMode"], "awsvpc");
        assert_eq!(d["requiresCompatibilities"], serde_json::json!(["FARGATE"]));
        assert_eq!(d["cpu"], if arm { "1024" } else { "512" });
        assert_eq!(d["memory"], if arm { "3072" } else { "2048" });
        assert!(d["executionRoleArn"]
            .as_str()
            .unwrap()
            .ends_with("role/bakery-agent-execution"));
        assert!(d["taskRoleArn"]
            .as_str()
            .unwrap()
            .ends_with("role/bakery-agent-task"));
    }
    // The agent image login went to Secrets Manager, referenced by ARN only.
    let secret = dump["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "bakery/agent-image-registry")
        .expect("secret created");
    for d in &ours {
        let container = &d["containerDefinitions"][0];
        assert_eq!(
            container["repositoryCredentials"]["credentialsParameter"],
            secret["arn"]
        );
        assert_eq!(container["logConfiguration"]["logDriver"], "awslogs");
        assert_eq!(
            container["linuxParameters"]["initProcessEnabled"], true,
            "an init reaps what builds leave behind"
        );
        assert_eq!(
            container["logConfiguration"]["options"]["awslogs-group"],
            "/bakery/agents"
        );
    }
    assert!(!dump.to_string().contains(IMAGE_PULL_SECRET));
    // Every task this build started is stopped, and no secret is anywhere in ECS.
    let tasks = dump["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    for t in tasks {
        assert_eq!(t["lastStatus"], "STOPPED", "{t}");
        assert_eq!(t["launchType"], "FARGATE");
        let names: Vec<&str> = t["overrides"]["containerOverrides"][0]["environment"]
            .as_array()
            .unwrap()
            .iter()
            .map(|kv| kv["name"].as_str().unwrap())
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
    }
    assert!(
        !dump.to_string().contains(SECRET),
        "a registry password reached ECS"
    );

    // The foreign revision 2 was left alone; ours is revision 3.
    assert_eq!(
        family_revisions(&dump, "bakery-agent-amd64-512cpu-2048mib", "ACTIVE"),
        [2, 3]
    );
    assert_eq!(
        family_revisions(&dump, "bakery-agent-arm64-1024cpu-3072mib", "ACTIVE"),
        [1]
    );

    // A second build reuses the task definitions: no new revision.
    let id = ecs.submit(repo.path());
    assert_eq!(ecs.wait(&id, true)["state"], "succeeded");
    let again = ecs.dump();
    assert_eq!(
        family_revisions(&again, "bakery-agent-amd64-512cpu-2048mib", "ACTIVE"),
        [2, 3]
    );
    assert_eq!(
        family_revisions(&again, "bakery-agent-arm64-1024cpu-3072mib", "ACTIVE"),
        [1]
    );
    assert_eq!(again["tasks"].as_array().unwrap().len(), 4);
    assert!(again["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["lastStatus"] == "STOPPED"));
    // The default placement went out as a capacity provider strategy.
    let run_tasks: Vec<Value> = ecs
        .requests()
        .into_iter()
        .filter(|r| r["target"].as_str().unwrap().ends_with(".RunTask"))
        .collect();
    assert_eq!(run_tasks.len(), 4);
    // `spot: true`: Fargate Spot for amd64; arm64 on demand (Fargate Spot
    // runs X86_64 tasks only).
    for r in &run_tasks {
        let arch = r["body"]["tags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["key"] == "bakery:arch")
            .map(|t| t["value"].as_str().unwrap().to_string())
            .unwrap();
        let expected = if arch == "amd64" {
            "FARGATE_SPOT"
        } else {
            "FARGATE"
        };
        assert_eq!(
            r["body"]["capacityProviderStrategy"][0]["capacityProvider"], expected,
            "{r}"
        );
        assert!(r["body"].get("launchType").is_none(), "{r}");
    }
    // The arm64 entry's `disk: 30G` is the task's ephemeral storage.
    let disks: Vec<&Value> = run_tasks
        .iter()
        .map(|r| &r["body"]["overrides"]["ephemeralStorage"]["sizeInGiB"])
        .collect();
    assert_eq!(disks.iter().filter(|d| **d == 30).count(), 2, "{disks:?}");
    assert_eq!(disks.iter().filter(|d| d.is_null()).count(), 2, "{disks:?}");
    let checked = ecs.validate_requests();
    for op in [
        "ecs:RunTask",
        "ecs:RegisterTaskDefinition",
        "ecs:DescribeTasks",
        "ecs:StopTask",
        "secretsmanager:CreateSecret",
    ] {
        assert!(checked.contains(op), "{op} was validated: {checked}");
    }
}

/// DescribeTasks not knowing a task right after RunTask (eventual
/// consistency) and Fargate without capacity are ridden out; a task tagged
/// with our owner that no build knows is stopped at start-up, one without
/// our tag is left alone.
#[test]
fn missing_tasks_no_capacity_and_orphans_are_handled_as_ecs_needs() {
    let orphans = std::cell::RefCell::new(Vec::new());
    let mut ecs = Ecs::start_with(
        |moto, fixture| {
            let subnet = fixture["subnet"].as_str().unwrap();
            let sg = fixture["security_group"].as_str().unwrap();
            // Earlier starts stored the login this start is given, then
            // two other passwords: the login goes back to an earlier value
            // (A→B→C→A), whose version has lost every stage, so
            // DescribeSecret no longer lists it. (The proxy answers as
            // Secrets Manager does: DescribeSecret without unlabelled
            // versions, and a PutSecretValue repeating A's token as an
            // ignored retry.)
            let login = serde_json::json!({"username": "puller", "password": IMAGE_PULL_SECRET});
            ecs_fixture(&[
                "secret",
                moto,
                "bakery/agent-image-registry",
                &login.to_string(),
                r#"{"username":"puller","password":"old"}"#,
                r#"{"username":"puller","password":"older"}"#,
            ]);
            for owner in ["bakery", "-"] {
                let arn = ecs_fixture_text(&["orphan", moto, subnet, sg, owner]);
                orphans.borrow_mut().push(arn);
            }
        },
        &[("NO_CAPACITY", "2"), ("MISSING", "3")],
    );
    let tasks = ecs.dump()["tasks"].as_array().unwrap().clone();
    let status_of = |arn: &str| {
        tasks
            .iter()
            .find(|t| t["taskArn"] == arn)
            .map(|t| t["desiredStatus"].clone())
            .unwrap()
    };
    let orphans = orphans.into_inner();
    assert_eq!(status_of(&orphans[0]), "STOPPED", "ours, unknown: stopped");
    assert_eq!(status_of(&orphans[1]), "RUNNING", "not ours: left alone");
    let login = ecs_fixture_text(&["secret", &ecs.moto.url(), "bakery/agent-image-registry"]);
    assert!(
        login.contains(IMAGE_PULL_SECRET),
        "the earlier password is current again: {login}"
    );
    let moved = ecs
        .requests()
        .iter()
        .filter(|r| {
            r["target"]
                .as_str()
                .unwrap()
                .ends_with(".UpdateSecretVersionStage")
        })
        .count();
    assert_eq!(
        moved, 1,
        "the earlier version was made current (its stage moved)"
    );
    let repo = ecs.project();
    let id = ecs.submit(repo.path());
    let status = ecs.wait(&id, true);
    assert_eq!(status["state"], "succeeded", "{status}");
    let run_tasks = ecs
        .requests()
        .iter()
        .filter(|r| r["target"].as_str().unwrap().ends_with(".RunTask"))
        .count();
    assert_eq!(run_tasks, 4, "two refused for capacity, then one per arch");
    ecs.validate_requests();
}

#[test]
fn a_task_that_stops_before_reporting_fails_the_build_with_the_ecs_reason() {
    let mut ecs = Ecs::start(|_| {});
    let repo = ecs.project();
    let id = ecs.submit(repo.path());
    // Do not play Fargate: ECS stops the amd64 task itself.
    let deadline = Instant::now() + Duration::from_secs(30);
    let amd64 = loop {
        let dump = ecs.dump();
        let found = dump["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| {
                t["lastStatus"] == "RUNNING"
                    && t["taskDefinitionArn"].as_str().unwrap().contains("amd64")
            })
            .map(|t| t["taskArn"].as_str().unwrap().to_string());
        if let Some(arn) = found {
            break arn;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(100));
    };
    ecs_fixture(&[
        "stop",
        &ecs.moto.url(),
        &amd64,
        "Essential container in task exited: CannotPullContainerError",
    ]);
    let started = Instant::now();
    let status = ecs.wait(&id, false);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failed at once, not at a timeout"
    );
    assert_eq!(status["state"], "failed");
    let error = status["error"].as_str().unwrap();
    assert!(
        error.contains(
            "ECS task stopped: Essential container in task exited: CannotPullContainerError"
        ),
        "{error}"
    );
    assert!(error.contains("before reporting a result"), "{error}");
    // The arm64 task was stopped too.
    let dump = ecs.dump();
    assert!(
        dump["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["lastStatus"] == "STOPPED"),
        "{dump}"
    );
}

/// Tasks that run but whose agents never reach the controller (a security
/// group that blocks them): the start timeout says so and names the
/// address, rather than blaming the platform or the image.
#[test]
fn a_task_whose_agent_never_checks_in_is_explained_at_the_timeout() {
    let mut ecs = Ecs::start_full(|_, _| {}, &[], &[("BUILD_TASK_TIMEOUT", "3s")]);
    let repo = ecs.project();
    let id = ecs.submit(repo.path());
    let status = ecs.wait(&id, false);
    assert_eq!(status["state"], "failed");
    let error = status["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "did not start within BUILD_TASK_TIMEOUT (3s): the ECS task runs, but its agent never checked in with the controller at {} (CONTROLLER_URL)",
            ecs.controller.url()
        )),
        "{error}"
    );
}

/// ECS answering 503 twice (an outage, throttling): RunTask is retried with
/// backoff and the build goes on to a pushed image.
#[test]
fn a_brief_ecs_outage_is_retried() {
    let mut ecs = Ecs::start_with(|_, _| {}, &[("FAIL_RUNTASK", "2")]);
    let repo = ecs.project();
    let id = ecs.submit(repo.path());
    let status = ecs.wait(&id, true);
    assert_eq!(status["state"], "succeeded", "{status}");
}

/// ECS down for good: the build fails naming the call and ECS's answer,
/// once the retries are spent, and nothing is left running.
#[test]
fn a_persistent_ecs_outage_fails_the_build_with_the_cause() {
    let mut ecs = Ecs::start_with(|_, _| {}, &[("FAIL_RUNTASK", "1000")]);
    let repo = ecs.project();
    let id = ecs.submit(repo.path());
    let status = ecs.wait(&id, false);
    assert_eq!(status["state"], "failed");
    let error = status["error"].as_str().unwrap();
    assert!(error.contains("RunTask"), "{error}");
    assert!(error.contains("ServiceUnavailableException"), "{error}");
    assert!(ecs.dump()["tasks"].as_array().unwrap().is_empty());
}

/// Fargate Spot takes the amd64 task away mid-build (ECS: SIGKILL, then
/// STOPPED with stopCode SpotInterruption): the arch is started again once,
/// on demand, with a new token; its second agent's lines are taken after
/// the first's, and the build succeeds.
#[test]
fn a_spot_interruption_starts_the_arch_again_on_demand() {
    let mut ecs = Ecs::start(|_| {});
    let repo = project(&[
        (
            "Dockerfile",
            "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo first-step && sleep 4 && echo second-step\n",
        ),
        ("Dockerfile.arm64", "FROM scratch\nCOPY Dockerfile /\n"),
        (
            "config.yaml",
            &format!(
                "global:\n  spot: true\n  kaniko:\n    destination: {r}/ecs/spot:1\n    build-args: {{BASE_IMAGE: {b}}}\nbake:\n  - arch: amd64\n  - arch: arm64\n    kaniko: {{dockerfile: Dockerfile.arm64}}\n",
                r = ecs.registry.host(),
                b = ecs.base
            ),
        ),
    ]);
    let id = ecs.submit(repo.path());
    let log_url = format!("{}/v1/builds/{id}/logs", ecs.controller.url());
    let deadline = Instant::now() + Duration::from_secs(60);
    // Until the amd64 agent runs its build step (it has checked in and sent lines).
    let first = loop {
        ecs.run_agents();
        let log = curl_text(&log_url, "1");
        let status = ecs.status(&id);
        let amd64 = ecs
            .agents
            .iter()
            .position(|(t, _, _)| t.ends_with("-amd64"));
        if let (Some(i), true) = (
            amd64,
            log.contains("first-step") && status["tasks"][0]["state"] == "running",
        ) {
            break i;
        }
        assert!(
            Instant::now() < deadline,
            "amd64 never ran: {status}\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let arn = ecs.agents[first].1.clone();
    assert!(arn.contains("task/"), "{arn}");
    kill_group(&mut ecs.agents[first].2);
    ecs_fixture(&[
        "stop",
        &ecs.moto.url(),
        &arn,
        "Your Spot Task was interrupted.",
    ]);
    let status = ecs.wait(&id, true);
    assert_eq!(status["state"], "succeeded", "{status}");
    let log = curl_text(&log_url, "10");
    assert!(
        log.contains("Your Spot Task was interrupted. [SpotInterruption]")
            && log.contains("starting the amd64 agent again on demand (once)"),
        "{log}"
    );
    assert_eq!(
        log.matches("agent started").count(),
        3,
        "two amd64 check-ins, one arm64: {log}"
    );
    assert!(
        log.contains("second-step"),
        "the second agent's lines are taken: {log}"
    );
    // The first RunTask for amd64 asked for Spot, the second for on-demand Fargate.
    let providers: Vec<String> = ecs
        .requests()
        .iter()
        .filter(|r| r["target"].as_str().unwrap().ends_with(".RunTask"))
        .filter(|r| {
            r["body"]["taskDefinition"]
                .as_str()
                .unwrap()
                .contains("amd64")
        })
        .map(|r| r["body"]["capacityProviderStrategy"][0]["capacityProvider"].to_string())
        .collect();
    assert_eq!(
        providers,
        ["\"FARGATE_SPOT\"", "\"FARGATE\""],
        "{providers:?}"
    );
    let dump = ecs.dump();
    assert!(
        dump["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["lastStatus"] == "STOPPED" || t["desiredStatus"] == "STOPPED"),
        "nothing left running: {dump}"
    );
    ecs.validate_requests();
}

/// A build's log as the API serves it: all of it once the build is over,
/// what came within `seconds` while it runs.
fn curl_text(url: &str, seconds: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "-m", seconds, url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
