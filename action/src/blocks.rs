//! One collapsible CI log block per task (service × arch).
//!
//! Two arches log at once; opening a block whenever the arch of the next
//! line changes gave 23 `::group::` blocks for a 78-line two-arch build.
//! Instead the first task to log owns the open block and streams live; the
//! other tasks' lines wait until it ends, then each waiting task gets its
//! own block, its lines so far printed at once and the rest live. A block
//! closes when another task logs after its task's whole log was delivered
//! (the service's stream ended) or [`LINGER`] after its task ended (its
//! last lines can arrive after the status that ended it). Where the
//! CI system has no blocks (a terminal, plain CI), lines print as they come.
//! Waiting lines are bounded: past [`MAX_WAITING_BYTES`] a line prints at
//! once inside the open block (still prefixed with its task).

use std::collections::{HashMap, HashSet};
use std::io::{BufWriter, Stdout, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ci::CiSystem;

/// How long an ended task's block stays open for its last lines, which can
/// arrive after the status that ended it.
const LINGER: Duration = Duration::from_secs(2);

/// Most bytes of lines held back for tasks whose block is not open yet.
pub const MAX_WAITING_BYTES: usize = 8 << 20;

/// Prints task lines into CI log blocks, one block per task (service ×
/// arch), holding back the lines of tasks whose block is not open yet.
///
/// Output is buffered (Rust's stdout writes each line on its own: a
/// million-line build log was a million `write` calls): the owner calls
/// [`Blocks::flush`] when its input pauses, and [`Blocks::close`] (or
/// dropping it: the buffer flushes itself) writes the rest.
pub struct Blocks {
    ci: Arc<dyn CiSystem>,
    state: Mutex<State>,
    /// Locked after `state` where both are needed.
    out: Mutex<BufWriter<Stdout>>,
}

#[derive(Default)]
struct State {
    /// The task whose block is open, and that block's number.
    open: Option<(String, usize)>,
    next: usize,
    /// Tasks waiting for their block, in the order they first logged.
    waiting: Vec<(String, Vec<String>)>,
    waiting_bytes: usize,
    /// Tasks that ended, and since when (`None`: its whole log has been
    /// delivered, the service's stream ended).
    ended: HashMap<String, Option<Instant>>,
    /// Tasks whose block has been closed: a late line of theirs (the
    /// controller's, after the task ended) prints where it is, prefixed,
    /// rather than opening a second block.
    closed: HashSet<String>,
}

impl State {
    /// Whether task `label`'s block has had its last lines.
    fn is_done(&self, label: &str) -> bool {
        match self.ended.get(label) {
            Some(None) => true,
            Some(Some(at)) => at.elapsed() >= LINGER,
            None => false,
        }
    }
}

impl Blocks {
    /// Blocks for `ci`'s kind of block (GitHub groups, GitLab sections, or none).
    pub fn new(ci: Arc<dyn CiSystem>) -> Blocks {
        Blocks {
            ci,
            state: Mutex::default(),
            out: Mutex::new(BufWriter::with_capacity(64 << 10, std::io::stdout())),
        }
    }

    /// Writes what is buffered.
    pub fn flush(&self) {
        let _ = self.out.lock().expect("lock").flush();
    }

    /// Prints `rendered` (a whole line, newline included) of task `label`.
    pub fn line(&self, label: &str, rendered: &str) {
        if !self.ci.has_blocks() {
            let _ = self
                .out
                .lock()
                .expect("lock")
                .write_all(rendered.as_bytes());
            return;
        }
        let mut state = self.state.lock().expect("lock");
        let mut out = self.out.lock().expect("lock");
        let mut out = &mut *out;
        if state.closed.contains(label) {
            let _ = out.write_all(rendered.as_bytes());
            return;
        }
        // The open task ended and another logs: its block has had its last
        // lines (they can arrive after the status that ended it), so the
        // next task's block opens.
        let open_ended = state
            .open
            .as_ref()
            .is_some_and(|(l, _)| l != label && state.is_done(l));
        if open_ended {
            self.advance(&mut state, &mut out, false);
            // Its own block may have been shown and closed just now.
            if state.closed.contains(label) {
                let _ = out.write_all(rendered.as_bytes());
                return;
            }
        }
        match &state.open {
            None => {
                self.open(&mut state, label, &mut out);
                let _ = out.write_all(rendered.as_bytes());
            }
            Some((open, _)) if open == label => {
                let _ = out.write_all(rendered.as_bytes());
            }
            Some(_) if state.waiting_bytes + rendered.len() > MAX_WAITING_BYTES => {
                let _ = out.write_all(rendered.as_bytes());
            }
            Some(_) => {
                state.waiting_bytes += rendered.len();
                match state.waiting.iter_mut().find(|(l, _)| l == label) {
                    Some((_, lines)) => lines.push(rendered.to_string()),
                    None => state
                        .waiting
                        .push((label.to_string(), vec![rendered.to_string()])),
                }
            }
        }
    }

    /// Task `label` ended: its block closes when another task next logs
    /// (or at [`Blocks::close`]), and the next waiting task's opens.
    pub fn task_ended(&self, label: &str) {
        let mut state = self.state.lock().expect("lock");
        state
            .ended
            .entry(label.to_string())
            .or_insert_with(|| Some(Instant::now()));
    }

    /// Every line of task `label` has been delivered (its service's log
    /// stream ended).
    pub fn task_complete(&self, label: &str) {
        let mut state = self.state.lock().expect("lock");
        state.ended.insert(label.to_string(), None);
    }

    /// Closes the open block and shows every waiting task's lines, each in
    /// its block: nothing is left unprinted when the client is done.
    pub fn close(&self) {
        let mut state = self.state.lock().expect("lock");
        let mut out = self.out.lock().expect("lock");
        self.advance(&mut state, &mut *out, true);
        let _ = out.flush();
    }

    fn open(&self, state: &mut State, label: &str, out: &mut impl Write) {
        let n = state.next;
        state.next += 1;
        let _ = out.write_all(self.ci.switch_block(None, label, n).as_bytes());
        state.open = Some((label.to_string(), n));
    }

    /// Closes the open block, then opens the waiting ones in turn: each
    /// that has ended (or all, with `all`) is shown whole and closed; the
    /// first still running stays open and streams live.
    fn advance(&self, state: &mut State, out: &mut impl Write, all: bool) {
        loop {
            if let Some((label, n)) = state.open.take() {
                let _ = out.write_all(self.ci.close_block(Some((&label, n))).as_bytes());
                state.closed.insert(label);
            }
            if state.waiting.is_empty() {
                return;
            }
            let (label, lines) = state.waiting.remove(0);
            state.waiting_bytes -= lines.iter().map(String::len).sum::<usize>();
            self.open(state, &label, out);
            for line in &lines {
                let _ = out.write_all(line.as_bytes());
            }
            if !all && !state.is_done(&label) {
                return;
            }
        }
    }
}
