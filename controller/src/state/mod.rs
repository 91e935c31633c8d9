//! Builds, their tasks and their logs, in memory (and, through
//! [`crate::journal`], on disk).
//!
//! A build's state is an [`Aggregate`] with private fields: it changes only
//! through its transitions ([`Aggregate::check_in`],
//! [`Aggregate::record_result`], [`Aggregate::evaluate`], …), each of which
//! records what it changed. The [`Build`] around it is what the API
//! handlers, the supervisor and the followers share: [`Build::update`] runs
//! a transition under the lock and then wakes whoever must hear of it and
//! has the journal save it; [`Build::read`] gives a read-only view.
//!
//! Any number of followers can read a build's log from any point: every
//! follower sees every line (the original tool's followers shared one
//! channel and split the lines between them). The recent lines are in
//! memory, the older ones in the journal ([`log`]).

mod aggregate;
pub(crate) mod log;
mod registry;
pub use registry::{Registry, Reserved};
mod secret_book;
mod task;
#[cfg(test)]
mod tests;
mod token;

pub use aggregate::{Aggregate, AlreadyCheckedIn, Limits, Pushed, RecordedResult, ToStop};
pub use secret_book::SecretBook;
pub use task::Task;
pub use token::TaskToken;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bakery_protocol::api::{AgentLine, BuildStatus, CreateBuild, LogEventRef};
use bakery_protocol::Platform;
use tokio::sync::watch;

use crate::journal::{self, Restored, Unsaved};
use aggregate::Change;

/// One build: shared by the API handlers, its supervisor and its followers.
#[derive(Debug)]
pub struct Build {
    /// The build's id, fixed at creation.
    pub id: String,
    inner: Mutex<Aggregate>,
    /// Anything a follower shows changed: saved lines, the status.
    changed: watch::Sender<u64>,
    /// The build's or a task's state changed (not its log): what the
    /// supervisor acts on. Kept apart so that a chatty build's lines do not
    /// wake its supervisor dozens of times a second.
    state_changed: watch::Sender<u64>,
    /// Where changes are announced to the journal writer, if there is one.
    journal: Option<Arc<journal::Signal>>,
    /// Changed since the journal last saved it.
    dirty: AtomicBool,
    /// More than the log changed (state, tasks, handles): the record must
    /// be rewritten, not only the new lines appended.
    meta_dirty: AtomicBool,
    /// How many log lines the journal holds.
    persisted: AtomicUsize,
    /// Every running build's secrets, masked in this build's agent lines;
    /// set when the build joins the [`Registry`].
    book: std::sync::OnceLock<Arc<SecretBook>>,
    /// Its own secrets have left the book (it ended).
    left_book: AtomicBool,
}

/// A read-only view of a build's state, under its lock: hold it briefly.
pub struct Read<'a>(MutexGuard<'a, Aggregate>);

impl std::ops::Deref for Read<'_> {
    type Target = Aggregate;
    fn deref(&self) -> &Aggregate {
        &self.0
    }
}

impl Build {
    /// `default` is the platform of tasks whose spec names none.
    pub fn new(
        id: String,
        request: CreateBuild,
        default: Platform,
        journal: Option<Arc<journal::Signal>>,
        log_limit: u64,
    ) -> Build {
        let aggregate = Aggregate::new(id.clone(), request, default, log_limit);
        Build::around(aggregate, journal, 0, true)
    }

    /// A build read back from the journal after a restart. Its agents, if
    /// any were running, are re-attached by the supervisor.
    pub fn restore(
        saved: Restored,
        journal: Option<Arc<journal::Signal>>,
        log_limit: u64,
    ) -> Build {
        let persisted = saved.log_len;
        let aggregate = Aggregate::restore(saved, log_limit);
        Build::around(aggregate, journal, persisted, false)
    }

    fn around(
        mut aggregate: Aggregate,
        journal: Option<Arc<journal::Signal>>,
        persisted: usize,
        dirty: bool,
    ) -> Build {
        // What a new build is, the dirty flags below say.
        aggregate.take_change();
        Build {
            id: aggregate.id().to_string(),
            inner: Mutex::new(aggregate),
            changed: watch::channel(0).0,
            state_changed: watch::channel(0).0,
            journal,
            dirty: AtomicBool::new(dirty),
            meta_dirty: AtomicBool::new(dirty),
            persisted: AtomicUsize::new(persisted),
            book: std::sync::OnceLock::new(),
            left_book: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Aggregate> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A read-only view of the build's state.
    pub fn read(&self) -> Read<'_> {
        Read(self.lock())
    }

    /// Runs a transition, then wakes whoever must hear of what it changed
    /// and has the journal save it.
    pub fn update<R>(&self, transition: impl FnOnce(&mut Aggregate) -> R) -> R {
        let (result, change, ended) = {
            let mut aggregate = self.lock();
            let result = transition(&mut aggregate);
            let ended = aggregate.state().is_terminal();
            (result, aggregate.take_change(), ended)
        };
        if ended && !self.left_book.swap(true, Ordering::SeqCst) {
            if let Some(book) = self.book.get() {
                book.remove(&self.id);
            }
        }
        match change {
            Change::None => {}
            Change::Log => self.touch_log(),
            Change::State => self.touch(),
        }
        result
    }

    /// Appends a line on behalf of task `index`, redacted.
    pub fn log(&self, index: usize, line: &str) {
        self.update(|b| b.log(index, line));
    }

    /// See [`Aggregate::append_agent_lines`].
    /// Each line is first masked against every running build's secrets.
    pub fn append_agent_lines(&self, index: usize, lines: &[AgentLine]) -> Option<usize> {
        let lines = match self.book.get() {
            Some(book) => book.mask(lines),
            None => std::borrow::Cow::Borrowed(lines),
        };
        self.update(|b| b.append_agent_lines(index, &lines))
    }

    /// The status as clients see it.
    pub fn status(&self) -> BuildStatus {
        self.lock().status()
    }

    /// What the journal saves: the record (if it changed), and the lines
    /// from `from` on as a chunk (their JSON, with each task's agent seq
    /// as of those lines), serialised straight from the log. Also how many
    /// lines the build holds once that is saved.
    fn unsaved(&self, from: usize) -> Result<Unsaved, serde_json::Error> {
        let meta = self.meta_dirty.swap(false, Ordering::SeqCst);
        let inner = self.lock();
        let end = inner.log_len();
        let from = from.min(end);
        let chunk = if from < end {
            Some(journal::encode_chunk(
                &inner.agent_seqs(),
                inner.events(from, end),
            )?)
        } else {
            None
        };
        Ok(Unsaved {
            record: meta.then(|| inner.record()),
            chunk,
            logs_end: end,
        })
    }

    /// Has the journal rewrite the whole record, at once: a state change
    /// is what clients, agents and supervisors wait for.
    fn mark_dirty(&self) {
        self.meta_dirty.store(true, Ordering::SeqCst);
        self.dirty.store(true, Ordering::SeqCst);
        if let Some(j) = &self.journal {
            j.wake_urgent();
        }
    }

    /// Wakes everyone waiting on this build, and has the journal save it.
    fn touch(&self) {
        self.mark_dirty();
        self.changed.send_modify(|v| *v += 1);
        self.state_changed.send_modify(|v| *v += 1);
    }

    /// Like [`Build::touch`] when only lines were added: the journal appends
    /// them (with the agents' seqs) without rewriting the record. With a
    /// journal, followers are woken once the lines are saved
    /// ([`journal::Journaled::set_persisted`]), since they are shown saved
    /// lines only.
    fn touch_log(&self) {
        self.dirty.store(true, Ordering::SeqCst);
        match &self.journal {
            Some(j) => j.wake(),
            None => self.changed.send_modify(|v| *v += 1),
        }
    }

    /// Wakes on new saved lines and on status changes: for followers.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Wakes on state changes only: for the supervisor.
    pub fn subscribe_state(&self) -> watch::Receiver<u64> {
        self.state_changed.subscribe()
    }

    fn persisted(&self) -> usize {
        self.persisted.load(Ordering::SeqCst)
    }

    /// Lines the build holds that the journal has not saved yet (none
    /// without a journal: nothing would save them).
    pub fn unsaved_lines(&self) -> usize {
        match self.journal {
            Some(_) => self.lock().log_len().saturating_sub(self.persisted()),
            None => 0,
        }
    }

    /// Lines after `seq`, and the status as of the same moment. With a
    /// journal, only lines already on disk: a line a follower has seen must
    /// keep its seq through a crash, or a resumed follower would see it
    /// twice (the agent resends what was not saved, under new seqs).
    /// At most `max` lines, each handed to `each` under the lock (nothing
    /// is copied): a follower that is behind catches up in steps, and holds
    /// one step's events, not the whole backlog, at a time.
    /// Lines no longer in memory are not handed out: the snapshot says so
    /// ([`Snapshot::saved_only`]), and the caller reads them from the
    /// journal.
    pub fn snapshot_after(
        &self,
        seq: u64,
        max: usize,
        each: impl FnMut(LogEventRef<'_>),
    ) -> Snapshot {
        let inner = self.lock();
        let visible = match self.journal {
            Some(_) => self.persisted().min(inner.log_len()),
            None => inner.log_len(),
        };
        let start = (seq as usize).min(visible);
        if start < inner.log_held_from() {
            return Snapshot {
                status: inner.status(),
                caught_up: false,
                saved_only: true,
            };
        }
        let end = visible.min(start.saturating_add(max));
        inner.events(start, end).for_each(each);
        Snapshot {
            status: inner.status(),
            caught_up: end == inner.log_len(),
            saved_only: false,
        }
    }
}

/// What [`Build::snapshot_after`] saw.
pub struct Snapshot {
    /// The status as of the lines handed out.
    pub status: BuildStatus,
    /// Whether those were all the lines there are.
    pub caught_up: bool,
    /// The next lines are no longer in memory: none were handed out, and
    /// they are read from the journal ([`journal::Journal::read_lines`]).
    pub saved_only: bool,
}

impl journal::Journaled for Build {
    fn id(&self) -> &str {
        &self.id
    }
    fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::SeqCst)
    }
    fn persisted(&self) -> usize {
        Build::persisted(self)
    }
    fn unsaved(&self, from: usize) -> Result<Unsaved, serde_json::Error> {
        Build::unsaved(self, from)
    }
    /// Records what the journal saved, and wakes followers for those lines.
    fn set_persisted(&self, lines: usize) {
        let before = self.persisted.swap(lines, Ordering::SeqCst);
        if before != lines {
            // What the commit before this one saved: a follower that keeps
            // up has sent that much and reads this commit's lines from
            // memory, however many there are.
            self.lock().let_go_of_lines(before);
            self.changed.send_modify(|v| *v += 1);
        }
    }
    fn mark_dirty(&self) {
        Build::mark_dirty(self);
    }
}

impl journal::Builds for Registry {
    fn journaled(&self) -> Vec<Arc<dyn journal::Journaled>> {
        self.all()
            .into_iter()
            .map(|b| b as Arc<dyn journal::Journaled>)
            .collect()
    }
}

/// 256 random bits, hex: build ids and task tokens.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    hex::encode(bytes)
}

/// A short id that is still unique enough for the life of a controller.
pub fn new_build_id() -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    format!("b{}", hex::encode(bytes))
}

/// Constant-time comparison, so a token cannot be guessed byte by byte.
/// An empty expected token (a finished task's, forgotten) matches nothing.
pub fn token_matches(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    if b.is_empty() || a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
