//! One SQL surface for both engines: [`Conn`], [`Row`], [`Param`].
//!
//! Every query in `db/` is written once, with SQLite's `?1, ?2`
//! placeholders, and runs on either engine: on PostgreSQL the placeholders
//! are rewritten to `$1, $2` when the statement is first prepared (the
//! rewrite and the prepared statement are cached per connection, as
//! rusqlite's `prepare_cached` does for SQLite). The SQL itself stays in
//! the common dialect: `INSERT … ON CONFLICT … DO NOTHING / DO UPDATE`,
//! `RETURNING`, `CASE` instead of SQLite's scalar `MAX(a, b)`, no `rowid`.
//!
//! Parameters are bound as a small [`Value`] (null, integer, boolean, text,
//! bytes) that adapts to the column type PostgreSQL infers (an integer
//! binds to `BIGINT`, `INTEGER` or `BOOLEAN`), so callers pass plain Rust
//! values on both engines. Columns are read back by index with
//! [`Row::get`]; a boolean is a `BOOLEAN` on PostgreSQL and a 0/1
//! `INTEGER` on SQLite, and reads as `bool` on both.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::error::{Error, Result};

/// A value bound to a statement parameter.
#[derive(Clone, Copy, Debug)]
pub enum Value<'a> {
    Null,
    Int(i64),
    Bool(bool),
    Text(&'a str),
    Bytes(&'a [u8]),
}

/// A Rust value that can be bound to a parameter on either engine.
pub trait Param {
    fn value(&self) -> Value<'_>;
}

macro_rules! int_param {
    ($($t:ty),*) => {$(
        impl Param for $t {
            fn value(&self) -> Value<'_> {
                Value::Int(*self as i64)
            }
        }
    )*};
}
int_param!(i64, i32, u32, u16);

impl Param for bool {
    fn value(&self) -> Value<'_> {
        Value::Bool(*self)
    }
}
impl Param for str {
    fn value(&self) -> Value<'_> {
        Value::Text(self)
    }
}
impl Param for String {
    fn value(&self) -> Value<'_> {
        Value::Text(self)
    }
}
impl Param for [u8] {
    fn value(&self) -> Value<'_> {
        Value::Bytes(self)
    }
}
impl Param for Vec<u8> {
    fn value(&self) -> Value<'_> {
        Value::Bytes(self)
    }
}
impl<T: Param + ?Sized> Param for &T {
    fn value(&self) -> Value<'_> {
        (**self).value()
    }
}
impl<T: Param> Param for Option<T> {
    fn value(&self) -> Value<'_> {
        match self {
            Some(v) => v.value(),
            None => Value::Null,
        }
    }
}

/// `params![a, b, …]`: the parameters of a statement, as `&[&dyn Param]`.
#[macro_export]
macro_rules! params {
    ($($p:expr),* $(,)?) => {
        &[$(&$p as &dyn $crate::db::Param),*] as &[&dyn $crate::db::Param]
    };
}
pub use crate::params;

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match *self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(i)),
            Value::Bool(b) => ToSqlOutput::Borrowed(ValueRef::Integer(b as i64)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Bytes(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

impl postgres::types::ToSql for Value<'_> {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<postgres::types::IsNull, BoxError> {
        use postgres::types::Type;
        let int = |i: i64, out: &mut bytes::BytesMut| match *ty {
            Type::INT8 => i.to_sql(ty, out),
            Type::INT4 => i32::try_from(i)?.to_sql(ty, out),
            Type::INT2 => i16::try_from(i)?.to_sql(ty, out),
            Type::BOOL => (i != 0).to_sql(ty, out),
            _ => Err(format!("cannot bind an integer to a {ty} parameter").into()),
        };
        match *self {
            Value::Null => Ok(postgres::types::IsNull::Yes),
            Value::Int(i) => int(i, out),
            Value::Bool(b) if *ty == Type::BOOL => b.to_sql(ty, out),
            Value::Bool(b) => int(b as i64, out),
            Value::Text(s) => s.to_sql(ty, out),
            Value::Bytes(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// Any PostgreSQL integer column (or a boolean), read as `i64`.
struct PgInt(i64);

impl<'a> postgres::types::FromSql<'a> for PgInt {
    fn from_sql(ty: &postgres::types::Type, raw: &'a [u8]) -> std::result::Result<Self, BoxError> {
        use postgres::types::Type;
        Ok(PgInt(match *ty {
            Type::INT8 => i64::from_sql(ty, raw)?,
            Type::INT4 => i32::from_sql(ty, raw)? as i64,
            Type::INT2 => i16::from_sql(ty, raw)? as i64,
            Type::BOOL => bool::from_sql(ty, raw)? as i64,
            _ => return Err(format!("cannot read a {ty} column as an integer").into()),
        }))
    }

    fn accepts(ty: &postgres::types::Type) -> bool {
        use postgres::types::Type;
        matches!(*ty, Type::INT8 | Type::INT4 | Type::INT2 | Type::BOOL)
    }
}

/// A column type [`Row::get`] can read on either engine.
pub trait Column: Sized {
    #[doc(hidden)]
    fn from_sqlite(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self>;
    #[doc(hidden)]
    fn from_pg(row: &postgres::Row, i: usize) -> std::result::Result<Self, postgres::Error>;
}

impl Column for i64 {
    fn from_sqlite(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self> {
        row.get(i)
    }
    fn from_pg(row: &postgres::Row, i: usize) -> std::result::Result<Self, postgres::Error> {
        row.try_get::<_, PgInt>(i).map(|v| v.0)
    }
}

impl Column for Option<i64> {
    fn from_sqlite(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self> {
        row.get(i)
    }
    fn from_pg(row: &postgres::Row, i: usize) -> std::result::Result<Self, postgres::Error> {
        row.try_get::<_, Option<PgInt>>(i).map(|v| v.map(|v| v.0))
    }
}

impl Column for bool {
    fn from_sqlite(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self> {
        row.get(i)
    }
    fn from_pg(row: &postgres::Row, i: usize) -> std::result::Result<Self, postgres::Error> {
        row.try_get::<_, PgInt>(i).map(|v| v.0 != 0)
    }
}

macro_rules! plain_column {
    ($($t:ty),*) => {$(
        impl Column for $t {
            fn from_sqlite(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self> {
                row.get(i)
            }
            fn from_pg(row: &postgres::Row, i: usize) -> std::result::Result<Self, postgres::Error> {
                row.try_get(i)
            }
        }
    )*};
}
plain_column!(String, Option<String>, Vec<u8>, Option<Vec<u8>>);

/// One result row.
pub enum Row<'a> {
    Sqlite(&'a rusqlite::Row<'a>),
    Postgres(&'a postgres::Row),
}

impl Row<'_> {
    /// Column `i` (from 0) as a `T`.
    pub fn get<T: Column>(&self, i: usize) -> Result<T> {
        match self {
            Row::Sqlite(r) => Ok(T::from_sqlite(r, i)?),
            Row::Postgres(r) => Ok(T::from_pg(r, i)?),
        }
    }
}

/// Which engine a connection talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// A PostgreSQL client with its prepared statements, keyed by the SQL as
/// written (with `?N` placeholders).
pub struct PgClient {
    client: Option<postgres::Client>,
    stmts: HashMap<String, postgres::Statement>,
}

impl PgClient {
    pub(super) fn new(client: postgres::Client) -> PgClient {
        PgClient {
            client: Some(client),
            stmts: HashMap::new(),
        }
    }

    pub(super) fn client(&mut self) -> &mut postgres::Client {
        self.client
            .as_mut()
            .expect("a PgClient holds its client until dropped")
    }

    pub(super) fn is_closed(&self) -> bool {
        self.client.as_ref().is_none_or(|c| c.is_closed())
    }

    fn prepare(&mut self, sql: &str) -> Result<postgres::Statement> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let stmt = self.client().prepare(&dollar_placeholders(sql))?;
        if self.stmts.len() >= 256 {
            self.stmts.clear();
        }
        self.stmts.insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }
}

impl Drop for PgClient {
    fn drop(&mut self) {
        // Closing a `postgres::Client` blocks on its own runtime, which
        // panics on an async worker: close it on a thread of its own then.
        if let Some(c) = self.client.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            std::thread::spawn(move || drop(c));
        }
    }
}

/// `?N` placeholders (SQLite) rewritten as `$N` (PostgreSQL). The SQL of
/// `db/` has no `?` inside string literals.
pub fn dollar_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

/// A connection (or a write transaction: the same type) of either engine.
pub struct Conn<'a>(Inner<'a>);

/// The connection of a write transaction ([`super::Db::write`]).
pub type Tx<'a> = Conn<'a>;

enum Inner<'a> {
    Sqlite(&'a rusqlite::Connection),
    Postgres(RefCell<&'a mut PgClient>),
}

type PgParams<'p> = Vec<Value<'p>>;

fn pg_values<'p>(params: &'p [&'p dyn Param]) -> PgParams<'p> {
    params.iter().map(|p| p.value()).collect()
}

fn pg_refs<'v>(values: &'v [Value<'v>]) -> Vec<&'v (dyn postgres::types::ToSql + Sync)> {
    values
        .iter()
        .map(|v| v as &(dyn postgres::types::ToSql + Sync))
        .collect()
}

impl<'a> Conn<'a> {
    /// A SQLite connection opened elsewhere (benchmarks, tools), seen
    /// through the common surface.
    pub fn sqlite(c: &'a rusqlite::Connection) -> Conn<'a> {
        Conn(Inner::Sqlite(c))
    }

    pub(super) fn postgres(c: &'a mut PgClient) -> Conn<'a> {
        Conn(Inner::Postgres(RefCell::new(c)))
    }

    /// Which engine this is.
    pub fn engine(&self) -> Engine {
        match self.0 {
            Inner::Sqlite(_) => Engine::Sqlite,
            Inner::Postgres(_) => Engine::Postgres,
        }
    }

    /// Runs one statement; returns the rows it changed.
    pub fn execute(&self, sql: &str, params: &[&dyn Param]) -> Result<u64> {
        match &self.0 {
            Inner::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let values: Vec<Value<'_>> = params.iter().map(|p| p.value()).collect();
                Ok(stmt.execute(rusqlite::params_from_iter(values.iter()))? as u64)
            }
            Inner::Postgres(c) => {
                let mut c = c.borrow_mut();
                let stmt = c.prepare(sql)?;
                let values = pg_values(params);
                Ok(c.client().execute(&stmt, &pg_refs(&values))?)
            }
        }
    }

    /// Runs several `;`-separated statements without parameters.
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match &self.0 {
            Inner::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Inner::Postgres(c) => Ok(c.borrow_mut().client().batch_execute(sql)?),
        }
    }

    /// Every row of a query, each mapped by `f`.
    pub fn query_all<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        mut f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        match &self.0 {
            Inner::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let values: Vec<Value<'_>> = params.iter().map(|p| p.value()).collect();
                let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    out.push(f(&Row::Sqlite(r))?);
                }
                Ok(out)
            }
            Inner::Postgres(c) => {
                let mut c = c.borrow_mut();
                let stmt = c.prepare(sql)?;
                let values = pg_values(params);
                let rows = c.client().query(&stmt, &pg_refs(&values))?;
                rows.iter().map(|r| f(&Row::Postgres(r))).collect()
            }
        }
    }

    /// The first row of a query, if any, mapped by `f`.
    pub fn query_opt<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<Option<T>> {
        match &self.0 {
            Inner::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let values: Vec<Value<'_>> = params.iter().map(|p| p.value()).collect();
                let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
                match rows.next()? {
                    Some(r) => Ok(Some(f(&Row::Sqlite(r))?)),
                    None => Ok(None),
                }
            }
            Inner::Postgres(c) => {
                let mut c = c.borrow_mut();
                let stmt = c.prepare(sql)?;
                let values = pg_values(params);
                let rows = c.client().query(&stmt, &pg_refs(&values))?;
                rows.first().map(|r| f(&Row::Postgres(r))).transpose()
            }
        }
    }

    /// The first row of a query, which must return one.
    pub fn query_one<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        self.query_opt(sql, params, f)?
            .ok_or_else(|| Error::internal("a query that returns a row returned none"))
    }

    /// Whether a query returns any row.
    pub fn exists(&self, sql: &str, params: &[&dyn Param]) -> Result<bool> {
        Ok(self.query_opt(sql, params, |_| Ok(()))?.is_some())
    }

    /// Every row of `sql` for many `keys`, [`IN_BATCH`] keys per query:
    /// `sql` ends in `IN (` and the placeholders for a batch of keys
    /// follow the `fixed` parameters. The last batch is padded with its
    /// own last key, so every query is the one prepared statement. A key
    /// given twice in different batches finds its rows twice.
    pub fn query_in<T, K: Param>(
        &self,
        sql: &str,
        fixed: &[&dyn Param],
        keys: &[K],
        mut f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let marks: Vec<String> = (0..IN_BATCH)
            .map(|i| format!("?{}", fixed.len() + i + 1))
            .collect();
        let sql = format!("{sql}{})", marks.join(", "));
        let mut out = Vec::new();
        for batch in keys.chunks(IN_BATCH) {
            let last = &batch[batch.len() - 1];
            let mut params: Vec<&dyn Param> = Vec::with_capacity(fixed.len() + IN_BATCH);
            params.extend_from_slice(fixed);
            for i in 0..IN_BATCH {
                params.push(batch.get(i).unwrap_or(last));
            }
            out.extend(self.query_all(&sql, &params, &mut f)?);
        }
        Ok(out)
    }
}

/// Keys per query of [`Conn::query_in`]: far under SQLite's limit of
/// 32 766 parameters and PostgreSQL's 65 535.
pub const IN_BATCH: usize = 500;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars() {
        assert_eq!(
            dollar_placeholders("SELECT a FROM t WHERE b = ?1 AND c IN (?2, ?12) AND d = '?'"),
            "SELECT a FROM t WHERE b = $1 AND c IN ($2, $12) AND d = '?'"
        );
    }

    #[test]
    fn values_round_trip_on_sqlite() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        let conn = Conn::sqlite(&c);
        conn.execute_batch("CREATE TABLE t (i INTEGER, b INTEGER, s TEXT, x BLOB, n INTEGER)")
            .unwrap();
        let blob: &[u8] = b"\x00\x01";
        let none: Option<i64> = None;
        conn.execute(
            "INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5)",
            params![7u32, true, "s", blob, none],
        )
        .unwrap();
        let got = conn
            .query_one("SELECT i, b, s, x, n FROM t", &[], |r| {
                Ok((
                    r.get::<i64>(0)?,
                    r.get::<bool>(1)?,
                    r.get::<String>(2)?,
                    r.get::<Vec<u8>>(3)?,
                    r.get::<Option<i64>>(4)?,
                ))
            })
            .unwrap();
        assert_eq!(got, (7, true, "s".into(), vec![0, 1], None));
        assert!(
            conn.exists("SELECT 1 FROM t WHERE i = ?1", params![7])
                .unwrap()
        );
        assert!(
            !conn
                .exists("SELECT 1 FROM t WHERE i = ?1", params![8])
                .unwrap()
        );
    }

    #[test]
    fn query_in_asks_in_batches_and_finds_every_key_once() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        let conn = Conn::sqlite(&c);
        conn.execute_batch("CREATE TABLE t (g INTEGER, k TEXT)")
            .unwrap();
        // Keys 0, 3, 6, … of group 1; the same keys in group 2.
        for g in [1i64, 2] {
            for k in (0..1500).step_by(3) {
                conn.execute("INSERT INTO t VALUES (?1, ?2)", params![g, format!("k{k}")])
                    .unwrap();
            }
        }
        let ask = |keys: &[String]| {
            let mut got = conn
                .query_in(
                    "SELECT k FROM t WHERE g = ?1 AND k IN (",
                    params![1i64],
                    keys,
                    |r| r.get::<String>(0),
                )
                .unwrap();
            got.sort();
            got
        };
        assert!(ask(&[]).is_empty());
        // Three batches, the last one short and padded: each key found
        // once, only in the group asked about.
        let keys: Vec<String> = (0..1201).map(|k| format!("k{k}")).collect();
        let mut want: Vec<String> = (0..1201).step_by(3).map(|k| format!("k{k}")).collect();
        want.sort();
        assert_eq!(ask(&keys), want);
        assert_eq!(
            ask(&["k3".to_string(), "k4".to_string()]),
            vec!["k3".to_string()]
        );
    }
}
