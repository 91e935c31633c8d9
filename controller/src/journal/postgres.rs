//! The PostgreSQL backend (DATABASE_URL): builds and their logs in tables
//! a database server keeps, for operators who already run one and for
//! controllers that must not lose their state with their volume.
//!
//! What is saved is the embedded journal's, row for row: each build's
//! record (secrets blanked, in the vault as with the embedded file) and
//! each commit's lines of it as one chunk ([`super::rows::encode_chunk`]).
//! The schema is versioned ([`schema`]): a controller brings an older
//! database up to date at start-up under an advisory lock, so two that
//! start at once apply each step once, and refuses a database a newer
//! controller has moved on.
//!
//! The journal calls [`Storage`] from its blocking pool; each call here
//! runs its queries on the runtime that connected, with a deadline
//! ([`QUERY_TIMEOUT`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use bakery_protocol::api::LogEvent;
use tokio::runtime::Handle;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config};

use super::rows::{self, Chunk};
use super::writer::Pending;
use super::{JournalError, Loaded, Record, Restored, Storage};
use transport::Transport;

/// How long a starting controller waits for the database's lock
/// ([`schema::own`]): a rollout's
/// new controller for the old one to stop, or any for the server to notice
/// that a controller on a lost node is gone ([`KEEPALIVE`]).
pub const OWNER_WAIT: Duration = Duration::from_secs(45);

/// TCP keepalive on both ends of each connection (an idle probe after
/// this, then 3 more 3 s apart; and data unacknowledged for 15 s ends it):
/// the server ends the session of a controller that vanished, and with it
/// its lock, within ~15 s rather than the kernel's two hours, and so a
/// standby takes over (transport.rs sets the server's side).
pub(super) const KEEPALIVE: Duration = Duration::from_secs(5);

/// How long one call may wait on the server before it fails (the writer
/// retries, reconnecting; a follower's read answers an error).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long connecting may take, unless DATABASE_URL says (connect_timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a readiness or fencing check waits for the server.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// How many builds one retention transaction forgets.
const FORGET_BATCH: usize = 200;

/// How many chunks a read asks for at a time.
const CHUNKS_PER_QUERY: i64 = 64;

/// A connection pair to one database: the writer's, and the readers'.
pub struct Postgres {
    config: Config,
    transport: Transport,
    /// The epoch this controller took the database at ([`schema::publish`]).
    epoch: i64,
    runtime: Handle,
    /// Transactions (the writer's commits, forgetting) take it whole.
    writer: Mutex<Client>,
    /// Followers' reads, which tokio-postgres pipelines on one connection.
    reader: RwLock<Arc<Client>>,
}

/// Where the state database is and how to use it: DATABASE_URL,
/// DATABASE_CA_FILE and STATE_KEY. No `Debug`: the URL may hold a password.
pub struct Target {
    /// `postgres://USER:PASSWORD@HOST:PORT/DB[?sslmode=require]`.
    pub url: String,
    /// The CA the server's certificate must chain to (`sslmode=require`).
    pub ca_file: Option<PathBuf>,
    /// How long to wait for another controller to let go of the database
    /// ([`OWNER_WAIT`] at start-up); `None`: for as long as it takes (a
    /// standby).
    pub owner_wait: Option<Duration>,
    /// Seals build secrets into the database; without it they stay in
    /// files in DATA_DIR.
    pub state_key: Option<super::sealing::StateKey>,
    /// Where other controllers reach this one (REPLICA_URL), published once
    /// it holds the database, for standbys to forward requests to.
    pub replica_url: Option<String>,
    /// How long to wait, having taken the database from a controller that
    /// did not let go cleanly, before acting on its builds: longer than
    /// that one takes to fence itself ([`FENCE_WAIT`] at start-up).
    pub takeover_wait: Duration,
}

/// How long a controller taking over from one that did not let go cleanly
/// waits before acting: that one, cut off from the database, stops acting
/// within [`super::FENCE_AFTER`] and a check (docs/state.md).
pub const FENCE_WAIT: Duration = Duration::from_secs(12);

impl Postgres {
    /// Connects to `target`'s database and brings its schema up to date.
    /// The URL is never part of an error: it may hold a password.
    pub async fn connect(target: &Target) -> Result<Postgres, JournalError> {
        let (config, transport) = reach(target)?;
        let mut writer = transport.connect(&config, connect_limit(&config)).await?;
        // Owned before migrated: a new version never changes the schema
        // under an old controller still running on it.
        let delays = backon::ConstantBuilder::default().with_delay(Duration::from_millis(500));
        let delays = match target.owner_wait {
            Some(wait) => delays.with_max_times((wait.as_millis() / 500) as usize),
            None => delays.without_max_times(),
        };
        let owning = || deadline(schema::own(&writer));
        let mut told = false;
        backon::Retryable::retry(owning, delays)
            .when(schema::held)
            .notify(|_, _| {
                if !std::mem::replace(&mut told, true) {
                    tracing::info!(
                        "waiting for another controller to let go of the state database"
                    );
                }
            })
            .await?;
        deadline(schema::migrate(&mut writer)).await?;
        // Published only after the wait: meanwhile standbys keep
        // forwarding to the one that held it (and retrying), not here.
        let clean = deadline(schema::released(&writer)).await?;
        if !clean && !target.takeover_wait.is_zero() {
            tracing::warn!(
                wait = ?target.takeover_wait,
                "the controller that held the state database did not let go of it cleanly: \
                 waiting for it to have stopped acting before taking its builds over"
            );
            tokio::time::sleep(target.takeover_wait).await;
        }
        let epoch = deadline(schema::publish(&writer, target.replica_url.as_deref())).await?;
        let reader = transport.connect(&config, connect_limit(&config)).await?;
        tracing::info!(
            hosts = ?config.get_hosts(),
            ports = ?config.get_ports(),
            database = config.get_dbname().unwrap_or("(the user's)"),
            tls = matches!(transport, Transport::Tls(_)),
            "state in PostgreSQL"
        );
        Ok(Postgres {
            config,
            transport,
            epoch,
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
        self.runtime.block_on(deadline(work))
    }

    fn writer(&self) -> MutexGuard<'_, Client> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The readers' connection, connected again if the server closed it
    /// (an idle timeout, a proxy's cut): commits that succeed never make
    /// the writer reopen it.
    fn reader(&self) -> Result<Arc<Client>, JournalError> {
        let client = Arc::clone(&self.reader.read().unwrap_or_else(|p| p.into_inner()));
        if !client.is_closed() {
            return Ok(client);
        }
        let fresh = Arc::new(
            self.run(
                self.transport
                    .connect(&self.config, connect_limit(&self.config)),
            )?,
        );
        *self.reader.write().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&fresh);
        Ok(fresh)
    }
}

impl Storage for Postgres {
    fn load(&self, tail: usize) -> Result<Vec<Loaded>, JournalError> {
        let client = self.reader()?;
        let mut out = Vec::new();
        self.run(async {
            let rows = client
                .query(
                    "SELECT b.record, s.sealed FROM bakery_builds b \
                     LEFT JOIN bakery_secrets s ON s.build_id = b.id",
                    &[],
                )
                .await?;
            for row in rows {
                let record: Record = serde_json::from_slice(row.get::<_, &[u8]>(0))?;
                out.push((Restored::new(record), row.get::<_, Option<Vec<u8>>>(1)));
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
        for (build, _) in &mut out {
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
    /// by the server), all sent together: under 1,000 chatty builds a
    /// commit carries hundreds of chunks, and a round trip each was the cost.
    fn write(&self, batch: &mut [Pending]) -> Result<(), JournalError> {
        let c = Columns::of(batch);
        let mut client = self.writer();
        self.run(async {
            let txn = client.transaction().await?;
            let records: [&(dyn ToSql + Sync); 2] = [&c.record_ids, &c.records];
            let chunks: [&(dyn ToSql + Sync); 5] =
                [&c.chunk_ids, &c.firsts, &c.lines, &c.bytes, &c.chunks];
            let secrets: [&(dyn ToSql + Sync); 2] = [&c.secret_ids, &c.secrets];
            let cleared: [&(dyn ToSql + Sync); 1] = [&c.cleared];
            tokio::try_join!(
                txn.execute(
                    "INSERT INTO bakery_builds (id, record) \
                     SELECT * FROM unnest($1::text[], $2::bytea[]) \
                     ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
                    &records,
                ),
                // A retried commit that had been saved after all writes the
                // same first line again, with as many lines or more.
                txn.execute(
                    "INSERT INTO bakery_log_chunks (build_id, first_seq, lines, bytes, chunk) \
                     SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], \
                     $4::bigint[], $5::bytea[]) ON CONFLICT (build_id, first_seq) DO UPDATE \
                     SET lines = EXCLUDED.lines, bytes = EXCLUDED.bytes, chunk = EXCLUDED.chunk",
                    &chunks,
                ),
                txn.execute(
                    "INSERT INTO bakery_secrets (build_id, sealed) \
                     SELECT * FROM unnest($1::text[], $2::bytea[]) \
                     ON CONFLICT (build_id) DO UPDATE SET sealed = EXCLUDED.sealed",
                    &secrets,
                ),
                txn.execute(
                    "DELETE FROM bakery_secrets WHERE build_id = ANY($1)",
                    &cleared
                ),
            )?;
            txn.commit().await?;
            Ok(())
        })
    }

    /// In transactions of [`FORGET_BATCH`] builds: a retention pass after
    /// a long outage may forget thousands, and one statement over all of
    /// them would outlast [`QUERY_TIMEOUT`] while commits wait behind it.
    fn forget(&self, ids: &[String]) -> Result<(), JournalError> {
        for batch in ids.chunks(FORGET_BATCH) {
            let mut client = self.writer();
            self.run(async {
                let txn = client.transaction().await?;
                for table in ["bakery_secrets", "bakery_log_chunks"] {
                    let sql = format!("DELETE FROM {table} WHERE build_id = ANY($1)");
                    txn.execute(&sql, &[&batch]).await?;
                }
                txn.execute("DELETE FROM bakery_builds WHERE id = ANY($1)", &[&batch])
                    .await?;
                txn.commit().await?;
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Connects the writer again if the server closed its connection, and
    /// takes the database's lock on the new session. A writer whose
    /// connection is still open keeps it: its session holds the lock (the
    /// server's statement_timeout ends what it was waiting on, and its
    /// keepalive a connection the network lost).
    fn reopen(&self) -> Result<(), JournalError> {
        if !self.writer().is_closed() {
            return Ok(());
        }
        let writer = self.run(async {
            let writer = self
                .transport
                .connect(&self.config, connect_limit(&self.config))
                .await?;
            // Another controller may have taken the database meanwhile:
            // then this one saves nothing (its requests answer 503). Had
            // that one also let go since, the lock is free but the state
            // moved on: the epoch says so, and this one lost it all the same.
            schema::own(&writer).await?;
            if schema::epoch(&writer).await? != Some(self.epoch) {
                writer
                    .batch_execute("SELECT pg_advisory_unlock_all()")
                    .await?;
                return Err(JournalError::Held);
            }
            Ok(writer)
        })?;
        *self.writer() = writer;
        tracing::info!("reconnected to the state database");
        Ok(())
    }

    /// The writer's connection answers a query (readiness): an idle
    /// controller's commits succeed with nothing to save even while the
    /// server is down.
    fn ping(&self) -> Result<(), JournalError> {
        let writer = self.writer();
        if writer.is_closed() {
            return Err(JournalError::Postgres(
                "the connection to the state database is closed; reconnecting".into(),
            ));
        }
        answers(&self.runtime, &writer)
    }

    /// A writer connection the server closed (a restart, a network that
    /// lost it) is connected again, and the lock taken again, now rather
    /// than at the next commit: a controller that lost the database to a
    /// standby learns it while idle too.
    fn check(&self) -> Result<(), JournalError> {
        // A commit in flight holds the writer: if it has not ended by the
        // next check either, the server is not answering.
        let writer = match self.writer.try_lock() {
            Ok(w) => w,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                return Err(JournalError::Timeout(PING_TIMEOUT));
            }
        };
        if writer.is_closed() {
            drop(writer);
            return self.reopen();
        }
        answers(&self.runtime, &writer)
    }

    /// Lets go of the database for the next controller (a rollout's): its
    /// lock is released now, not when the connections close.
    fn close(&self) {
        let writer = self.writer();
        let released = self.run(async {
            schema::release(&writer, self.epoch).await?;
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

/// A commit's rows as the columns its statements unnest.
#[derive(Default)]
struct Columns {
    record_ids: Vec<String>,
    records: Vec<Vec<u8>>,
    chunk_ids: Vec<String>,
    firsts: Vec<i64>,
    lines: Vec<i64>,
    bytes: Vec<i64>,
    chunks: Vec<Vec<u8>>,
    secret_ids: Vec<String>,
    secrets: Vec<Vec<u8>>,
    /// Builds whose secrets are gone (they ended).
    cleared: Vec<String>,
}

impl Columns {
    /// Takes what `batch` saves (the chunks are moved, not copied).
    fn of(batch: &mut [Pending]) -> Columns {
        let mut c = Columns::default();
        for p in batch.iter_mut() {
            let id = p.build.id().to_string();
            if let Some(bytes) = p.record.take() {
                c.record_ids.push(id.clone());
                c.records.push(bytes);
            }
            match p.secrets.take() {
                Some(blob) if blob.is_empty() => c.cleared.push(id.clone()),
                Some(blob) => {
                    c.secret_ids.push(id.clone());
                    c.secrets.push(blob);
                }
                None => {}
            }
            if let Some((entry, bytes)) = p.chunk.take() {
                c.chunk_ids.push(id);
                c.firsts.push(entry.first_seq as i64);
                c.lines.push(entry.lines as i64);
                c.bytes.push(entry.bytes as i64);
                c.chunks.push(bytes);
            }
        }
        c
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
        let client = self.reader()?;
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
                agent_seqs = Some(rows::follow_on(chunk, &mut last, &mut out, gap)?);
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

/// `work` within [`QUERY_TIMEOUT`].
async fn deadline<T>(
    work: impl std::future::Future<Output = Result<T, JournalError>>,
) -> Result<T, JournalError> {
    tokio::time::timeout(QUERY_TIMEOUT, work)
        .await
        .map_err(|_| JournalError::Timeout(QUERY_TIMEOUT))?
}

/// How to reach `target`'s database: its URL read, TLS as it asks, and the
/// deadlines and keepalive every connection of a controller has.
fn reach(target: &Target) -> Result<(Config, Transport), JournalError> {
    let (mut config, ca_file) = transport::parse(&target.url, target.ca_file.as_deref())?;
    let transport = Transport::for_config(&config, ca_file.as_deref())?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config
        .keepalives(true)
        .keepalives_idle(KEEPALIVE)
        .keepalives_interval(Duration::from_secs(3))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(15));
    Ok((config, transport))
}

/// Whether `client` answers a query within [`PING_TIMEOUT`], from the
/// blocking pool on `runtime`.
fn answers(runtime: &Handle, client: &Client) -> Result<(), JournalError> {
    runtime.block_on(async {
        tokio::time::timeout(PING_TIMEOUT, client.simple_query("SELECT 1"))
            .await
            .map_err(|_| JournalError::Timeout(PING_TIMEOUT))??;
        Ok(())
    })
}

/// How long connecting may take: `connect_timeout`, or [`CONNECT_TIMEOUT`].
fn connect_limit(config: &Config) -> Duration {
    config
        .get_connect_timeout()
        .copied()
        .unwrap_or(CONNECT_TIMEOUT)
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

mod active;
mod schema;
#[cfg(test)]
mod tests;
mod transport;

pub use active::ActiveUrl;
