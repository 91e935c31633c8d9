//! The PostgreSQL backend (DATABASE_URL): builds and their logs in tables
//! a database server keeps, for operators who already run one and for
//! controllers that must not lose their state with their volume.
//!
//! What is saved is the embedded journal's, row for row: each build's
//! record (secrets blanked, in the vault as with the embedded file) and
//! each commit's lines of it as one chunk ([`super::rows::encode_chunk`]).
//! The schema is versioned ([`MIGRATIONS`]): a controller brings an older
//! database up to date at start-up under an advisory lock, so two that
//! start at once apply each step once, and refuses a database a newer
//! controller has moved on.
//!
//! The journal calls [`Storage`] from its blocking pool; each call here
//! runs its queries on the runtime that connected, with a deadline
//! ([`QUERY_TIMEOUT`]).

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use bakery_protocol::api::LogEvent;
use tokio::runtime::Handle;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config};

use super::rows::Chunk;
use super::writer::Pending;
use super::{JournalError, Record, Restored, Storage};
use transport::Transport;

/// Each schema version and the SQL that reaches it from the one before.
/// A version, once released, is never edited: changes are a new version.
const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("postgres/schema.sql"))];

/// The advisory lock migrations run under ("bakery" in ASCII).
const MIGRATION_LOCK: i64 = 0x62_61_6b_65_72_79;

/// The advisory lock a controller holds on its database for as long as it
/// runs (one above [`MIGRATION_LOCK`]): until replicas share a database
/// (docs/state.md), a second controller on it would resume, supervise and
/// delete as orphans the first one's agents.
const OWNER_LOCK: i64 = MIGRATION_LOCK + 1;

/// How long a starting controller waits for [`OWNER_LOCK`]: a rollout's
/// new controller for the old one to stop, or any for the server to notice
/// that a controller on a lost node is gone ([`KEEPALIVE`]).
pub const OWNER_WAIT: Duration = Duration::from_secs(45);

/// TCP keepalive on both ends of each connection: the server ends the
/// session of a controller that vanished (and with it its lock) within
/// ~30 s rather than the kernel's two hours.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// How long one call may wait on the server before it fails (the writer
/// retries, reconnecting; a follower's read answers an error).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long connecting may take, unless DATABASE_URL says (connect_timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How many chunks a read asks for at a time.
const CHUNKS_PER_QUERY: i64 = 64;

/// A connection pair to one database: the writer's, and the readers'.
pub struct Postgres {
    config: Config,
    transport: Transport,
    runtime: Handle,
    /// Transactions (the writer's commits, forgetting) take it whole.
    writer: Mutex<Client>,
    /// Followers' reads, which tokio-postgres pipelines on one connection.
    reader: RwLock<Arc<Client>>,
}

impl Postgres {
    /// Connects to `url` and brings its schema up to date. The URL is
    /// never part of an error: it may hold a password.
    pub async fn connect(
        url: &str,
        ca_file: Option<&Path>,
        owner_wait: Duration,
    ) -> Result<Postgres, JournalError> {
        let mut config: Config = url.parse().map_err(|e| {
            JournalError::Postgres(format!(
                "DATABASE_URL is not a PostgreSQL connection URL ({e}); \
                 expected postgres://USER:PASSWORD@HOST:PORT/DATABASE"
            ))
        })?;
        let transport = Transport::for_config(&config, ca_file)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.keepalives(true).keepalives_idle(KEEPALIVE);
        let mut writer = transport.connect(&config, connect_limit(&config)).await?;
        migrate(&mut writer).await?;
        let delays = backon::ConstantBuilder::default()
            .with_delay(Duration::from_millis(500))
            .with_max_times((owner_wait.as_millis() / 500) as usize);
        let owning = || own(&writer);
        backon::Retryable::retry(owning, delays)
            .when(|e| matches!(e, JournalError::Postgres(m) if m.starts_with(HELD)))
            .notify(|_, _| {
                tracing::info!("waiting for another controller to let go of the state database");
            })
            .await?;
        let reader = transport.connect(&config, connect_limit(&config)).await?;
        Ok(Postgres {
            config,
            transport,
            runtime: Handle::current(),
            writer: Mutex::new(writer),
            reader: RwLock::new(Arc::new(reader)),
        })
    }

    /// Runs `work` on the runtime that connected, within [`QUERY_TIMEOUT`].
    /// Blocks: called from the journal's blocking pool, never a runtime
    /// worker.
    fn run<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, JournalError>>,
    ) -> Result<T, JournalError> {
        self.runtime.block_on(async {
            tokio::time::timeout(QUERY_TIMEOUT, work)
                .await
                .map_err(|_| JournalError::Timeout(QUERY_TIMEOUT))?
        })
    }

    fn writer(&self) -> MutexGuard<'_, Client> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reader(&self) -> Arc<Client> {
        Arc::clone(&self.reader.read().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Storage for Postgres {
    fn load(&self, tail: usize) -> Result<Vec<Restored>, JournalError> {
        let client = self.reader();
        let mut out = Vec::new();
        self.run(async {
            for row in client
                .query("SELECT record FROM bakery_builds", &[])
                .await?
            {
                let record: Record = serde_json::from_slice(row.get::<_, &[u8]>(0))?;
                out.push(Restored::new(record));
            }
            Ok(())
        })?;
        let extents = self.run(async {
            let rows = client
                .query(
                    "SELECT build_id, max(first_seq + lines - 1), sum(bytes)::bigint \
                     FROM bakery_log_chunks GROUP BY build_id",
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| {
                    (
                        r.get::<_, String>(0),
                        (r.get::<_, i64>(1), r.get::<_, i64>(2)),
                    )
                })
                .collect::<std::collections::HashMap<_, _>>())
        })?;
        for build in &mut out {
            let Some(&(last, bytes)) = extents.get(&build.record.status.id) else {
                continue;
            };
            let tail = tail.max(1);
            let after = (last as u64).saturating_sub(tail as u64);
            let (mut lines, agent_seqs) = self.read(&build.record.status.id, after, tail)?;
            lines.drain(..lines.len().saturating_sub(tail));
            build.tail = lines;
            build.log_len = last as usize;
            build.log_bytes = bytes as u64;
            build.agent_seqs = agent_seqs.unwrap_or_default();
        }
        Ok(out)
    }

    fn read_lines(&self, id: &str, after: u64, max: usize) -> Result<Vec<LogEvent>, JournalError> {
        Ok(self.read(id, after, max)?.0)
    }

    /// One statement per table whatever the batch holds (arrays unnested
    /// by the server): under 1,000 chatty builds a commit carries hundreds
    /// of chunks, and a round trip each was the cost.
    fn write(&self, batch: &mut [Pending]) -> Result<(), JournalError> {
        let mut records = (Vec::new(), Vec::new());
        let mut chunks = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for p in batch.iter_mut() {
            let id = p.build.id().to_string();
            if let Some(bytes) = p.record.take() {
                records.0.push(id.clone());
                records.1.push(bytes);
            }
            if let Some((entry, bytes)) = p.chunk.take() {
                chunks.0.push(id);
                chunks.1.push(entry.first_seq as i64);
                chunks.2.push(entry.lines as i64);
                chunks.3.push(entry.bytes as i64);
                chunks.4.push(bytes);
            }
        }
        let mut client = self.writer();
        self.run(async {
            let txn = client.transaction().await?;
            let record_params: [&(dyn ToSql + Sync); 2] = [&records.0, &records.1];
            let chunk_params: [&(dyn ToSql + Sync); 5] =
                [&chunks.0, &chunks.1, &chunks.2, &chunks.3, &chunks.4];
            let saving_records = txn.execute(
                "INSERT INTO bakery_builds (id, record) \
                 SELECT * FROM unnest($1::text[], $2::bytea[]) \
                 ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
                &record_params,
            );
            // A retried commit that had been saved after all writes the
            // same first line again, with as many lines or more.
            let saving_chunks = txn.execute(
                "INSERT INTO bakery_log_chunks (build_id, first_seq, lines, bytes, chunk) \
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], \
                 $5::bytea[]) ON CONFLICT (build_id, first_seq) DO UPDATE \
                 SET lines = EXCLUDED.lines, bytes = EXCLUDED.bytes, chunk = EXCLUDED.chunk",
                &chunk_params,
            );
            // Sent together: one round trip for both.
            tokio::try_join!(saving_records, saving_chunks)?;
            txn.commit().await?;
            Ok(())
        })
    }

    fn forget(&self, ids: &[String]) -> Result<(), JournalError> {
        let mut client = self.writer();
        self.run(async {
            let txn = client.transaction().await?;
            txn.execute(
                "DELETE FROM bakery_log_chunks WHERE build_id = ANY($1)",
                &[&ids],
            )
            .await?;
            txn.execute("DELETE FROM bakery_builds WHERE id = ANY($1)", &[&ids])
                .await?;
            txn.commit().await?;
            Ok(())
        })
    }

    /// Connects again: a connection the server closed, or one a timed-out
    /// call left mid-answer, is never reused.
    fn reopen(&self) -> Result<(), JournalError> {
        let (writer, reader) = self.run(async {
            Ok((
                self.transport
                    .connect(&self.config, connect_limit(&self.config))
                    .await?,
                self.transport
                    .connect(&self.config, connect_limit(&self.config))
                    .await?,
            ))
        })?;
        *self.writer() = writer;
        *self.reader.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(reader);
        tracing::info!("reconnected to the state database");
        Ok(())
    }

    /// Lets go of the database for the next controller (a rollout's): its
    /// lock is released now, not when the connections close.
    fn close(&self) {
        let writer = self.writer();
        let released = self.run(async {
            writer
                .batch_execute("SELECT pg_advisory_unlock_all()")
                .await?;
            Ok(())
        });
        if let Err(e) = released {
            tracing::warn!("letting go of the state database: {e}");
        }
    }

    #[cfg(test)]
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Postgres {
    /// Build `id`'s lines after `after`, as [`Storage::read_lines`], and the
    /// agent seqs of the last chunk read.
    fn read(
        &self,
        id: &str,
        after: u64,
        max: usize,
    ) -> Result<(Vec<LogEvent>, Option<Vec<u64>>), JournalError> {
        let client = self.reader();
        let gap = || JournalError::Gap {
            build: id.to_string(),
            after,
        };
        let mut out: Vec<LogEvent> = Vec::new();
        let mut last = after;
        let mut agent_seqs = None;
        loop {
            let rows = self.run(async {
                Ok(client
                    .query(
                        "SELECT chunk FROM bakery_log_chunks \
                         WHERE build_id = $1 AND first_seq + lines - 1 > $2 \
                         ORDER BY first_seq LIMIT $3",
                        &[&id, &(last as i64), &CHUNKS_PER_QUERY],
                    )
                    .await?)
            })?;
            let more = rows.len() as i64 == CHUNKS_PER_QUERY;
            for row in &rows {
                let chunk: Chunk = serde_json::from_slice(row.get::<_, &[u8]>(0))?;
                let taken = last;
                for line in chunk.lines.into_iter().filter(|l| l.seq > taken) {
                    if line.seq != last + 1 {
                        return Err(gap());
                    }
                    last = line.seq;
                    out.push(line);
                }
                agent_seqs = Some(chunk.agent_seqs);
                if out.len() >= max {
                    return Ok((out, agent_seqs));
                }
            }
            if !more {
                return Ok((out, agent_seqs));
            }
        }
    }
}

/// How long connecting may take: `connect_timeout`, or [`CONNECT_TIMEOUT`].
fn connect_limit(config: &Config) -> Duration {
    config
        .get_connect_timeout()
        .copied()
        .unwrap_or(CONNECT_TIMEOUT)
}

/// How a refusal for [`OWNER_LOCK`] begins (retried until [`OWNER_WAIT`]).
const HELD: &str = "another controller is using this database";

/// Takes [`OWNER_LOCK`] on `client`'s session, or says who holds it.
async fn own(client: &Client) -> Result<(), JournalError> {
    // The server's side of the keepalive (settable per session).
    let idle = KEEPALIVE.as_secs();
    client
        .batch_execute(&format!(
            "SET tcp_keepalives_idle = {idle}; SET tcp_keepalives_interval = 5; \
             SET tcp_keepalives_count = 3"
        ))
        .await?;
    let owned: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&OWNER_LOCK])
        .await?
        .get(0);
    if owned {
        return Ok(());
    }
    Err(JournalError::Postgres(format!(
        "{HELD} (it holds bakery's lock on it): one controller per database for now \
         (docs/state.md). Stop the other one, or point DATABASE_URL at another database"
    )))
}

/// Applies the migrations the database lacks, in one transaction under
/// [`MIGRATION_LOCK`]: a second controller starting at once waits, then
/// finds them applied. A database of a newer schema is refused by name.
async fn migrate(client: &mut Client) -> Result<(), JournalError> {
    let txn = client.transaction().await?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    txn.batch_execute("CREATE TABLE IF NOT EXISTS bakery_schema (version integer NOT NULL)")
        .await?;
    let current: i32 = txn
        .query_one("SELECT coalesce(max(version), 0) FROM bakery_schema", &[])
        .await?
        .get(0);
    let latest = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if current > latest {
        return Err(JournalError::Postgres(format!(
            "the state database's schema is version {current}, newer than this controller's \
             {latest}: a newer controller has used it. Run that version (or newer), or point \
             DATABASE_URL at another database"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        txn.batch_execute(sql).await?;
        txn.execute(
            "INSERT INTO bakery_schema (version) VALUES ($1)",
            &[version],
        )
        .await?;
        tracing::info!(version, "migrated the state database");
    }
    txn.commit().await?;
    Ok(())
}

/// The server's own message where there is one (tokio-postgres shows "db
/// error" and keeps the message in its source).
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

impl From<tokio_postgres::Error> for JournalError {
    fn from(e: tokio_postgres::Error) -> Self {
        JournalError::Postgres(describe(&e))
    }
}

#[cfg(test)]
mod tests;
mod transport;
