//! SQLite metadata: connection pool, migrations, and one file per table group.
//!
//! The database runs in WAL mode with `synchronous = FULL`, so a committed
//! row survives a power cut, which is what a `200` for a part promises.
//! rusqlite is blocking, so calls run on tokio's blocking pool:
//! - reads through [`Db::call`], in parallel on WAL snapshots;
//! - writes through [`Db::write`]: `BEGIN IMMEDIATE`, after queueing on one
//!   async lock, so SQLite's write lock is never contended from inside the
//!   server (a lock wait there is a sleep-and-poll);
//! - the one exception, [`Db::lookup`]: keyed point reads on the read path
//!   (a narinfo, a NAR's chunks) run on the async worker itself, as a
//!   static file server reads a small file in its event loop. A WAL read
//!   never waits for a writer, and skipping the hop to the blocking pool
//!   cut a narinfo's server time by about 40 %.
//!
//! Another process (`ferry gc`, `ferry token revoke`) can still hold the
//! write lock; then the busy handler waits as SQLite's own `busy_timeout`
//! (30 s) would, and counts each wait ([`busy_waits`], exported as
//! `ferry_db_busy_total`).
//!
//! Migrations are the files of `schema/`, compiled in and applied in order;
//! `PRAGMA user_version` records how many have run.

pub mod blobs;
pub mod caches;
pub mod gc;
pub mod logs;
pub mod nars;
pub mod revocations;
pub mod status;
pub mod tus;
pub mod uploads;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::sync::Semaphore;

use crate::error::{Error, Result};

/// The schema files, in order. Append only.
const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("../../schema/0001_init.sql")),
    (
        "0002_revocations",
        include_str!("../../schema/0002_revocations.sql"),
    ),
    ("0003_tus", include_str!("../../schema/0003_tus.sql")),
    (
        "0004_listings_logs",
        include_str!("../../schema/0004_listings_logs.sql"),
    ),
    ("0005_blobs", include_str!("../../schema/0005_blobs.sql")),
    (
        "0006_upload_owners",
        include_str!("../../schema/0006_upload_owners.sql"),
    ),
    (
        "0007_cache_stats",
        include_str!("../../schema/0007_cache_stats.sql"),
    ),
    ("0008_status", include_str!("../../schema/0008_status.sql")),
];

/// How many connections the pool holds (readers and writers alike).
const POOL_SIZE: usize = 8;

/// A small pool of SQLite connections to one database file.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    /// Process-unique, keys each thread's [`Db::lookup`] connection.
    id: u64,
    conns: Mutex<Vec<Connection>>,
    permits: Semaphore,
    /// Held by each [`Db::write`] for its transaction: one writer at a time.
    writer: tokio::sync::Mutex<()>,
    path: PathBuf,
}

/// How long a statement waits for a lock before it fails with `SQLITE_BUSY`.
const BUSY_TIMEOUT_MS: u64 = 30_000;

/// Times any connection found the database locked and had to wait.
static BUSY_WAITS: AtomicU64 = AtomicU64::new(0);

/// How many times, since the process started, a database call found
/// SQLite locked by another connection and waited (once per wait, however
/// long). Process-wide: every [`Db`] in the process adds to it.
pub fn busy_waits() -> u64 {
    BUSY_WAITS.load(Ordering::Relaxed)
}

/// The sleep before retry `count` of one locking event and the sleep
/// already done, in ms: SQLite's own `busy_timeout` schedule.
fn busy_delay(count: u64) -> (u64, u64) {
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

/// Current Unix time in seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn open_conn(path: &Path) -> rusqlite::Result<Connection> {
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
fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
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

impl Db {
    /// Opens (creating if needed) the database file and runs migrations.
    pub fn open(path: &Path) -> Result<Db> {
        let mut first = open_conn(path)?;
        migrate(&mut first)?;
        let mut conns = vec![first];
        for _ in 1..POOL_SIZE {
            conns.push(open_conn(path)?);
        }
        static IDS: AtomicU64 = AtomicU64::new(0);
        Ok(Db {
            inner: Arc::new(Inner {
                id: IDS.fetch_add(1, Ordering::Relaxed),
                conns: Mutex::new(conns),
                permits: Semaphore::new(POOL_SIZE),
                writer: tokio::sync::Mutex::new(()),
                path: path.to_owned(),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` with a pooled connection on the blocking thread pool. For
    /// reads: writes go through [`Db::write`].
    pub async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let _permit = self
            .inner
            .permits
            .acquire()
            .await
            .map_err(Error::internal)?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.with_conn(f))
            .await
            .map_err(Error::internal)?
    }

    /// Runs `f` with a pooled connection on the current thread. For code
    /// that already runs on the blocking pool (or outside tokio).
    pub fn call_blocking<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        self.inner.with_conn(f)
    }

    /// Runs the read `f` at once on the calling thread, with a read-only
    /// connection of this thread's own. Only for a handful of indexed point
    /// lookups (no scans, no writes): it runs on an async worker, the way
    /// a static file server reads a small file in its event loop.
    pub fn lookup<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        thread_local! {
            static LOOKUP: std::cell::RefCell<Vec<(u64, Connection)>> =
                const { std::cell::RefCell::new(Vec::new()) };
        }
        LOOKUP.with(|cell| {
            let mut conns = cell.borrow_mut();
            let i = match conns.iter().position(|(id, _)| *id == self.inner.id) {
                Some(i) => i,
                None => {
                    let conn = open_conn(&self.inner.path)?;
                    conn.pragma_update(None, "query_only", true)?;
                    conns.push((self.inner.id, conn));
                    conns.len() - 1
                }
            };
            f(&conns[i].1)
        })
    }

    /// Runs `f` inside a `BEGIN IMMEDIATE` transaction, committing on `Ok`,
    /// after the writers queued before it (one writer at a time).
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T> + Send + 'static,
    {
        let _writer = self.inner.writer.lock().await;
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }
}

impl Inner {
    fn with_conn<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let conn = self.conns.lock().map_err(Error::internal)?.pop();
        let mut conn = match conn {
            Some(c) => c,
            // More blocking callers than pooled connections: open one more.
            None => open_conn(&self.path)?,
        };
        let out = f(&mut conn);
        if let Ok(mut pool) = self.conns.lock()
            && pool.len() < POOL_SIZE
        {
            pool.push(conn);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_run_once_and_set_user_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let db = Db::open(&path).unwrap();
        let v: i64 = db
            .call_blocking(|c| Ok(c.pragma_query_value(None, "user_version", |r| r.get(0))?))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        drop(db);
        // Re-opening must not re-run (it would fail on CREATE TABLE).
        Db::open(&path).unwrap();
        let mode: String = open_conn(&path)
            .unwrap()
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn lookup_sees_committed_writes_and_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        let other = Db::open(&dir.path().join("u.db")).unwrap();
        let count = |db: &Db| -> i64 {
            db.lookup(|c| Ok(c.query_row("SELECT count(*) FROM caches", [], |r| r.get(0))?))
                .unwrap()
        };
        assert_eq!(count(&db), 0);
        db.call_blocking(|c| {
            c.execute_batch(
                "INSERT INTO caches (name, signing_key, created_at) VALUES ('a', 'k', 0)",
            )?;
            Ok(())
        })
        .unwrap();
        // The same thread's connection sees the new row; another database
        // gets a connection of its own.
        assert_eq!(count(&db), 1);
        assert_eq!(count(&other), 0);
        let write = db.lookup(|c| Ok(c.execute("DELETE FROM caches", [])?));
        assert!(write.is_err(), "a lookup connection must be read-only");
        assert_eq!(count(&db), 1);
    }

    #[test]
    fn busy_handler_counts_waits_and_gives_up_after_the_timeout() {
        assert_eq!(busy_delay(0), (1, 0));
        assert_eq!(busy_delay(11), (100, 228));
        assert_eq!(busy_delay(12), (100, 328));
        // 30 s of sleep in all, as `busy_timeout(30 s)`.
        let slept: u64 = (0..)
            .map(busy_delay)
            .map(|(d, prior)| d.min(BUSY_TIMEOUT_MS.saturating_sub(prior)))
            .take_while(|&d| d > 0)
            .sum();
        assert_eq!(slept, BUSY_TIMEOUT_MS);

        // A writer holding the lock makes another connection wait, counted.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let db = Db::open(&path).unwrap();
        let mut holder = open_conn(&path).unwrap();
        let tx = holder
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        let before = busy_waits();
        let waiter = std::thread::spawn(move || {
            db.call_blocking(|c| {
                c.execute_batch("BEGIN IMMEDIATE; COMMIT;")?;
                Ok(())
            })
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        tx.commit().unwrap();
        waiter.join().unwrap().unwrap();
        assert!(busy_waits() > before);
    }
}
