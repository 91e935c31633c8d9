//! The PostgreSQL backend against a real server (Debian's `postgresql`,
//! started per test in a temp dir): migrations, what reads back, and the
//! errors an operator sees.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bakery_protocol::api::{AgentLine, BuildState};

use super::super::tests::{add_build, forget_older_than};
use super::super::Journal;
use super::Target;
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

/// How a test's controller reaches database `url`.
fn target(url: &str) -> Target {
    Target {
        url: url.to_string(),
        ca_file: None,
        owner_wait: Some(WAIT),
        state_key: None,
        replica_url: None,
        takeover_wait: Duration::ZERO,
    }
}

async fn connect(url: &str, dir: &std::path::Path) -> Arc<Journal> {
    Arc::new(Journal::connect(target(url), dir).await.unwrap())
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
        Journal::connect(target(&url), dir.path()),
        Journal::connect(target(&url), dir.path())
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
        server.psql(&url, "SELECT version FROM bakery_schema ORDER BY version"),
        "1\n2\n3\n"
    );
    // Once the first is gone, the database is free again.
    drop(running);
    let start = Instant::now();
    while let Err(e) = Journal::connect(target(&url), dir.path()).await {
        assert!(start.elapsed() < Duration::from_secs(10), "{e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_a_newer_controller_migrated_is_refused_by_name() {
    let server = server::Server::start();
    let url = server.database();
    let dir = tempfile::tempdir().unwrap();
    drop(Journal::connect(target(&url), dir.path()).await.unwrap());
    server.psql(&url, "INSERT INTO bakery_schema (version) VALUES (99)");
    let e = Journal::connect(target(&url), dir.path())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("schema is version 99, newer than this controller's 3")
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
    let e = Journal::connect(target(&url), dir.path())
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

    let e = Journal::connect(
        target("postgres://bakery:hunter2@db:notaport/x"),
        dir.path(),
    )
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("not a PostgreSQL connection URL") && !e.contains("hunter2"),
        "{e}"
    );
}

/// Lines `seqs` of build `id` as an agent sends them.
fn agent_lines(id: &str, seqs: std::ops::RangeInclusive<u64>) -> Vec<AgentLine> {
    seqs.map(|seq| AgentLine {
        seq,
        line: format!("{id} {seq}"),
    })
    .collect()
}

/// A commit reported failed may have been saved after all: its retry
/// writes the same first line again, with more lines, and the log reads
/// back with each line once and counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_saved_after_all_and_retried_leaves_each_line_once() {
    use bakery_protocol::api::LogEvent;
    let server = server::Server::start();
    let url = server.database();
    let dir = tempfile::tempdir().unwrap();
    let registry = Arc::new(Registry::default());
    let journal = connect(&url, dir.path()).await;
    let b = add_build(&registry, &journal, "r");
    b.append_agent_lines(0, &agent_lines("r", 1..=3));
    journal.commit_dirty(registry.as_ref()).await.unwrap();
    // The first attempt at lines 4-5, as it reached the database.
    let landed: Vec<LogEvent> = (4..=5)
        .map(|seq| LogEvent {
            seq,
            task: "r-amd64".into(),
            arch: bakery_protocol::Arch::Amd64,
            line: format!("r {seq}"),
            ms: 0,
        })
        .collect();
    let (entry, chunk) =
        super::super::encode_chunk(&[5], landed.iter().map(LogEvent::borrowed)).unwrap();
    server.psql(
        &url,
        &format!(
            "INSERT INTO bakery_log_chunks VALUES ('r', {}, {}, {}, decode('{}', 'hex'))",
            entry.first_seq,
            entry.lines,
            entry.bytes,
            hex::encode(chunk)
        ),
    );
    b.append_agent_lines(0, &agent_lines("r", 4..=7));
    journal.commit_dirty(registry.as_ref()).await.unwrap();

    let j = Arc::clone(&journal);
    let restored = tokio::task::spawn_blocking(move || j.load(4))
        .await
        .unwrap()
        .unwrap();
    let tail: Vec<u64> = restored[0].tail.iter().map(|l| l.seq).collect();
    assert_eq!(tail, [4, 5, 6, 7]);
    assert_eq!(restored[0].log_len, 7);
    let bytes: u64 = (1..=7).map(|s| format!("r {s}").len() as u64).sum();
    assert_eq!(restored[0].log_bytes, bytes, "each line counted once");
    assert_eq!(restored[0].agent_seqs, [7]);
    let j = Arc::clone(&journal);
    let all = tokio::task::spawn_blocking(move || j.read_lines("r", 0, 100))
        .await
        .unwrap()
        .unwrap();
    let seqs: Vec<u64> = all.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
}

/// A server that takes TCP over TLS only, with a certificate of a CA of
/// the test's own (scripts/dev-tls): with `sslmode=require` and that CA the
/// controller connects; without the CA it is refused, saying what to set;
/// in the clear the server refuses it (so the first connection was TLS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_verifies_the_server_against_database_ca_file() {
    let certs = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/dev-tls");
    let made = std::process::Command::new("bash")
        .arg(script)
        .arg(certs.path())
        .status()
        .unwrap();
    assert!(made.success());
    let server = server::Server::start_tls(certs.path());
    let url = server.database();
    let dir = tempfile::tempdir().unwrap();
    let ca = certs.path().join("ca.pem");

    let tls = format!("{url}?sslmode=require");
    let journal = Journal::connect(
        Target {
            ca_file: Some(ca.clone()),
            ..target(&tls)
        },
        dir.path(),
    )
    .await;
    assert!(journal.is_ok(), "{:?}", journal.err());
    drop(journal);

    let e = Journal::connect(target(&tls), dir.path())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("certificate") && e.contains("set DATABASE_CA_FILE"),
        "{e}"
    );
    let e = Journal::connect(target(&format!("{url}?sslmode=disable")), dir.path())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no encryption"), "{e}");

    let missing = Target {
        ca_file: Some(dir.path().join("missing.pem")),
        ..target(&tls)
    };
    let e = Journal::connect(missing, dir.path())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("DATABASE_CA_FILE") && e.contains("missing.pem"),
        "{e}"
    );
}

/// With STATE_KEY an unfinished build's secrets are saved in the database,
/// sealed: in no record, in no file, read back with the key, refused with
/// another key, and gone once the build ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_state_key_secrets_are_sealed_into_the_database() {
    use crate::journal::sealing::StateKey;
    use base64::Engine;
    const PASSWORD: &str = "sealed-Registry-Pw-1";
    let key = |byte: u8| {
        let text = base64::engine::general_purpose::STANDARD.encode([byte; 32]);
        Some(StateKey::from_base64(&text).unwrap())
    };
    let with_key = |url: &str, byte: u8| Target {
        state_key: key(byte),
        ..target(url)
    };
    let server = server::Server::start();
    let url = server.database();
    let dir = tempfile::tempdir().unwrap();
    let registry = Arc::new(Registry::default());
    let journal = Arc::new(
        Journal::connect(with_key(&url, 1), dir.path())
            .await
            .unwrap(),
    );
    let request = super::super::tests::request_with_secrets(PASSWORD, "s-2", "k-3");
    let build = Arc::new(crate::state::Build::new(
        "s1".into(),
        request,
        bakery_protocol::Platform::Local,
        Some(journal.signal()),
        u64::MAX,
    ));
    registry.insert(Arc::clone(&build));
    journal.commit_dirty(registry.as_ref()).await.unwrap();
    let everything = "SELECT encode(record, 'escape') FROM bakery_builds \
                      UNION ALL SELECT encode(sealed, 'escape') FROM bakery_secrets";
    let stored = server.psql(&url, everything);
    assert!(
        !stored.contains(PASSWORD) && !stored.contains("s-2"),
        "{stored}"
    );
    assert_eq!(
        server.psql(&url, "SELECT count(*) FROM bakery_secrets"),
        "1\n"
    );
    assert!(!dir.path().join("secrets").exists(), "no file for them");
    drop(journal);

    let load = |byte: u8| {
        let (url, dir) = (url.clone(), dir.path().to_path_buf());
        async move {
            let journal = Arc::new(Journal::connect(with_key(&url, byte), &dir).await.unwrap());
            let j = Arc::clone(&journal);
            tokio::task::spawn_blocking(move || j.load(10))
                .await
                .unwrap()
        }
    };
    let restored = load(1).await.unwrap();
    let spec = &restored[0].record.request.tasks[0].spec;
    assert_eq!(spec.credentials[0].password.expose(), PASSWORD);
    assert_eq!(spec.secrets[0].value.expose(), "s-2");
    assert_eq!(spec.ssh[0].value.expose(), "k-3");
    let e = load(2).await.err().unwrap().to_string();
    assert!(
        e.contains("STATE_KEY does not open build s1's secrets"),
        "{e}"
    );
    let keyless = Arc::new(Journal::connect(target(&url), dir.path()).await.unwrap());
    let e = tokio::task::spawn_blocking(move || keyless.load(10))
        .await
        .unwrap()
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("sealed in the database and STATE_KEY is not set"),
        "{e}"
    );

    let journal = Arc::new(
        Journal::connect(with_key(&url, 1), dir.path())
            .await
            .unwrap(),
    );
    build.update(|b| b.finish_build(bakery_protocol::api::BuildState::Succeeded, None));
    journal.commit_dirty(registry.as_ref()).await.unwrap();
    assert_eq!(
        server.psql(&url, "SELECT count(*) FROM bakery_secrets"),
        "0\n"
    );
}
