//! SQLite metadata: connection pool, migrations, and one file per table group.
//!
//! The database runs in WAL mode with `synchronous = FULL`, so a committed
//! row survives a power cut, which is what a `200` for a part promises.
//! rusqlite is blocking: every call runs on tokio's blocking pool through
//! [`Db::call`], never on an async worker. Writers open their transactions
//! with `BEGIN IMMEDIATE` so two writers queue on the busy timeout instead
//! of failing with `SQLITE_BUSY` on lock upgrade.
//!
//! Migrations are the files of `schema/`, compiled in and applied in order;
//! `PRAGMA user_version` records how many have run.

pub mod caches;
pub mod logs;
pub mod nars;
pub mod revocations;
pub mod tus;
pub mod uploads;

use std::path::{Path, PathBuf};
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
];

/// How many connections the pool holds (readers and writers alike).
const POOL_SIZE: usize = 8;

/// A small pool of SQLite connections to one database file.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    conns: Mutex<Vec<Connection>>,
    permits: Semaphore,
    path: PathBuf,
}

/// Current Unix time in seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn open_conn(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
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
        Ok(Db {
            inner: Arc::new(Inner {
                conns: Mutex::new(conns),
                permits: Semaphore::new(POOL_SIZE),
                path: path.to_owned(),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` with a pooled connection on the blocking thread pool.
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

    /// Runs `f` inside a `BEGIN IMMEDIATE` transaction, committing on `Ok`.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T> + Send + 'static,
    {
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
}
