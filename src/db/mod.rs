//! Metadata: SQLite (the embedded default) or PostgreSQL (`database-url`,
//! for several instances), one pool type, one file per table group.
//!
//! Every query is written once, over [`Conn`] (see [`sql`]): the same SQL
//! and the same Rust runs on both engines. Blocking work stays off the
//! async threads:
//! - reads through [`Db::call`], on tokio's blocking pool: SQLite reads run
//!   in parallel on WAL snapshots, PostgreSQL ones in autocommit;
//! - writes through [`Db::write`], after queueing on one async lock (so the
//!   database's own write lock is never contended from inside one server):
//!   on SQLite `BEGIN IMMEDIATE`, on PostgreSQL a transaction that first
//!   takes an advisory lock, the same single writer across every instance
//!   sharing the database (see [`postgres`]);
//! - [`Db::lookup`]: keyed point reads on the read path (a narinfo, a NAR's
//!   chunks). On SQLite they run on the async worker itself, as a static
//!   file server reads a small file in its event loop: a WAL read never
//!   waits for a writer, and skipping the hop to the blocking pool cut a
//!   narinfo's server time by about 40 %. On PostgreSQL (a network round
//!   trip, and a blocking client) they go through the blocking pool.
//!
//! Migrations are the files of `schema/sqlite/` and `schema/postgres/`
//! (the same tables and meaning in each dialect), compiled in and applied
//! in order (see [`sqlite`] and [`postgres`]).

pub mod blobs;
pub mod caches;
pub mod chunks;
pub mod gc;
pub mod logs;
pub mod nars;
pub mod postgres;
pub mod revocations;
pub mod sql;
pub mod sqlite;
pub mod status;
pub mod tus;
pub mod uploads;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::Semaphore;

pub use sql::{Conn, Engine, Param, Row, Tx, params};
pub use sqlite::busy_waits;

use crate::error::{Error, Result};
use sql::PgClient;

/// How many connections the pool holds (readers and writers alike).
const POOL_SIZE: usize = 8;

/// A small pool of connections to one database, SQLite or PostgreSQL.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    /// Process-unique, keys each thread's [`Db::lookup`] connection.
    id: u64,
    pool: Pool,
    permits: Semaphore,
    /// Held by each [`Db::write`] for its transaction: one writer at a time.
    writer: tokio::sync::Mutex<()>,
}

enum Pool {
    Sqlite {
        conns: Mutex<Vec<Connection>>,
        path: PathBuf,
    },
    Postgres {
        conns: Mutex<Vec<PgClient>>,
        cfg: Box<::postgres::Config>,
    },
}

/// Current Unix time in seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Runs `f` on a thread outside any tokio runtime when called from inside
/// one: the `postgres` client blocks on a runtime of its own, which tokio
/// forbids on its threads.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| {
            s.spawn(f)
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    } else {
        f()
    }
}

static IDS: AtomicU64 = AtomicU64::new(0);

impl Db {
    /// Opens (creating if needed) the SQLite database file and runs
    /// migrations.
    pub fn open(path: &Path) -> Result<Db> {
        let mut first = sqlite::open_conn(path)?;
        sqlite::migrate(&mut first)?;
        let mut conns = vec![first];
        for _ in 1..POOL_SIZE {
            conns.push(sqlite::open_conn(path)?);
        }
        Ok(Db::with_pool(Pool::Sqlite {
            conns: Mutex::new(conns),
            path: path.to_owned(),
        }))
    }

    /// Connects to the PostgreSQL database at `url` and runs migrations
    /// (under an advisory lock: instances starting together migrate once).
    pub fn connect(url: &str) -> Result<Db> {
        let cfg = postgres::parse_url(url)?;
        let first = off_runtime(|| -> Result<PgClient> {
            let mut c = postgres::connect(&cfg)?;
            postgres::migrate(&mut c)?;
            Ok(PgClient::new(c))
        })?;
        Ok(Db::with_pool(Pool::Postgres {
            conns: Mutex::new(vec![first]),
            cfg: Box::new(cfg),
        }))
    }

    /// PostgreSQL when `database_url` is set, else the SQLite file `path`.
    pub fn open_configured(database_url: Option<&str>, path: &Path) -> Result<Db> {
        match database_url {
            Some(url) => Db::connect(url),
            None => Db::open(path),
        }
    }

    fn with_pool(pool: Pool) -> Db {
        Db {
            inner: Arc::new(Inner {
                id: IDS.fetch_add(1, Ordering::Relaxed),
                pool,
                permits: Semaphore::new(POOL_SIZE),
                writer: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Which engine holds the metadata.
    pub fn engine(&self) -> Engine {
        match self.inner.pool {
            Pool::Sqlite { .. } => Engine::Sqlite,
            Pool::Postgres { .. } => Engine::Postgres,
        }
    }

    /// Runs `f` with a pooled connection on the blocking thread pool. For
    /// reads: writes go through [`Db::write`].
    pub async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Conn<'_>) -> Result<T> + Send + 'static,
    {
        self.blocking(move |inner| inner.with_conn(None, f)).await
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let _permit = self
            .inner
            .permits
            .acquire()
            .await
            .map_err(Error::internal)?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(Error::internal)?
    }

    /// Runs `f` with a pooled connection on the current thread. For code
    /// that already runs on the blocking pool (or outside tokio); on
    /// PostgreSQL, called inside a runtime, it runs on a thread of its own.
    pub fn call_blocking<T: Send>(
        &self,
        f: impl FnOnce(&Conn<'_>) -> Result<T> + Send,
    ) -> Result<T> {
        match self.inner.pool {
            Pool::Sqlite { .. } => self.inner.with_conn(None, f),
            Pool::Postgres { .. } => off_runtime(|| self.inner.with_conn(None, f)),
        }
    }

    /// Runs the read `f`, a handful of indexed point lookups (no scans, no
    /// writes). On SQLite at once on the calling thread, with a read-only
    /// connection of this thread's own: it runs on an async worker, the
    /// way a static file server reads a small file in its event loop. On
    /// PostgreSQL through the blocking pool, like [`Db::call`].
    pub async fn lookup<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Conn<'_>) -> Result<T> + Send + 'static,
    {
        match &self.inner.pool {
            Pool::Sqlite { path, .. } => self.lookup_sqlite(path, f),
            Pool::Postgres { .. } => self.call(f).await,
        }
    }

    fn lookup_sqlite<T>(&self, path: &Path, f: impl FnOnce(&Conn<'_>) -> Result<T>) -> Result<T> {
        thread_local! {
            static LOOKUP: std::cell::RefCell<Vec<(u64, Connection)>> =
                const { std::cell::RefCell::new(Vec::new()) };
        }
        LOOKUP.with(|cell| {
            let mut conns = cell.borrow_mut();
            let i = match conns.iter().position(|(id, _)| *id == self.inner.id) {
                Some(i) => i,
                None => {
                    let conn = sqlite::open_conn(path)?;
                    conn.pragma_update(None, "query_only", true)?;
                    conns.push((self.inner.id, conn));
                    conns.len() - 1
                }
            };
            f(&Conn::sqlite(&conns[i].1))
        })
    }

    /// Runs `f` inside a write transaction, committing on `Ok` and rolling
    /// back on `Err`, after the writers queued before it: one writer at a
    /// time (`BEGIN IMMEDIATE` on SQLite; on PostgreSQL the writer
    /// advisory lock, across every instance sharing the database). The
    /// commit is on disk when this returns.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<T> + Send + 'static,
    {
        self.write_as(Commit::Durable, f).await
    }

    /// [`Db::write`], with the commit's durability chosen.
    pub async fn write_as<T, F>(&self, commit: Commit, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<T> + Send + 'static,
    {
        let _writer = self.inner.writer.lock().await;
        self.blocking(move |inner| inner.with_conn(Some(commit), f))
            .await
    }
}

/// When a write transaction's commit reaches the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commit {
    /// Before the write returns: what a client is told is done.
    Durable,
    /// Visible at once, on disk with the next durable commit (whose sync
    /// covers the log before it: SQLite's WAL, PostgreSQL's WAL). For the
    /// steps of a request whose answer waits on a later durable commit:
    /// a crash may lose them, and the client then sends again.
    Deferred,
}

impl Inner {
    /// Runs `f` on a pooled connection, inside a write transaction when
    /// `write` says how to commit.
    fn with_conn<T>(
        &self,
        write: Option<Commit>,
        f: impl FnOnce(&Conn<'_>) -> Result<T>,
    ) -> Result<T> {
        match &self.pool {
            Pool::Sqlite { conns, path } => {
                let conn = conns.lock().map_err(Error::internal)?.pop();
                let mut conn = match conn {
                    Some(c) => c,
                    // More blocking callers than pooled connections: open one more.
                    None => sqlite::open_conn(path)?,
                };
                let out = if let Some(commit) = write {
                    sqlite_write(&mut conn, commit, f)
                } else {
                    f(&Conn::sqlite(&conn))
                };
                if let Ok(mut pool) = conns.lock()
                    && pool.len() < POOL_SIZE
                {
                    pool.push(conn);
                }
                out
            }
            Pool::Postgres { conns, cfg } => {
                let pooled = {
                    let mut pool = conns.lock().map_err(Error::internal)?;
                    std::iter::from_fn(|| pool.pop()).find(|c| !c.is_closed())
                };
                let mut client = match pooled {
                    Some(c) => c,
                    None => PgClient::new(postgres::connect(cfg)?),
                };
                let (out, reusable) = if let Some(commit) = write {
                    pg_write(&mut client, commit, f)
                } else {
                    (f(&Conn::postgres(&mut client)), true)
                };
                if reusable
                    && !client.is_closed()
                    && let Ok(mut pool) = conns.lock()
                    && pool.len() < POOL_SIZE
                {
                    pool.push(client);
                }
                out
            }
        }
    }
}

fn sqlite_write<T>(
    conn: &mut Connection,
    commit: Commit,
    f: impl FnOnce(&Conn<'_>) -> Result<T>,
) -> Result<T> {
    if commit == Commit::Deferred {
        // In WAL mode, NORMAL commits without syncing the log; the next
        // FULL commit syncs it, this one included.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
    }
    let run = |conn: &mut Connection| -> Result<T> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&Conn::sqlite(&tx))?;
        tx.commit()?;
        Ok(out)
    };
    let out = run(conn);
    if commit == Commit::Deferred {
        conn.pragma_update(None, "synchronous", "FULL")?;
    }
    out
}

/// A PostgreSQL write transaction; also says whether the client may go
/// back to the pool (not when a failed transaction could not be ended).
fn pg_write<T>(
    client: &mut PgClient,
    commit: Commit,
    f: impl FnOnce(&Conn<'_>) -> Result<T>,
) -> (Result<T>, bool) {
    let begin = match commit {
        Commit::Durable => "BEGIN",
        // A later commit waits for the WAL up to itself, this one included.
        Commit::Deferred => "BEGIN; SET LOCAL synchronous_commit = off",
    };
    if let Err(e) = client.client().batch_execute(begin) {
        return (Err(e.into()), false);
    }
    let out = client
        .client()
        .execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&postgres::WRITER_LOCK],
        )
        .map_err(Error::from)
        .and_then(|_| f(&Conn::postgres(client)));
    match out {
        Ok(v) => match client.client().batch_execute("COMMIT") {
            Ok(()) => (Ok(v), true),
            Err(e) => {
                let ended = client.client().batch_execute("ROLLBACK").is_ok();
                (Err(e.into()), ended)
            }
        },
        Err(e) => {
            let ended = client.client().batch_execute("ROLLBACK").is_ok();
            (Err(e), ended)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlite::{BUSY_TIMEOUT_MS, busy_delay, open_conn};

    #[test]
    fn migrations_run_once_and_set_user_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let db = Db::open(&path).unwrap();
        let user_version = |path: &Path| -> i64 {
            open_conn(path)
                .unwrap()
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap()
        };
        assert_eq!(user_version(&path), sqlite::MIGRATIONS.len() as i64);
        assert_eq!(sqlite::MIGRATIONS.len(), postgres::MIGRATION_COUNT);
        drop(db);
        // Re-opening must not re-run (it would fail on CREATE TABLE).
        Db::open(&path).unwrap();
        let mode: String = open_conn(&path)
            .unwrap()
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[tokio::test]
    async fn lookup_sees_committed_writes_and_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        let other = Db::open(&dir.path().join("u.db")).unwrap();
        async fn count(db: &Db) -> i64 {
            db.lookup(|c| c.query_one("SELECT count(*) FROM caches", &[], |r| r.get(0)))
                .await
                .unwrap()
        }
        assert_eq!(count(&db).await, 0);
        db.call_blocking(|c| {
            c.execute_batch(
                "INSERT INTO caches (name, signing_key, created_at) VALUES ('a', 'k', 0)",
            )
        })
        .unwrap();
        // The same thread's connection sees the new row; another database
        // gets a connection of its own.
        assert_eq!(count(&db).await, 1);
        assert_eq!(count(&other).await, 0);
        let write = db.lookup(|c| c.execute("DELETE FROM caches", &[])).await;
        assert!(write.is_err(), "a lookup connection must be read-only");
        assert_eq!(count(&db).await, 1);
    }

    #[tokio::test]
    async fn a_deferred_write_is_seen_at_once_and_leaves_its_connection_full() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        let insert = |name: &'static str| {
            move |tx: &Tx<'_>| {
                tx.execute(
                    "INSERT INTO caches (name, signing_key, created_at) VALUES (?1, 'k', 0)",
                    params![name],
                )
            }
        };
        db.write_as(Commit::Deferred, insert("a")).await.unwrap();
        // A failing deferred write rolls back and restores the setting too.
        let failed = db
            .write_as(Commit::Deferred, |tx| {
                tx.execute(
                    "INSERT INTO caches (name, signing_key, created_at) VALUES ('b', 'k', 0)",
                    &[],
                )?;
                Err::<(), _>(Error::internal("stop"))
            })
            .await;
        assert!(failed.is_err());
        db.write(insert("c")).await.unwrap();
        // The pool hands the last connection out first: the writer's.
        let (names, synchronous) = db
            .call(|c| {
                let names: Vec<String> =
                    c.query_all("SELECT name FROM caches ORDER BY name", &[], |r| r.get(0))?;
                let sync: i64 = c.query_one("PRAGMA synchronous", &[], |r| r.get(0))?;
                Ok((names, sync))
            })
            .await
            .unwrap();
        assert_eq!(names, ["a", "c"]);
        assert_eq!(synchronous, 2, "the connection went back to FULL");
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
            db.call_blocking(|c| c.execute_batch("BEGIN IMMEDIATE; COMMIT;"))
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        tx.commit().unwrap();
        waiter.join().unwrap().unwrap();
        assert!(busy_waits() > before);
    }
}
