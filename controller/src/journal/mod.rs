//! Builds saved, so that a controller restart loses none of them.
//!
//! Two backends behind [`Storage`]: an embedded database ([`embedded`]:
//! redb, one file in DATA_DIR, no server), and PostgreSQL ([`postgres`],
//! DATABASE_URL) for controllers that must not lose their state with
//! their volume. Both commit a batch atomically, which is what makes
//! "every log line exactly once" hold across a crash.
//!
//! Read top-down: [`Journal`] opens its storage, reads it back at start-up
//! ([`Journal::load`]), makes callers wait for their change to be saved
//! ([`Journal::flush`]) and removes what it is told to forget. Its one
//! [`writer`] group-commits every build that changed; [`rows`] is how log
//! lines are laid out; [`migrate`] converts journals of earlier versions;
//! [`vault`] keeps builds' secrets out of the records, in files or sealed
//! for the database ([`sealing`]).
//! What is kept, and for how long, is decided by the caller
//! ([`crate::forget_once`]); the journal knows builds only through
//! [`Journaled`], never the controller's state.

mod embedded;
mod migrate;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod rows;
pub mod sealing;
mod vault;
mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bakery_protocol::api::{now_ms, BuildStatus, CreateBuild, LogEvent};
use serde::{Deserialize, Serialize};

pub use embedded::{Embedded, Opener};
pub use rows::encode_chunk;
use vault::Vault;
pub use writer::{Builds, Journaled, Signal, Unsaved};

/// How long a handler waits for its change to reach the disk before it
/// answers 503 (the agent retries; the client sees an error it can retry),
/// unless JOURNAL_TIMEOUT says otherwise.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// How often [`Journal::watch_storage`] checks the storage is still this
/// controller's.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// How long a fencing controller goes without its storage answering
/// before it counts it lost: well under the ~14 s the server takes to end
/// a silent session (postgres.rs, KEEPALIVE), and under the wait of a
/// controller taking over from one that did not let go cleanly
/// ([`postgres::FENCE_WAIT`]).
pub const FENCE_AFTER: Duration = Duration::from_secs(8);

/// The version of [`Record`] this controller writes. A record of a newer
/// version (a controller rolled back) is refused by name rather than read
/// wrongly.
pub const RECORD_VERSION: u32 = 1;

/// Why the journal could not open, save or read back.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The cause is part of the message, not a chained source: binaries
    /// print chains, and a chained cause would be printed twice.
    #[error("build journal {path}: {cause}")]
    Open {
        /// The journal file.
        path: String,
        /// The database's error.
        cause: redb::Error,
    },
    /// The database refused a read or a write (a full disk, an I/O error).
    #[error("build journal: {0}")]
    Db(redb::Error),
    /// A saved record is not JSON of the expected shape.
    #[error("build journal: a record does not parse ({0}); move the file aside to start empty")]
    Decode(serde_json::Error),
    /// The log row with this key is shorter than its header says.
    #[error("build journal: log row {0} is cut short; move the file aside to start empty")]
    Row(u64),
    /// A build's saved lines do not follow on from where a reader asked
    /// (its rows were removed meanwhile: the build was forgotten).
    #[error("build journal: build {build}'s lines after {after} are no longer there (past BUILD_RETENTION?)")]
    Gap {
        /// The build being read.
        build: String,
        /// The line the read was to follow.
        after: u64,
    },
    /// A build's saved secrets could not be read back (a STATE_KEY that
    /// is not the one that sealed them, a file that does not parse).
    #[error("build secrets: {0}")]
    Secrets(String),
    /// Another controller holds the state database's lock (one active
    /// controller per database; docs/state.md).
    #[error("another controller is using this database (it holds bakery's lock on it): one active controller per database (docs/state.md). Stop the other one, point DATABASE_URL at another database, or set STANDBY=true to wait for it")]
    Held,
    /// PostgreSQL (DATABASE_URL) refused, or could not be reached; the
    /// server's own message, never the URL (it may hold a password).
    #[error("state database: {0}")]
    Postgres(String),
    /// A change was not committed within JOURNAL_TIMEOUT (this long); the request is answered 503.
    #[error("the build journal did not confirm the write within {0:?}")]
    Timeout(Duration),
    /// A record was written by a newer controller, in a format this one does not know.
    #[error("build journal: build {build} was written by a newer controller (record version {version}); run that version, or move the file aside to start empty")]
    Version {
        /// The build whose record it is.
        build: String,
        /// The record's version, above [`RECORD_VERSION`].
        version: u32,
    },
}

// By hand rather than `#[from]`, which would also chain the cause that
// the message already shows: binaries print chains, so it would show twice.
impl From<redb::Error> for JournalError {
    fn from(e: redb::Error) -> Self {
        JournalError::Db(e)
    }
}

/// redb's errors of each kind, as [`redb::Error`] holds them.
macro_rules! from_redb {
    ($($kind:ty),*) => {$(
        impl From<$kind> for JournalError {
            fn from(e: $kind) -> Self {
                JournalError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<serde_json::Error> for JournalError {
    fn from(e: serde_json::Error) -> Self {
        JournalError::Decode(e)
    }
}

/// What is saved of a build besides its log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// [`RECORD_VERSION`] when written; records of journals from before the
    /// field are version 1.
    #[serde(default = "first_version")]
    pub version: u32,
    /// The build's status when it was saved.
    pub status: BuildStatus,
    /// The request as the client sent it, registry credentials included:
    /// a resumed build needs them to write its index (see SECURITY.md).
    pub request: CreateBuild,
    /// One per task, in the order of the request.
    pub tasks: Vec<TaskRecord>,
    /// Whether a cancel was asked for: a restarted
    /// controller carries it out if the build had not ended.
    pub cancel_requested: bool,
    /// Whether the client was told the build exists (see
    /// [`crate::state::Inner::acknowledged`]). Journals written before the
    /// flag existed acknowledged every build they held.
    #[serde(default = "yes")]
    pub acknowledged: bool,
    /// The `Idempotency-Key` the build was created with, so that
    /// a client retrying after a restart gets the same build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

fn yes() -> bool {
    true
}

fn first_version() -> u32 {
    1
}

/// A task's private state that must outlive the process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The SHA-256 of the agent's token (hex): what a restarted controller
    /// compares the agent's token with. The token itself is never saved.
    #[serde(default)]
    pub token_sha256: String,
    /// Journals from before the hash saved the token itself: read, hashed,
    /// never written again.
    #[serde(default, skip_serializing)]
    pub token: String,
    /// The highest log line seq received from the agent,
    /// so a resent line is dropped after a restart too.
    pub agent_seq: u64,
    /// The platform's handle of the agent ([`crate::platform::AgentHandle`]),
    /// once launched: what a restart adopts or stops.
    pub handle: Option<String>,
    /// Wall-clock times, since `Instant`s do not survive a restart.
    pub launched_ms: Option<u64>,
    /// Unix milliseconds at which the agent checked in, if it did.
    pub checked_in_ms: Option<u64>,
    /// When the task began waiting for an agent slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_ms: Option<u64>,
    /// The task's agent was reclaimed (a Spot interruption) and started
    /// again on demand: it is not started again a second time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub relaunched: bool,
}

impl TaskRecord {
    /// The task's token as this record knows it: by its hash (a journal
    /// from before the hash held the token itself, hashed now).
    pub fn token(&self) -> crate::state::TaskToken {
        if self.token_sha256.is_empty() && !self.token.is_empty() {
            let mut hashed = crate::state::TaskToken::from_plain(&self.token);
            hashed.forget_plain();
            return hashed;
        }
        crate::state::TaskToken::from_sha256(self.token_sha256.clone())
    }
}

/// A build as read back at start-up.
pub struct Restored {
    /// The build's saved record, secrets put back from the vault.
    pub record: Record,
    /// The last lines of its log, in order (the rest stays on disk, read
    /// by [`Journal::read_lines`]).
    pub tail: Vec<LogEvent>,
    /// How many lines its log has.
    pub log_len: usize,
    /// The bytes of their text.
    pub log_bytes: u64,
    /// Each task's agent seq as of the last chunk.
    pub agent_seqs: Vec<u64>,
}

impl Restored {
    /// A build with no lines read back yet.
    pub(crate) fn new(record: Record) -> Restored {
        Restored {
            record,
            tail: Vec::new(),
            log_len: 0,
            log_bytes: 0,
            agent_seqs: Vec::new(),
        }
    }
}

/// A build as a [`Storage`] reads it back, and its sealed secrets where
/// the storage keeps them ([`sealing`]).
pub type Loaded = (Restored, Option<Vec<u8>>);

/// Where builds are kept: the embedded file ([`Embedded`]) or, with
/// DATABASE_URL, PostgreSQL ([`postgres::Postgres`]). Every method blocks
/// (on the disk, or on the database's answer): the journal calls them from
/// the blocking pool.
pub trait Storage: Send + Sync {
    /// Every saved build with the last `tail` lines of its log (records as
    /// saved: secrets still blanked, versions not yet checked), and its
    /// sealed secrets where the storage keeps them.
    fn load(&self, tail: usize) -> Result<Vec<Loaded>, JournalError>;
    /// Build `id`'s saved lines after seq `after`: `max` or more, up to the
    /// end of the chunk that holds the `max`th, following `after` without a
    /// gap (or [`JournalError::Gap`]).
    fn read_lines(&self, id: &str, after: u64, max: usize) -> Result<Vec<LogEvent>, JournalError>;
    /// Saves `batch` atomically: all of it, or none (the writer retries).
    fn write(&self, batch: &mut [writer::Pending]) -> Result<(), JournalError>;
    /// Removes the builds `ids` and their lines.
    fn forget(&self, ids: &[String]) -> Result<(), JournalError>;
    /// Gets ready again after a failed write (reopens, reconnects).
    fn reopen(&self) -> Result<(), JournalError>;
    /// Whether the storage answers now, for readiness: a commit with
    /// nothing to save proves nothing about a database server.
    fn ping(&self) -> Result<(), JournalError> {
        Ok(())
    }
    /// Checks, now and then, that the storage is still this controller's
    /// ([`JournalError::Held`] when another has taken it).
    fn check(&self) -> Result<(), JournalError> {
        Ok(())
    }
    /// Lets go of the storage when the controller stops.
    fn close(&self);
    /// The backend itself, for tests that look inside it.
    #[cfg(test)]
    fn as_any(&self) -> &dyn std::any::Any;
}

/// The build journal: every build's record and log in a [`Storage`],
/// written by one background writer that batches changes into commits.
pub struct Journal {
    storage: Arc<dyn Storage>,
    signal: Arc<Signal>,
    /// Set once another controller has taken the storage (a standby, after
    /// this one lost its connection for longer than the server waited).
    lost: tokio::sync::watch::Sender<bool>,
    /// Whether being cut off from the storage counts as losing it.
    fence: std::sync::atomic::AtomicBool,
    /// How long [`Journal::flush`] waits for its commit, in milliseconds.
    flush_timeout_ms: AtomicU64,
    /// Where the records' secrets go instead of the storage.
    vault: Vault,
}

impl Journal {
    /// Opens (or creates) the embedded journal file. Registry passwords and
    /// build secrets of unfinished builds go to [`vault`] files beside it,
    /// never into it.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let mut journal = Journal::over(Arc::new(Embedded::open(path)?));
        journal.vault = Vault::beside(path);
        Ok(journal)
    }

    /// Opens the embedded journal `open` opens (a test's storage backend
    /// that fails on demand, say).
    pub fn open_with(open: Opener) -> Result<Journal, JournalError> {
        Ok(Journal::over(Arc::new(Embedded::open_with(open)?)))
    }

    /// Connects to the PostgreSQL database `target` names (over TLS
    /// verified against its CA file with `sslmode=require`) and brings its
    /// schema up to date. Secrets of unfinished builds are sealed into the
    /// database with its STATE_KEY, or without one go to [`vault`] files in
    /// `data_dir`.
    #[cfg(feature = "postgres")]
    pub async fn connect(
        mut target: postgres::Target,
        data_dir: &Path,
    ) -> Result<Journal, JournalError> {
        let storage = postgres::Postgres::connect(&target).await?;
        let mut journal = Journal::over(Arc::new(storage));
        journal.vault = match target.state_key.take() {
            Some(key) => Vault::sealed(key),
            None => Vault::beside(&data_dir.join("builds")),
        };
        Ok(journal)
    }

    fn over(storage: Arc<dyn Storage>) -> Journal {
        Journal {
            storage,
            signal: Arc::new(Signal::new()),
            lost: tokio::sync::watch::channel(false).0,
            fence: std::sync::atomic::AtomicBool::new(false),
            flush_timeout_ms: AtomicU64::new(FLUSH_TIMEOUT.as_millis() as u64),
            vault: Vault::none(),
        }
    }

    /// Ready for a build to be submitted: what was changed is saved, and
    /// the storage answers (the database server, when there is one).
    pub async fn ready(&self) -> Result<(), JournalError> {
        self.flush().await?;
        let storage = Arc::clone(&self.storage);
        tokio::task::spawn_blocking(move || storage.ping())
            .await
            .map_err(|e| JournalError::Postgres(e.to_string()))?
    }

    /// Resolves once another controller has taken the storage: this one
    /// must stop acting on its builds (they are the other's now).
    pub async fn lost(&self) {
        let mut lost = self.lost.subscribe();
        let _ = lost.wait_for(|l| *l).await;
    }

    /// Records that another controller took the storage, saying so once.
    fn mark_lost(&self, e: &JournalError) {
        if !self.lost.send_replace(true) {
            tracing::error!(
                "{e}: this controller lost the state database and stops acting on its builds"
            );
        }
    }

    /// Checks the storage every [`CHECK_EVERY`] until another controller
    /// has taken it ([`Journal::lost`]). A fencing controller (one of
    /// several on a database, STANDBY) also counts the storage lost once it
    /// has not answered for [`FENCE_AFTER`]: a standby may take it over
    /// soon after (docs/state.md), and by then this one must have stopped
    /// acting.
    pub async fn watch_storage(self: Arc<Self>) {
        let mut answered = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            let storage = Arc::clone(&self.storage);
            // A check that does not end in time counts as no answer (a
            // reconnection may take longer, and is seen at the next one).
            let checking = tokio::task::spawn_blocking(move || storage.check());
            match tokio::time::timeout(CHECK_EVERY * 2, checking).await {
                Ok(Ok(Ok(()))) => answered = tokio::time::Instant::now(),
                Ok(Ok(Err(e @ JournalError::Held))) => return self.mark_lost(&e),
                Ok(Ok(Err(e))) => tracing::warn!("checking the state database: {e}"),
                Ok(Err(e)) => tracing::warn!("checking the state database: {e}"),
                Err(_) => tracing::warn!("checking the state database: no answer"),
            }
            if self.fence.load(Ordering::SeqCst) && answered.elapsed() >= FENCE_AFTER {
                let why = JournalError::Postgres(format!(
                    "no answer for {FENCE_AFTER:?}, and a standby may take the database over"
                ));
                return self.mark_lost(&why);
            }
        }
    }

    /// Makes this controller stop acting once cut off from its storage for
    /// [`FENCE_AFTER`] (STANDBY: one of several on a database).
    pub fn set_fence(&self, fence: bool) {
        self.fence.store(fence, Ordering::SeqCst);
    }

    /// The storage the journal writes to.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Lets go of the storage (compacting the embedded file, when nothing
    /// else holds it). Called when the controller stops.
    pub fn close(&self) {
        self.storage.close();
    }

    /// Sets how long a flush waits for its commit before it fails
    /// (JOURNAL_TIMEOUT; fault-injection tests change it on a running
    /// controller).
    pub fn set_flush_timeout(&self, timeout: Duration) {
        self.flush_timeout_ms
            .store(timeout.as_millis() as u64, Ordering::SeqCst);
    }

    /// How long a flush waits for its commit before it fails (JOURNAL_TIMEOUT).
    pub fn flush_timeout(&self) -> Duration {
        Duration::from_millis(self.flush_timeout_ms.load(Ordering::SeqCst))
    }

    /// The handle through which builds tell the writer they
    /// changed, and wait for their changes to be committed.
    pub fn signal(&self) -> Arc<Signal> {
        Arc::clone(&self.signal)
    }

    /// Every saved build, oldest first, each with the last `tail` lines of
    /// its log: what a restart reads does not grow with the lines kept.
    /// Blocks on the storage.
    pub fn load(&self, tail: usize) -> Result<Vec<Restored>, JournalError> {
        let mut out = Vec::new();
        for (mut build, sealed) in self.storage.load(tail)? {
            let id = build.record.status.id.clone();
            self.vault
                .unseal_from(&id, &mut build.record, sealed.as_deref())
                .map_err(JournalError::Secrets)?;
            if build.record.version > RECORD_VERSION {
                return Err(JournalError::Version {
                    build: id,
                    version: build.record.version,
                });
            }
            out.push(build);
        }
        out.sort_by_key(|r| r.record.status.created_ms);
        Ok(out)
    }

    /// Build `id`'s saved lines after seq `after`: `max` or more, up to the
    /// end of the chunk (one commit's lines) that holds the `max`th. For a
    /// follower behind the lines kept in memory. Blocks on the storage.
    pub fn read_lines(
        &self,
        id: &str,
        after: u64,
        max: usize,
    ) -> Result<Vec<LogEvent>, JournalError> {
        self.storage.read_lines(id, after, max)
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
        let limit = self.flush_timeout();
        // No time at all means no commit is waited for: a writer fast
        // enough to commit between the request and the first look must not
        // make a zero deadline sometimes succeed.
        if limit.is_zero() {
            return Err(JournalError::Timeout(limit));
        }
        let mut committed = self.signal.committed.subscribe();
        let reached = tokio::time::timeout(limit, committed.wait_for(|c| *c >= mine))
            .await
            .is_ok_and(|r| r.is_ok());
        if reached {
            Ok(())
        } else {
            Err(JournalError::Timeout(limit))
        }
    }

    /// Removes the builds `ids` (finished ones the caller no longer keeps)
    /// and their lines. Blocks on the storage.
    pub fn forget(&self, ids: &[String]) -> Result<(), JournalError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.storage.forget(ids)?;
        for id in ids {
            self.vault.remove(id);
        }
        Ok(())
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
mod read_tests;
#[cfg(test)]
pub(crate) mod tests;
