//! What any token holder, or the build's own code holding its agent's
//! token, can send: every request is checked by the controller itself
//! (the client is not the only caller), authenticated before its body is
//! read, and every value an agent reports is checked before it reaches a
//! status, a log or a CI report.

mod support;

use std::time::Duration;

use bakery_protocol::api::{BuildState, TaskState};
use bakery_protocol::Arch;
use reqwest::StatusCode;
use serde_json::json;
use support::*;

/// A build request that passes the client but not the controller: each
/// mutation is refused with 422 and a message naming the field.
#[tokio::test]
async fn the_controller_checks_every_build_request_itself() {
    let h = Harness::new("sleep 30", &[]).await;
    let key = h.upload(b"ctx").await;
    let good = serde_json::to_value(request(&key, &[Arch::Amd64])).unwrap();
    let digest = format!("sha256:{}", "a".repeat(64));
    type Mutation = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("unknown", Box::new(|r| r["colour"] = json!("blue"))),
        (
            "unknown",
            Box::new(|r| r["tasks"][0]["spec"]["dockerfle"] = json!("x")),
        ),
        (
            "destination",
            Box::new(move |r| r["destination"] = json!(format!("r.example/app@{digest}"))),
        ),
        (
            "destination",
            Box::new(|r| r["destination"] = json!("r.example/App Name:1")),
        ),
        (
            "push",
            Box::new(|r| r["tasks"][0]["push"] = json!("r.example/app:1_amd64\nX=1")),
        ),
        (
            "tags[0]",
            Box::new(|r| r["tags"] = json!(["other.example/elsewhere@sha256:0"])),
        ),
        (
            "service",
            Box::new(|r| r["service"] = json!("svc\nINFO forged line")),
        ),
        (
            "service",
            Box::new(|r| r["service"] = json!("s".repeat(200))),
        ),
        ("service", Box::new(|r| r["service"] = json!(""))),
        (
            "dockerfile",
            Box::new(|r| r["tasks"][0]["spec"]["dockerfile"] = json!("/etc/shadow")),
        ),
        (
            "dockerfile",
            Box::new(|r| r["tasks"][0]["spec"]["dockerfile"] = json!("../../../etc/shadow")),
        ),
        (
            "custom_platform",
            Box::new(|r| r["tasks"][0]["spec"]["custom_platform"] = json!("linux/amd64; rm -rf /")),
        ),
        (
            "compression_level",
            Box::new(|r| r["tasks"][0]["spec"]["compression_level"] = json!(0)),
        ),
        (
            "compression_level",
            Box::new(|r| {
                r["tasks"][0]["spec"]["compression"] = json!("gzip");
                r["tasks"][0]["spec"]["compression_level"] = json!(22);
            }),
        ),
        (
            "snapshot_mode",
            Box::new(|r| r["tasks"][0]["spec"]["snapshot_mode"] = json!("everything")),
        ),
        (
            "build_args",
            Box::new(|r| r["tasks"][0]["spec"]["build_args"] = json!({"A=B": "c"})),
        ),
        (
            "custom_platform",
            Box::new(|r| r["tasks"][0]["spec"]["custom_platform"] = json!("linux/arm64")),
        ),
        (
            "build_args",
            Box::new(|r| r["tasks"][0]["spec"]["build_args"] = json!({"A B": "c"})),
        ),
        (
            "build_args",
            Box::new(|r| r["tasks"][0]["spec"]["build_args"] = json!({"A": "x".repeat(200_000)})),
        ),
        (
            "target",
            Box::new(|r| r["tasks"][0]["spec"]["target"] = json!("a\u{2028}b")),
        ),
        (
            "destination",
            Box::new(|r| r["destination"] = json!("localhost:99999/app:1")),
        ),
        (
            "context_key",
            Box::new(|r| r["tasks"][0]["context_key"] = json!("contexts/../../etc/passwd")),
        ),
    ];
    for (field, mutate) in cases {
        let mut body = good.clone();
        mutate(&mut body);
        let resp = h
            .http
            .post(h.url("/v1/builds"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let error: serde_json::Value = resp.json().await.unwrap();
        let text = error["error"].as_str().unwrap().to_string();
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {text}");
        assert!(text.contains(field), "{field}: {text}");
        assert!(!text.contains('\n'), "{field}: {text:?}");
    }
    assert!(h.app().builds().all().is_empty(), "nothing was created");
    // The unchanged request is fine.
    h.create(&request(&key, &[Arch::Amd64])).await;
}

/// Unknown paths, wrong methods, bad queries: JSON errors like the rest.
#[tokio::test]
async fn every_error_body_is_json() {
    let h = Harness::new("sleep 30", &[]).await;
    let key = h.upload(b"ctx").await;
    let id = h.create(&request(&key, &[Arch::Amd64])).await;
    let cases = [
        (h.http.get(h.url("/v2/nothing")), StatusCode::NOT_FOUND),
        (
            h.http.delete(h.url("/v1/builds")),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            h.http
                .get(h.url(&format!("/v1/builds/{id}/logs?after=lots"))),
            StatusCode::BAD_REQUEST,
        ),
        (
            h.http.get(h.url(&format!("/v1/builds/{id}/cancel"))),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    for (req, want) in cases {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), want);
        let body: serde_json::Value = resp.json().await.expect("a JSON body");
        assert!(!body["error"].as_str().unwrap().is_empty());
    }
    h.cancel(&id).await;
}

/// A body that never ends, sent without a token: the answer (401) comes
/// at once, without the controller reading it. (Agent routes read the
/// JSON body before they checked the token: a gigabyte without a token
/// took the controller to 2.5 GB.) And a token holder cannot send a
/// build request beyond its limit.
#[tokio::test]
async fn tokens_are_checked_before_any_body_is_read() {
    let token = "a-client-token-long-enough-0123";
    let h = Harness::new("sleep 30", &[("CONTROLLER_TOKEN", token)]).await;
    for path in [
        "/v1/agent/tasks/x-amd64/logs",
        "/v1/agent/tasks/x-amd64/result",
        "/v1/agent/tasks/x-amd64/log-stream",
        "/v1/builds",
    ] {
        let endless = futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Some((Ok::<_, std::io::Error>(vec![b'x'; 64 << 10]), ()))
        });
        let resp = tokio::time::timeout(
            Duration::from_secs(5),
            h.http
                .post(h.url(path))
                .header("content-type", "application/json")
                .body(reqwest::Body::wrap_stream(endless))
                .send(),
        )
        .await
        .unwrap_or_else(|_| panic!("{path}: the controller read the body before answering"));
        let resp = resp.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    let big = vec![b' '; 2 << 20];
    let resp = h
        .http
        .post(h.url("/v1/builds"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().is_some());
    // The scheme is case-insensitive, as HTTP says.
    let resp = h
        .http
        .get(h.url("/v1/info"))
        .header("authorization", format!("bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

/// What the build's own code could send with the task token: a digest
/// with a line break (it became an extra variable in GitLab's dotenv
/// report), an error of a megabyte with control characters, a log line
/// with embedded line breaks. None reaches a status or log as sent.
#[tokio::test]
async fn agent_reports_are_checked_before_they_are_believed() {
    // The stand-in checks in and hands its token over, as a hostile
    // pre-script could read it.
    let script = curl_agent(r#"echo "$BAKERY_TASK_TOKEN" > "$BAKERY_WORK_DIR.token"; sleep 30"#);
    let h = Harness::new(&script, &[]).await;
    let key = h.upload(b"ctx").await;
    let (digest_id, digest_token) = started(&h, &key).await;
    let (error_id, error_token) = started(&h, &key).await;
    let post = |id: &str, token: &str, what: &str, body: serde_json::Value| {
        h.http
            .post(h.url(&format!("/v1/agent/tasks/{id}-amd64/{what}")))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let logged = post(
        &digest_id,
        &digest_token,
        "logs",
        json!({"lines": [{"seq": 1, "line": "one\ntwo\r\nthree"}]}),
    )
    .await
    .unwrap();
    assert_eq!(logged.status(), StatusCode::NO_CONTENT);
    let answer = post(
        &digest_id,
        &digest_token,
        "result",
        json!({"outcome": "succeeded", "digest": "sha256:0\nBAKERY_X=1"}),
    )
    .await
    .unwrap();
    assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let status = h.wait_end(&digest_id, Duration::from_secs(10)).await;
    assert_eq!(status.state, BuildState::Failed);
    assert_eq!(status.tasks[0].digest, None, "the digest was not taken");
    let error = status.tasks[0].error.clone().unwrap();
    assert!(
        error.contains("not a sha256 digest") && !error.contains('\n'),
        "{error:?}"
    );
    let log = h.log_text(&digest_id).await;
    assert!(
        log.contains(r#""line":"one two\r three""#),
        "one line stays one line: {log}"
    );

    let long_error = format!("bad\nthings\u{1b}]0;title\u{7}{}", "x".repeat(200_000));
    let answer = post(
        &error_id,
        &error_token,
        "result",
        json!({"outcome": "failed", "error": long_error}),
    )
    .await
    .unwrap();
    assert_eq!(answer.status(), StatusCode::NO_CONTENT);
    let status = h.wait_end(&error_id, Duration::from_secs(10)).await;
    let error = status.tasks[0].error.clone().unwrap();
    assert!(error.len() < 5000, "cut: {} bytes", error.len());
    assert!(error.starts_with("bad things"), "{:?}", &error[..40]);
    assert!(!error.chars().any(char::is_control), "{:?}", &error[..40]);
}

/// Creates a one-arch build and waits for its stand-in agent's token.
async fn started(h: &Harness, key: &str) -> (String, String) {
    let id = h.create(&request(key, &[Arch::Amd64])).await;
    let file = h.dir.path().join(format!("data/work/{id}-amd64.token"));
    eventually("the agent's token", Duration::from_secs(10), async || {
        std::fs::read_to_string(&file).is_ok_and(|t| t.ends_with('\n'))
    })
    .await;
    let token = std::fs::read_to_string(&file).unwrap().trim().to_string();
    (id, token)
}

/// HEAD on the spec route answers whether the token is good, and does not
/// spend the check-in (axum answered HEAD with the GET handler).
#[tokio::test]
async fn head_on_the_spec_does_not_check_in() {
    let script = curl_agent_after_head(
        r#"code=$(curl -s -o /dev/null -w '%{http_code}' -H "$auth" "$base/spec")
echo "$code" > "$BAKERY_WORK_DIR.get"
sleep 30"#,
    );
    let h = Harness::new(&script, &[]).await;
    let key = h.upload(b"ctx").await;
    let id = h.create(&request(&key, &[Arch::Amd64])).await;
    let get = h.dir.path().join(format!("data/work/{id}-amd64.get"));
    eventually("the agent's GET", Duration::from_secs(10), async || {
        get.exists()
    })
    .await;
    let head = std::fs::read_to_string(h.dir.path().join(format!("data/work/{id}-amd64.head")));
    assert_eq!(head.unwrap().trim(), "200");
    assert_eq!(
        std::fs::read_to_string(get).unwrap().trim(),
        "200",
        "HEAD did not spend it"
    );
    assert_eq!(h.status(&id).await.tasks[0].state, TaskState::Running);
    h.cancel(&id).await;
}

/// HEAD first, then `rest`.
fn curl_agent_after_head(rest: &str) -> String {
    format!(
        r#"auth="Authorization: Bearer $BAKERY_TASK_TOKEN"
base="$BAKERY_CONTROLLER_URL/v1/agent/tasks/$BAKERY_TASK_ID"
mkdir -p "$(dirname "$BAKERY_WORK_DIR")"
curl -s -I -o /dev/null -w '%{{http_code}}' -H "$auth" "$base/spec" > "$BAKERY_WORK_DIR.head"
{rest}"#
    )
}

/// A build that logs past BUILD_LOG_LIMIT fails, says so, and is stopped.
#[tokio::test]
async fn a_build_past_its_log_limit_fails_and_is_stopped() {
    let script = curl_agent(
        r#"for i in $(seq 1 40); do
  curl -s -H "$auth" -H 'content-type: application/json' \
    -d "{\"lines\":[{\"seq\":$i,\"line\":\"line $i of a chatty build with some padding to fill the log\"}]}" "$base/logs"
done
sleep 300"#,
    );
    let h = Harness::new(&script, &[("BUILD_LOG_LIMIT", "1Ki")]).await;
    let key = h.upload(b"ctx").await;
    let id = h.create(&request(&key, &[Arch::Amd64])).await;
    let status = h.wait_end(&id, Duration::from_secs(20)).await;
    assert_eq!(status.state, BuildState::Failed);
    let error = status.tasks[0].error.clone().unwrap();
    assert!(error.contains("BUILD_LOG_LIMIT (1024 bytes)"), "{error}");
    let log = h.log_text(&id).await;
    assert!(
        !log.contains("line 40 of"),
        "lines past the limit are refused"
    );
    eventually(
        "the agent is stopped",
        Duration::from_secs(10),
        async || no_agents_left(&h.data()),
    )
    .await;
}

/// A digest reported for a task that pushes nothing (the build's own code
/// holds the token) panicked the supervisor and left the build `indexing`
/// for good. It is not kept; the build finishes.
#[tokio::test]
async fn a_digest_for_a_task_that_pushes_nothing_is_not_kept() {
    let script = curl_agent(r#"echo "$BAKERY_TASK_TOKEN" > "$BAKERY_WORK_DIR.token"; sleep 30"#);
    let h = Harness::new(&script, &[]).await;
    let key = h.upload(b"ctx").await;
    let id = h.create(&unpushed_request(&key, &[Arch::Amd64])).await;
    let file = h.dir.path().join(format!("data/work/{id}-amd64.token"));
    eventually("the agent's token", Duration::from_secs(10), async || {
        std::fs::read_to_string(&file).is_ok_and(|t| t.ends_with('\n'))
    })
    .await;
    let token = std::fs::read_to_string(&file).unwrap().trim().to_string();
    let digest = format!("sha256:{}", "c".repeat(64));
    let answer = h
        .http
        .post(h.url(&format!("/v1/agent/tasks/{id}-amd64/result")))
        .bearer_auth(&token)
        .json(&json!({"outcome": "succeeded", "digest": digest}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::NO_CONTENT);
    let status = h.wait_end(&id, Duration::from_secs(10)).await;
    assert_eq!(status.state, BuildState::Succeeded, "{status:?}");
    assert_eq!(status.tasks[0].digest, None);
}

/// A build that prints another running build's registry password (read
/// where it should not have been, or shared between teams) has it masked:
/// every running build's secrets are masked in every build's log, and
/// leave the book when their build ends.
#[tokio::test]
async fn a_build_printing_another_builds_secret_has_it_masked() {
    let agent = curl_agent(
        r#"curl -fsS -H "$auth" -H 'content-type: application/json' -d '{"lines":[{"seq":1,"line":"leak alpha-password-1 beta-password-22"}]}' "$base/logs"
while [ ! -e "$BAKERY_WORK_DIR.go" ]; do sleep 0.05; done
curl -fsS -H "$auth" -H 'content-type: application/json' -d '{"outcome":"succeeded","digest":null}' "$base/result""#,
    );
    let h = Harness::new(&agent, &[]).await;
    let key = h.upload(b"ctx").await;
    let with_password = |pw: &str| {
        let mut r = unpushed_request(&key, &[Arch::Amd64]);
        r.tasks[0].spec.credentials[0].password = bakery_protocol::spec::Secret::new(pw);
        r
    };
    let alpha = h.create(&with_password("alpha-password-1")).await;
    let beta = h.create(&with_password("beta-password-22")).await;
    assert_eq!(
        h.app().builds().secrets().builds(),
        2,
        "both running builds' secrets are held"
    );
    for id in [&alpha, &beta] {
        eventually("the leak is logged", Duration::from_secs(10), async || {
            h.app().builds().get(id).unwrap().read().log_len() > 3
        })
        .await;
    }
    for id in [&alpha, &beta] {
        std::fs::write(h.dir.path().join(format!("data/work/{id}-amd64.go")), "").unwrap();
        assert_eq!(
            h.wait_end(id, Duration::from_secs(10)).await.state,
            BuildState::Succeeded
        );
        let log = h.log_text(id).await;
        assert!(log.contains("leak *** ***"), "{log}");
        assert!(
            !log.contains("alpha-password-1") && !log.contains("beta-password-22"),
            "{log}"
        );
    }
    assert_eq!(
        h.app().builds().secrets().builds(),
        0,
        "ended builds leave the book"
    );
}
