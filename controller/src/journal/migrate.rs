//! Journals of earlier layouts, converted in the transaction that opens
//! them: chunks keyed by build (before log rows, see [`super::rows`]), and
//! log rows without their map ([`super::rows::LOG_MAP`]).

use redb::{ReadableTable, TableDefinition, TableHandle, WriteTransaction};

use super::rows::{decode_row, push_entry, push_map_entry, Chunk, Entry, LOG_MAP, LOG_ROWS};
use super::JournalError;

/// The layout before log rows: (build id, seq of the chunk's first line)
/// → JSON chunk.
pub(super) const KEYED_LOGS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("logs");

/// Journals written before log rows keyed chunks by build: each build's
/// chunks move into a row of their own, in the transaction that opens the
/// journal, and the old table goes.
pub(super) fn migrate_keyed_logs(txn: &WriteTransaction) -> Result<(), redb::Error> {
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

/// Rows without their [`LOG_MAP`] entry are read once, here, to write it:
/// every row of a journal from before the map, and the rows an older
/// controller appended (a rollback, then this version again). From then on
/// a start-up reads the map, not the lines.
pub(super) fn migrate_log_map(txn: &WriteTransaction) -> Result<(), JournalError> {
    let rows = txn.open_table(LOG_ROWS)?;
    let mut map = txn.open_table(LOG_MAP)?;
    let mapped = map.last()?.map(|(key, _)| key.value());
    let unmapped = match mapped {
        Some(last) => rows.range(last + 1..)?,
        None => rows.range(0..)?,
    };
    for row in unmapped {
        let (key, row) = row?;
        let mut value = Vec::new();
        for (id, chunk) in decode_row(key.value(), row.value())? {
            let chunk: Chunk = serde_json::from_slice(chunk)?;
            push_map_entry(&mut value, id, Entry::of(&chunk.lines));
        }
        map.insert(key.value(), value.as_slice())?;
    }
    Ok(())
}
