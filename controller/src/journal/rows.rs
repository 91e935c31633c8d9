//! Log lines on disk: one row per commit, keyed by the commit's number,
//! holding each build's new lines of that commit as a chunk.
//!
//! Keyed by build instead, each of a commit's ~100 chunks landed on a
//! B-tree page of its own, and every commit rewrote them all: 1,000 chatty
//! builds had the controller write ~70 MB/s to disk for 1.5 MB/s of lines
//! (bench/RESULTS.md). Appended in key order, a commit rewrites the tree's
//! last pages only. A build's lines are read back by scanning the rows in
//! order, which happens once, at start-up; rows go oldest first, up to the
//! first row of the oldest build kept ([`RowIndex`]).

use std::collections::{HashMap, HashSet};

use bakery_protocol::api::{LogEvent, LogEventRef};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::JournalError;

/// Commit number → each build's new lines in that commit ([`write_rows`]).
pub(super) const LOG_ROWS: TableDefinition<u64, &[u8]> = TableDefinition::new("log_rows");

/// Most bytes in a log row (but for a single larger entry).
pub(super) const ROW_BYTES: usize = 16 << 10;

/// Lines added by one commit, and each task's agent seq after them (so a
/// commit of lines alone need not rewrite the record).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Chunk {
    pub agent_seqs: Vec<u64>,
    pub lines: Vec<LogEvent>,
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

/// Which log rows may go. Rows are written in key order and a build's lines
/// are in rows from its first on, so the rows before the first row of every
/// build still kept hold forgotten builds' lines only. (A forgotten build's
/// lines stay until every build that had started logging by then is
/// forgotten too: no per-row bookkeeping, at the price of some dead lines.)
#[derive(Debug, Default)]
pub(super) struct RowIndex {
    /// The key of the next row.
    pub next: u64,
    /// Build id → the key of the first row holding its lines.
    pub first: HashMap<String, u64>,
    /// Whether `first` covers the rows on disk (filled by [`Journal::load`]).
    pub complete: bool,
}

impl RowIndex {
    /// Keys for the rows of a commit holding lines of `builds`: as many
    /// from the one returned on as there are builds (the most rows they can
    /// take, see [`write_rows`]; unused keys are skipped). None without
    /// builds.
    pub(super) fn assign<'a>(&mut self, builds: impl Iterator<Item = &'a str>) -> Option<u64> {
        let key = self.next;
        for id in builds {
            self.next += 1;
            self.seen(id, key);
        }
        (self.next > key).then_some(key)
    }

    /// The key below which no row holds lines of a build other than `gone`.
    pub(super) fn kept_from(&self, gone: &[String]) -> u64 {
        let gone: HashSet<&str> = gone.iter().map(String::as_str).collect();
        self.first
            .iter()
            .filter(|(id, _)| !gone.contains(id.as_str()))
            .map(|(_, key)| *key)
            .min()
            .unwrap_or(self.next)
    }

    /// Notes that row `key` holds lines of `id`.
    pub(super) fn seen(&mut self, id: &str, key: u64) {
        if !self.first.contains_key(id) {
            self.first.insert(id.to_string(), key);
        }
    }

    /// Takes in what a scan of the rows on disk found (rows numbered
    /// meanwhile are already here, with later keys).
    pub(super) fn merge(&mut self, found: RowIndex) {
        for (id, key) in found.first {
            let first = self.first.entry(id).or_insert(key);
            *first = (*first).min(key);
        }
        self.complete = true;
    }
}

/// Hands `put` a commit's `(build id, chunk)` entries as log rows of at
/// most [`ROW_BYTES`] (but for a single larger entry), so at most one row
/// per entry, one row buffer at a time. Each entry is `[id length: u32 LE]
/// [id][chunk length: u32 LE][chunk JSON]`: a length-prefixed frame, not
/// JSON, since the chunks are JSON already and rows are written at every
/// commit.
pub(super) fn write_rows<'a, E>(
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

pub(super) fn push_entry(row: &mut Vec<u8>, id: &str, chunk: &[u8]) {
    for part in [id.as_bytes(), chunk] {
        row.extend_from_slice(&(part.len() as u32).to_le_bytes());
        row.extend_from_slice(part);
    }
}

/// Calls `f` with each entry of each log row, in order: (row key, build id,
/// chunk).
pub(super) fn for_each_entry(
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
pub(super) fn decode_row(key: u64, mut row: &[u8]) -> Result<Vec<(&str, &[u8])>, JournalError> {
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
