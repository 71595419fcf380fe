//! The SQLite engine: connections, the busy handler, migrations.
//!
//! The database runs in WAL mode with `synchronous = FULL`, so a committed
//! row survives a power cut, which is what a `200` for a part promises. A
//! write marked [`crate::db::Commit::Deferred`] commits with `NORMAL` (no
//! sync; the next `FULL` commit syncs the log, it included).
//! Another process (`ferry gc`, `ferry token revoke`) can hold the write
//! lock; then the busy handler waits as SQLite's own `busy_timeout` (30 s)
//! would, and counts each wait ([`busy_waits`], exported as
//! `ferry_db_busy_total`).
//!
//! Migrations are the files of `schema/sqlite/`, compiled in and applied
//! in order; `PRAGMA user_version` records how many have run.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

/// The schema files, in order. Append only; `schema/postgres/` has the
/// same files with the same meaning.
pub(super) const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_init",
        include_str!("../../schema/sqlite/0001_init.sql"),
    ),
    (
        "0002_revocations",
        include_str!("../../schema/sqlite/0002_revocations.sql"),
    ),
    ("0003_tus", include_str!("../../schema/sqlite/0003_tus.sql")),
    (
        "0004_listings_logs",
        include_str!("../../schema/sqlite/0004_listings_logs.sql"),
    ),
    (
        "0005_blobs",
        include_str!("../../schema/sqlite/0005_blobs.sql"),
    ),
    (
        "0006_upload_owners",
        include_str!("../../schema/sqlite/0006_upload_owners.sql"),
    ),
    (
        "0007_cache_stats",
        include_str!("../../schema/sqlite/0007_cache_stats.sql"),
    ),
    (
        "0008_status",
        include_str!("../../schema/sqlite/0008_status.sql"),
    ),
    (
        "0009_shared_uploads",
        include_str!("../../schema/sqlite/0009_shared_uploads.sql"),
    ),
    (
        "0010_chunks",
        include_str!("../../schema/sqlite/0010_chunks.sql"),
    ),
    (
        "0011_stored_parts",
        include_str!("../../schema/sqlite/0011_stored_parts.sql"),
    ),
    (
        "0012_gc_failed",
        include_str!("../../schema/sqlite/0012_gc_failed.sql"),
    ),
];

/// How long a statement waits for a lock before it fails with `SQLITE_BUSY`.
pub(super) const BUSY_TIMEOUT_MS: u64 = 30_000;

/// Times any connection found the database locked and had to wait.
static BUSY_WAITS: AtomicU64 = AtomicU64::new(0);

/// How many times, since the process started, a database call found
/// SQLite locked by another connection and waited (once per wait, however
/// long). Process-wide: every [`super::Db`] in the process adds to it.
pub fn busy_waits() -> u64 {
    BUSY_WAITS.load(Ordering::Relaxed)
}

/// The sleep before retry `count` of one locking event and the sleep
/// already done, in ms: SQLite's own `busy_timeout` schedule.
pub(super) fn busy_delay(count: u64) -> (u64, u64) {
    const DELAYS: [u64; 12] = [1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100];
    const TOTALS: [u64; 12] = [0, 1, 3, 8, 18, 33, 53, 78, 103, 128, 178, 228];
    match DELAYS.get(count as usize) {
        Some(&d) => (d, TOTALS[count as usize]),
        None => (100, 228 + 100 * (count - 11)),
    }
}

/// The busy handler: counts the wait, then sleeps and retries like
/// `busy_timeout(BUSY_TIMEOUT_MS)`; `false` (give up with `SQLITE_BUSY`)
/// once that much time has been slept.
fn on_busy(count: i32) -> bool {
    let count = u64::try_from(count).unwrap_or(0);
    if count == 0 {
        BUSY_WAITS.fetch_add(1, Ordering::Relaxed);
    }
    let (delay, prior) = busy_delay(count);
    let delay = delay.min(BUSY_TIMEOUT_MS.saturating_sub(prior));
    if delay == 0 {
        return false;
    }
    std::thread::sleep(std::time::Duration::from_millis(delay));
    true
}

pub(super) fn open_conn(path: &Path) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_handler(Some(on_busy))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Applies every migration newer than the database's `user_version`.
pub(super) fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, (_name, sql)) in MIGRATIONS.iter().enumerate() {
        let v = i as i64 + 1;
        if v <= version {
            continue;
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", v)?;
        tx.commit()?;
    }
    Ok(())
}
