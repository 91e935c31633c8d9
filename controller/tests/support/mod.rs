//! The controller in-process, with stand-in agents (small shell scripts
//! speaking the protocol with curl) to drive timeouts, crashes and hostile
//! input deterministically. Shared by the controller's test files.

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use bakery_controller::Config;
use bakery_protocol::api::{BuildStatus, CreateBuild, TaskRequest};
use bakery_protocol::spec::{Credential, Secret};
use bakery_protocol::Arch;
use bakery_protocol::BuildSpec;
use reqwest::StatusCode;

pub mod postgres;

pub struct Harness {
    pub running: Option<bakery_controller::Running>,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    /// The environment it started with, kept on restarts (DATABASE_URL).
    env: Vec<(String, String)>,
}

impl Harness {
    /// A controller whose agents are `agent_script` (a shell script body).
    pub async fn new(agent_script: &str, env: &[(&str, &str)]) -> Harness {
        Harness::in_dir(tempfile::tempdir().unwrap(), agent_script, env).await
    }

    /// The same, in `dir` (whose `data` may hold an earlier journal).
    pub async fn in_dir(
        dir: tempfile::TempDir,
        agent_script: &str,
        env: &[(&str, &str)],
    ) -> Harness {
        let agent = dir.path().join("agent.sh");
        std::fs::write(&agent, format!("#!/bin/sh\n{agent_script}\n")).unwrap();
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&agent)
            .status()
            .unwrap();
        let running = bakery_controller::start(Harness::config(dir.path(), env))
            .await
            .unwrap();
        Harness {
            running: Some(running),
            dir,
            http: reqwest::Client::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    pub fn config(dir: &Path, env: &[(&str, &str)]) -> Config {
        let mut vars = vec![
            ("LISTEN_ADDR".to_string(), "127.0.0.1:0".to_string()),
            (
                "DATA_DIR".to_string(),
                dir.join("data").display().to_string(),
            ),
            (
                "AGENT_BINARY".to_string(),
                dir.join("agent.sh").display().to_string(),
            ),
            // The stand-in agents play the protocol (and write files beside
            // their work dirs); the sandbox is tested with real agents
            // (action/tests/isolation.rs).
            ("LOCAL_AGENT_ISOLATION".to_string(), "none".to_string()),
        ];
        // What the test gives wins over these defaults.
        vars.retain(|(k, _)| !env.iter().any(|(given, _)| given == k));
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Config::from_vars(vars).unwrap()
    }

    /// Stops this controller the way SIGTERM does (builds left to resume)
    /// and starts another on the same DATA_DIR, with the environment it
    /// started with and `env` over it.
    pub async fn restart(&mut self, env: &[(&str, &str)]) {
        self.restart_after(env, || {}).await;
    }

    /// [`Harness::restart`], doing `meanwhile` while no controller runs.
    pub async fn restart_after(&mut self, env: &[(&str, &str)], meanwhile: impl FnOnce()) {
        self.running.take().unwrap().suspend().await;
        meanwhile();
        let mut vars: Vec<(&str, &str)> = self
            .env
            .iter()
            .filter(|(k, _)| !env.iter().any(|(over, _)| over == k))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        vars.extend_from_slice(env);
        let config = Harness::config(self.dir.path(), &vars);
        self.running = Some(bakery_controller::start(config).await.unwrap());
    }

    /// The controller's shared state, for what only the process can see.
    pub fn app(&self) -> &std::sync::Arc<bakery_controller::App> {
        &self.running.as_ref().unwrap().app
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.running.as_ref().unwrap().url())
    }

    /// Stores a context the way a client uploads it, returning its key.
    pub async fn upload(&self, body: &[u8]) -> String {
        use sha2::Digest;
        let key = format!(
            "contexts/sha256-{}.tar.gz",
            hex::encode(sha2::Sha256::digest(body))
        );
        let resp = self
            .http
            .put(self.url(&format!("/v1/contexts/{key}")))
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        key
    }

    pub async fn create(&self, request: &CreateBuild) -> String {
        let resp = self
            .http
            .post(self.url("/v1/builds"))
            .json(request)
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "{}",
            resp.text().await.unwrap()
        );
        resp.json::<serde_json::Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub async fn status(&self, id: &str) -> BuildStatus {
        self.http
            .get(self.url(&format!("/v1/builds/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn wait_end(&self, id: &str, limit: Duration) -> BuildStatus {
        let start = Instant::now();
        loop {
            let status = self.status(id).await;
            if status.state.is_terminal() {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "build still {:?} after {limit:?}",
                status.state
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Cancels a build; the answer's status.
    pub async fn cancel(&self, id: &str) -> StatusCode {
        let url = self.url(&format!("/v1/builds/{id}/cancel"));
        self.http.post(url).send().await.unwrap().status()
    }

    /// A finished build's whole log stream, as text.
    pub async fn log_text(&self, id: &str) -> String {
        let url = self.url(&format!("/v1/builds/{id}/logs"));
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn data(&self) -> String {
        self.dir.path().display().to_string()
    }
}

pub fn spec() -> BuildSpec {
    BuildSpec {
        credentials: vec![Credential {
            registry: "r.example".into(),
            username: "u".into(),
            password: Secret::new("top-secret-pw"),
        }],
        ..BuildSpec::new("Dockerfile", Arch::Amd64)
    }
}

pub fn request(key: &str, arches: &[Arch]) -> CreateBuild {
    CreateBuild {
        service: "svc".into(),
        destination: Some("r.example/app:1".into()),
        tags: vec![],
        tasks: arches
            .iter()
            .map(|a| TaskRequest {
                arch: *a,
                push: Some(format!("r.example/app:1_{a}")),
                context_key: key.parse().expect("a context key"),
                context_bytes: None,
                spec: BuildSpec {
                    custom_platform: a.platform().into(),
                    ..spec()
                },
            })
            .collect(),
        provenance: None,
        index_annotations: Default::default(),
        descriptor_annotations: Default::default(),
    }
}

pub fn no_agents_left(dir: &str) -> bool {
    let out = std::process::Command::new("pgrep")
        .args(["-a", "-f", dir])
        .output()
        .unwrap();
    let left: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    if !left.is_empty() {
        eprintln!("still running: {left:?}");
    }
    left.is_empty()
}

/// A stand-in agent speaking the real protocol with curl.
pub fn curl_agent(after_spec: &str) -> String {
    format!(
        r#"auth="Authorization: Bearer $BAKERY_TASK_TOKEN"
base="$BAKERY_CONTROLLER_URL/v1/agent/tasks/$BAKERY_TASK_ID"
mkdir -p "$(dirname "$BAKERY_WORK_DIR")"
curl -fsS -H "$auth" "$base/spec" > "$BAKERY_WORK_DIR.spec" || exit 9
{after_spec}"#
    )
}

/// A stand-in agent that checks in and reports success without a push.
pub fn succeeding_agent(delay: &str) -> String {
    curl_agent(&format!(
        r#"sleep {delay}
curl -fsS -H "$auth" -H 'content-type: application/json' -d '{{"outcome":"succeeded","digest":null}}' "$base/result" || exit 8"#
    ))
}

/// A request for a build that pushes nothing (no destination, no registry).
pub fn unpushed_request(key: &str, arches: &[Arch]) -> CreateBuild {
    let mut r = request(key, arches);
    r.destination = None;
    for t in &mut r.tasks {
        t.push = None;
        t.spec.no_push = true;
    }
    r
}

/// Waits until `check` holds, or panics naming `what`.
pub async fn eventually(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
