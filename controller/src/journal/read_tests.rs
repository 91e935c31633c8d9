//! The journal's log reads: a restart's tail, a follower's window, and
//! journals written before the row map or by a retried commit.

use super::rows::{LOG_MAP, LOG_ROWS};
use super::tests::{add_build, reopened, rows};
use super::*;
use crate::state::Registry;
use bakery_protocol::api::AgentLine;
use redb::Database;

/// A build whose log is far longer than what is kept in memory: a restart
/// reads its tail (and how long it is) without reading the rest, and the
/// rest is read from where it is, whatever the step.
#[tokio::test]
async fn a_restart_reads_the_tail_and_the_rest_is_read_where_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("builds.redb");
    let registry = Arc::new(Registry::default());
    {
        let journal = Journal::open(&path).unwrap();
        let builds = ["a", "b"].map(|id| add_build(&registry, &journal, id));
        // 40 commits of 25 lines for each build: 1,000 lines each.
        for batch in 0..40u64 {
            for b in &builds {
                let lines: Vec<AgentLine> = (1..=25)
                    .map(|i| {
                        let seq = batch * 25 + i;
                        AgentLine {
                            seq,
                            line: format!("{} {seq}", b.id),
                        }
                    })
                    .collect();
                b.append_agent_lines(0, &lines);
            }
            journal.commit_dirty(registry.as_ref()).await.unwrap();
        }
        // Saved lines left memory, but the last TAIL_LINES.
        let held = builds[0].read().log_held_from();
        assert_eq!(held, 1000 - crate::state::log::TAIL_LINES);
    }
    let journal = Journal::open(&path).unwrap();
    let restored = journal.load(10).unwrap();
    let a = restored.iter().find(|r| r.record.status.id == "a").unwrap();
    let seqs: Vec<u64> = a.tail.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, (991..=1000).collect::<Vec<_>>());
    assert_eq!(a.log_len, 1000);
    let bytes: u64 = (1..=1000).map(|s| format!("a {s}").len() as u64).sum();
    assert_eq!(a.log_bytes, bytes);
    assert_eq!(a.agent_seqs, vec![1000]);
    // Any window, from any line, across the rows: whole chunks (of 25
    // lines here) until there are enough.
    for (after, max, end) in [
        (0, 1000, 1000),
        (0, 7, 25),
        (24, 1, 25),
        (25, 30, 75),
        (990, 512, 1000),
        (999, 5, 1000),
        (1000, 5, 1000),
    ] {
        let lines = journal.read_lines("b", after, max).unwrap();
        let expected: Vec<(u64, String)> =
            (after + 1..=end).map(|s| (s, format!("b {s}"))).collect();
        let got: Vec<(u64, String)> = lines.into_iter().map(|l| (l.seq, l.line)).collect();
        assert_eq!(got, expected, "after {after}, {max} at most");
    }
    assert!(journal.read_lines("nobody", 0, 10).unwrap().is_empty());
}

/// Journals written before the row map: it is written from the rows when
/// the journal opens, and reads back the same.
#[tokio::test]
async fn rows_without_their_map_are_mapped_when_the_journal_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("builds.redb");
    let registry = Arc::new(Registry::default());
    {
        let journal = Journal::open(&path).unwrap();
        let b = add_build(&registry, &journal, "old");
        for seq in 1..=5u64 {
            b.append_agent_lines(
                0,
                &[AgentLine {
                    seq,
                    line: format!("old {seq}"),
                }],
            );
            journal.commit_dirty(registry.as_ref()).await.unwrap();
        }
    }
    {
        let db = Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        assert!(
            txn.delete_table(LOG_MAP).unwrap(),
            "the map was there to remove"
        );
        txn.commit().unwrap();
    }
    let expected: Vec<(u64, String)> = (1..=5).map(|s| (s, format!("old {s}"))).collect();
    assert_eq!(
        reopened(&path),
        vec![("old".to_string(), expected, vec![5])]
    );
    assert_eq!(rows(&path, LOG_MAP), 5);
}

/// Writes row `key` by hand: `id`'s lines `seqs`, with its map entry
/// unless `mapped` is false (as an older controller wrote rows).
fn put_row(path: &Path, key: u64, id: &str, seqs: std::ops::RangeInclusive<u64>, mapped: bool) {
    use super::rows::{encode_chunk, push_entry, push_map_entry};
    let lines: Vec<bakery_protocol::api::LogEvent> = seqs
        .map(|seq| bakery_protocol::api::LogEvent {
            seq,
            task: format!("{id}-amd64"),
            arch: bakery_protocol::Arch::Amd64,
            line: format!("{id} {seq}"),
            ms: 0,
        })
        .collect();
    let last = lines.last().unwrap().seq;
    let refs = lines.iter().map(|l| bakery_protocol::api::LogEventRef {
        seq: l.seq,
        task: &l.task,
        arch: l.arch,
        line: &l.line,
        ms: l.ms,
    });
    let (entry, chunk) = encode_chunk(&[last], refs).unwrap();
    let (mut row, mut map) = (Vec::new(), Vec::new());
    push_entry(&mut row, id, &chunk);
    push_map_entry(&mut map, id, entry);
    let db = Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(LOG_ROWS)
        .unwrap()
        .insert(key, row.as_slice())
        .unwrap();
    if mapped {
        txn.open_table(LOG_MAP)
            .unwrap()
            .insert(key, map.as_slice())
            .unwrap();
    }
    txn.commit().unwrap();
}

/// A commit that failed after all reached the disk, then its retry (the
/// same first line, more lines), then rows an older controller appended
/// without their map (a rollback and back): every line reads back once,
/// in order, and the log's length and size count each line once.
#[tokio::test]
async fn a_landed_retry_and_rows_without_a_map_read_back_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("builds.redb");
    let registry = Arc::new(Registry::default());
    {
        let journal = Journal::open(&path).unwrap();
        let b = add_build(&registry, &journal, "r");
        let lines: Vec<AgentLine> = (1..=3)
            .map(|seq| AgentLine {
                seq,
                line: format!("r {seq}"),
            })
            .collect();
        b.append_agent_lines(0, &lines);
        journal.commit_dirty(registry.as_ref()).await.unwrap();
    }
    // Lines 4-5 landed, and the retry wrote 4-7 in the next row.
    put_row(&path, 100, "r", 4..=5, true);
    put_row(&path, 101, "r", 4..=7, true);
    // An older controller appended 8-9 without a map entry.
    put_row(&path, 102, "r", 8..=9, false);
    let journal = Journal::open(&path).unwrap();
    let restored = journal.load(4).unwrap();
    let seqs: Vec<u64> = restored[0].tail.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, [6, 7, 8, 9]);
    assert_eq!(restored[0].log_len, 9);
    let bytes: u64 = (1..=9).map(|s| format!("r {s}").len() as u64).sum();
    assert_eq!(restored[0].log_bytes, bytes, "each line counted once");
    assert_eq!(restored[0].agent_seqs, [9]);
    let all: Vec<u64> = journal
        .read_lines("r", 0, 100)
        .unwrap()
        .iter()
        .map(|l| l.seq)
        .collect();
    assert_eq!(all, (1..=9).collect::<Vec<_>>());
}
