//! The controller with DATABASE_URL against a real PostgreSQL server
//! (support/postgres.rs): what an operator sees when the database goes
//! away and comes back. The journal's own behaviour on PostgreSQL (reads,
//! migrations, the lock) is tested beside it (controller/src/journal/
//! postgres/tests.rs); restarts and retention in api.rs, on both backends.

mod support;

use std::time::{Duration, Instant};

use bakery_protocol::api::BuildState;
use bakery_protocol::Arch;
use reqwest::StatusCode;
use support::*;

/// The database stops: a new build is answered 503 within JOURNAL_TIMEOUT
/// (not a hang), /readyz says not ready; when it is back, the controller
/// reconnects on its own and the next build runs to the end and is saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_answered_503_and_its_end_needs_no_restart() {
    let server = postgres::Server::start();
    let url = server.database();
    let env = [("DATABASE_URL", url.as_str()), ("JOURNAL_TIMEOUT", "2s")];
    let mut h = Harness::new(&succeeding_agent("0.2"), &env).await;
    let key = h.upload(b"ctx").await;

    server.stop();
    let start = Instant::now();
    let resp = h
        .http
        .post(h.url("/v1/builds"))
        .json(&unpushed_request(&key, &[Arch::Amd64]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "the outage was injected"
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    let ready = h.http.get(h.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);

    server.resume();
    let mut id = None;
    eventually(
        "a build is accepted again",
        Duration::from_secs(30),
        async || {
            let resp = h
                .http
                .post(h.url("/v1/builds"))
                .json(&unpushed_request(&key, &[Arch::Amd64]))
                .send()
                .await
                .unwrap();
            if resp.status() == StatusCode::CREATED {
                let body: serde_json::Value = resp.json().await.unwrap();
                id = Some(body["id"].as_str().unwrap().to_string());
            }
            id.is_some()
        },
    )
    .await;
    let id = id.unwrap();
    let status = h.wait_end(&id, Duration::from_secs(20)).await;
    assert_eq!(status.state, BuildState::Succeeded);
    // The controller took the database's lock again with its new session:
    // a second controller is still refused it.
    let second = bakery_controller::journal::postgres::Target {
        url: url.clone(),
        ca_file: None,
        owner_wait: Duration::from_secs(1),
        state_key: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let refused = bakery_controller::journal::Journal::connect(second, dir.path()).await;
    let e = refused.err().expect("refused").to_string();
    assert!(
        e.contains("another controller is using this database"),
        "{e}"
    );
    h.restart(&[]).await;
    assert_eq!(h.status(&id).await.state, BuildState::Succeeded);
}
