//! Liveness under ordinary use: agent slots that cannot deadlock, queues
//! with a deadline, creation that is atomic from the client's view, and a
//! slow journal that changes nothing it did not confirm. Each test failed
//! (by hanging, or by running a build the client was told failed) on the
//! controller before these were fixed.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bakery_protocol::api::{BuildState, TaskState};
use bakery_protocol::Arch;
use reqwest::StatusCode;
use support::*;

/// One slot, one two-arch build: the amd64 agent finishes and gives its
/// slot back, so the arm64 one can start. (Slots were freed only when the
/// whole build ended: this build waited forever.)
#[tokio::test]
async fn a_two_arch_build_finishes_with_a_single_agent_slot() {
    let h = Harness::new(&succeeding_agent("0.2"), &[("MAX_CONCURRENT_AGENTS", "1")]).await;
    let key = h.upload(b"ctx").await;
    let id = h
        .create(&unpushed_request(&key, &[Arch::Amd64, Arch::Arm64]))
        .await;
    let status = h.wait_end(&id, Duration::from_secs(30)).await;
    assert_eq!(status.state, BuildState::Succeeded, "{status:?}");
    let log = h.log_text(&id).await;
    assert!(
        log.contains("queued: every agent slot on local is taken"),
        "{log}"
    );
    assert!(log.contains("got an agent slot after"), "{log}");
    assert!(no_agents_left(&h.data()));
}

/// The local default (4 slots) and eight two-arch builds at once: four
/// builds each held a slot with a finished agent while their second arch
/// waited for one. Every build must finish.
#[tokio::test]
async fn eight_two_arch_builds_under_the_default_four_slots_all_finish() {
    let h = Harness::new(&succeeding_agent("0.3"), &[]).await;
    let key = h.upload(b"ctx").await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(
            h.create(&unpushed_request(&key, &[Arch::Amd64, Arch::Arm64]))
                .await,
        );
    }
    for id in &ids {
        let status = h.wait_end(id, Duration::from_secs(60)).await;
        assert_eq!(status.state, BuildState::Succeeded, "{status:?}");
    }
    // Never more than four agents at once: every slot was given back.
    assert_eq!(
        h.app()
            .free_agent_slots(bakery_protocol::Platform::Local)
            .unwrap(),
        4
    );
    assert!(no_agents_left(&h.data()));
}

/// A task that cannot get a slot fails at BUILD_QUEUE_TIMEOUT, named, and
/// shows as queued meanwhile: no configuration can hang a build.
#[tokio::test]
async fn a_task_queued_past_build_queue_timeout_fails_with_the_reason() {
    let h = Harness::new(
        &curl_agent("sleep 300"),
        &[
            ("MAX_CONCURRENT_AGENTS", "1"),
            ("BUILD_QUEUE_TIMEOUT", "1s"),
        ],
    )
    .await;
    let key = h.upload(b"ctx").await;
    let first = h.create(&unpushed_request(&key, &[Arch::Amd64])).await;
    eventually(
        "the first agent runs",
        Duration::from_secs(10),
        async || h.status(&first).await.tasks[0].state == TaskState::Running,
    )
    .await;
    // Both tasks of the second build wait, and both say so: the one
    // behind the head of the queue is as queued as the head.
    let second = h
        .create(&unpushed_request(&key, &[Arch::Amd64, Arch::Arm64]))
        .await;
    eventually(
        "both tasks of the second build are queued",
        Duration::from_secs(5),
        async || {
            let tasks = h.status(&second).await.tasks;
            tasks.iter().all(|t| t.state == TaskState::Queued)
        },
    )
    .await;
    let status = h.wait_end(&second, Duration::from_secs(10)).await;
    assert_eq!(status.state, BuildState::Failed);
    let error = status.tasks[0].error.clone().unwrap();
    assert!(error.contains("BUILD_QUEUE_TIMEOUT (1s)"), "{error}");
    assert!(error.contains("MAX_CONCURRENT_AGENTS"), "{error}");
    let log = h.log_text(&second).await;
    assert!(
        log.contains("waiting up to BUILD_QUEUE_TIMEOUT (1s)"),
        "{log}"
    );
    h.cancel(&first).await;
    h.wait_end(&first, Duration::from_secs(10)).await;
    assert!(no_agents_left(&h.data()));
}

/// A create answered 503 (the journal did not confirm in time) leaves a
/// build that never runs, not even after a restart, though its record may
/// reach the disk after the answer.
#[tokio::test]
async fn a_build_whose_creation_was_answered_503_never_runs() {
    let marker = "touch \"$BAKERY_WORK_DIR.ran\"";
    let mut h = Harness::new(&format!("{marker}\nsleep 30"), &[]).await;
    let key = h.upload(b"ctx").await;
    // The fault: the journal confirms nothing in time.
    h.app().journal().set_flush_timeout(Duration::ZERO);
    let resp = h
        .http
        .post(h.url("/v1/builds"))
        .json(&request(&key, &[Arch::Amd64]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "the fault was injected"
    );
    let body = resp.text().await.unwrap();
    assert!(body.contains("was not started"), "{body}");
    h.app().journal().set_flush_timeout(Duration::from_secs(10));
    // The record reaches the disk after the answer: the next flush waits
    // for it, so the restart below reads it back.
    h.app().journal().flush().await.unwrap();
    h.restart(&[]).await;
    eventually(
        "the record is read back, failed",
        Duration::from_secs(10),
        async || {
            let builds = h.app().builds().all();
            builds.len() == 1 && builds[0].status().state == BuildState::Failed
        },
    )
    .await;
    let status = h.app().builds().all()[0].status();
    assert!(status.error.unwrap().contains("never started"));
    let ran = std::fs::read_dir(h.dir.path().join("data/work")).is_ok_and(|d| {
        d.flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".ran"))
    });
    assert!(!ran, "no agent was ever started");
}

/// The crash between saving a new build and telling the client: the saved
/// record was never acknowledged, so the next controller fails it instead
/// of starting what the client may have been told failed.
#[tokio::test]
async fn an_unacknowledged_build_in_the_journal_is_failed_on_restart_not_started() {
    let dir = tempfile::tempdir().unwrap();
    let key = format!("contexts/sha256-{}.tar.gz", "a".repeat(64));
    {
        let journal = Arc::new(
            bakery_controller::journal::Journal::open(&dir.path().join("data/builds.redb"))
                .unwrap(),
        );
        let registry = Arc::new(bakery_controller::state::Registry::default());
        let builds: Arc<dyn bakery_controller::journal::Builds> = Arc::clone(&registry) as _;
        let writer = tokio::spawn(Arc::clone(&journal).run_writer(builds));
        let build = Arc::new(bakery_controller::state::Build::new(
            "bghost".into(),
            request(&key, &[Arch::Amd64]),
            bakery_protocol::Platform::Local,
            Some(journal.signal()),
            u64::MAX,
        ));
        assert!(!build.read().acknowledged());
        registry.insert(build);
        journal.flush().await.unwrap();
        writer.abort();
        let _ = writer.await;
    }
    let h = Harness::in_dir(dir, "touch \"$BAKERY_WORK_DIR.ran\"; sleep 30", &[]).await;
    let status = h.status("bghost").await;
    assert_eq!(status.state, BuildState::Failed, "{status:?}");
    assert!(status.error.unwrap().contains("never started"));
    // Something that must not happen: no condition to wait for, so a
    // grace period long enough for a started agent's first command.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!h.dir.path().join("data/work/bghost-amd64.ran").exists());
}

/// A client that lost the answer and retries with the same key gets the
/// same build; the same key with another request is refused.
#[tokio::test]
async fn a_retried_create_with_the_same_idempotency_key_gets_the_same_build() {
    let h = Harness::new(&curl_agent("sleep 30"), &[]).await;
    let key = h.upload(b"ctx").await;
    let create = |body: bakery_protocol::api::CreateBuild| {
        let h = &h;
        async move {
            let resp = h
                .http
                .post(h.url("/v1/builds"))
                .header("Idempotency-Key", "job-42-attempt")
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = resp.status();
            (status, resp.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (s1, first) = create(request(&key, &[Arch::Amd64])).await;
    let (s2, again) = create(request(&key, &[Arch::Amd64])).await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED));
    assert_eq!(first["id"], again["id"]);
    assert_eq!(h.app().builds().all().len(), 1, "one build, not two");
    let (s3, other) = create(request(&key, &[Arch::Arm64])).await;
    assert_eq!(s3, StatusCode::UNPROCESSABLE_ENTITY, "{other}");
    assert!(other["error"].as_str().unwrap().contains("Idempotency-Key"));
    h.cancel(first["id"].as_str().unwrap()).await;
}

/// A cancel or a check-in answered 503 changed nothing: the build keeps
/// running, and the agent's retry of its check-in gets its spec rather
/// than "already checked in".
#[tokio::test]
async fn a_cancel_or_check_in_answered_503_changes_nothing() {
    // The agent waits for a go-ahead file, then checks in until it gets
    // its spec, writing down each answer.
    let agent = r#"auth="Authorization: Bearer $BAKERY_TASK_TOKEN"
base="$BAKERY_CONTROLLER_URL/v1/agent/tasks/$BAKERY_TASK_ID"
while [ ! -e "$BAKERY_WORK_DIR.go" ]; do sleep 0.1; done
for i in $(seq 50); do
  code=$(curl -s -o "$BAKERY_WORK_DIR.spec" -w '%{http_code}' -H "$auth" "$base/spec")
  echo "$code" >> "$BAKERY_WORK_DIR.codes"
  [ "$code" = 200 ] && break
  sleep 0.2
done
sleep 300"#;
    let h = Harness::new(agent, &[]).await;
    let key = h.upload(b"ctx").await;
    let id = h.create(&request(&key, &[Arch::Amd64])).await;
    let work = h.dir.path().join(format!("data/work/{id}-amd64"));
    eventually("the agent starts", Duration::from_secs(10), async || {
        h.status(&id).await.tasks[0].started_ms.is_some()
    })
    .await;

    h.app().journal().set_flush_timeout(Duration::ZERO);
    assert_eq!(
        h.cancel(&id).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "the fault was injected"
    );
    std::fs::write(work.with_extension("go"), "").unwrap();
    let codes = work.with_extension("codes");
    eventually(
        "the agent's check-in is refused",
        Duration::from_secs(10),
        async || std::fs::read_to_string(&codes).is_ok_and(|c| c.contains("503")),
    )
    .await;
    let status = h.status(&id).await;
    assert_eq!(
        status.state,
        BuildState::Running,
        "the unsaved cancel was not acted on"
    );
    assert_eq!(
        status.tasks[0].state,
        TaskState::Starting,
        "the unsaved check-in was undone"
    );

    h.app().journal().set_flush_timeout(Duration::from_secs(10));
    eventually("the agent checks in", Duration::from_secs(15), async || {
        h.status(&id).await.tasks[0].state == TaskState::Running
    })
    .await;
    // The check-in is recorded before the agent has its answer and writes
    // it down: wait for the line.
    eventually(
        "the agent notes its 200",
        Duration::from_secs(10),
        async || std::fs::read_to_string(&codes).is_ok_and(|c| c.trim_end().ends_with("200")),
    )
    .await;
    let seen = std::fs::read_to_string(&codes).unwrap();
    assert!(
        !seen.contains("409"),
        "a retry is not 'already checked in': {seen}"
    );
    assert!(seen.trim_end().ends_with("200"), "{seen}");
    assert_eq!(h.cancel(&id).await, StatusCode::ACCEPTED);
    let status = h.wait_end(&id, Duration::from_secs(10)).await;
    assert_eq!(status.state, BuildState::Cancelled);
    assert!(no_agents_left(&h.data()));
}

/// A registry that accepts connections and never answers: the index write
/// times out request by request (REGISTRY_TIMEOUT) and the build fails,
/// named, instead of staying `indexing`; and a cancel is heard meanwhile.
#[tokio::test]
async fn an_index_write_to_a_silent_registry_times_out_and_can_be_cancelled() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = silent.local_addr().unwrap().to_string();
    // Accepts and holds every connection, answering nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming().flatten() {
            held.push(conn);
        }
    });
    let digest = format!("sha256:{}", "b".repeat(64));
    let h = Harness::new(
        &curl_agent(&format!(
            r#"curl -fsS -H "$auth" -H 'content-type: application/json' -d '{{"outcome":"succeeded","digest":"{digest}"}}' "$base/result"
sleep 30"#
        )),
        &[("REGISTRY_TIMEOUT", "1s")],
    )
    .await;
    let key = h.upload(b"ctx").await;
    let to_silent = |arches: &[Arch]| {
        let mut r = request(&key, arches);
        r.destination = Some(format!("{host}/app:1"));
        for t in &mut r.tasks {
            t.push = Some(format!("{host}/app:1_{}", t.arch));
        }
        r
    };

    let cancelled = h.create(&to_silent(&[Arch::Amd64])).await;
    eventually(
        "the index write starts",
        Duration::from_secs(10),
        async || h.status(&cancelled).await.state == BuildState::Indexing,
    )
    .await;
    assert_eq!(h.cancel(&cancelled).await, StatusCode::ACCEPTED);
    let status = h.wait_end(&cancelled, Duration::from_secs(5)).await;
    assert_eq!(status.state, BuildState::Cancelled, "{status:?}");

    let failed = h.create(&to_silent(&[Arch::Amd64])).await;
    let status = h.wait_end(&failed, Duration::from_secs(90)).await;
    assert_eq!(status.state, BuildState::Failed, "{status:?}");
    let error = status.error.unwrap();
    assert!(error.contains("gave up after 6 attempts"), "{error}");
    assert!(no_agents_left(&h.data()));
}

/// A result answered 503 (the journal confirmed nothing in time) was acted
/// on anyway: the build showed `succeeded` and the agent was stopped while
/// it waited to hear. Now nothing acts on an unsaved result, and the agent's
/// retry is taken, not refused as "task ended".
#[tokio::test]
async fn a_result_answered_503_changes_nothing_and_its_retry_is_taken() {
    let agent = curl_agent(
        r#"while [ ! -e "$BAKERY_WORK_DIR.go" ]; do sleep 0.1; done
for i in $(seq 100); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "$auth" -H 'content-type: application/json' -d '{"outcome":"succeeded","digest":null}' "$base/result")
  echo "$code" >> "$BAKERY_WORK_DIR.codes"
  [ "$code" = 204 ] && break
  sleep 0.2
done
sleep 300"#,
    );
    let h = Harness::new(&agent, &[]).await;
    let key = h.upload(b"ctx").await;
    let id = h.create(&unpushed_request(&key, &[Arch::Amd64])).await;
    eventually("the agent checks in", Duration::from_secs(10), async || {
        h.status(&id).await.tasks[0].state == TaskState::Running
    })
    .await;
    let work = h.dir.path().join(format!("data/work/{id}-amd64"));
    h.app().journal().set_flush_timeout(Duration::ZERO);
    std::fs::write(work.with_extension("go"), "").unwrap();
    let codes = work.with_extension("codes");
    eventually(
        "a result answered 503",
        Duration::from_secs(10),
        async || std::fs::read_to_string(&codes).is_ok_and(|c| c.contains("503")),
    )
    .await;
    let status = h.status(&id).await;
    assert_eq!(status.state, BuildState::Running, "{status:?}");
    assert_eq!(
        status.tasks[0].state,
        TaskState::Running,
        "the unsaved result was undone"
    );
    assert!(!no_agents_left(&h.data()), "the agent was not stopped");
    h.app().journal().set_flush_timeout(Duration::from_secs(10));
    let status = h.wait_end(&id, Duration::from_secs(20)).await;
    assert_eq!(status.state, BuildState::Succeeded);
    // The build succeeding is the retry being taken. The agent may be
    // stopped before its shell writes the last code, so what it recorded is
    // only checked for a refusal.
    let seen = std::fs::read_to_string(&codes).unwrap();
    assert!(
        seen.lines().all(|c| c == "503" || c == "204"),
        "every answer is 503 or 204: {seen}"
    );
}

/// Two requests with the same key at the same moment: one build (the
/// lookup and the insert were two steps, and 1 in 30 such pairs made two).
#[tokio::test]
async fn concurrent_creates_with_one_idempotency_key_make_one_build() {
    let h = Harness::new(&curl_agent("sleep 30"), &[]).await;
    let key = h.upload(b"ctx").await;
    for round in 0..20 {
        let create = || {
            h.http
                .post(h.url("/v1/builds"))
                .header("Idempotency-Key", format!("same-key-{round}"))
                .json(&request(&key, &[Arch::Amd64]))
                .send()
        };
        let (a, b) = tokio::join!(create(), create());
        let id = |r: reqwest::Response| async move {
            assert_eq!(r.status(), StatusCode::CREATED);
            r.json::<serde_json::Value>().await.unwrap()["id"].clone()
        };
        assert_eq!(id(a.unwrap()).await, id(b.unwrap()).await, "round {round}");
    }
    assert_eq!(h.app().builds().all().len(), 20);
    for b in h.app().builds().all() {
        h.cancel(&b.id).await;
    }
}
