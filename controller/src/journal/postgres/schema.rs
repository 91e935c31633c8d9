//! The database's schema and who may use it: versioned migrations applied
//! at start-up, and the lock one controller holds on the database for as
//! long as it runs.

use tokio_postgres::Client;

use super::super::JournalError;

/// Each schema version and the SQL that reaches it from the one before.
/// A version, once released, is never edited: changes are a new version.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("1-builds.sql")),
    (2, include_str!("2-secrets.sql")),
    (3, include_str!("3-active.sql")),
];

/// The advisory lock migrations run under ("bakery" in ASCII).
const MIGRATION_LOCK: i64 = 0x62_61_6b_65_72_79;

/// The advisory lock a controller holds on its database for as long as it
/// runs (one above [`MIGRATION_LOCK`]): until replicas share a database
/// (docs/state.md), a second controller on it would resume, supervise and
/// delete as orphans the first one's agents.
const OWNER_LOCK: i64 = MIGRATION_LOCK + 1;

/// Takes [`OWNER_LOCK`] on `client`'s session, or says who holds it.
pub(super) async fn own(client: &Client) -> Result<(), JournalError> {
    let owned: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&OWNER_LOCK])
        .await?
        .get(0);
    if owned {
        Ok(())
    } else {
        Err(JournalError::Held)
    }
}

/// Whether the controller that held the database before let go of it
/// cleanly (or there was none).
pub(super) async fn released(client: &Client) -> Result<bool, JournalError> {
    let rows = client
        .query("SELECT released FROM bakery_active", &[])
        .await?;
    Ok(rows.first().is_none_or(|r| r.get(0)))
}

/// Records that this controller now holds the database: where it answers
/// (`url`, its REPLICA_URL, or none), not yet released; returns the new
/// epoch.
pub(super) async fn publish(client: &Client, url: Option<&str>) -> Result<i64, JournalError> {
    let since = bakery_protocol::api::now_ms() as i64;
    let row = client
        .query_one(
            "INSERT INTO bakery_active (url, epoch, released, since_ms) VALUES ($1, 1, false, $2) \
             ON CONFLICT (singleton) DO UPDATE SET url = $1, epoch = bakery_active.epoch + 1, \
             released = false, since_ms = $2 RETURNING epoch",
            &[&url, &since],
        )
        .await?;
    Ok(row.get(0))
}

/// The epoch the database is at: another controller held it since this
/// one's if it moved on.
pub(super) async fn epoch(client: &Client) -> Result<Option<i64>, JournalError> {
    let rows = client.query("SELECT epoch FROM bakery_active", &[]).await?;
    Ok(rows.first().map(|r| r.get(0)))
}

/// Marks epoch `epoch` let go of cleanly (the controller stops).
pub(super) async fn release(client: &Client, epoch: i64) -> Result<(), JournalError> {
    client
        .execute(
            "UPDATE bakery_active SET released = true WHERE epoch = $1",
            &[&epoch],
        )
        .await?;
    Ok(())
}

/// The URL the controller holding the database published, while it holds
/// it (none before the first migration too).
pub(super) async fn active_url(client: &Client) -> Result<Option<String>, JournalError> {
    let row = client
        .query_one("SELECT to_regclass('bakery_active') IS NOT NULL", &[])
        .await?;
    if !row.get::<_, bool>(0) {
        return Ok(None);
    }
    // Only while its controller still holds the lock: a dead one's URL
    // stays in the table until the next controller takes over, but the
    // server frees its lock as soon as its session ends. (An advisory lock
    // on a bigint key shows as its high and low halves.)
    let (high, low) = (OWNER_LOCK >> 32, OWNER_LOCK & 0xffff_ffff);
    let rows = client
        .query(
            "SELECT url FROM bakery_active WHERE url IS NOT NULL AND EXISTS (SELECT 1 \
             FROM pg_locks WHERE locktype = 'advisory' AND classid::bigint = $1 \
             AND objid::bigint = $2 AND objsubid = 1 AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
            &[&high, &low],
        )
        .await?;
    Ok(rows.first().map(|r| r.get(0)))
}

/// Whether `e` is [`own`]'s refusal, which is worth waiting out.
pub(super) fn held(e: &JournalError) -> bool {
    matches!(e, JournalError::Held)
}

/// Applies the migrations the database lacks, in one transaction under
/// [`MIGRATION_LOCK`]: a second controller starting at once waits, then
/// finds them applied. A database of a newer schema is refused by name.
/// Once migrated, the user needs no CREATE privilege: nothing is created.
pub(super) async fn migrate(client: &mut Client) -> Result<(), JournalError> {
    let latest = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if version(client).await? == Some(latest) {
        return Ok(());
    }
    let txn = client.transaction().await?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let current = match version(&txn).await? {
        Some(v) => v,
        None => {
            txn.batch_execute("CREATE TABLE bakery_schema (version integer NOT NULL)")
                .await?;
            0
        }
    };
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

/// The schema's version, `None` before the first migration.
async fn version(client: &impl tokio_postgres::GenericClient) -> Result<Option<i32>, JournalError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('bakery_schema') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_one("SELECT coalesce(max(version), 0) FROM bakery_schema", &[])
        .await?;
    Ok(Some(row.get(0)))
}
