//! The OpenAPI description is the contract: schemathesis, with every check,
//! against a loopback controller. It sends what the schema allows and
//! expects it taken, sends what it forbids and expects it refused, checks
//! every answer's status, type and body against the description, follows
//! the links from `POST /v1/builds` to the id routes, and calls the agent
//! routes with a real task token. Its configuration (and the only statuses
//! it is told to accept, each with why) is in tests/schemathesis/.

mod checkers;
mod support;

use std::path::Path;
use std::time::Duration;

use bakery_protocol::Arch;
use serde_json::Value;
use support::Harness;

/// The bytes of the one context the run's builds name; the description's
/// example and tests/schemathesis/hooks.py carry their key.
const CONTEXT: &[u8] = b"bakery schemathesis context\n";
const CONTEXT_KEY: &str =
    "contexts/sha256-130f8105ec521169d9188939b6edd09f84e7ac84a2bad0e06696fd736c59fa3a.tar.gz";

/// The first two agents the controller starts write their task id and
/// token where the test reads them (`agent-1`, `agent-2`), and stay up
/// for schemathesis to call as them, until the controller stops them (or,
/// if the test fails first, for the run's own 10-minute bound); every later
/// agent (the builds schemathesis creates) fails at once.
fn agent_script(dir: &Path) -> String {
    format!(
        r#"for n in 1 2; do
  f="{dir}/agent-$n"
  if mkdir "$f.lock" 2>/dev/null; then
    printf '%s %s' "$BAKERY_TASK_ID" "$BAKERY_TASK_TOKEN" > "$f.tmp" && mv "$f.tmp" "$f"
    sleep 600
  fi
done
exit 1"#,
        dir = dir.display()
    )
}

/// The task id and token agent `n` wrote.
async fn live_agent(dir: &Path, n: u32) -> (String, String) {
    let file = dir.join(format!("agent-{n}"));
    support::eventually("an agent's token", Duration::from_secs(30), async || {
        file.exists()
    })
    .await;
    let text = std::fs::read_to_string(&file).unwrap();
    let (task, token) = text.split_once(' ').unwrap();
    (task.to_string(), token.to_string())
}

/// What the run sent and got, from its HAR report: (method, path, status).
fn exchanges(report_dir: &Path) -> Vec<(String, String, u64)> {
    let har = std::fs::read_dir(report_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("schemathesis wrote a HAR report");
    let har: Value = serde_json::from_slice(&std::fs::read(har).unwrap()).unwrap();
    har["log"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let url = e["request"]["url"].as_str().unwrap();
            let path = url.split_once("://").unwrap().1;
            let path = &path[path.find('/').unwrap()..];
            (
                e["request"]["method"].as_str().unwrap().to_string(),
                path.split('?').next().unwrap().to_string(),
                e["response"]["status"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_keeps_its_openapi_description() {
    let dir = tempfile::tempdir().unwrap();
    let script = agent_script(dir.path());
    let token = "contract-client-token-0123456789";
    let h = Harness::in_dir(dir, &script, &[("CONTROLLER_TOKEN", token)]).await;
    let http = reqwest::Client::new();

    let put = http
        .put(h.url(&format!("/v1/contexts/{CONTEXT_KEY}")))
        .bearer_auth(token)
        .body(CONTEXT)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201, "{}", put.text().await.unwrap());
    let mut agents = Vec::new();
    for n in 1..=2 {
        let created = http
            .post(h.url("/v1/builds"))
            .bearer_auth(token)
            .json(&support::unpushed_request(CONTEXT_KEY, &[Arch::Amd64]))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
        agents.push(live_agent(h.dir.path(), n).await);
    }
    let [(task, task_token), (result_task, result_token)] = &agents[..] else {
        unreachable!("two agents")
    };

    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis");
    let reports = tempfile::tempdir().unwrap();
    let binary = checkers::tool("schemathesis/bin/st");
    let h_url = h.url("");
    let description = here.join("../../openapi.yaml");
    // Run in a scratch directory: schemathesis and Python leave files
    // where they run.
    let out = tokio::process::Command::new(&binary)
        .current_dir(reports.path())
        .arg("--config-file")
        .arg(here.join("schemathesis.toml"))
        .arg("run")
        .arg(&description)
        .args(["--url", &h_url])
        .args(["--workers", "2", "--request-timeout", "10"])
        .args(["--report", "har", "--report-dir"])
        .arg(reports.path().join("har"))
        .args(["--no-color"])
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", &here)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("CONTRACT_CLIENT_TOKEN", token)
        .env("CONTRACT_TASK_ID", task)
        .env("CONTRACT_TASK_TOKEN", task_token)
        .env("CONTRACT_RESULT_TASK_ID", result_task)
        .env("CONTRACT_RESULT_TASK_TOKEN", result_token)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), out)
        .await
        .expect("schemathesis ends within 10 minutes")
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/setup installs it)", binary.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found the controller and its description apart:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // It reached what matters, not only the doors: builds it created, the
    // id routes through the links with a live id, the agent routes past
    // the token check.
    let seen = exchanges(&reports.path().join("har"));
    let hit = |method: &str, prefix: &str, ok: &dyn Fn(u64) -> bool| {
        seen.iter()
            .any(|(m, p, s)| m == method && p.starts_with(prefix) && ok(*s))
    };
    assert!(
        hit("POST", "/v1/builds", &|s| s == 201),
        "no build created:\n{text}"
    );
    for (method, suffix) in [("GET", ""), ("GET", "/logs"), ("POST", "/cancel")] {
        let found = seen.iter().any(|(m, p, s)| {
            m == method
                && p.starts_with("/v1/builds/b")
                && p.ends_with(suffix)
                && (200..300).contains(s)
        });
        assert!(
            found,
            "{method} /v1/builds/{{id}}{suffix} never answered 2xx:\n{text}"
        );
    }
    for (method, route) in [
        ("GET", format!("/v1/agent/tasks/{task}/spec")),
        ("GET", format!("/v1/agent/tasks/{task}/context")),
        ("POST", format!("/v1/agent/tasks/{task}/logs")),
        ("POST", format!("/v1/agent/tasks/{task}/log-stream")),
        ("POST", format!("/v1/agent/tasks/{result_task}/result")),
    ] {
        assert!(
            hit(method, &route, &|s| s != 401),
            "{method} {route} was never passed the token check:\n{text}"
        );
    }
    assert!(
        text.contains("API Links:    3 covered / 3 selected"),
        "the stateful phase did not follow every link:\n{text}"
    );

    // The two agents held up for the run are stopped with the controller.
    let dir = h.dir.path().display().to_string();
    let mut h = h;
    h.running.take().unwrap().shutdown().await;
    support::eventually("no agent left", Duration::from_secs(30), async || {
        support::no_agents_left(&dir)
    })
    .await;
}
