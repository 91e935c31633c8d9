//! The PostgreSQL backend against a real server (Debian's `postgresql`,
//! started per test in a temp dir): migrations, what reads back, and the
//! errors an operator sees.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bakery_protocol::api::{AgentLine, BuildState};

use super::super::tests::{add_build, forget_older_than};
use super::super::Journal;
use crate::state::Registry;

/// How long a test's controller waits for the database's lock.
const WAIT: Duration = Duration::from_secs(1);

// Shared with the integration tests, which use all of it.
#[path = "../../../tests/support/postgres.rs"]
#[allow(dead_code)]
mod server;

/// What `journal` reads back of each build: id, lines (seq, text), agent seqs.
async fn saved(journal: &Arc<Journal>) -> Vec<(String, Vec<(u64, String)>, Vec<u64>)> {
    let journal = Arc::clone(journal);
    let mut out: Vec<_> = tokio::task::spawn_blocking(move || journal.load(usize::MAX))
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|r| {
            assert_eq!(r.tail.len(), r.log_len);
            let lines = r.tail.into_iter().map(|l| (l.seq, l.line)).collect();
            (r.record.status.id, lines, r.agent_seqs)
        })
        .collect();
    out.sort();
    out
}

async fn connect(url: &str, dir: &std::path::Path) -> Arc<Journal> {
    Arc::new(Journal::connect(url, dir, WAIT).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_lines_read_back_as_written_and_forgotten_builds_go() {
    let server = server::Server::start();
    let url = server.database();
    let dir = tempfile::tempdir().unwrap();
    let registry = Arc::new(Registry::default());
    {
        let journal = connect(&url, dir.path()).await;
        let builds = ["a", "b"].map(|id| add_build(&registry, &journal, id));
        for seq in 1..=23u64 {
            for b in &builds {
                let line = format!("{} {seq}", b.id);
                b.append_agent_lines(0, &[AgentLine { seq, line }]);
            }
            assert_eq!(journal.commit_dirty(registry.as_ref()).await.unwrap(), 2);
        }
    }
    let expected =
        |id: &str| -> Vec<(u64, String)> { (1..=23).map(|s| (s, format!("{id} {s}"))).collect() };
    let journal = connect(&url, dir.path()).await;
    assert_eq!(
        saved(&journal).await,
        vec![
            ("a".to_string(), expected("a"), vec![23]),
            ("b".to_string(), expected("b"), vec![23]),
        ]
    );
    // A follower behind memory reads from the middle, without a gap.
    let reader = Arc::clone(&journal);
    let window = tokio::task::spawn_blocking(move || reader.read_lines("b", 10, 5))
        .await
        .unwrap()
        .unwrap();
    let seqs: Vec<u64> = window.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, [11, 12, 13, 14, 15]);
    // The tail a restart keeps in memory is the last lines.
    let tail = {
        let j = Arc::clone(&journal);
        tokio::task::spawn_blocking(move || j.load(3))
            .await
            .unwrap()
            .unwrap()
    };
    assert!(tail
        .iter()
        .all(|r| r.log_len == 23 && r.tail.len() == 3 && r.tail[0].seq == 21));

    registry
        .get("a")
        .unwrap()
        .update(|b| b.finish_build(BuildState::Succeeded, None));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (j, r) = (Arc::clone(&journal), Arc::clone(&registry));
    let gone = tokio::task::spawn_blocking(move || forget_older_than(&j, &r, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(gone, ["a"]);
    assert_eq!(
        saved(&journal).await,
        vec![("b".to_string(), expected("b"), vec![23])]
    );
    assert_eq!(
        server.psql(
            &url,
            "SELECT count(*) FROM bakery_log_chunks WHERE build_id = 'a'"
        ),
        "0\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_starting_at_once_on_an_empty_database_migrate_it_once_and_one_runs() {
    let server = server::Server::start();
    let url = server.database();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = tokio::join!(
        Journal::connect(&url, dir.path(), WAIT),
        Journal::connect(&url, dir.path(), WAIT)
    );
    // Both migrate safely; one runs, the other is told why it may not.
    let (running, refused) = match (a, b) {
        (Ok(j), Err(e)) | (Err(e), Ok(j)) => (j, e.to_string()),
        (a, b) => panic!("one of two should start: {:?} / {:?}", a.err(), b.err()),
    };
    assert!(
        refused.contains("another controller is using this database"),
        "{refused}"
    );
    assert_eq!(
        server.psql(&url, "SELECT version FROM bakery_schema"),
        "1\n"
    );
    // Once the first is gone, the database is free again.
    drop(running);
    let start = Instant::now();
    while let Err(e) = Journal::connect(&url, dir.path(), WAIT).await {
        assert!(start.elapsed() < Duration::from_secs(10), "{e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_a_newer_controller_migrated_is_refused_by_name() {
    let server = server::Server::start();
    let url = server.database();
    let dir = tempfile::tempdir().unwrap();
    drop(Journal::connect(&url, dir.path(), WAIT).await.unwrap());
    server.psql(&url, "INSERT INTO bakery_schema (version) VALUES (2)");
    let e = Journal::connect(&url, dir.path(), WAIT)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("schema is version 2, newer than this controller's 1")
            && e.contains("Run that version"),
        "{e}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_fails_the_start_in_time_without_the_password() {
    // Accepts TCP and never answers, as a hung proxy does.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let url = format!("postgres://bakery:hunter2@127.0.0.1:{port}/db?connect_timeout=1");
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let e = Journal::connect(&url, dir.path(), WAIT)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert!(silent.accept().is_ok(), "the connection was made");
    assert!(
        e.contains("state database") && !e.contains("hunter2"),
        "{e}"
    );

    let e = Journal::connect("postgres://bakery:hunter2@db:notaport/x", dir.path(), WAIT)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("not a PostgreSQL connection URL") && !e.contains("hunter2"),
        "{e}"
    );
}
