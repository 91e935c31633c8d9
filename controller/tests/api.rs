//! The controller's HTTP API in-process, with stand-in agents (small shell
//! scripts) to drive timeouts and crashes deterministically.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use bakery_controller::Config;
use bakery_protocol::api::{BuildState, BuildStatus, TaskState};
use bakery_protocol::Arch;
use reqwest::StatusCode;
use serde_json::json;
use support::*;

#[tokio::test]
async fn malformed_requests_get_4xx_with_a_message() {
    let h = Harness::new("sleep 30", &[]).await;
    let cases: Vec<(reqwest::RequestBuilder, StatusCode)> = vec![
        (
            h.http
                .post(h.url("/v1/builds"))
                .header("content-type", "application/json")
                .body("{not json"),
            StatusCode::BAD_REQUEST,
        ),
        (
            h.http
                .post(h.url("/v1/builds"))
                .json(&json!({"service": 3})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            h.http
                .post(h.url("/v1/builds"))
                .json(&json!({"service": "s", "destination": null, "tasks": []})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (h.http.get(h.url("/v1/builds/nope")), StatusCode::NOT_FOUND),
        (
            h.http.get(h.url("/v1/builds/nope/logs")),
            StatusCode::NOT_FOUND,
        ),
        (
            h.http.post(h.url("/v1/builds/nope/cancel")),
            StatusCode::NOT_FOUND,
        ),
        (
            h.http
                .put(h.url("/v1/contexts/contexts/..%2F..%2Fsecret"))
                .body("x"),
            StatusCode::BAD_REQUEST,
        ),
        (
            h.http
                .put(h.url(&format!(
                    "/v1/contexts/contexts/sha256-{}.tar.gz",
                    "0".repeat(64)
                )))
                .body("not that"),
            StatusCode::BAD_REQUEST,
        ),
        (
            h.http.get(h.url("/v1/agent/tasks/x/spec")),
            StatusCode::UNAUTHORIZED,
        ),
    ];
    for (req, want) in cases {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), want);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(!body["error"].as_str().unwrap().is_empty());
    }
    // A context that was never uploaded is refused before anything starts.
    let missing = format!("contexts/sha256-{}.tar.gz", "a".repeat(64));
    let resp = h
        .http
        .post(h.url("/v1/builds"))
        .json(&request(&missing, &[Arch::Amd64]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(resp.text().await.unwrap().contains("was not uploaded"));
}

#[tokio::test]
async fn agent_that_never_checks_in_fails_at_the_task_timeout_and_is_stopped() {
    let h = Harness::new("sleep 300", &[("BUILD_TASK_TIMEOUT", "1s")]).await;
    let key = h.upload(b"ctx").await;
    let id = h.create(&request(&key, &[Arch::Amd64, Arch::Arm64])).await;
    let status = h.wait_end(&id, Duration::from_secs(10)).await;
    assert_eq!(status.state, BuildState::Failed);
    let error = status.error.unwrap();
    assert!(
        error.contains("did not start within BUILD_TASK_TIMEOUT (1s)"),
        "{error}"
    );
    assert!(status.tasks.iter().all(|t| t.state.is_terminal()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(no_agents_left(&h.data()), "agents stopped");
}

#[tokio::test]
async fn agent_that_exits_without_reporting_fails_at_once() {
    let h = Harness::new("echo dying >&2; exit 3", &[]).await;
    let key = h.upload(b"ctx").await;
    let id = h.create(&request(&key, &[Arch::Amd64])).await;
    let start = Instant::now();
    let status = h.wait_end(&id, Duration::from_secs(10)).await;
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "not after a timeout"
    );
    assert_eq!(status.state, BuildState::Failed);
    assert_eq!(status.tasks[0].state, TaskState::Failed);
    let error = status.tasks[0].error.clone().unwrap();
    assert!(
        error.contains("agent exited with code 3 before reporting a result"),
        "{error}"
    );
}

#[tokio::test]
async fn agent_that_checks_in_but_never_reports_fails_at_the_result_timeout() {
    let h = Harness::new(&curl_agent("sleep 300"), &[("BUILD_RESULT_TIMEOUT", "1s")]).await;
    let key = h.upload(b"ctx").await;
    let id = h.create(&request(&key, &[Arch::Amd64])).await;
    let status = h.wait_end(&id, Duration::from_secs(10)).await;
    assert_eq!(status.state, BuildState::Failed);
    assert!(status.error.unwrap().contains("BUILD_RESULT_TIMEOUT (1s)"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(no_agents_left(&h.data()));
}

#[tokio::test]
async fn agent_tokens_are_per_task_and_single_use_for_the_spec() {
    // The agent checks in, logs a line with a secret in it, then waits.
    let script = curl_agent(
        r#"curl -fsS -H "$auth" -H 'content-type: application/json' -d '{"lines":[{"seq":1,"line":"pw is top-secret-pw"},{"seq":1,"line":"dup"}]}' "$base/logs"
code=$(curl -s -o /dev/null -w '%{http_code}' -H "$auth" "$base/spec")
echo "second spec: $code" > "$BAKERY_WORK_DIR.second"
sleep 300"#,
    );
    let h = Harness::new(&script, &[]).await;
    let key = h.upload(b"ctx").await;
    let id = h.create(&request(&key, &[Arch::Amd64])).await;
    let task = format!("{id}-amd64");
    let second = h
        .dir
        .path()
        .join("data/work")
        .join(format!("{task}.second"));
    let start = Instant::now();
    while !second.exists() {
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        std::fs::read_to_string(&second).unwrap().trim(),
        "second spec: 409"
    );
    let spec = std::fs::read_to_string(h.dir.path().join("data/work").join(format!("{task}.spec")))
        .unwrap();
    assert!(
        spec.contains("top-secret-pw"),
        "the agent does get its credentials"
    );

    // Another token, or another task's path, is refused.
    let wrong = h
        .http
        .post(h.url(&format!("/v1/agent/tasks/{task}/logs")))
        .bearer_auth("0".repeat(64))
        .json(&json!({"lines": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    // The log has the line once (dup seq dropped), redacted: cancel, then read it all.
    assert_eq!(h.cancel(&id).await, StatusCode::ACCEPTED);
    let status = h.wait_end(&id, Duration::from_secs(10)).await;
    assert_eq!(status.state, BuildState::Cancelled);
    let text = h.log_text(&id).await;
    assert!(text.contains("pw is ***"), "{text}");
    assert!(!text.contains("top-secret-pw"));
    assert!(!text.contains("\"dup\""), "{text}");
    let status_json = h
        .http
        .get(h.url(&format!("/v1/builds/{id}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!status_json.contains("top-secret-pw"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(no_agents_left(&h.data()));
}

/// One line of a log stream body.
fn stream_line(seq: u64, line: &str) -> String {
    format!("{}\n", json!({"seq": seq, "line": line}))
}

/// Opens a log stream whose body is fed through the returned sender.
async fn open_log_stream(
    h: &Harness,
    task: &str,
    token: &str,
) -> (
    tokio::sync::mpsc::UnboundedSender<String>,
    reqwest::Response,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let body = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|s| s.map(Ok::<_, std::io::Error>))
    });
    let resp = h
        .http
        .post(h.url(&format!("/v1/agent/tasks/{task}/log-stream")))
        .bearer_auth(token)
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let resp = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .expect("the controller answers before the body ends")
        .unwrap();
    (tx, resp)
}

/// The token a [`TOKEN_AGENT`] wrote for `task`.
async fn agent_token(h: &Harness, task: &str) -> String {
    let token_file = h.dir.path().join("data/work").join(format!("{task}.token"));
    let start = Instant::now();
    loop {
        match std::fs::read_to_string(&token_file) {
            Ok(t) if t.ends_with('\n') => return t.trim().to_string(),
            _ => {
                assert!(start.elapsed() < Duration::from_secs(10));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// An agent that leaves its token for the test to speak in its name.
const TOKEN_AGENT: &str = r#"echo "$BAKERY_TASK_TOKEN" > "$BAKERY_WORK_DIR.token"; sleep 300"#;

/// The text of every agent line of an SSE log body, with its seq.
fn streamed_lines(text: &str) -> Vec<(u64, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| Some((v["seq"].as_u64()?, v["line"].as_str()?.to_string())))
        .filter(|(_, l)| l.starts_with("chatty "))
        .collect()
}

/// A log far longer than what a build keeps in memory once saved: a
/// follower from the first line, one from the middle, and one after a
/// restart each get every line once, in order, the older ones read from
/// the journal.
#[tokio::test]
async fn lines_no_longer_in_memory_are_served_from_the_journal() {
    lines_no_longer_in_memory_are_served_from(&[]).await;
}

/// The same with DATABASE_URL: older lines and the restart's come from
/// PostgreSQL.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_no_longer_in_memory_are_served_from_postgresql() {
    let server = support::postgres::Server::start();
    let url = server.database();
    lines_no_longer_in_memory_are_served_from(&[("DATABASE_URL", &url)]).await;
    let records = server.psql(
        &url,
        "SELECT convert_from(record, 'UTF8') FROM bakery_builds",
    );
    assert!(records.contains("\"r.example\""), "{records}");
    assert!(
        !records.contains("top-secret-pw"),
        "a password in the database: {records}"
    );
}

async fn lines_no_longer_in_memory_are_served_from(env: &[(&str, &str)]) {
    let mut h = Harness::new(&curl_agent(TOKEN_AGENT), env).await;
    let key = h.upload(b"ctx").await;
    let id = h.create(&request(&key, &[Arch::Amd64])).await;
    let task = format!("{id}-amd64");
    let token = agent_token(&h, &task).await;
    const LINES: u64 = 3000;
    let body: String = (1..=LINES)
        .map(|n| stream_line(n, &format!("chatty {n}")))
        .collect();
    let resp = h
        .http
        .post(h.url(&format!("/v1/agent/tasks/{task}/log-stream")))
        .bearer_auth(&token)
        .body(body)
        .send()
        .await
        .unwrap();
    let acked = resp.text().await.unwrap();
    assert_eq!(acked.lines().last(), Some("3000"), "{acked}");
    assert_eq!(h.cancel(&id).await, StatusCode::ACCEPTED);
    h.wait_end(&id, Duration::from_secs(10)).await;
    // Saved before the cancel's lines were: once those are saved too,
    // all but the last lines leave memory.
    let build = h.app().builds().get(&id).unwrap();
    eventually(
        "saved lines leave memory",
        Duration::from_secs(10),
        async || build.read().log_held_from() > 2000,
    )
    .await;

    let expected: Vec<(u64, String)> = (1..=LINES).map(|n| (n, format!("chatty {n}"))).collect();
    let first = streamed_lines(&h.log_text(&id).await);
    // The agent's lines follow the controller's own ("agent started").
    let offset = first[0].0 - 1;
    let renumbered: Vec<(u64, String)> =
        first.iter().map(|(s, l)| (s - offset, l.clone())).collect();
    assert_eq!(renumbered, expected);
    let from_middle = h
        .http
        .get(h.url(&format!("/v1/builds/{id}/logs")))
        .header("last-event-id", (offset + 1234).to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(streamed_lines(&from_middle), first[1234..].to_vec());
    // The embedded controller's own client reads the same log in process,
    // and resumes after a line as a reconnecting client does.
    assert_eq!(local_lines(&h, &id, 0).await, first);
    assert_eq!(
        local_lines(&h, &id, offset + 1234).await,
        first[1234..].to_vec()
    );

    h.restart(&[]).await;
    assert_eq!(streamed_lines(&h.log_text(&id).await), first);
    assert_eq!(local_lines(&h, &id, 0).await, first);
}

/// The `chatty` lines of build `id` after line `after` as an in-process
/// follower gets them, which must end with the final status.
async fn local_lines(h: &Harness, id: &str, after: u64) -> Vec<(u64, String)> {
    use bakery_controller::Followed;
    let mut log = h
        .running
        .as_ref()
        .unwrap()
        .follow(id, after)
        .expect("a known build");
    let mut lines = Vec::new();
    let mut end = None;
    while let Some(batch) = tokio::time::timeout(Duration::from_secs(10), log.next())
        .await
        .expect("the in-process log ends")
    {
        for event in batch {
            assert!(end.is_none(), "{event:?} after the end");
            match event {
                Followed::Log(l) if l.line.starts_with("chatty ") => lines.push((l.seq, l.line)),
                Followed::End(status) => end = Some(status),
                _ => {}
            }
        }
    }
    let end = end.expect("the in-process log ends with the final status");
    assert!(end.state.is_terminal(), "{end:?}");
    assert!(h.running.as_ref().unwrap().follow("b-none", 0).is_none());
    lines
}

#[tokio::test]
async fn the_log_stream_acknowledges_saved_lines_and_drops_resent_ones() {
    use futures_util::StreamExt;
    let h = Harness::new(&curl_agent(TOKEN_AGENT), &[]).await;
    let key = h.upload(b"ctx").await;
    let id = h.create(&request(&key, &[Arch::Amd64])).await;
    let task = format!("{id}-amd64");
    let token = agent_token(&h, &task).await;

    let wrong = h
        .http
        .post(h.url(&format!("/v1/agent/tasks/{task}/log-stream")))
        .bearer_auth("0".repeat(64))
        .body(stream_line(1, "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    // Acknowledged while the body is still open (the stream is full
    // duplex), with a line split across two writes.
    let (body, resp) = open_log_stream(&h, &task, &token).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut acks = resp.bytes_stream();
    let two = format!("{}{}", stream_line(1, "one"), stream_line(2, "two"));
    body.send(two).unwrap();
    let split = stream_line(3, "three with top-secret-pw");
    body.send(split[..10].to_string()).unwrap();
    body.send(split[10..].to_string()).unwrap();
    // Lines 1-2 may be acknowledged on their own first; 3 follows.
    let mut heard = String::new();
    while !heard.ends_with("3\n") {
        let ack = tokio::time::timeout(Duration::from_secs(5), acks.next())
            .await
            .expect("acknowledgements while the body is open")
            .unwrap()
            .unwrap();
        heard.push_str(std::str::from_utf8(&ack).unwrap());
        assert!(heard == "2\n" || heard.ends_with("3\n"), "{heard}");
    }

    // A resent line is dropped; the end of the body brings the last
    // acknowledgement and the end of the response.
    body.send(format!(
        "{}{}",
        stream_line(3, "resent"),
        stream_line(4, "four")
    ))
    .unwrap();
    drop(body);
    let mut rest = String::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(5), acks.next())
        .await
        .expect("the response ends after the body")
    {
        rest.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert_eq!(rest.lines().last(), Some("4"), "{rest}");

    // A new stream (as after a broken connection) resends from 4.
    let (body, resp) = open_log_stream(&h, &task, &token).await;
    body.send(format!(
        "{}{}",
        stream_line(4, "four again"),
        stream_line(5, "five")
    ))
    .unwrap();
    drop(body);
    let acked = resp.text().await.unwrap();
    assert_eq!(acked.lines().last(), Some("5"), "{acked}");

    // Once the task has ended, the stream is refused.
    assert_eq!(h.cancel(&id).await, StatusCode::ACCEPTED);
    let status = h.wait_end(&id, Duration::from_secs(10)).await;
    assert_eq!(status.state, BuildState::Cancelled);
    let after = h
        .http
        .post(h.url(&format!("/v1/agent/tasks/{task}/log-stream")))
        .bearer_auth(&token)
        .body(stream_line(6, "late"))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);

    // Each line once, in order, redacted; the resent and late ones nowhere.
    let text = h.log_text(&id).await;
    let streamed: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| v["line"].as_str().map(String::from))
        .skip_while(|l| l != "agent started")
        .skip(1)
        .take_while(|l| l != "cancelled")
        .collect();
    assert_eq!(
        streamed,
        ["one", "two", "three with ***", "four", "five"],
        "{text}"
    );
    assert!(!text.contains("top-secret-pw"));
}

#[tokio::test]
async fn shutdown_stops_every_agent() {
    let h = Harness::new(&curl_agent("sleep 300"), &[]).await;
    let key = h.upload(b"ctx").await;
    let id = h.create(&request(&key, &[Arch::Amd64, Arch::Arm64])).await;
    let start = Instant::now();
    while h
        .status(&id)
        .await
        .tasks
        .iter()
        .any(|t| t.state == TaskState::Starting)
    {
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!no_agents_left(&h.data()));
    let mut h = h;
    h.running.take().unwrap().shutdown().await;
    assert!(
        no_agents_left(&h.data()),
        "nothing left running after shutdown"
    );
    let _ = Path::new(&h.data());
}

/// The agent no longer deletes its work dir before it reports (that held up
/// every build's end): the local platform deletes it once the agent is
/// stopped, whether it finished, was cancelled or was killed mid-build.
#[tokio::test]
async fn a_stopped_agents_work_dir_is_deleted() {
    let h = Harness::new(
        &curl_agent(
            r#"mkdir -p "$BAKERY_WORK_DIR/storage/vfs" && echo layer > "$BAKERY_WORK_DIR/storage/vfs/blob"
echo '{}' > "$BAKERY_WORK_DIR/config.json"
sleep 300"#,
        ),
        &[],
    )
    .await;
    let key = h.upload(b"ctx").await;
    let id = h.create(&request(&key, &[Arch::Amd64])).await;
    let task = format!("{id}-amd64");
    let work = h.dir.path().join("data/work").join(&task);
    let start = Instant::now();
    while !work.join("config.json").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the agent never wrote"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(h.cancel(&id).await, StatusCode::ACCEPTED);
    assert_eq!(
        h.wait_end(&id, Duration::from_secs(10)).await.state,
        BuildState::Cancelled
    );
    // Deleted in the background, after the build's end.
    let start = Instant::now();
    while work.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} is still there",
            work.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        h.dir
            .path()
            .join("data/work")
            .join(format!("{task}.log"))
            .exists(),
        "the agent's own log stays for a post-mortem"
    );
    assert!(no_agents_left(&h.data()));
}

#[tokio::test]
async fn client_endpoints_need_the_controller_token_when_one_is_set() {
    let token = "t0k3n-with-enough-entropy-123456";
    let h = Harness::new("sleep 30", &[("CONTROLLER_TOKEN", token)]).await;
    let info = h.url("/v1/info");
    let missing = h.http.get(&info).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert!(missing
        .text()
        .await
        .unwrap()
        .contains("set CONTROLLER_TOKEN"));
    let wrong = h.http.get(&info).bearer_auth("nope").send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong
        .text()
        .await
        .unwrap()
        .contains("wrong controller token"));
    let right = h.http.get(&info).bearer_auth(token).send().await.unwrap();
    assert_eq!(right.status(), StatusCode::OK);
    // Every client endpoint is covered, agent endpoints use their own tokens.
    for path in ["/v1/builds/x", "/v1/builds/x/logs"] {
        assert_eq!(
            h.http.get(h.url(path)).send().await.unwrap().status(),
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }
    let post = h
        .http
        .post(h.url("/v1/builds"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::UNAUTHORIZED);
    let agent = h
        .http
        .get(h.url("/v1/agent/tasks/x/spec"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        agent.status(),
        StatusCode::UNAUTHORIZED,
        "the controller token is not a task token"
    );
    assert!(agent.text().await.unwrap().contains("task token"));
}

#[tokio::test]
async fn a_short_token_file_is_refused_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "short\n").unwrap();
    let config = Config::from_vars([
        ("LISTEN_ADDR".to_string(), "127.0.0.1:0".to_string()),
        (
            "DATA_DIR".to_string(),
            dir.path().join("data").display().to_string(),
        ),
        (
            "CONTROLLER_TOKEN_FILE".to_string(),
            file.display().to_string(),
        ),
    ])
    .unwrap();
    let err = bakery_controller::start(config)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("CONTROLLER_TOKEN_FILE") && err.contains("fewer than 16"),
        "{err}"
    );
}

#[tokio::test]
async fn agents_beyond_the_cap_wait_in_a_queue_instead_of_failing() {
    let h = Harness::new(&curl_agent("sleep 300"), &[("MAX_CONCURRENT_AGENTS", "1")]).await;
    let key = h.upload(b"ctx").await;
    let first = h.create(&request(&key, &[Arch::Amd64])).await;
    let second = h.create(&request(&key, &[Arch::Amd64])).await;
    let running = |id: String| {
        let h = &h;
        async move { h.status(&id).await.tasks[0].state == TaskState::Running }
    };
    let start = Instant::now();
    while !running(first.clone()).await {
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let queued = h.status(&second).await;
    assert_eq!(queued.state, BuildState::Running, "queued, not failed");
    assert_eq!(queued.tasks[0].state, TaskState::Queued);
    assert!(queued.tasks[0].started_ms.is_none(), "not launched yet");

    // The first build ends; its slot goes to the queued one.
    h.cancel(&first).await;
    let start = Instant::now();
    while !running(second.clone()).await {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the queued task never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.cancel(&second).await;
    let status = h.wait_end(&second, Duration::from_secs(10)).await;
    assert_eq!(status.state, BuildState::Cancelled);
    let text = h.log_text(&second).await;
    assert!(
        text.contains("queued: every agent slot on local is taken"),
        "{text}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(no_agents_left(&h.data()));
}

/// Finished builds outlive a restart (status and log, for `bakery logs`),
/// until BUILD_RETENTION has passed.
#[tokio::test]
async fn finished_builds_survive_a_restart_until_their_retention_ends() {
    finished_builds_survive_a_restart_until_their_retention_ends_in(&[]).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_builds_survive_a_restart_until_their_retention_ends_in_postgresql() {
    let server = support::postgres::Server::start();
    let url = server.database();
    finished_builds_survive_a_restart_until_their_retention_ends_in(&[("DATABASE_URL", &url)])
        .await;
    assert_eq!(
        server.psql(&url, "SELECT count(*) FROM bakery_builds"),
        "0\n"
    );
}

async fn finished_builds_survive_a_restart_until_their_retention_ends_in(env: &[(&str, &str)]) {
    let mut h = Harness::new("echo dying >&2; exit 3", env).await;
    let key = h.upload(b"ctx").await;
    let id = h.create(&request(&key, &[Arch::Amd64])).await;
    let before = h.wait_end(&id, Duration::from_secs(10)).await;
    // The end of the log is saved a moment after the state changes.
    let log = h.log_text(&id).await;
    assert!(log.contains("agent exited with code 3"), "{log}");

    h.restart(&[]).await;
    assert_eq!(h.status(&id).await, before);
    assert_eq!(h.log_text(&id).await, log);

    tokio::time::sleep(Duration::from_millis(50)).await;
    h.restart(&[("BUILD_RETENTION", "10ms")]).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let resp = h
            .http
            .get(h.url(&format!("/v1/builds/{id}")))
            .send()
            .await
            .unwrap();
        if resp.status() == StatusCode::NOT_FOUND {
            break;
        }
        assert!(Instant::now() < deadline, "not forgotten");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn probes_metrics_and_the_api_description_are_served_without_a_token() {
    let token = "t0k3n-with-enough-entropy-123456";
    let script = curl_agent(
        r#"curl -fsS -H "$auth" -H 'content-type: application/json' -d '{"lines":[{"seq":1,"line":"one"},{"seq":2,"line":"two"}]}' "$base/logs"
curl -fsS -H "$auth" -H 'content-type: application/json' -d '{"outcome":"failed","error":"boom"}' "$base/result""#,
    );
    let h = Harness::new(&script, &[("CONTROLLER_TOKEN", token)]).await;
    for (path, body) in [("/healthz", "ok\n"), ("/readyz", "ready\n")] {
        let r = h.http.get(h.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.text().await.unwrap(), body);
    }
    // One build through to its end, to give every metric a sample.
    let key = {
        use sha2::Digest;
        format!(
            "contexts/sha256-{}.tar.gz",
            hex::encode(sha2::Sha256::digest(b"ctx"))
        )
    };
    let put = h
        .http
        .put(h.url(&format!("/v1/contexts/{key}")))
        .bearer_auth(token)
        .body(b"ctx".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    let created: serde_json::Value = h
        .http
        .post(h.url("/v1/builds"))
        .bearer_auth(token)
        .json(&request(&key, &[Arch::Arm64]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let start = Instant::now();
    loop {
        let s: BuildStatus = h
            .http
            .get(h.url(&format!("/v1/builds/{id}")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if s.state.is_terminal() {
            assert_eq!(s.state, BuildState::Failed);
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The supervisor records durations just after the state turns final.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = h.http.get(h.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    assert!(metrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = metrics.text().await.unwrap();
    for name in bakery_controller::metrics::NAMES {
        let family = name.trim_end_matches("_total");
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{name}:\n{text}"
        );
    }
    for sample in [
        "bakery_builds{state=\"failed\"} 1",
        "bakery_builds{state=\"running\"} 0",
        "bakery_log_lines_total 2",
        "bakery_agent_start_seconds_count{platform=\"local\",arch=\"arm64\"} 1",
        "bakery_build_duration_seconds_count{arch=\"arm64\",outcome=\"failed\"} 1",
        "bakery_platform_api_errors_total{platform=\"local\",operation=\"launch\"} 0",
    ] {
        assert!(text.contains(sample), "{sample} missing:\n{text}");
    }
    assert!(!text.contains(token));
    // Every route the router serves is described, and nothing else.
    let described: serde_json::Value = serde_yaml_ng::from_str(
        &h.http
            .get(h.url("/openapi.yaml"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(described["openapi"], "3.1.0");
    let mut documented: Vec<String> = described["paths"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let source = include_str!("../src/routes.rs");
    let mut served: Vec<String> = source
        .split(".route(")
        .skip(1)
        .map(|rest| {
            let path = rest.trim_start().strip_prefix('"').expect("a route's path");
            path.split('"').next().unwrap().replace("{*", "{")
        })
        .collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served);
}

#[test]
fn log_format_json_makes_every_log_line_a_json_object() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bakery-controller"))
        .env("LOG_FORMAT", "json")
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("DATA_DIR", dir.path())
        .env_remove("BAKERY_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut lines = stdout.lines();
    // Start-up lines, each JSON, up to the one that says it listens.
    loop {
        let line = lines.next().unwrap().unwrap();
        let event: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(event["timestamp"].is_string());
        if event["fields"]["message"] == "controller listening" {
            assert_eq!(event["level"], "INFO");
            break;
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    for line in lines {
        let line = line.unwrap();
        serde_json::from_str::<serde_json::Value>(&line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    assert!(child.wait().unwrap().success());
}

async fn get_info(h: &Harness) -> serde_json::Value {
    h.http
        .get(h.url("/v1/info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Clients and agents are told the bucket's region the controller
/// resolved: S3_REGION, else AWS_REGION (agents had fallen back to
/// us-east-1, and every upload to a bucket elsewhere failed).
#[tokio::test]
async fn the_context_store_announces_the_resolved_region() {
    let h = Harness::new(
        "exit 0",
        &[
            ("S3_BUCKET", "contexts"),
            ("S3_ENDPOINT", "http://127.0.0.1:9"),
            ("AWS_REGION", "eu-west-3"),
        ],
    )
    .await;
    let info = get_info(&h).await;
    let s3 = &info["context_store"];
    assert_eq!(s3["region"], "eu-west-3", "{info}");
    assert_eq!(s3["bucket"], "contexts", "{info}");
    let h = Harness::new(
        "exit 0",
        &[
            ("S3_BUCKET", "contexts"),
            ("S3_ENDPOINT", "s3.amazonaws.com"),
            ("S3_REGION", "ap-northeast-2"),
            ("S3_FORCE_PATH_STYLE", "false"),
        ],
    )
    .await;
    let info = get_info(&h).await;
    let s3 = &info["context_store"];
    assert_eq!(s3["region"], "ap-northeast-2", "{info}");
    assert_eq!(s3["path_style"], false, "{info}");
}

/// Agent pods are given K8S_CONTROLLER_URL (the in-cluster Service), other
/// agents CONTROLLER_URL.
#[tokio::test]
async fn agent_pods_get_the_in_cluster_url() {
    let h = Harness::new(
        "exit 0",
        &[
            ("CONTROLLER_URL", "https://bakery.example.com"),
            ("K8S_CONTROLLER_URL", "http://bakery-server.bakery.svc:8080"),
        ],
    )
    .await;
    use bakery_protocol::Platform;
    assert_eq!(
        h.app().agent_url_for(Platform::K8s),
        "http://bakery-server.bakery.svc:8080"
    );
    assert_eq!(
        h.app().agent_url_for(Platform::Local),
        "https://bakery.example.com"
    );
}
