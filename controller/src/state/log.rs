//! A build's log as the controller holds it: its length and size, and the
//! lines it keeps in memory.
//!
//! Once the journal has saved lines, the build keeps only the last
//! [`TAIL_LINES`] of them (and whatever is not saved yet): the rest are
//! read from the journal by a follower that needs them
//! ([`crate::journal::Journal::read_lines`]). So a controller's memory
//! does not grow with the lines kept for BUILD_RETENTION: eight 1M-line
//! builds once took it from 110 to 644 MB, and a restart read every line
//! back (bench/RESULTS.md, section 4f).

use std::collections::VecDeque;

/// Saved lines a build keeps in memory: followers that keep up are served
/// from here, without a read of the disk. At 1,000 builds of ~100-byte
/// lines, ~35 MB.
pub const TAIL_LINES: usize = 256;

/// A log line as kept in memory: its task by index, its seq by position.
/// A [`bakery_protocol::api::LogEvent`] is made only to send.
#[derive(Debug, Clone)]
pub(super) struct StoredLine {
    pub task: u32,
    pub line: Box<str>,
    pub ms: u64,
}

/// A build's log: lines `held_from()..len()` (0-based positions; seq =
/// position + 1) in memory, the ones before them in the journal only.
#[derive(Debug, Default)]
pub(super) struct Log {
    held: VecDeque<StoredLine>,
    /// How many lines come before the first one held.
    base: usize,
    /// Bytes of text of every line, held or not (against BUILD_LOG_LIMIT).
    bytes: u64,
}

impl Log {
    /// A log read back from the journal: `len` lines of `bytes`, the last
    /// of them `tail`.
    pub fn restored(len: usize, bytes: u64, mut tail: Vec<StoredLine>) -> Log {
        tail.drain(..tail.len().saturating_sub(len));
        Log {
            base: len - tail.len(),
            held: tail.into(),
            bytes,
        }
    }

    /// How many lines the log has.
    pub fn len(&self) -> usize {
        self.base + self.held.len()
    }

    /// The position of the first line in memory.
    pub fn held_from(&self) -> usize {
        self.base
    }

    /// Bytes of text of every line.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Adds a line at the end.
    pub fn push(&mut self, line: StoredLine) {
        self.bytes += line.line.len() as u64;
        self.held.push_back(line);
    }

    /// Lines `from..to` with their positions; those before
    /// [`Log::held_from`] are not in memory and left out.
    pub fn range(&self, from: usize, to: usize) -> impl Iterator<Item = (usize, &StoredLine)> {
        let to = to.clamp(self.base, self.len());
        let from = from.clamp(self.base, to);
        self.held
            .range(from - self.base..to - self.base)
            .enumerate()
            .map(move |(i, l)| (from + i, l))
    }

    /// The journal saved the first `saved` lines: all but the last
    /// [`TAIL_LINES`] of them leave memory.
    pub fn let_go(&mut self, saved: usize) {
        let until = saved.min(self.len().saturating_sub(TAIL_LINES));
        while self.base < until && self.held.pop_front().is_some() {
            self.base += 1;
        }
        if self.held.capacity() > 4 * self.held.len().max(TAIL_LINES) {
            self.held.shrink_to(2 * self.held.len().max(TAIL_LINES));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: usize) -> StoredLine {
        StoredLine {
            task: 0,
            line: format!("line {n}").into(),
            ms: 0,
        }
    }

    #[test]
    fn saved_lines_leave_memory_but_the_tail_and_the_unsaved_ones() {
        let mut log = Log::default();
        for n in 0..1000 {
            log.push(line(n));
        }
        // Nothing saved: everything stays.
        log.let_go(0);
        assert_eq!(log.held_from(), 0);
        // 900 saved: the last TAIL_LINES of the log stay (the 100 unsaved
        // among them).
        log.let_go(900);
        assert_eq!((log.held_from(), log.len()), (1000 - TAIL_LINES, 1000));
        let seen: Vec<usize> = log.range(0, 1000).map(|(p, _)| p).collect();
        assert_eq!(seen, (1000 - TAIL_LINES..1000).collect::<Vec<_>>());
        assert_eq!(&*log.range(999, 1000).next().unwrap().1.line, "line 999");
        // The size still counts every line.
        let all: u64 = (0..1000).map(|n| format!("line {n}").len() as u64).sum();
        assert_eq!(log.bytes(), all);
        // A range wholly before the tail is empty, not a panic.
        assert_eq!(log.range(0, 10).count(), 0);
    }

    #[test]
    fn a_restored_log_holds_its_tail_at_the_end() {
        let log = Log::restored(5000, 42, (4990..5000).map(line).collect());
        assert_eq!((log.held_from(), log.len(), log.bytes()), (4990, 5000, 42));
        assert_eq!(&*log.range(4990, 4991).next().unwrap().1.line, "line 4990");
    }
}
