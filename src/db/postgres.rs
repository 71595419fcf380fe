//! The PostgreSQL engine: connecting, migrations, and the locks that let
//! several `ferry serve` instances share one database.
//!
//! The driver is the `postgres` crate, the blocking face of
//! `tokio-postgres`: the queries of `db/` are plain functions over a
//! [`super::Conn`], run on tokio's blocking pool for SQLite as for
//! PostgreSQL, so each is written once and the two engines share every
//! code path above the connection. An async driver (tokio-postgres with
//! deadpool, or sqlx) would have split them: SQLite has no async driver
//! worth the name, and every query would exist twice. The price: each
//! client runs a small runtime of its own and must never be used on an
//! async worker thread, so [`super::Db`] runs every PostgreSQL call on the
//! blocking pool (even [`super::Db::lookup`], which SQLite answers on the
//! worker) and closes clients off the async threads.
//!
//! Locking, the same meaning as SQLite's single writer:
//! - every [`super::Db::write`] is a transaction that first takes
//!   `pg_advisory_xact_lock(WRITER_LOCK)`: one writer at a time across all
//!   instances, released at commit or rollback. A publish checks and
//!   inserts under it, so two instances never publish one path twice and
//!   GC never deletes a blob that another instance's publish is claiming;
//! - migrations run under the session lock `pg_advisory_lock(MIGRATION_LOCK)`,
//!   so instances starting together migrate once; `ferry_schema` records
//!   which files of `schema/postgres/` have run;
//! - reads run in autocommit, each statement on a fresh snapshot.
//!
//! Only TLS-less connections are supported: reach a remote server over a
//! unix socket, a private network or a tunnel. Keep the password out of
//! `database-url`: the environment variable `PGPASSWORD` is used when the
//! URL has none.

use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};

/// The advisory lock every write transaction takes (ASCII "ferrywr").
pub const WRITER_LOCK: i64 = 0x0066_6572_7279_7772;
/// The advisory lock held while migrating (ASCII "ferrymg").
pub const MIGRATION_LOCK: i64 = 0x0066_6572_7279_6d67;

/// The schema files, in order; same names and meaning as
/// `schema/sqlite/`. Append only.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_init",
        include_str!("../../schema/postgres/0001_init.sql"),
    ),
    (
        "0002_revocations",
        include_str!("../../schema/postgres/0002_revocations.sql"),
    ),
    (
        "0003_tus",
        include_str!("../../schema/postgres/0003_tus.sql"),
    ),
    (
        "0004_listings_logs",
        include_str!("../../schema/postgres/0004_listings_logs.sql"),
    ),
    (
        "0005_blobs",
        include_str!("../../schema/postgres/0005_blobs.sql"),
    ),
    (
        "0006_upload_owners",
        include_str!("../../schema/postgres/0006_upload_owners.sql"),
    ),
    (
        "0007_cache_stats",
        include_str!("../../schema/postgres/0007_cache_stats.sql"),
    ),
    (
        "0008_status",
        include_str!("../../schema/postgres/0008_status.sql"),
    ),
    (
        "0009_shared_uploads",
        include_str!("../../schema/postgres/0009_shared_uploads.sql"),
    ),
    (
        "0010_chunks",
        include_str!("../../schema/postgres/0010_chunks.sql"),
    ),
    (
        "0011_stored_parts",
        include_str!("../../schema/postgres/0011_stored_parts.sql"),
    ),
    (
        "0012_gc_failed",
        include_str!("../../schema/postgres/0012_gc_failed.sql"),
    ),
];

/// How many migrations there are (both engines have as many).
pub const MIGRATION_COUNT: usize = MIGRATIONS.len();

/// Parses `database-url` (a libpq URL or key=value string), taking the
/// password from `PGPASSWORD` when the URL has none.
pub fn parse_url(url: &str) -> Result<postgres::Config> {
    let mut cfg = postgres::Config::from_str(url)
        .map_err(|e| Error::BadRequest(format!("invalid database-url: {e}")))?;
    if cfg.get_password().is_none()
        && let Ok(pw) = std::env::var("PGPASSWORD")
    {
        cfg.password(pw);
    }
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(Duration::from_secs(10));
    }
    if cfg.get_application_name().is_none() {
        cfg.application_name("ferry");
    }
    Ok(cfg)
}

/// Opens one client. Must run off the async worker threads.
pub(super) fn connect(cfg: &postgres::Config) -> Result<postgres::Client> {
    Ok(cfg.connect(postgres::NoTls)?)
}

/// Applies every migration not yet recorded in `ferry_schema`, holding
/// the migration lock so another instance starting at once waits.
pub(super) fn migrate(c: &mut postgres::Client) -> Result<()> {
    c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
    let out = migrate_locked(c);
    let unlocked = c.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    out?;
    unlocked?;
    Ok(())
}

fn migrate_locked(c: &mut postgres::Client) -> Result<()> {
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS ferry_schema (
             version     BIGINT PRIMARY KEY,
             name        TEXT NOT NULL,
             applied_at  BIGINT NOT NULL
         )",
    )?;
    let version: i64 = c
        .query_one("SELECT COALESCE(MAX(version), 0) FROM ferry_schema", &[])?
        .get(0);
    if version > MIGRATIONS.len() as i64 {
        return Err(Error::Internal(format!(
            "the database has schema version {version}, newer than this ferry knows ({}): \
             run a newer ferry",
            MIGRATIONS.len()
        )));
    }
    for (i, (name, sql)) in MIGRATIONS.iter().enumerate() {
        let v = i as i64 + 1;
        if v <= version {
            continue;
        }
        let mut tx = c.transaction()?;
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO ferry_schema (version, name, applied_at) VALUES ($1, $2, $3)",
            &[&v, name, &super::now()],
        )?;
        tx.commit()?;
        tracing::info!(migration = name, "applied PostgreSQL migration");
    }
    Ok(())
}
