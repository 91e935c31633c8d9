//! Journals written before log rows (see [`super::rows`]) keyed chunks by
//! build; they are converted in the transaction that opens them.

use redb::{ReadableTable, TableDefinition, TableHandle, WriteTransaction};

use super::rows::{push_entry, LOG_ROWS};

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
