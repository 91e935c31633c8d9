//! The journal on its own: what is written reads back the same.

use super::migrate::KEYED_LOGS;
use super::rows::{decode_row, write_rows, Chunk, Entry, LOG_MAP, LOG_ROWS, ROW_BYTES};
use super::*;
use crate::state::{Build, Registry};
use bakery_protocol::api::{AgentLine, BuildState};
use bakery_protocol::Platform;
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
};

/// Forgets the finished builds older than `retention`, as the controller's
/// retention pass does.
pub(super) fn forget_older_than(
    journal: &Journal,
    registry: &Registry,
    retention: Duration,
) -> Vec<String> {
    let cutoff = now_ms().saturating_sub(retention.as_millis() as u64);
    let old = registry.finished_before(cutoff);
    journal.forget(&old).unwrap();
    for id in &old {
        registry.remove(id);
    }
    old
}

pub(crate) fn request() -> CreateBuild {
    let spec = serde_json::json!({
        "dockerfile": "Dockerfile", "build_args": {}, "labels": {}, "env": {},
        "credentials": [], "spot": false, "cache": {}, "cache_from": [],
        "use_new_run": false, "cleanup": false, "custom_platform": "linux/amd64",
        "no_push": false, "ignore_path": [], "extra_flags": []
    });
    serde_json::from_value(serde_json::json!({
            "service": "svc", "destination": null,
            "tasks": [{"arch": "amd64", "push": null, "context_key": format!("contexts/sha256-{}.tar.gz", "0".repeat(64)), "spec": spec}]
        }))
        .unwrap()
}

/// A request whose task has a registry password, a build secret and an
/// SSH key.
pub(super) fn request_with_secrets(password: &str, secret: &str, key: &str) -> CreateBuild {
    use bakery_protocol::spec::{BuildSecret, Credential, Secret};
    let mut req = request();
    let spec = &mut req.tasks[0].spec;
    spec.credentials.push(Credential {
        registry: "r.io".into(),
        username: "u".into(),
        password: Secret::new(password),
    });
    spec.secrets.push(BuildSecret {
        id: "npm".into(),
        value: Secret::new(secret),
    });
    spec.ssh.push(BuildSecret {
        id: "default".into(),
        value: Secret::new(key),
    });
    req
}

pub(super) fn add_build(registry: &Registry, journal: &Journal, id: &str) -> Arc<Build> {
    let build = Arc::new(Build::new(
        id.into(),
        request(),
        Platform::Local,
        Some(journal.signal()),
        u64::MAX,
    ));
    registry.insert(Arc::clone(&build));
    build
}

/// A build as read back: its id, its lines (seq, text), its agent seqs.
pub(super) type Saved = (String, Vec<(u64, String)>, Vec<u64>);

/// What a reopened journal holds of each build.
pub(super) fn reopened(path: &Path) -> Vec<Saved> {
    Journal::open(path)
        .unwrap()
        .load(usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| {
            assert_eq!(r.tail.len(), r.log_len);
            let lines = r.tail.into_iter().map(|l| (l.seq, l.line)).collect();
            (r.record.status.id, lines, r.agent_seqs)
        })
        .collect()
}

/// The embedded journal's open database.
fn embedded_db(journal: &Journal) -> Arc<Database> {
    let embedded = journal.storage().as_any().downcast_ref::<Embedded>();
    embedded.expect("an embedded journal").db().unwrap()
}

pub(super) fn rows<K: redb::Key + 'static>(path: &Path, table: TableDefinition<K, &[u8]>) -> u64 {
    rows_in(&Database::open(path).unwrap(), table)
}

fn rows_in<K: redb::Key + 'static>(db: &Database, table: TableDefinition<K, &[u8]>) -> u64 {
    let txn = db.begin_read().unwrap();
    txn.open_table(table).unwrap().len().unwrap()
}

#[tokio::test]
async fn lines_read_back_the_same_after_a_reopen_and_after_forgetting_a_build() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("builds.redb");
    let registry = Arc::new(Registry::default());
    {
        let journal = Journal::open(&path).unwrap();
        let builds = ["a", "b"].map(|id| add_build(&registry, &journal, id));
        // A commit per line and build: a chunk per build per commit.
        for seq in 1..=23u64 {
            for b in &builds {
                let line = format!("{} {seq}", b.id);
                b.append_agent_lines(0, &[AgentLine { seq, line }]);
            }
            assert_eq!(journal.commit_dirty(registry.as_ref()).await.unwrap(), 2);
        }
    }
    // One row per commit, however many builds it carried.
    assert_eq!(rows(&path, LOG_ROWS), 23);
    let expected =
        |id: &str| -> Vec<(u64, String)> { (1..=23).map(|s| (s, format!("{id} {s}"))).collect() };
    let mut saved = reopened(&path);
    saved.sort();
    assert_eq!(
        saved,
        vec![
            ("a".to_string(), expected("a"), vec![23]),
            ("b".to_string(), expected("b"), vec![23]),
        ]
    );

    // Forgetting a finished build: the other keeps every line, and
    // the rows they share stay until both are forgotten.
    let forget = |id: &str| {
        let journal = Journal::open(&path).unwrap();
        registry
            .get(id)
            .unwrap()
            .update(|b| b.finish_build(BuildState::Succeeded, None));
        std::thread::sleep(Duration::from_millis(5));
        forget_older_than(&journal, &registry, Duration::ZERO).len()
    };
    assert_eq!(forget("a"), 1);
    assert_eq!(rows(&path, LOG_ROWS), 23);
    let saved = reopened(&path);
    assert_eq!(saved, vec![("b".to_string(), expected("b"), vec![23])]);
    assert_eq!(forget("b"), 1);
    assert_eq!(rows(&path, LOG_ROWS), 0);
    assert_eq!(reopened(&path), vec![]);
}

#[tokio::test]
async fn rows_of_forgotten_builds_go_and_the_others_stay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("builds.redb");
    let registry = Arc::new(Registry::default());
    let journal = Journal::open(&path).unwrap();
    let add = |id: &str| add_build(&registry, &journal, id);
    let line = |b: &Build, seq: u64| {
        b.append_agent_lines(
            0,
            &[AgentLine {
                seq,
                line: format!("{} {seq}", b.id),
            }],
        );
    };
    // Rows 0-1: a alone; rows 2-3: a and b; row 4: b alone.
    let a = add("a");
    for seq in 1..=2 {
        line(&a, seq);
        journal.commit_dirty(registry.as_ref()).await.unwrap();
    }
    let b = add("b");
    for seq in 3..=4 {
        line(&a, seq);
        line(&b, seq - 2);
        journal.commit_dirty(registry.as_ref()).await.unwrap();
    }
    line(&b, 3);
    journal.commit_dirty(registry.as_ref()).await.unwrap();
    assert_eq!(rows_in(&embedded_db(&journal), LOG_ROWS), 5);

    // a forgotten: the rows only it had go, the shared ones stay.
    a.update(|b| b.finish_build(BuildState::Succeeded, None));
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        forget_older_than(&journal, &registry, Duration::ZERO),
        ["a"]
    );
    assert_eq!(rows_in(&embedded_db(&journal), LOG_ROWS), 3);
    // A new row after the forgetting is numbered after the others.
    let c = add("c");
    line(&c, 1);
    journal.commit_dirty(registry.as_ref()).await.unwrap();
    drop(journal);
    let mut saved = reopened(&path);
    saved.sort();
    assert_eq!(
        saved,
        vec![
            (
                "b".into(),
                vec![(1, "b 1".into()), (2, "b 2".into()), (3, "b 3".into())],
                vec![3]
            ),
            ("c".into(), vec![(1, "c 1".into())], vec![1]),
        ]
    );
}

#[tokio::test]
async fn a_journal_of_chunks_keyed_by_build_is_moved_into_rows_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("builds.redb");
    let registry = Arc::new(Registry::default());
    {
        let journal = Journal::open(&path).unwrap();
        for id in ["a", "b"] {
            add_build(&registry, &journal, id);
        }
        for seq in 1..=3u64 {
            for id in ["a", "b"] {
                let line = format!("{id} {seq}");
                registry
                    .get(id)
                    .unwrap()
                    .append_agent_lines(0, &[AgentLine { seq, line }]);
            }
            journal.commit_dirty(registry.as_ref()).await.unwrap();
        }
    }
    let expected = reopened(&path);
    assert_eq!(expected.len(), 2);
    // The layout before log rows: a row per build per commit, keyed by
    // (build, first seq), in a table named `logs`.
    {
        let db = Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let rows = txn.open_table(LOG_ROWS).unwrap();
            let mut keyed = txn.open_table(KEYED_LOGS).unwrap();
            for row in rows.iter().unwrap() {
                let (key, row) = row.unwrap();
                for (id, chunk) in decode_row(key.value(), row.value()).unwrap() {
                    let first = serde_json::from_slice::<Chunk>(chunk).unwrap().lines[0].seq;
                    keyed.insert((id, first), chunk).unwrap();
                }
            }
        }
        txn.delete_table(LOG_ROWS).unwrap();
        txn.delete_table(LOG_MAP).unwrap();
        txn.commit().unwrap();
    }
    assert_eq!(rows(&path, KEYED_LOGS), 6);

    assert_eq!(reopened(&path), expected);
    let db = Database::open(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let tables: Vec<String> = txn
        .list_tables()
        .unwrap()
        .map(|t| t.name().to_string())
        .collect();
    assert!(!tables.contains(&"logs".to_string()), "{tables:?}");
    drop(txn);
    drop(db);
    // One row per build.
    assert_eq!(rows(&path, LOG_ROWS), 2);
}

fn encoded<'a>(entries: impl Iterator<Item = (&'a str, Vec<u8>)>) -> Vec<Vec<u8>> {
    let mut rows = Vec::new();
    let none = Entry {
        first_seq: 1,
        lines: 0,
        bytes: 0,
    };
    write_rows(entries.map(|(id, chunk)| (id, none, chunk)), |row, _| {
        rows.push(row.to_vec());
        Ok::<_, ()>(())
    })
    .unwrap();
    rows
}

#[test]
fn a_commit_is_cut_into_rows_of_at_most_row_bytes() {
    let third = vec![b'y'; ROW_BYTES / 3];
    let whole = vec![b'x'; ROW_BYTES];
    let entries = [
        ("a", &third),
        ("b", &third),
        ("c", &third),
        ("d", &whole),
        ("e", &third),
    ];
    let rows = encoded(entries.iter().map(|(id, c)| (*id, (*c).clone())));
    let ids: Vec<String> = rows
        .iter()
        .map(|row| decode_row(0, row).unwrap().iter().map(|e| e.0).collect())
        .collect();
    // Two thirds fit with their headers, a third does not; an entry
    // larger than a row has one of its own.
    assert_eq!(ids, ["ab", "c", "d", "e"]);
    assert!(rows[0].len() <= ROW_BYTES && rows[3].len() <= ROW_BYTES);
    let d = decode_row(0, &rows[2]).unwrap();
    assert_eq!(d, vec![("d", whole.as_slice())]);
}

#[test]
fn a_row_cut_short_is_an_error_naming_it() {
    let rows = encoded([("a", b"{}".to_vec()), ("bb", b"[1]".to_vec())].into_iter());
    let [row] = &rows[..] else {
        panic!("two small entries make one row: {rows:?}")
    };
    assert_eq!(
        decode_row(7, row).unwrap(),
        vec![("a", &b"{}"[..]), ("bb", &b"[1]"[..])]
    );
    // Cut anywhere but between the entries (a row of one entry).
    for cut in (1..row.len()).filter(|&cut| cut != 4 + 1 + 4 + 2) {
        let err = decode_row(7, &row[..cut]).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("log row 7 is cut short"), "{err}");
    }
}

/// A file whose writes fail while `failing` is set, as a full disk's do.
#[derive(Debug)]
struct Flaky {
    file: redb::backends::FileBackend,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl Flaky {
    fn check(&self) -> std::io::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            Err(std::io::Error::other("no space left on device (injected)"))
        } else {
            Ok(())
        }
    }
}

impl redb::StorageBackend for Flaky {
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.file.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.check()?;
        self.file.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.check()?;
        self.file.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check()?;
        self.file.write(offset, data)
    }
    fn close(&self) -> std::io::Result<()> {
        self.file.close()
    }
}

/// After one failed write redb refuses every transaction until the file is
/// reopened (a disk full once kept the journal, and every create, check-in
/// and result, down for good). The writer reopens it and carries on; what
/// was saved before and after reads back.
#[tokio::test]
async fn the_writer_recovers_from_a_failed_write_by_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("builds.redb");
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let opener =
        |path: std::path::PathBuf, failing: Arc<std::sync::atomic::AtomicBool>| -> Opener {
            Box::new(move || {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
                    .map_err(redb::Error::Io)?;
                let backend = Flaky {
                    file: redb::backends::FileBackend::new(file)?,
                    failing: Arc::clone(&failing),
                };
                Ok(redb::Builder::new().create_with_backend(backend)?)
            })
        };
    let journal = Arc::new(Journal::open_with(opener(path.clone(), Arc::clone(&failing))).unwrap());
    journal.set_flush_timeout(Duration::from_millis(500));
    let registry = Arc::new(Registry::default());
    let writer =
        tokio::spawn(Arc::clone(&journal).run_writer(Arc::clone(&registry) as Arc<dyn Builds>));
    let a = add_build(&registry, &journal, "a");
    journal.flush().await.unwrap();

    failing.store(true, Ordering::SeqCst);
    a.update(|b| b.finish_build(BuildState::Succeeded, None));
    assert!(journal.flush().await.is_err(), "the fault was injected");
    failing.store(false, Ordering::SeqCst);
    journal.set_flush_timeout(Duration::from_secs(20));
    journal
        .flush()
        .await
        .expect("the writer reopened the journal");
    let b = add_build(&registry, &journal, "b");
    journal.flush().await.unwrap();
    writer.abort();
    let _ = writer.await;
    drop((a, b, registry));
    drop(Arc::try_unwrap(journal).ok().expect("no one else holds it"));

    let saved = Journal::open(&path).unwrap().load(usize::MAX).unwrap();
    let states: Vec<(String, BuildState)> = saved
        .iter()
        .map(|r| (r.record.status.id.clone(), r.record.status.state))
        .collect();
    assert_eq!(
        states,
        [
            ("a".to_string(), BuildState::Succeeded),
            ("b".to_string(), BuildState::Running)
        ]
    );
}

/// A registry password and a build secret never reach the database file
/// (its freed pages would keep them after the build forgot them): they sit
/// in the build's vault file while it runs, are read back at start-up, and
/// the file goes when the build ends.
#[tokio::test]
async fn secrets_live_beside_the_journal_never_in_it() {
    const PASSWORD: &str = "vault-Registry-Pw-1";
    const SECRET: &str = "vault-Build-Secret-2";
    const KEY: &str = "vault-Ssh-Key-3";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("builds.redb");
    let registry = Arc::new(Registry::default());
    let req = request_with_secrets(PASSWORD, SECRET, KEY);
    let holds = |file: &Path, needle: &str| {
        std::fs::read(file).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
    };
    let vault = dir.path().join("secrets/s1.json");
    {
        let journal = Journal::open(&path).unwrap();
        let build = Arc::new(Build::new(
            "s1".into(),
            req,
            Platform::Local,
            Some(journal.signal()),
            u64::MAX,
        ));
        registry.insert(Arc::clone(&build));
        assert_eq!(journal.commit_dirty(registry.as_ref()).await.unwrap(), 1);
        assert!(
            holds(&vault, PASSWORD) && holds(&vault, SECRET) && holds(&vault, KEY),
            "the vault file holds them"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&vault).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    assert!(
        !holds(&path, PASSWORD) && !holds(&path, SECRET) && !holds(&path, KEY),
        "not in the database"
    );
    let restored = Journal::open(&path).unwrap().load(usize::MAX).unwrap();
    let spec = &restored[0].record.request.tasks[0].spec;
    assert_eq!(spec.credentials[0].password.expose(), PASSWORD);
    assert_eq!(spec.secrets[0].value.expose(), SECRET);
    assert_eq!(
        spec.ssh[0].value.expose(),
        KEY,
        "a restarted controller has the SSH key"
    );
    let journal = Journal::open(&path).unwrap();
    registry
        .get("s1")
        .unwrap()
        .update(|b| b.finish_build(BuildState::Succeeded, None));
    journal.commit_dirty(registry.as_ref()).await.unwrap();
    assert!(!vault.exists(), "a finished build's vault file is deleted");
    assert!(!holds(&path, PASSWORD) && !holds(&path, SECRET));
}
