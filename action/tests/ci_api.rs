//! Commit status through the CI systems' APIs, against stand-ins that check
//! the requests: GitHub through Prism serving GitHub's published OpenAPI
//! description (it answers 4xx to any request the real API would refuse),
//! GitLab through a server that answers as its REST API documents. Both
//! record every call (scripts/api-recorder.py), and the test asserts on them.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const SHA: &str = "6dcb09b5b57875f334f61aebed695e2e4193db5e";

fn npm_dir() -> PathBuf {
    std::env::var("BAKERY_NPM_DIR").map_or_else(
        |_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/bakery/npm"),
        PathBuf::from,
    )
}

fn wait_port(port: u16, what: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn recorder(upstream: &str) -> (Server, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = dir.path().join("calls.jsonl");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/api-recorder.py");
    let child = Command::new("python3")
        .arg(script)
        .arg(port.to_string())
        .arg(&log)
        .arg(upstream)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port, "the recorder", 20);
    (Server { child, dir, port }, log)
}

fn calls(log: &PathBuf) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn run_bakery(repo: &std::path::Path, env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bakery"))
        .current_dir(repo)
        .args(["--compose", "compose.yaml", "--async", "build"])
        .env_remove("CONTROLLER_URL")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn github_check_runs_follow_each_build_and_pass_prism_validation() {
    let prism_port = free_port();
    let dir = npm_dir();
    let prism = Command::new(dir.join("node_modules/.bin/prism"))
        .args(["mock", "-h", "127.0.0.1", "-p", &prism_port.to_string()])
        .arg(dir.join("node_modules/@octokit/openapi/generated/api.github.com.json"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("Prism is installed (scripts/setup)");
    let _prism = Server {
        child: prism,
        dir: tempfile::tempdir().unwrap(),
        port: prism_port,
    };
    let registry = registry();
    let repo = two_services(&registry, "ci");
    wait_port(prism_port, "Prism", 120);
    let (api, log) = recorder(&format!("http://127.0.0.1:{prism_port}"));

    let (ok, output) = run_bakery(
        repo.path(),
        &[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_WORKSPACE", repo.path().to_str().unwrap()),
            ("GITHUB_API_URL", &api.url()),
            ("GITHUB_SERVER_URL", "https://github.com"),
            ("GITHUB_REPOSITORY", "octo-org/hello"),
            ("GITHUB_RUN_ID", "4242"),
            ("GITHUB_SHA", SHA),
            ("BAKERY_GITHUB_TOKEN", "ghs_test_token_value"),
        ],
    );
    assert!(!ok, "bad fails: {output}");
    assert!(
        !output.contains("could not"),
        "every API call was accepted: {output}"
    );
    assert!(!output.contains("ghs_test_token_value"));

    let calls = calls(&log);
    for call in &calls {
        assert!(
            call["status"].as_u64().unwrap() < 300,
            "Prism refused a request: {call}"
        );
        assert_eq!(call["authorization"], "Bearer ghs_test_token_value");
    }
    for (service, conclusion) in [("good", "success"), ("bad", "failure")] {
        let create = calls
            .iter()
            .find(|c| c["method"] == "POST" && c["body"]["name"] == format!("bakery: {service}"))
            .unwrap_or_else(|| panic!("no check run for {service}: {calls:?}"));
        assert_eq!(create["path"], "/repos/octo-org/hello/check-runs");
        assert_eq!(create["body"]["head_sha"], SHA);
        assert_eq!(create["body"]["status"], "in_progress");
        assert_eq!(
            create["body"]["details_url"],
            "https://github.com/octo-org/hello/actions/runs/4242"
        );
        assert!(
            create["body"]["external_id"]
                .as_str()
                .unwrap()
                .starts_with('b'),
            "the build id"
        );
        let update = calls
            .iter()
            .find(|c| c["method"] == "PATCH" && c["body"]["conclusion"] == conclusion)
            .unwrap_or_else(|| panic!("no completed check run for {service}: {calls:?}"));
        assert!(update["path"]
            .as_str()
            .unwrap()
            .starts_with("/repos/octo-org/hello/check-runs/"));
        assert_eq!(update["body"]["status"], "completed");
        assert!(update["body"]["completed_at"].is_string());
        let summary = update["body"]["output"]["summary"].as_str().unwrap();
        assert!(
            summary.contains(&format!("| {service} | amd64 |")),
            "{summary}"
        );
        if service == "bad" {
            let a = &update["body"]["output"]["annotations"][0];
            assert_eq!(a["path"], "bad/Dockerfile");
            assert_eq!(
                (a["start_line"].as_u64(), a["end_line"].as_u64()),
                (Some(2), Some(2))
            );
            assert_eq!(a["annotation_level"], "failure");
            assert!(a["message"]
                .as_str()
                .unwrap()
                .contains("COPY no-such-file.txt /"));
        } else {
            assert!(update["body"]["output"]["title"]
                .as_str()
                .unwrap()
                .starts_with("pushed "));
            assert!(update["body"]["output"].get("annotations").is_none());
        }
    }
}

#[test]
fn gitlab_commit_statuses_go_pending_running_and_final_per_arch() {
    let registry = registry();
    let repo = two_services(&registry, "ci");
    let (api, log) = recorder("gitlab");
    let (ok, output) = run_bakery(
        repo.path(),
        &[
            ("GITLAB_CI", "true"),
            (
                "BAKERY_DOTENV",
                repo.path().join("bakery.env").to_str().unwrap(),
            ),
            ("CI_SERVER_URL", &api.url()),
            ("CI_PROJECT_ID", "42"),
            ("CI_COMMIT_SHA", SHA),
            ("CI_COMMIT_REF_NAME", "refs/merge-requests/5/head"),
            ("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME", "main"),
            ("CI_PIPELINE_ID", "9001"),
            (
                "CI_JOB_URL",
                "https://gitlab.example.com/group/app/-/jobs/7",
            ),
            ("BAKERY_GITLAB_TOKEN", "glpat-test-token-value"),
        ],
    );
    assert!(!ok, "{output}");
    assert!(!output.contains("could not"), "{output}");
    let calls = calls(&log);
    assert!(
        calls
            .iter()
            .all(|c| c["authorization"] == "glpat-test-token-value"),
        "{calls:?}"
    );
    let statuses: Vec<&Value> = calls.iter().filter(|c| c["method"] == "POST").collect();
    for (name, last) in [
        ("bakery/good/amd64", "success"),
        ("bakery/good/arm64", "success"),
        ("bakery/bad/amd64", "failed"),
    ] {
        let states: Vec<&str> = statuses
            .iter()
            .filter(|c| c["body"]["name"] == name)
            .map(|c| c["body"]["state"].as_str().unwrap())
            .collect();
        assert_eq!(states.first(), Some(&"pending"), "{name}: {states:?}");
        assert_eq!(states.last(), Some(&last), "{name}: {states:?}");
        assert!(
            states.windows(2).all(|w| w[0] != w[1]),
            "no repeated state: {states:?}"
        );
        for c in statuses.iter().filter(|c| c["body"]["name"] == name) {
            assert_eq!(c["path"], format!("/api/v4/projects/42/statuses/{SHA}"));
            assert_eq!(c["status"], 201);
            assert_eq!(
                c["body"]["target_url"],
                "https://gitlab.example.com/group/app/-/jobs/7"
            );
            // A merge request pipeline: the MR's branch, and the pipeline.
            assert_eq!(c["body"]["ref"], "main");
            assert_eq!(
                c["body"]["pipeline_id"].to_string().trim_matches('"'),
                "9001"
            );
        }
    }
}

/// A token without `checks: write` gets a 403 from GitHub; the warning says
/// so and what to change, not just "GitHub" (octocrab's own message), and
/// the build goes on.
#[test]
fn a_check_run_refused_with_403_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Command::new("python3")
        .arg("-c")
        .arg(
            r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = b'{"message":"Resource not accessible by integration","documentation_url":"https://docs.github.com/rest/checks/runs#create-a-check-run","status":"403"}'
        self.send_response(403)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_PATCH = do_POST
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#,
        )
        .arg(port.to_string())
        .spawn()
        .unwrap();
    let _server = Server {
        child: server,
        dir,
        port,
    };
    wait_port(port, "the stand-in API", 20);
    let registry = registry();
    let repo = two_services(&registry, "forbidden");
    let (_, output) = run_bakery(
        repo.path(),
        &[
            ("GITHUB_API_URL", &format!("http://127.0.0.1:{port}")),
            ("GITHUB_REPOSITORY", "octo-org/hello"),
            ("GITHUB_SHA", SHA),
            ("BAKERY_GITHUB_TOKEN", "ghs_test_token_value"),
        ],
    );
    assert!(
        output.contains("could not create the GitHub check run: GitHub answered HTTP 403: Resource not accessible by integration"),
        "{output}"
    );
    assert!(output.contains("permissions: checks: write"), "{output}");
    assert!(
        output.contains("good-amd64 | pushed") || output.contains("good"),
        "the build went on: {output}"
    );
}

fn gitlab_env<'a>(api: &'a str, dotenv: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("GITLAB_CI", "true"),
        ("BAKERY_DOTENV", dotenv),
        ("CI_SERVER_URL", api),
        ("CI_PROJECT_ID", "42"),
        ("CI_COMMIT_SHA", SHA),
        ("CI_COMMIT_REF_NAME", "main"),
        ("BAKERY_GITLAB_TOKEN", "glpat-test-token-value"),
    ]
}

/// A cancelled job (the runner's SIGINT) concluded nothing: its commit
/// statuses stayed `running` and a required check blocked the merge. Now
/// each arch's last status is `canceled`, sent before bakery exits.
#[test]
fn a_cancelled_build_concludes_its_commit_statuses() {
    let registry = registry();
    let base = push_base_image(&registry);
    let repo = project(&[
        (
            "compose.yaml",
            &format!(
                "services:\n  slow:\n    image: {}/ci/slow:1\n    build:\n      context: .\n      args: {{BASE_IMAGE: {base}}}\n      x-bake:\n        platforms: [linux/amd64]\n",
                registry.host()
            ),
        ),
        (
            "Dockerfile",
            "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo slow-step-started && sleep 600\n",
        ),
    ]);
    let (api, log) = recorder("gitlab");
    let dotenv = repo.path().join("bakery.env");
    let api_url = api.url();
    let env = gitlab_env(&api_url, dotenv.to_str().unwrap());
    let mut child = Command::new(env!("CARGO_BIN_EXE_bakery"))
        .current_dir(repo.path())
        .args(["--compose", "compose.yaml", "build"])
        .env_remove("CONTROLLER_URL")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let running = || calls(&log).iter().any(|c| c["body"]["state"] == "running");
    while !running() {
        assert!(
            Instant::now() < deadline,
            "never running: {:?}",
            calls(&log)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let signalled = Instant::now();
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "exit 128 + SIGINT");
    assert!(
        signalled.elapsed() < Duration::from_secs(7),
        "within the runner's grace: {:?}",
        signalled.elapsed()
    );
    let states: Vec<String> = calls(&log)
        .iter()
        .filter(|c| c["body"]["name"] == "bakery/slow/amd64")
        .map(|c| c["body"]["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        states.last().map(String::as_str),
        Some("canceled"),
        "{states:?}"
    );
}

/// A CI API that accepts connections and never answers: the images are
/// pushed, the build ends, and bakery exits, warning once, instead of
/// hanging the job after the work is done.
#[test]
fn a_blackholed_ci_api_does_not_hold_the_build() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api = format!("http://{}", silent.local_addr().unwrap());
    let registry = registry();
    let repo = two_services(&registry, "blackhole");
    for env in [
        vec![
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_API_URL", api.as_str()),
            ("GITHUB_REPOSITORY", "octo/app"),
            ("GITHUB_SHA", SHA),
            ("BAKERY_GITHUB_TOKEN", "ghs_test_token_value"),
        ],
        gitlab_env(&api, "/dev/null"),
    ] {
        let started = Instant::now();
        let (ok, output) = run_bakery(repo.path(), &env);
        assert!(!ok, "`bad` fails as designed: {output}");
        assert!(
            output.contains("multi-arch index good"),
            "the good image is pushed: {output}"
        );
        assert!(
            output.contains("did not answer within 5s"),
            "said once: {output}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{:?}: {output}",
            started.elapsed()
        );
    }
    drop(silent);
}
