//! The journal's one writer: group commits of every build that changed.
//!
//! Anything that changes a build marks it dirty and wakes the writer; the
//! writer saves every dirty build's record and its new log lines in one
//! transaction. Handlers whose answer promises durability wait for the
//! commit that covers their change ([`super::Journal::flush`]).
//!
//! The writer knows builds only through [`Journaled`], so the journal
//! depends on nothing of the build state it saves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::rows::Entry;
use super::vault::Vault;
use super::{Journal, JournalError, Record};

/// Least time between the starts of two commits of log lines. Each commit
/// costs an fsync and a B-tree update whatever it holds; under many chatty
/// builds, committing as fast as the disk allows spent more on that than on
/// the lines. A follower or an agent's paced acknowledgement sees at most
/// this much more delay.
///
/// A change someone is waiting on (a new build, a check-in, a result, a
/// cancel, a build's end, an agent's last lines) skips the gap
/// ([`Signal::wake_urgent`]) while the controller is quiet, which is when
/// the last commit carried one build's changes: a build waits for four of
/// them in a row, and a 10 ms gap before each was a third of what bakery
/// added to a one-arch build (bench/RESULTS.md). Under load every commit
/// carries many builds and the gap holds for all: skipping it there doubled
/// the commits at 1,000 builds for no one's benefit.
const COMMIT_GAP: Duration = Duration::from_millis(10);

/// How the writer retries a failed commit: the disk may be full for a while.
fn retry_delay() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
}

/// What the journal has yet to save of one build.
pub struct Unsaved {
    /// The build's record, when more than its log changed.
    pub record: Option<Record>,
    /// The new lines as a journal chunk ([`super::rows::encode_chunk`]).
    pub chunk: Option<(Entry, Vec<u8>)>,
    /// How many lines the build holds once this is saved.
    pub logs_end: usize,
}

/// A build as the writer sees it.
pub trait Journaled: Send + Sync {
    /// The build's id, its key in the journal.
    fn id(&self) -> &str;
    /// Whether it changed since the last commit that took it (and clears that).
    fn take_dirty(&self) -> bool;
    /// How many of its log lines are saved.
    fn persisted(&self) -> usize;
    /// What to save: the record if it changed, and the lines from `from` on.
    fn unsaved(&self, from: usize) -> Result<Unsaved, serde_json::Error>;
    /// A commit saved its lines up to `lines`.
    fn set_persisted(&self, lines: usize);
    /// A commit that took it failed: take it whole next time.
    fn mark_dirty(&self);
}

/// Where the writer finds the builds to save.
pub trait Builds: Send + Sync {
    /// Every build held now, for the writer to ask what changed.
    fn journaled(&self) -> Vec<Arc<dyn Journaled>>;
}

/// The shared half: builds mark themselves dirty and wake the writer here.
#[derive(Debug)]
pub struct Signal {
    wake: Notify,
    /// Cuts the writer's gap short (its permit is kept until the writer
    /// next waits out a gap).
    hurry: Notify,
    pub(super) requested: AtomicU64,
    pub(super) committed: watch::Sender<u64>,
}

impl Signal {
    pub(super) fn new() -> Signal {
        Signal {
            wake: Notify::new(),
            hurry: Notify::new(),
            requested: AtomicU64::new(0),
            committed: watch::channel(0).0,
        }
    }

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

impl Journal {
    /// The writer: saves dirty builds, one transaction per wake-up, until the
    /// process ends. A failed commit is retried with backoff, the database
    /// reopened first (after an I/O error redb refuses every transaction
    /// until it is: a disk that was full once would keep the journal down
    /// for good); its waiters keep waiting (and time out into a 503) rather
    /// than being told a lie.
    pub async fn run_writer(self: Arc<Self>, builds: Arc<dyn Builds>) {
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
            let mut delays = backon::BackoffBuilder::build(retry_delay());
            loop {
                let target = self.signal.requested.load(Ordering::SeqCst);
                match self.commit_dirty(builds.as_ref()).await {
                    Ok(carried) => {
                        // A flush with nothing left to save says nothing
                        // about the load (1,000 agents' acknowledgers ask
                        // ~1,000 times a second, mostly for saved lines).
                        if carried > 0 {
                            busy = carried > 1;
                        }
                        self.signal.committed.send_replace(target);
                        break;
                    }
                    Err(e) => {
                        let pause = delays.next().unwrap_or(Duration::from_secs(5));
                        tracing::error!("saving builds failed, retrying in {pause:?}: {e}");
                        tokio::time::sleep(pause).await;
                        let storage = Arc::clone(&self.storage);
                        match tokio::task::spawn_blocking(move || storage.reopen()).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e @ JournalError::Held)) => self.mark_lost(&e),
                            Ok(Err(e)) => tracing::error!("reopening the build journal: {e}"),
                            Err(e) => tracing::error!("reopening the build journal: {e}"),
                        }
                    }
                }
            }
        }
    }

    /// Returns how many builds the commit carried.
    pub(super) async fn commit_dirty(&self, builds: &dyn Builds) -> Result<usize, JournalError> {
        let mut batch: Vec<Pending> = Vec::new();
        for build in builds.journaled() {
            match Pending::take(Arc::clone(&build), &self.vault) {
                Ok(Some(p)) => batch.push(p),
                Ok(None) => {}
                Err(e) => {
                    // Nothing taken is lost: all of it goes in the next commit.
                    build.mark_dirty();
                    for p in &batch {
                        p.build.mark_dirty();
                    }
                    return Err(e);
                }
            }
        }
        if batch.is_empty() {
            return Ok(0);
        }
        let taken: Vec<Arc<dyn Journaled>> = batch.iter().map(|p| Arc::clone(&p.build)).collect();
        let storage = Arc::clone(&self.storage);
        let written =
            tokio::task::spawn_blocking(move || storage.write(&mut batch).map(|()| batch)).await;
        let error = match written {
            Ok(Ok(batch)) => {
                let carried = batch.len();
                for p in batch {
                    p.build.set_persisted(p.logs_end);
                }
                return Ok(carried);
            }
            Ok(Err(e)) => e,
            Err(join) => JournalError::Db(redb::Error::Io(std::io::Error::other(join))),
        };
        // Nothing of the transaction is saved, as a rule: the retry saves
        // these builds whole (should a failed commit have been saved after
        // all, reading back drops the lines written twice).
        for b in &taken {
            b.mark_dirty();
        }
        Err(error)
    }
}

/// One build's share of a commit, as [`super::Storage::write`] saves it.
pub struct Pending {
    pub(super) build: Arc<dyn Journaled>,
    /// The record as JSON, secrets blanked, if it changed.
    pub(super) record: Option<Vec<u8>>,
    /// The new lines as a JSON chunk, and which they are.
    pub(super) chunk: Option<(Entry, Vec<u8>)>,
    /// The build's secrets sealed for the database, when the vault seals
    /// (empty: it has none left).
    pub(super) secrets: Option<Vec<u8>>,
    logs_end: usize,
}

impl Pending {
    /// What `build` has to save, its secrets moved to `vault` first.
    fn take(build: Arc<dyn Journaled>, vault: &Vault) -> Result<Option<Pending>, JournalError> {
        if !build.take_dirty() {
            return Ok(None);
        }
        let from = build.persisted();
        let Unsaved {
            record,
            chunk,
            logs_end,
        } = build.unsaved(from)?;
        let (record, secrets) = match record {
            Some(mut r) => {
                let secrets = vault
                    .seal(build.id(), &mut r)
                    .map_err(|e| JournalError::Db(redb::Error::Io(e)))?;
                (Some(serde_json::to_vec(&r)?), secrets)
            }
            None => (None, None),
        };
        Ok(Some(Pending {
            build,
            record,
            chunk,
            secrets,
            logs_end,
        }))
    }
}
