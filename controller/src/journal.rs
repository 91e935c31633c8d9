//! Builds on disk, so that a controller restart loses none of them.
//!
//! An embedded database (redb, one file in DATA_DIR) rather than the object
//! store or the orchestrator's objects: it works the same on every platform,
//! needs no server, and commits a batch atomically, which is what makes
//! "every log line exactly once" hold across a crash.
//!
//! Writes are group commits. Anything that changes a build marks it dirty
//! and wakes one writer task; the writer saves every dirty build's record
//! and its new log lines in one transaction. Handlers whose answer promises
//! durability (a build accepted, an agent's batch or result acknowledged)
//! wait for the commit that covers their change with [`Journal::flush`]: an
//! agent only forgets lines the controller has on disk, so after a crash it
//! resends exactly what was lost, and the seq numbers drop what was not.
//!
//! Log lines are stored in chunks (one row per build per commit), not one
//! row per line: a busy controller commits thousands of lines at a time.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bakery_core::api::{now_ms, BuildStatus, CreateBuild, LogEvent, LogEventRef};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::state::{Build, Registry};

/// The journal's page cache (see [`Journal::open`]).
const JOURNAL_CACHE_BYTES: usize = 16 << 20;

/// Least time between the starts of two commits of log lines. Each commit
/// costs an fsync and a B-tree update per dirty build whatever it holds;
/// under many chatty builds, committing as fast as the disk allows spent
/// more on that than on the lines. A follower or an agent's paced
/// acknowledgement sees at most this much more delay.
///
/// A change someone is waiting on (a new build, a check-in, a result, a
/// cancel, a build's end, an agent's last lines) skips the gap
/// ([`Signal::wake_urgent`]) while the controller is quiet, which is when
/// the last commit carried one build's changes: a build waits for four of
/// them in a row, and a 10 ms gap before each was a third of what bakery
/// added to a one-arch build (bench/RESULTS.md, row 2). Under load every
/// commit carries many builds and the gap holds for all: skipping it there
/// doubled the commits at 1,000 builds for no one's benefit (the gap is
/// what a waiter sees at most anyway).
const COMMIT_GAP: Duration = Duration::from_millis(10);

/// Build id → [`Record`] as JSON.
const BUILDS: TableDefinition<&str, &[u8]> = TableDefinition::new("builds");
/// (build id, seq of the chunk's first line) → JSON [`Chunk`].
const LOGS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("logs");

/// How long a handler waits for its change to reach the disk before it
/// answers 503 (the agent retries; the client sees an error it can retry).
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("build journal {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: redb::Error,
    },
    #[error("build journal: {0}")]
    Db(#[from] redb::Error),
    #[error("build journal: a record does not parse ({0}); move the file aside to start empty")]
    Decode(#[from] serde_json::Error),
    #[error("the build journal did not confirm the write within {0:?}")]
    Timeout(Duration),
}

/// What is saved of a build besides its log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub status: BuildStatus,
    /// The request as the client sent it, registry credentials included:
    /// a resumed build needs them to write its index (see SECURITY.md).
    pub request: CreateBuild,
    pub tasks: Vec<TaskRecord>,
    pub cancel_requested: bool,
}

/// A task's private state that must outlive the process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The agent keeps using this token after a restart.
    pub token: String,
    pub agent_seq: u64,
    pub handle: Option<String>,
    /// Wall-clock times, since `Instant`s do not survive a restart.
    pub launched_ms: Option<u64>,
    pub checked_in_ms: Option<u64>,
}

/// Lines added by one commit, and each task's agent seq after them (so a
/// commit of lines alone need not rewrite the record).
#[derive(Debug, Serialize, Deserialize)]
struct Chunk {
    agent_seqs: Vec<u64>,
    lines: Vec<LogEvent>,
}

/// A build as read back at start-up.
pub struct Restored {
    pub record: Record,
    pub logs: Vec<LogEvent>,
    /// Each task's agent seq as of the last chunk.
    pub agent_seqs: Vec<u64>,
}

/// The shared half: builds mark themselves dirty and wake the writer here.
#[derive(Debug)]
pub struct Signal {
    wake: Notify,
    /// Cuts the writer's gap short (its permit is kept until the writer
    /// next waits out a gap).
    hurry: Notify,
    requested: AtomicU64,
    committed: watch::Sender<u64>,
}

impl Signal {
    /// New lines: saved at the next paced commit.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// A change someone waits for: saved at once.
    pub fn wake_urgent(&self) {
        self.hurry.notify_one();
        self.wake.notify_one();
    }
}

pub struct Journal {
    db: Arc<Database>,
    signal: Arc<Signal>,
}

impl Journal {
    /// Opens (or creates) the journal file, with permissions for its owner
    /// only: it holds registry credentials of unfinished builds.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| JournalError::Open {
                path: path.display().to_string(),
                source: redb::Error::Io(e),
            })?;
        }
        // redb caches up to 1 GiB of pages by default, and keeps what a
        // commit wrote: under 1,000 chatty builds that is every log line a
        // second time in RSS. The journal only appends, and reads once at
        // start-up, so a small cache costs nothing.
        let db = redb::Builder::new()
            .set_cache_size(JOURNAL_CACHE_BYTES)
            .create(path)
            .map_err(|e| JournalError::Open {
                path: path.display().to_string(),
                source: e.into(),
            })?;
        restrict_permissions(path);
        // Both tables exist from the start, so readers never see "no table".
        let txn = db.begin_write().map_err(redb::Error::from)?;
        txn.open_table(BUILDS).map_err(redb::Error::from)?;
        txn.open_table(LOGS).map_err(redb::Error::from)?;
        txn.commit().map_err(redb::Error::from)?;
        Ok(Journal {
            db: Arc::new(db),
            signal: Arc::new(Signal {
                wake: Notify::new(),
                hurry: Notify::new(),
                requested: AtomicU64::new(0),
                committed: watch::channel(0).0,
            }),
        })
    }

    pub fn signal(&self) -> Arc<Signal> {
        Arc::clone(&self.signal)
    }

    /// Every saved build, oldest first.
    pub fn load(&self) -> Result<Vec<Restored>, JournalError> {
        let txn = self.db.begin_read().map_err(redb::Error::from)?;
        let builds = txn.open_table(BUILDS).map_err(redb::Error::from)?;
        let logs = txn.open_table(LOGS).map_err(redb::Error::from)?;
        let mut out = Vec::new();
        for entry in builds.iter().map_err(redb::Error::from)? {
            let (id, value) = entry.map_err(redb::Error::from)?;
            let record: Record = serde_json::from_slice(value.value())?;
            let mut lines = Vec::new();
            let mut agent_seqs = Vec::new();
            for chunk in logs
                .range((id.value(), 0)..=(id.value(), u64::MAX))
                .map_err(redb::Error::from)?
            {
                let (_, v) = chunk.map_err(redb::Error::from)?;
                let chunk: Chunk = serde_json::from_slice(v.value())?;
                lines.extend(chunk.lines);
                agent_seqs = chunk.agent_seqs;
            }
            out.push(Restored {
                record,
                logs: lines,
                agent_seqs,
            });
        }
        out.sort_by_key(|r| r.record.status.created_ms);
        Ok(out)
    }

    /// Waits until every change made before this call is on disk, which
    /// is at once: someone is waiting.
    pub async fn flush(&self) -> Result<(), JournalError> {
        self.flush_when(true).await
    }

    /// Like [`Journal::flush`], at the next paced commit: for waiters that
    /// do not hold anything up (an agent's periodic acknowledgement).
    pub async fn flush_paced(&self) -> Result<(), JournalError> {
        self.flush_when(false).await
    }

    async fn flush_when(&self, urgent: bool) -> Result<(), JournalError> {
        let mine = self.signal.requested.fetch_add(1, Ordering::SeqCst) + 1;
        if urgent {
            self.signal.wake_urgent();
        } else {
            self.signal.wake();
        }
        let mut committed = self.signal.committed.subscribe();
        let reached = tokio::time::timeout(FLUSH_TIMEOUT, committed.wait_for(|c| *c >= mine))
            .await
            .is_ok_and(|r| r.is_ok());
        if reached {
            Ok(())
        } else {
            Err(JournalError::Timeout(FLUSH_TIMEOUT))
        }
    }

    /// Removes finished builds that ended more than `retention` ago.
    pub fn forget_older_than(
        &self,
        registry: &Registry,
        retention: Duration,
    ) -> Result<usize, JournalError> {
        let cutoff = now_ms().saturating_sub(retention.as_millis() as u64);
        let old: Vec<String> = registry
            .all()
            .into_iter()
            .filter(|b| {
                let s = b.status();
                s.state.is_terminal() && s.finished_ms.is_some_and(|f| f < cutoff)
            })
            .map(|b| b.id.clone())
            .collect();
        if old.is_empty() {
            return Ok(0);
        }
        let txn = self.db.begin_write().map_err(redb::Error::from)?;
        {
            let mut builds = txn.open_table(BUILDS).map_err(redb::Error::from)?;
            let mut logs = txn.open_table(LOGS).map_err(redb::Error::from)?;
            for id in &old {
                builds.remove(id.as_str()).map_err(redb::Error::from)?;
                logs.retain_in((id.as_str(), 0)..=(id.as_str(), u64::MAX), |_, _| false)
                    .map_err(redb::Error::from)?;
            }
        }
        txn.commit().map_err(redb::Error::from)?;
        for id in &old {
            registry.remove(id);
        }
        Ok(old.len())
    }

    /// The writer: saves dirty builds, one transaction per wake-up, until the
    /// process ends. A failed commit is retried; its waiters keep waiting
    /// (and time out into a 503) rather than being told a lie.
    pub async fn run_writer(self: Arc<Self>, registry: Arc<Registry>) {
        let mut last = tokio::time::Instant::now() - COMMIT_GAP;
        let mut busy = false;
        loop {
            self.signal.wake.notified().await;
            // What arrives within the gap joins this commit. An urgent change
            // (made before or during the wait) ends it while not busy; one
            // made after this point keeps its permit for the next commit.
            tokio::select! {
                _ = tokio::time::sleep_until(last + COMMIT_GAP) => {}
                _ = self.signal.hurry.notified(), if !busy => {}
            }
            last = tokio::time::Instant::now();
            loop {
                let target = self.signal.requested.load(Ordering::SeqCst);
                match self.commit_dirty(&registry).await {
                    Ok(builds) => {
                        // A flush with nothing left to save says nothing
                        // about the load (1,000 agents' acknowledgers ask
                        // ~1,000 times a second, mostly for saved lines).
                        if builds > 0 {
                            busy = builds > 1;
                        }
                        self.signal.committed.send_replace(target);
                        break;
                    }
                    Err(e) => {
                        tracing::error!("saving builds failed, retrying in 1s: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }

    /// Returns how many builds the commit carried.
    async fn commit_dirty(&self, registry: &Registry) -> Result<usize, JournalError> {
        let mut batch: Vec<Pending> = Vec::new();
        for build in registry.all() {
            if let Some(p) = Pending::take(&build)? {
                batch.push(p);
            }
        }
        if batch.is_empty() {
            return Ok(0);
        }
        let builds: Vec<Arc<Build>> = batch.iter().map(|p| Arc::clone(&p.build)).collect();
        let db = Arc::clone(&self.db);
        let written = tokio::task::spawn_blocking(move || -> Result<Vec<Pending>, redb::Error> {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(BUILDS)?;
                let mut logs = txn.open_table(LOGS)?;
                for p in &batch {
                    if let Some(record) = &p.record {
                        table.insert(p.build.id.as_str(), record.as_slice())?;
                    }
                    if let Some((first, chunk)) = &p.chunk {
                        logs.insert((p.build.id.as_str(), *first), chunk.as_slice())?;
                    }
                }
            }
            txn.commit()?;
            Ok(batch)
        })
        .await;
        let error = match written {
            Ok(Ok(batch)) => {
                let carried = batch.len();
                for p in batch {
                    p.build.set_persisted(p.logs_end);
                }
                return Ok(carried);
            }
            Ok(Err(e)) => JournalError::Db(e),
            Err(join) => JournalError::Db(redb::Error::Io(std::io::Error::other(join))),
        };
        // Nothing of the transaction is on disk: the retry saves these builds
        // whole (rewriting a chunk is harmless, its key is its first seq).
        for b in &builds {
            b.mark_dirty();
        }
        Err(error)
    }
}

/// One build's share of a commit.
struct Pending {
    build: Arc<Build>,
    record: Option<Vec<u8>>,
    /// The first seq of the new lines, and the lines as JSON.
    chunk: Option<(u64, Vec<u8>)>,
    logs_end: usize,
}

/// A [`Chunk`] as written: the same JSON, from borrowed lines.
#[derive(Serialize)]
struct ChunkRef<'a> {
    agent_seqs: &'a [u64],
    lines: Vec<LogEventRef<'a>>,
}

/// Serialises lines as a chunk (see [`Chunk`]).
pub fn encode_chunk<'a>(
    agent_seqs: &[u64],
    lines: impl Iterator<Item = LogEventRef<'a>>,
) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&ChunkRef {
        agent_seqs,
        lines: lines.collect(),
    })
}

impl Pending {
    fn take(build: &Arc<Build>) -> Result<Option<Pending>, JournalError> {
        if !build.take_dirty() {
            return Ok(None);
        }
        let from = build.persisted();
        let crate::state::Unsaved {
            record,
            chunk,
            logs_end,
        } = build.to_record(from)?;
        Ok(Some(Pending {
            build: Arc::clone(build),
            record: record.map(|r| serde_json::to_vec(&r)).transpose()?,
            chunk,
            logs_end,
        }))
    }
}

fn restrict_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        tracing::warn!("cannot restrict {} to its owner: {e}", path.display());
    }
}

/// Turns saved wall-clock times back into `Instant`s on this process's clock.
pub fn instant_from_ms(ms: u64) -> std::time::Instant {
    let ago = Duration::from_millis(now_ms().saturating_sub(ms));
    let now = std::time::Instant::now();
    now.checked_sub(ago).unwrap_or(now)
}

/// The inverse of [`instant_from_ms`].
pub fn ms_from_instant(at: std::time::Instant) -> u64 {
    now_ms().saturating_sub(at.elapsed().as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bakery_core::api::{AgentLine, BuildState};
    use bakery_core::Platform;
    use redb::ReadableTableMetadata;

    fn request() -> CreateBuild {
        let spec = serde_json::json!({
            "dockerfile": "Dockerfile", "build_args": {}, "labels": {}, "env": {},
            "credentials": [], "spot": false, "cache": {}, "cache_from": [],
            "use_new_run": false, "cleanup": false, "custom_platform": "linux/amd64",
            "no_push": false, "ignore_path": [], "extra_flags": []
        });
        serde_json::from_value(serde_json::json!({
            "service": "svc", "destination": null,
            "tasks": [{"arch": "amd64", "push": null, "context_key": "k", "spec": spec}]
        }))
        .unwrap()
    }

    /// A build as read back: its id, its lines (seq, text), its agent seqs.
    type Saved = (String, Vec<(u64, String)>, Vec<u64>);

    /// What a reopened journal holds of each build.
    fn reopened(path: &Path) -> Vec<Saved> {
        Journal::open(path)
            .unwrap()
            .load()
            .unwrap()
            .into_iter()
            .map(|r| {
                let lines = r.logs.into_iter().map(|l| (l.seq, l.line)).collect();
                (r.record.status.id, lines, r.agent_seqs)
            })
            .collect()
    }

    fn rows<K: redb::Key + 'static>(path: &Path, table: TableDefinition<K, &[u8]>) -> u64 {
        let db = Database::open(path).unwrap();
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
            let builds: Vec<Arc<Build>> = ["a", "b"]
                .into_iter()
                .map(|id| {
                    let b = Arc::new(Build::new(
                        id.into(),
                        request(),
                        Platform::Local,
                        Some(journal.signal()),
                    ));
                    registry.insert(Arc::clone(&b));
                    b
                })
                .collect();
            // A commit per line and build: a chunk per build per commit.
            for seq in 1..=23u64 {
                for b in &builds {
                    let line = format!("{} {seq}", b.id);
                    b.append_agent_lines(0, &[AgentLine { seq, line }]);
                }
                assert_eq!(journal.commit_dirty(&registry).await.unwrap(), 2);
            }
        }
        assert_eq!(rows(&path, LOGS), 46);
        let expected = |id: &str| -> Vec<(u64, String)> {
            (1..=23).map(|s| (s, format!("{id} {s}"))).collect()
        };
        let mut saved = reopened(&path);
        saved.sort();
        assert_eq!(
            saved,
            vec![
                ("a".to_string(), expected("a"), vec![23]),
                ("b".to_string(), expected("b"), vec![23]),
            ]
        );

        // Forgetting a finished build: the other keeps every line, the
        // forgotten one leaves no row behind.
        let journal = Journal::open(&path).unwrap();
        let a = registry.get("a").unwrap();
        a.lock().finish_build(BuildState::Succeeded, None);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(
            journal
                .forget_older_than(&registry, Duration::ZERO)
                .unwrap(),
            1
        );
        drop(journal);
        assert_eq!(rows(&path, LOGS), 23);
        let saved = reopened(&path);
        assert_eq!(saved, vec![("b".to_string(), expected("b"), vec![23])]);
    }
}
