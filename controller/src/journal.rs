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
//! Log lines are stored as one row per commit, keyed by the commit's number,
//! holding each build's new lines of that commit as a chunk. Keyed by build
//! instead, each of a commit's ~100 chunks landed on a B-tree page of its
//! own, and every commit rewrote them all: 1,000 chatty builds had the
//! controller write ~70 MB/s to disk for 1.5 MB/s of lines (bench/RESULTS.md,
//! row 4). Appended in key order, a commit rewrites the tree's last pages
//! only. A build's lines are read back by scanning the rows in order, which
//! happens once, at start-up; rows go oldest first, up to the first row of
//! the oldest build kept ([`RowIndex`]).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bakery_protocol::api::{now_ms, BuildStatus, CreateBuild, LogEvent, LogEventRef};
use redb::{
    Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::state::{Build, Registry};

/// The journal's page cache (see [`Journal::open`]).
const JOURNAL_CACHE_BYTES: usize = 16 << 20;

/// Least time between the starts of two commits of log lines. Each commit
/// costs an fsync and a B-tree update whatever it holds;
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
/// Commit number → each build's new lines in that commit ([`write_rows`]).
const LOG_ROWS: TableDefinition<u64, &[u8]> = TableDefinition::new("log_rows");
/// The layout before [`LOG_ROWS`]: (build id, seq of the chunk's first line)
/// → JSON [`Chunk`]. Moved into log rows when such a journal is opened.
const KEYED_LOGS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("logs");

/// Most bytes in a log row (but for a single larger entry).
const ROW_BYTES: usize = 16 << 10;

/// How long a handler waits for its change to reach the disk before it
/// answers 503 (the agent retries; the client sees an error it can retry),
/// unless JOURNAL_TIMEOUT says otherwise.
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
    #[error("build journal: log row {0} is cut short; move the file aside to start empty")]
    Row(u64),
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
    /// Whether the client was told the build exists (see
    /// [`crate::state::Inner::acknowledged`]). Journals written before the
    /// flag existed acknowledged every build they held.
    #[serde(default = "yes")]
    pub acknowledged: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

fn yes() -> bool {
    true
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
    /// When the task began waiting for an agent slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_ms: Option<u64>,
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
    rows: Mutex<RowIndex>,
    /// How long [`Journal::flush`] waits for its commit, in milliseconds.
    flush_timeout_ms: AtomicU64,
}

/// Which log rows may go. Rows are written in key order and a build's lines
/// are in rows from its first on, so the rows before the first row of every
/// build still kept hold forgotten builds' lines only. (A forgotten build's
/// lines stay until every build that had started logging by then is
/// forgotten too: no per-row bookkeeping, at the price of some dead lines.)
#[derive(Debug, Default)]
struct RowIndex {
    /// The key of the next row.
    next: u64,
    /// Build id → the key of the first row holding its lines.
    first: HashMap<String, u64>,
    /// Whether `first` covers the rows on disk (filled by [`Journal::load`]).
    complete: bool,
}

impl RowIndex {
    /// Keys for the rows of a commit holding lines of `builds`: as many
    /// from the one returned on as there are builds (the most rows they can
    /// take, see [`write_rows`]; unused keys are skipped). None without
    /// builds.
    fn assign<'a>(&mut self, builds: impl Iterator<Item = &'a str>) -> Option<u64> {
        let key = self.next;
        for id in builds {
            self.next += 1;
            self.seen(id, key);
        }
        (self.next > key).then_some(key)
    }

    /// The key below which no row holds lines of a build other than `gone`.
    fn kept_from(&self, gone: &[String]) -> u64 {
        let gone: HashSet<&str> = gone.iter().map(String::as_str).collect();
        self.first
            .iter()
            .filter(|(id, _)| !gone.contains(id.as_str()))
            .map(|(_, key)| *key)
            .min()
            .unwrap_or(self.next)
    }

    /// Notes that row `key` holds lines of `id`.
    fn seen(&mut self, id: &str, key: u64) {
        if !self.first.contains_key(id) {
            self.first.insert(id.to_string(), key);
        }
    }

    /// Takes in what a scan of the rows on disk found (rows numbered
    /// meanwhile are already here, with later keys).
    fn merge(&mut self, found: RowIndex) {
        for (id, key) in found.first {
            let first = self.first.entry(id).or_insert(key);
            *first = (*first).min(key);
        }
        self.complete = true;
    }
}

impl Journal {
    /// Opens (or creates) the journal file, with permissions for its owner
    /// only from the first byte: it holds registry credentials of
    /// unfinished builds.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        create_private(path).map_err(|e| JournalError::Open {
            path: path.display().to_string(),
            source: redb::Error::Io(e),
        })?;
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
        migrate_keyed_logs(&txn)?;
        let next = txn
            .open_table(LOG_ROWS)
            .map_err(redb::Error::from)?
            .last()
            .map_err(redb::Error::from)?
            .map_or(0, |(key, _)| key.value() + 1);
        txn.commit().map_err(redb::Error::from)?;
        Ok(Journal {
            db: Arc::new(db),
            signal: Arc::new(Signal {
                wake: Notify::new(),
                hurry: Notify::new(),
                requested: AtomicU64::new(0),
                committed: watch::channel(0).0,
            }),
            rows: Mutex::new(RowIndex {
                next,
                ..RowIndex::default()
            }),
            flush_timeout_ms: AtomicU64::new(FLUSH_TIMEOUT.as_millis() as u64),
        })
    }

    /// Sets how long a flush waits for its commit before it fails
    /// (JOURNAL_TIMEOUT; fault-injection tests change it on a running
    /// controller).
    pub fn set_flush_timeout(&self, timeout: Duration) {
        self.flush_timeout_ms
            .store(timeout.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn flush_timeout(&self) -> Duration {
        Duration::from_millis(self.flush_timeout_ms.load(Ordering::SeqCst))
    }

    pub fn signal(&self) -> Arc<Signal> {
        Arc::clone(&self.signal)
    }

    /// Every saved build, oldest first.
    pub fn load(&self) -> Result<Vec<Restored>, JournalError> {
        let txn = self.db.begin_read().map_err(redb::Error::from)?;
        let builds = txn.open_table(BUILDS).map_err(redb::Error::from)?;
        let mut out = Vec::new();
        let mut by_id = HashMap::new();
        for entry in builds.iter().map_err(redb::Error::from)? {
            let (id, value) = entry.map_err(redb::Error::from)?;
            let record: Record = serde_json::from_slice(value.value())?;
            by_id.insert(id.value().to_string(), out.len());
            out.push(Restored {
                record,
                logs: Vec::new(),
                agent_seqs: Vec::new(),
            });
        }
        let mut index = RowIndex::default();
        for_each_entry(&txn, |key, id, chunk| {
            // Lines of a forgotten build, in a row shared with a kept one.
            let Some(&i) = by_id.get(id) else {
                return Ok(());
            };
            index.seen(id, key);
            let chunk: Chunk = serde_json::from_slice(chunk)?;
            let build = &mut out[i];
            // A commit that failed after all reached the disk may have been
            // written again by its retry.
            let saved = build.logs.last().map_or(0, |l| l.seq);
            build
                .logs
                .extend(chunk.lines.into_iter().filter(|l| l.seq > saved));
            build.agent_seqs = chunk.agent_seqs;
            Ok(())
        })?;
        self.rows().merge(index);
        out.sort_by_key(|r| r.record.status.created_ms);
        Ok(out)
    }

    fn rows(&self) -> MutexGuard<'_, RowIndex> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fills the row index where [`Journal::load`] has not.
    fn index_rows(&self) -> Result<(), JournalError> {
        if self.rows().complete {
            return Ok(());
        }
        let txn = self.db.begin_read().map_err(redb::Error::from)?;
        let builds = txn.open_table(BUILDS).map_err(redb::Error::from)?;
        let mut index = RowIndex::default();
        for_each_entry(&txn, |key, id, _| {
            if builds.get(id).map_err(redb::Error::from)?.is_some() {
                index.seen(id, key);
            }
            Ok(())
        })?;
        self.rows().merge(index);
        Ok(())
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
        let limit = self.flush_timeout();
        let reached = tokio::time::timeout(limit, committed.wait_for(|c| *c >= mine))
            .await
            .is_ok_and(|r| r.is_ok());
        if reached {
            Ok(())
        } else {
            Err(JournalError::Timeout(limit))
        }
    }

    /// Removes finished builds that ended more than `retention` ago;
    /// returns their ids.
    pub fn forget_older_than(
        &self,
        registry: &Registry,
        retention: Duration,
    ) -> Result<Vec<String>, JournalError> {
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
            return Ok(old);
        }
        self.index_rows()?;
        // Under the lock that new rows are numbered under: a row written
        // after this is numbered from here on.
        let kept_from = self.rows().kept_from(&old);
        let txn = self.db.begin_write().map_err(redb::Error::from)?;
        {
            let mut builds = txn.open_table(BUILDS).map_err(redb::Error::from)?;
            for id in &old {
                builds.remove(id.as_str()).map_err(redb::Error::from)?;
            }
            txn.open_table(LOG_ROWS)
                .map_err(redb::Error::from)?
                .retain_in(..kept_from, |_, _| false)
                .map_err(redb::Error::from)?;
        }
        txn.commit().map_err(redb::Error::from)?;
        let mut rows = self.rows();
        for id in &old {
            rows.first.remove(id);
            registry.remove(id);
        }
        Ok(old)
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
        let row_key = self.rows().assign(
            batch
                .iter()
                .filter(|p| p.chunk.is_some())
                .map(|p| p.build.id.as_str()),
        );
        let db = Arc::clone(&self.db);
        let written = tokio::task::spawn_blocking(move || -> Result<Vec<Pending>, redb::Error> {
            let mut batch = batch;
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(BUILDS)?;
                for p in &batch {
                    if let Some(record) = &p.record {
                        table.insert(p.build.id.as_str(), record.as_slice())?;
                    }
                }
                if let Some(mut key) = row_key {
                    let mut rows = txn.open_table(LOG_ROWS)?;
                    // Each chunk is freed once copied (a retry serialises
                    // its lines again): a commit's lines are held once,
                    // not twice, at 1,000 chatty builds tens of MB.
                    let chunks = batch
                        .iter_mut()
                        .filter_map(|p| Some((p.build.id.as_str(), p.chunk.take()?)));
                    write_rows(chunks, |row| {
                        rows.insert(key, row)?;
                        key += 1;
                        Ok::<_, redb::Error>(())
                    })?;
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
        // Nothing of the transaction is on disk, as a rule: the retry saves
        // these builds whole (should a failed commit have reached the disk
        // after all, reading back drops the lines written twice).
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
    /// The new lines as a JSON [`Chunk`].
    chunk: Option<Vec<u8>>,
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

/// Hands `put` a commit's `(build id, chunk)` entries as log rows of at
/// most [`ROW_BYTES`] (but for a single larger entry), so at most one row
/// per entry, one row buffer at a time. Each entry is `[id length: u32 LE]
/// [id][chunk length: u32 LE][chunk JSON]`: a length-prefixed frame, not
/// JSON, since the chunks are JSON already and rows are written at every
/// commit.
fn write_rows<'a, E>(
    entries: impl Iterator<Item = (&'a str, Vec<u8>)>,
    mut put: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let mut row = Vec::with_capacity(ROW_BYTES);
    for (id, chunk) in entries {
        if !row.is_empty() && row.len() + 8 + id.len() + chunk.len() > ROW_BYTES {
            put(&row)?;
            row.clear();
        }
        push_entry(&mut row, id, &chunk);
    }
    if row.is_empty() {
        Ok(())
    } else {
        put(&row)
    }
}

fn push_entry(row: &mut Vec<u8>, id: &str, chunk: &[u8]) {
    for part in [id.as_bytes(), chunk] {
        row.extend_from_slice(&(part.len() as u32).to_le_bytes());
        row.extend_from_slice(part);
    }
}

/// Calls `f` with each entry of each log row, in order: (row key, build id,
/// chunk).
fn for_each_entry(
    txn: &redb::ReadTransaction,
    mut f: impl FnMut(u64, &str, &[u8]) -> Result<(), JournalError>,
) -> Result<(), JournalError> {
    let rows = txn.open_table(LOG_ROWS).map_err(redb::Error::from)?;
    for row in rows.iter().map_err(redb::Error::from)? {
        let (key, row) = row.map_err(redb::Error::from)?;
        for (id, chunk) in decode_row(key.value(), row.value())? {
            f(key.value(), id, chunk)?;
        }
    }
    Ok(())
}

/// The entries of row `key` (see [`write_rows`]).
fn decode_row(key: u64, mut row: &[u8]) -> Result<Vec<(&str, &[u8])>, JournalError> {
    fn take<'a>(row: &mut &'a [u8]) -> Option<&'a [u8]> {
        let (len, rest) = row.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        let part = rest.get(..len)?;
        *row = &rest[len..];
        Some(part)
    }
    let mut entries = Vec::new();
    while !row.is_empty() {
        let entry = take(&mut row)
            .and_then(|id| std::str::from_utf8(id).ok())
            .zip(take(&mut row))
            .ok_or(JournalError::Row(key))?;
        entries.push(entry);
    }
    Ok(entries)
}

/// Journals written before log rows keyed chunks by build: each build's
/// chunks move into a row of their own, in the transaction that opens the
/// journal, and the old table goes.
fn migrate_keyed_logs(txn: &WriteTransaction) -> Result<(), redb::Error> {
    if !txn.list_tables()?.any(|t| t.name() == KEYED_LOGS.name()) {
        return Ok(());
    }
    {
        let old = txn.open_table(KEYED_LOGS)?;
        let mut rows = txn.open_table(LOG_ROWS)?;
        let mut next = rows.last()?.map_or(0, |(key, _)| key.value() + 1);
        let mut current: Option<String> = None;
        let mut row = Vec::new();
        for entry in old.iter()? {
            let (key, chunk) = entry?;
            let (id, _) = key.value();
            if current.as_deref() != Some(id) {
                if current.is_some() {
                    rows.insert(next, row.as_slice())?;
                    next += 1;
                    row.clear();
                }
                current = Some(id.to_string());
            }
            push_entry(&mut row, id, chunk.value());
        }
        if current.is_some() {
            rows.insert(next, row.as_slice())?;
        }
    }
    txn.delete_table(KEYED_LOGS)?;
    Ok(())
}

/// Creates the journal's directory (0700) and an empty file (0600) if
/// they do not exist, so that the file is never readable by others, not
/// even between its creation and a chmod; redb initialises an empty file.
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
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
    use bakery_protocol::api::{AgentLine, BuildState};
    use bakery_protocol::Platform;
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
            "tasks": [{"arch": "amd64", "push": null, "context_key": format!("contexts/sha256-{}.tar.gz", "0".repeat(64)), "spec": spec}]
        }))
        .unwrap()
    }

    fn add_build(registry: &Registry, journal: &Journal, id: &str) -> Arc<Build> {
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
                assert_eq!(journal.commit_dirty(&registry).await.unwrap(), 2);
            }
        }
        // One row per commit, however many builds it carried.
        assert_eq!(rows(&path, LOG_ROWS), 23);
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

        // Forgetting a finished build: the other keeps every line, and
        // the rows they share stay until both are forgotten.
        let forget = |id: &str| {
            let journal = Journal::open(&path).unwrap();
            registry
                .get(id)
                .unwrap()
                .lock()
                .finish_build(BuildState::Succeeded, None);
            std::thread::sleep(Duration::from_millis(5));
            journal
                .forget_older_than(&registry, Duration::ZERO)
                .unwrap()
                .len()
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
            journal.commit_dirty(&registry).await.unwrap();
        }
        let b = add("b");
        for seq in 3..=4 {
            line(&a, seq);
            line(&b, seq - 2);
            journal.commit_dirty(&registry).await.unwrap();
        }
        line(&b, 3);
        journal.commit_dirty(&registry).await.unwrap();
        assert_eq!(rows_in(&journal.db, LOG_ROWS), 5);

        // a forgotten: the rows only it had go, the shared ones stay.
        a.lock().finish_build(BuildState::Succeeded, None);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(
            journal
                .forget_older_than(&registry, Duration::ZERO)
                .unwrap(),
            ["a"]
        );
        assert_eq!(rows_in(&journal.db, LOG_ROWS), 3);
        // A new row after the forgetting is numbered after the others.
        let c = add("c");
        line(&c, 1);
        journal.commit_dirty(&registry).await.unwrap();
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
                journal.commit_dirty(&registry).await.unwrap();
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
        write_rows(entries, |row| {
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
        let rows = encoded(entries.iter().map(|(id, c)| (*id, c.to_vec())));
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
}
