//! Log lines on disk: one row per commit, keyed by the commit's number,
//! holding each build's new lines of that commit as a chunk.
//!
//! Keyed by build instead, each of a commit's ~100 chunks landed on a
//! B-tree page of its own, and every commit rewrote them all: 1,000 chatty
//! builds had the controller write ~70 MB/s to disk for 1.5 MB/s of lines
//! (bench/RESULTS.md). Appended in key order, a commit rewrites the tree's
//! last pages only. Beside each row, [`LOG_MAP`] says which builds' lines
//! it holds (seqs and bytes, not the lines): read at start-up, it tells
//! where each build's lines are without reading them, so a restart costs
//! the same with 10M retained lines as with none, and a follower reading
//! an old part of a log reads just the rows holding it ([`RowIndex`]).
//! Rows go oldest first, up to the first row of the oldest build kept.

use std::collections::{HashMap, HashSet};

use bakery_protocol::api::{LogEvent, LogEventRef};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::JournalError;

/// Commit number → each build's new lines in that commit ([`write_rows`]).
pub(super) const LOG_ROWS: TableDefinition<u64, &[u8]> = TableDefinition::new("log_rows");

/// Row key → what the row of that key holds, one [`Entry`] per build
/// (see [`push_map_entry`]): the index of [`LOG_ROWS`], written with it.
pub(super) const LOG_MAP: TableDefinition<u64, &[u8]> = TableDefinition::new("log_map");

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

/// Which lines a chunk holds, as [`LOG_MAP`] records them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The seq of its first line.
    pub first_seq: u64,
    /// How many lines.
    pub lines: u64,
    /// The bytes of their text (for BUILD_LOG_LIMIT after a restart).
    pub bytes: u64,
}

impl Entry {
    /// What [`Chunk`] `lines` hold.
    pub(super) fn of(lines: &[LogEvent]) -> Entry {
        Entry::from_lines(lines.iter().map(|l| (l.seq, l.line.len())))
    }

    /// What lines of these (seq, text length) hold, in order.
    fn from_lines(lines: impl Iterator<Item = (u64, usize)>) -> Entry {
        let mut entry = Entry {
            first_seq: 0,
            lines: 0,
            bytes: 0,
        };
        for (seq, len) in lines {
            if entry.lines == 0 {
                entry.first_seq = seq;
            }
            entry.lines += 1;
            entry.bytes += len as u64;
        }
        entry
    }
}

/// Serialises lines as a chunk (see [`Chunk`]), with what it holds.
pub fn encode_chunk<'a>(
    agent_seqs: &[u64],
    lines: impl Iterator<Item = LogEventRef<'a>>,
) -> Result<(Entry, Vec<u8>), serde_json::Error> {
    let lines: Vec<LogEventRef<'a>> = lines.collect();
    let entry = Entry::from_lines(lines.iter().map(|l| (l.seq, l.line.len())));
    Ok((entry, serde_json::to_vec(&ChunkRef { agent_seqs, lines })?))
}

/// Where some of a build's lines are: from `first_seq` on, in row `row`
/// (up to the next span's first seq).
#[derive(Debug, Clone, Copy)]
struct Span {
    first_seq: u64,
    row: u64,
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
    /// Build id → where its lines are, in seq order (rows committed only).
    spans: HashMap<String, Vec<Span>>,
    /// Whether `first` and `spans` cover the rows on disk (filled by
    /// [`super::Journal::load`]).
    pub complete: bool,
}

impl RowIndex {
    /// An index whose next row is `next`, the rest to be filled by a scan.
    pub(super) fn starting_at(next: u64) -> RowIndex {
        RowIndex {
            next,
            ..RowIndex::default()
        }
    }

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

    /// Notes that committed row `row` holds `entry`'s lines of `id`.
    pub(super) fn committed(&mut self, id: &str, entry: Entry, row: u64) {
        self.seen(id, row);
        let spans = self.spans.entry(id.to_string()).or_default();
        match spans.last_mut() {
            // A commit retried after it reached the disk wrote these lines
            // again, and maybe more: the later row holds them all.
            Some(last) if last.first_seq == entry.first_seq => last.row = row,
            Some(last) if last.first_seq > entry.first_seq => {}
            _ => spans.push(Span {
                first_seq: entry.first_seq,
                row,
            }),
        }
    }

    /// The rows holding `id`'s lines after seq `after`, in order: as many as
    /// hold the next `max` lines at least.
    pub(super) fn rows_after(&self, id: &str, after: u64, max: usize) -> Vec<u64> {
        let Some(spans) = self.spans.get(id) else {
            return Vec::new();
        };
        let start = spans
            .partition_point(|s| s.first_seq <= after.saturating_add(1))
            .saturating_sub(1);
        let until = after.saturating_add(max as u64);
        let mut rows: Vec<u64> = spans[start..]
            .iter()
            .take_while(|s| s.first_seq <= until)
            .map(|s| s.row)
            .collect();
        // Journals converted from chunks keyed by build hold a build's
        // chunks in one row.
        rows.dedup();
        rows
    }

    /// Forgets build `id`'s rows (the build is forgotten).
    pub(super) fn remove(&mut self, id: &str) {
        self.first.remove(id);
        self.spans.remove(id);
    }

    /// Takes in what a scan of [`LOG_MAP`] found (rows numbered or
    /// committed meanwhile are already here, with later keys).
    pub(super) fn merge(&mut self, found: RowIndex) {
        for (id, key) in found.first {
            let first = self.first.entry(id).or_insert(key);
            *first = (*first).min(key);
        }
        for (id, mut spans) in found.spans {
            let mine = self.spans.entry(id).or_default();
            spans.retain(|s| mine.first().is_none_or(|m| s.first_seq < m.first_seq));
            spans.append(mine);
            *mine = spans;
        }
        self.complete = true;
    }
}

/// Hands `put` a commit's `(build id, entry, chunk)` entries as log rows
/// of at most [`ROW_BYTES`] (but for a single larger entry), so at most one
/// row per entry, one row buffer at a time, each with its [`LOG_MAP`] value.
/// Each entry is `[id length: u32 LE][id][chunk length: u32 LE][chunk
/// JSON]`: a length-prefixed frame, not JSON, since the chunks are JSON
/// already and rows are written at every commit.
pub(super) fn write_rows<'a, E>(
    entries: impl Iterator<Item = (&'a str, Entry, Vec<u8>)>,
    mut put: impl FnMut(&[u8], &[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let mut row = Vec::with_capacity(ROW_BYTES);
    let mut map = Vec::new();
    for (id, entry, chunk) in entries {
        if !row.is_empty() && row.len() + 8 + id.len() + chunk.len() > ROW_BYTES {
            put(&row, &map)?;
            row.clear();
            map.clear();
        }
        push_entry(&mut row, id, &chunk);
        push_map_entry(&mut map, id, entry);
    }
    if row.is_empty() {
        Ok(())
    } else {
        put(&row, &map)
    }
}

/// Appends `[id length: u32 LE][id][first seq, lines, bytes: u64 LE]`.
pub(super) fn push_map_entry(map: &mut Vec<u8>, id: &str, entry: Entry) {
    map.extend_from_slice(&(id.len() as u32).to_le_bytes());
    map.extend_from_slice(id.as_bytes());
    for n in [entry.first_seq, entry.lines, entry.bytes] {
        map.extend_from_slice(&n.to_le_bytes());
    }
}

/// The entries of [`LOG_MAP`] row `key` (see [`push_map_entry`]).
pub(super) fn decode_map(key: u64, mut map: &[u8]) -> Result<Vec<(&str, Entry)>, JournalError> {
    fn take<'a>(map: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
        let part = map.get(..len)?;
        *map = &map[len..];
        Some(part)
    }
    fn number(map: &mut &[u8]) -> Option<u64> {
        Some(u64::from_le_bytes(take(map, 8)?.try_into().ok()?))
    }
    let mut entries = Vec::new();
    while !map.is_empty() {
        let entry = (|| {
            let len = u32::from_le_bytes(take(&mut map, 4)?.try_into().ok()?) as usize;
            let id = std::str::from_utf8(take(&mut map, len)?).ok()?;
            let [first_seq, lines, bytes] =
                [number(&mut map)?, number(&mut map)?, number(&mut map)?];
            Some((
                id,
                Entry {
                    first_seq,
                    lines,
                    bytes,
                },
            ))
        })();
        entries.push(entry.ok_or(JournalError::Row(key))?);
    }
    Ok(entries)
}

/// How much of a build's log is saved, as [`scan_map`] adds it up.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Extent {
    /// The seq of its last line (its length: seqs start at 1).
    pub last_seq: u64,
    /// The bytes of its lines' text.
    pub bytes: u64,
    /// The last entry counted, which a retried commit may write again.
    last: Option<Entry>,
}

impl Extent {
    fn add(&mut self, entry: Entry) {
        match self.last {
            // The same commit again (retried after it reached the disk):
            // its lines count once, as the later (fuller) entry says.
            Some(last) if last.first_seq == entry.first_seq => {
                self.bytes = self.bytes - last.bytes + entry.bytes;
            }
            Some(last) if last.first_seq > entry.first_seq => return,
            _ => self.bytes += entry.bytes,
        }
        self.last = Some(entry);
        self.last_seq = entry.first_seq + entry.lines - 1;
    }
}

/// What [`LOG_MAP`] says of the builds `keep` accepts: where their lines
/// are, and how much of each log is saved. Reads no line.
pub(super) fn scan_map(
    txn: &redb::ReadTransaction,
    keep: impl Fn(&str) -> bool,
) -> Result<(RowIndex, HashMap<String, Extent>), JournalError> {
    let map = txn.open_table(LOG_MAP).map_err(redb::Error::from)?;
    let mut index = RowIndex::default();
    let mut extents: HashMap<String, Extent> = HashMap::new();
    for row in map.iter().map_err(redb::Error::from)? {
        let (key, value) = row.map_err(redb::Error::from)?;
        for (id, entry) in decode_map(key.value(), value.value())? {
            if !keep(id) || entry.lines == 0 {
                continue;
            }
            index.committed(id, entry, key.value());
            extents.entry(id.to_string()).or_default().add(entry);
        }
    }
    Ok((index, extents))
}

/// Build `id`'s lines after seq `after` in rows `keys`, in whole chunks
/// until there are `max` or more (parsing a chunk for part of it, a reader
/// of a long log parsed each chunk many times over), and the agent seqs of
/// the last chunk read. Chunks that end before `after` are skipped by their
/// [`LOG_MAP`] entry, unparsed. The lines returned follow `after` without a
/// gap, or this is an error: a row gone (the build was forgotten meanwhile)
/// or out of step with its map is never a silent hole in a log.
pub(super) fn read_lines(
    txn: &redb::ReadTransaction,
    id: &str,
    keys: &[u64],
    after: u64,
    max: usize,
) -> Result<(Vec<LogEvent>, Option<Vec<u64>>), JournalError> {
    let rows = txn.open_table(LOG_ROWS)?;
    let map = txn.open_table(LOG_MAP)?;
    let mut out: Vec<LogEvent> = Vec::new();
    // The seq of the last line taken.
    let mut last = after;
    let mut agent_seqs = None;
    let gap = || JournalError::Gap {
        build: id.to_string(),
        after,
    };
    'rows: for &key in keys {
        let (Some(row), Some(entries)) = (rows.get(key)?, map.get(key)?) else {
            return Err(gap());
        };
        let chunks = decode_row(key, row.value())?;
        let entries = decode_map(key, entries.value())?;
        if chunks.len() != entries.len() {
            return Err(JournalError::Row(key));
        }
        for ((_, chunk), (_, entry)) in chunks
            .into_iter()
            .zip(entries)
            .filter(|((chunk_id, _), _)| *chunk_id == id)
        {
            if entry.first_seq + entry.lines <= last + 1 {
                continue;
            }
            let chunk: Chunk = serde_json::from_slice(chunk)?;
            agent_seqs = Some(follow_on(chunk, &mut last, &mut out, gap)?);
            if out.len() >= max {
                break 'rows;
            }
        }
    }
    Ok((out, agent_seqs))
}

/// Appends the lines of `chunk` after `*last` to `out`, each following on
/// from the one before (a hole is `gap()`: a read never skips a line);
/// returns the chunk's agent seqs. Both backends read chunks this way.
pub(super) fn follow_on(
    chunk: Chunk,
    last: &mut u64,
    out: &mut Vec<LogEvent>,
    gap: impl Fn() -> JournalError,
) -> Result<Vec<u64>, JournalError> {
    let taken = *last;
    for line in chunk.lines.into_iter().filter(|l| l.seq > taken) {
        if line.seq != *last + 1 {
            return Err(gap());
        }
        *last = line.seq;
        out.push(line);
    }
    Ok(chunk.agent_seqs)
}

pub(super) fn push_entry(row: &mut Vec<u8>, id: &str, chunk: &[u8]) {
    for part in [id.as_bytes(), chunk] {
        row.extend_from_slice(&(part.len() as u32).to_le_bytes());
        row.extend_from_slice(part);
    }
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
