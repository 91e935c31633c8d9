//! The embedded backend: one redb file in DATA_DIR, for one controller.
//!
//! It needs no server and commits a batch atomically, which is what makes
//! "every log line exactly once" hold across a crash. Log lines are laid
//! out in [`super::rows`]; journals of earlier layouts are converted by
//! [`super::migrate`] when opened.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bakery_protocol::api::LogEvent;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::rows::{self, decode_map, write_rows, RowIndex, LOG_MAP, LOG_ROWS};
use super::writer::Pending;
use super::{migrate, JournalError, Loaded, Record, Restored, Storage};

/// The journal's page cache (see [`Embedded::open`]).
const JOURNAL_CACHE_BYTES: usize = 16 << 20;

/// Build id → [`Record`] as JSON.
pub(super) const BUILDS: TableDefinition<&str, &[u8]> = TableDefinition::new("builds");

/// Opens the database file: at start-up, and again after an I/O error.
pub type Opener = Box<dyn Fn() -> Result<Database, redb::Error> + Send + Sync>;

/// A redb database holding every build's record and log.
pub struct Embedded {
    /// The open database: `None` only while it is being reopened.
    db: RwLock<Option<Arc<Database>>>,
    open: Opener,
    rows: Mutex<RowIndex>,
}

impl Embedded {
    /// Opens (or creates) the journal file, with permissions for its owner
    /// only from the first byte.
    pub fn open(path: &Path) -> Result<Embedded, JournalError> {
        let open_error = |source: redb::Error| JournalError::Open {
            path: path.display().to_string(),
            cause: source,
        };
        create_private(path).map_err(|e| open_error(redb::Error::Io(e)))?;
        let file: PathBuf = path.to_path_buf();
        // redb caches up to 1 GiB of pages by default, and keeps what a
        // commit wrote: under 1,000 chatty builds that is every log line a
        // second time in RSS. The journal appends; what it reads (the map at
        // start-up, old lines for followers that are behind) is read once,
        // in order, so a small cache costs little.
        let opener: Opener = Box::new(move || {
            redb::Builder::new()
                .set_cache_size(JOURNAL_CACHE_BYTES)
                .create(&file)
                .map_err(redb::Error::from)
        });
        let embedded = Embedded::open_with(opener).map_err(|e| match e {
            JournalError::Db(source) => open_error(source),
            other => other,
        })?;
        restrict_permissions(path);
        Ok(embedded)
    }

    /// Opens the database `open` opens (a test's storage backend that fails
    /// on demand, say), preparing its tables.
    pub fn open_with(open: Opener) -> Result<Embedded, JournalError> {
        let db = open()?;
        // Both tables exist from the start, so readers never see "no table".
        let txn = db.begin_write()?;
        txn.open_table(BUILDS)?;
        migrate::migrate_keyed_logs(&txn)?;
        migrate::migrate_log_map(&txn)?;
        let next = txn
            .open_table(LOG_ROWS)?
            .last()?
            .map_or(0, |(key, _)| key.value() + 1);
        txn.commit()?;
        Ok(Embedded {
            db: RwLock::new(Some(Arc::new(db))),
            open,
            rows: Mutex::new(RowIndex::starting_at(next)),
        })
    }

    /// The open database.
    pub(super) fn db(&self) -> Result<Arc<Database>, JournalError> {
        self.db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| JournalError::Db(redb::Error::PreviousIo))
    }

    fn rows(&self) -> MutexGuard<'_, RowIndex> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fills the row index where [`Storage::load`] has not.
    fn index_rows(&self) -> Result<(), JournalError> {
        if self.rows().complete {
            return Ok(());
        }
        let txn = self.db()?.begin_read()?;
        let builds = txn.open_table(BUILDS)?;
        let (index, _) = rows::scan_map(&txn, |id| builds.get(id).is_ok_and(|b| b.is_some()))?;
        self.rows().merge(index);
        Ok(())
    }
}

impl Storage for Embedded {
    fn load(&self, tail: usize) -> Result<Vec<Loaded>, JournalError> {
        let txn = self.db()?.begin_read()?;
        let builds = txn.open_table(BUILDS)?;
        let mut out = Vec::new();
        for entry in builds.iter()? {
            let (_, value) = entry?;
            let record: Record = serde_json::from_slice(value.value())?;
            out.push(Restored::new(record));
        }
        let ids: HashSet<&str> = out.iter().map(|r| r.record.status.id.as_str()).collect();
        // Lines of a forgotten build, in a row shared with a kept one, are
        // left out.
        let (index, extents) = rows::scan_map(&txn, |id| ids.contains(id))?;
        for build in &mut out {
            let Some(extent) = extents.get(&build.record.status.id) else {
                continue;
            };
            let tail = tail.max(1);
            let after = extent.last_seq.saturating_sub(tail as u64);
            let keys = index.rows_after(&build.record.status.id, after, tail);
            let (mut lines, agent_seqs) =
                rows::read_lines(&txn, &build.record.status.id, &keys, after, tail)?;
            lines.drain(..lines.len().saturating_sub(tail));
            build.tail = lines;
            build.log_len = extent.last_seq as usize;
            build.log_bytes = extent.bytes;
            build.agent_seqs = agent_seqs.unwrap_or_default();
        }
        self.rows().merge(index);
        // Its secrets are in files beside it, never in it.
        Ok(out.into_iter().map(|r| (r, None)).collect())
    }

    fn read_lines(&self, id: &str, after: u64, max: usize) -> Result<Vec<LogEvent>, JournalError> {
        self.index_rows()?;
        let keys = self.rows().rows_after(id, after, max);
        let txn = self.db()?.begin_read()?;
        Ok(rows::read_lines(&txn, id, &keys, after, max)?.0)
    }

    fn write(&self, batch: &mut [Pending]) -> Result<(), JournalError> {
        // Secrets go to files beside it: its vault never seals them.
        debug_assert!(batch.iter().all(|p| p.secrets.is_none()));
        let db = self.db()?;
        let row_key = self.rows().assign(
            batch
                .iter()
                .filter(|p| p.chunk.is_some())
                .map(|p| p.build.id()),
        );
        let landed = write_batch(&db, batch, row_key)?;
        // Where the lines are, before followers are told they are saved
        // (and the build lets go of them).
        let mut rows = self.rows();
        for (id, entry, key) in &landed {
            rows.committed(id, *entry, *key);
        }
        Ok(())
    }

    fn forget(&self, ids: &[String]) -> Result<(), JournalError> {
        self.index_rows()?;
        // Under the lock that new rows are numbered under: a row written
        // after this is numbered from here on.
        let kept_from = self.rows().kept_from(ids);
        let txn = self.db()?.begin_write()?;
        {
            let mut builds = txn.open_table(BUILDS)?;
            for id in ids {
                builds.remove(id.as_str())?;
            }
            for table in [LOG_ROWS, LOG_MAP] {
                txn.open_table(table)?
                    .retain_in(..kept_from, |_, _| false)?;
            }
        }
        txn.commit()?;
        let mut rows = self.rows();
        for id in ids {
            rows.remove(id);
        }
        Ok(())
    }

    /// Closes the database and opens it again: after an I/O error (a full
    /// disk) redb refuses every transaction until it is reopened, and
    /// recovers what it had committed when it is. A reader that still holds
    /// the old one makes this fail; the writer tries again.
    fn reopen(&self) -> Result<(), JournalError> {
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = slot.take() {
            match Arc::try_unwrap(db) {
                Ok(db) => drop(db),
                Err(shared) => {
                    *slot = Some(shared);
                    return Err(JournalError::Db(redb::Error::DatabaseAlreadyOpen));
                }
            }
        }
        *slot = Some(Arc::new((self.open)()?));
        tracing::info!("reopened the build journal");
        Ok(())
    }

    /// Compacts the file and closes it, when nothing else holds it: the
    /// pages of records rewritten since (a finished build's, without its
    /// registry passwords) are reused or cut off rather than left holding
    /// the old bytes.
    fn close(&self) {
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        let Some(db) = slot.take() else { return };
        match Arc::try_unwrap(db) {
            Ok(mut db) => {
                if let Err(e) = db.compact() {
                    tracing::debug!("compacting the build journal: {e}");
                }
            }
            Err(shared) => *slot = Some(shared),
        }
    }

    #[cfg(test)]
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Each build's lines as a commit wrote them: (build id, entry, row key).
type Landed = Vec<(String, rows::Entry, u64)>;

/// Writes `batch` in one transaction: records, and log rows from key
/// `row_key` on with their map entries. Blocks on the disk.
fn write_batch(
    db: &Database,
    batch: &mut [Pending],
    row_key: Option<u64>,
) -> Result<Landed, JournalError> {
    let mut landed = Vec::new();
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(BUILDS)?;
        for p in batch.iter() {
            if let Some(record) = &p.record {
                table.insert(p.build.id(), record.as_slice())?;
            }
        }
        if let Some(mut key) = row_key {
            let mut rows = txn.open_table(LOG_ROWS)?;
            let mut map = txn.open_table(LOG_MAP)?;
            // Each chunk is freed once copied (a retry serialises its lines
            // again): a commit's lines are held once, not twice, at 1,000
            // chatty builds tens of MB.
            let chunks = batch.iter_mut().filter_map(|p| {
                let (entry, chunk) = p.chunk.take()?;
                Some((p.build.id(), entry, chunk))
            });
            write_rows(chunks, |row, entries| {
                rows.insert(key, row)?;
                map.insert(key, entries)?;
                for (id, entry) in decode_map(key, entries)? {
                    landed.push((id.to_string(), entry, key));
                }
                key += 1;
                Ok::<_, JournalError>(())
            })?;
        }
    }
    txn.commit()?;
    Ok(landed)
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
