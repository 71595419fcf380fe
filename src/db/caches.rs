//! The `caches` table: one row per cache, with its signing key and settings.

use super::{Conn, Row, params};
use crate::error::{Error, Result};

/// A cache as stored.
#[derive(Clone, Debug)]
pub struct CacheRow {
    pub id: i64,
    pub name: String,
    pub public: bool,
    pub priority: i64,
    pub store_dir: String,
    /// Seconds a path is kept after its last access; `None` keeps forever.
    pub retention_secs: Option<i64>,
    /// Nix secret key form, `name:base64`.
    pub signing_key: String,
    pub upstream_keys: Vec<String>,
}

/// What creating a cache needs.
#[derive(Clone, Debug)]
pub struct NewCache {
    pub name: String,
    pub public: bool,
    pub priority: i64,
    pub store_dir: String,
    pub retention_secs: Option<i64>,
    pub signing_key: String,
    pub upstream_keys: Vec<String>,
}

const COLUMNS: &str =
    "id, name, public, priority, store_dir, retention_secs, signing_key, upstream_keys";

fn from_row(r: &Row<'_>) -> Result<CacheRow> {
    let upstream: String = r.get(7)?;
    Ok(CacheRow {
        id: r.get(0)?,
        name: r.get(1)?,
        public: r.get(2)?,
        priority: r.get(3)?,
        store_dir: r.get(4)?,
        retention_secs: r.get(5)?,
        signing_key: r.get(6)?,
        upstream_keys: serde_json::from_str(&upstream).unwrap_or_default(),
    })
}

/// Inserts a cache; `CacheExists` when the name is taken.
pub fn insert(conn: &Conn<'_>, c: &NewCache) -> Result<CacheRow> {
    let upstream = serde_json::to_string(&c.upstream_keys).map_err(Error::internal)?;
    let inserted = conn.query_opt(
        "INSERT INTO caches (name, public, priority, store_dir, retention_secs, signing_key, upstream_keys, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (name) DO NOTHING RETURNING id",
        params![
            c.name,
            c.public,
            c.priority,
            c.store_dir,
            c.retention_secs,
            c.signing_key,
            upstream,
            super::now()
        ],
        |r| r.get::<i64>(0),
    )?;
    if inserted.is_none() {
        return Err(Error::CacheExists(c.name.clone()));
    }
    get(conn, &c.name)?.ok_or_else(|| Error::internal("inserted cache vanished"))
}

/// The cache called `name`, if any.
pub fn get(conn: &Conn<'_>, name: &str) -> Result<Option<CacheRow>> {
    conn.query_opt(
        &format!("SELECT {COLUMNS} FROM caches WHERE name = ?1"),
        params![name],
        from_row,
    )
}

/// The cache with row id `id`, if any.
pub fn get_by_id(conn: &Conn<'_>, id: i64) -> Result<Option<CacheRow>> {
    conn.query_opt(
        &format!("SELECT {COLUMNS} FROM caches WHERE id = ?1"),
        params![id],
        from_row,
    )
}

/// Every cache, by name.
pub fn list(conn: &Conn<'_>) -> Result<Vec<CacheRow>> {
    conn.query_all(
        &format!("SELECT {COLUMNS} FROM caches ORDER BY name"),
        &[],
        from_row,
    )
}

/// Changes to a cache's settings; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct CacheChanges {
    pub public: Option<bool>,
    pub priority: Option<i64>,
    /// `Some(None)` keeps paths forever.
    pub retention_secs: Option<Option<i64>>,
    pub upstream_keys: Option<Vec<String>>,
}

/// Applies `changes` to the cache with row id `id`.
pub fn update(conn: &Conn<'_>, id: i64, changes: &CacheChanges) -> Result<()> {
    if let Some(p) = changes.public {
        conn.execute(
            "UPDATE caches SET public = ?2 WHERE id = ?1",
            params![id, p],
        )?;
    }
    if let Some(p) = changes.priority {
        conn.execute(
            "UPDATE caches SET priority = ?2 WHERE id = ?1",
            params![id, p],
        )?;
    }
    if let Some(r) = changes.retention_secs {
        conn.execute(
            "UPDATE caches SET retention_secs = ?2 WHERE id = ?1",
            params![id, r],
        )?;
    }
    if let Some(k) = &changes.upstream_keys {
        let json = serde_json::to_string(k).map_err(Error::internal)?;
        conn.execute(
            "UPDATE caches SET upstream_keys = ?2 WHERE id = ?1",
            params![id, json],
        )?;
    }
    Ok(())
}

/// Deletes a cache; its paths and uploads go with it (foreign keys).
pub fn delete(conn: &Conn<'_>, id: i64) -> Result<()> {
    conn.execute("DELETE FROM caches WHERE id = ?1", params![id])?;
    Ok(())
}

/// Per cache, by name: compressed bytes published (a NAR shared by several
/// caches counts in each) and paths published (for `/metrics`). Read from
/// `cache_stats`, which triggers keep up to date: one row per cache, not a
/// join over every path.
pub fn sizes(conn: &Conn<'_>) -> Result<Vec<(String, i64, i64)>> {
    conn.query_all(
        "SELECT c.name, COALESCE(s.bytes, 0), COALESCE(s.paths, 0) FROM caches c
         LEFT JOIN cache_stats s ON s.cache_id = c.id ORDER BY c.name",
        &[],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
}

/// How long an instance on PostgreSQL keeps cache rows before reading
/// them again (another instance may have changed them).
pub const SHARED_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

/// Every cache row by name, kept in memory: every request looks its cache
/// up, and caches change only through the API, which calls
/// [`CacheIndex::forget`] on the instance that made the change. The index
/// holds all of them, so a name that does not exist is answered from
/// memory as fast as one that does: the time of a 401 does not tell
/// whether a private cache by that name exists. Probing names cannot grow
/// it. On PostgreSQL other instances change caches too: there the index
/// also reloads once it is [`SHARED_REFRESH`] old, the bound on how long
/// an instance serves a cache row another instance changed.
pub struct CacheIndex {
    db: super::Db,
    /// When the rows were loaded; with `max_age`, older rows are reloaded.
    loaded_at: std::sync::Mutex<Option<std::time::Instant>>,
    max_age: Option<std::time::Duration>,
    map: std::sync::RwLock<std::collections::HashMap<String, std::sync::Arc<CacheRow>>>,
    /// Set by `forget` (and at start): the next lookup reloads every row.
    stale: std::sync::atomic::AtomicBool,
    /// Bumped by every `forget`, so a reload that raced with a change does
    /// not store the rows it read before the change.
    generation: std::sync::atomic::AtomicU64,
}

impl CacheIndex {
    pub fn new(db: super::Db) -> CacheIndex {
        let max_age = (db.engine() == super::Engine::Postgres).then_some(SHARED_REFRESH);
        CacheIndex {
            db,
            loaded_at: Default::default(),
            max_age,
            map: Default::default(),
            stale: std::sync::atomic::AtomicBool::new(true),
            generation: Default::default(),
        }
    }

    /// The cache called `name`, if any.
    pub async fn get(&self, name: &str) -> Result<Option<std::sync::Arc<CacheRow>>> {
        use std::sync::atomic::Ordering;
        if !self.stale.load(Ordering::SeqCst) && !self.too_old() {
            return Ok(self.map.read().map_err(Error::internal)?.get(name).cloned());
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let rows = self.db.call(list).await?;
        let fresh: std::collections::HashMap<_, _> = rows
            .into_iter()
            .map(|r| (r.name.clone(), std::sync::Arc::new(r)))
            .collect();
        let found = fresh.get(name).cloned();
        let mut map = self.map.write().map_err(Error::internal)?;
        if self.generation.load(Ordering::SeqCst) == generation {
            *map = fresh;
            self.stale.store(false, Ordering::SeqCst);
            if let Ok(mut at) = self.loaded_at.lock() {
                *at = Some(std::time::Instant::now());
            }
        }
        Ok(found)
    }

    /// Whether the rows are past `max_age` (never without one).
    fn too_old(&self) -> bool {
        let Some(max) = self.max_age else {
            return false;
        };
        match self.loaded_at.lock() {
            Ok(at) => at.is_none_or(|t| t.elapsed() >= max),
            Err(_) => true,
        }
    }

    /// Marks the index out of date after a cache was created, changed or
    /// destroyed (`name` says which; the next lookup reloads them all).
    pub fn forget(&self, name: &str) {
        use std::sync::atomic::Ordering;
        if let Ok(mut m) = self.map.write() {
            self.generation.fetch_add(1, Ordering::SeqCst);
            self.stale.store(true, Ordering::SeqCst);
            m.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_cache(name: &str) -> NewCache {
        NewCache {
            name: name.into(),
            public: false,
            priority: 41,
            store_dir: "/nix/store".into(),
            retention_secs: None,
            signing_key: crate::nar::SigningKey::generate(&format!("{name}-1"))
                .unwrap()
                .to_nix_string(),
            upstream_keys: vec![],
        }
    }

    #[tokio::test]
    async fn the_index_answers_present_and_absent_names_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::Db::open(&dir.path().join("db")).unwrap();
        db.write(|tx| insert(tx, &new_cache("a"))).await.unwrap();
        let index = CacheIndex::new(db.clone());
        assert!(index.get("a").await.unwrap().is_some());
        assert!(index.get("b").await.unwrap().is_none());
        // Rows written behind its back are not seen: neither lookup went
        // to the database, so both take the same path.
        db.write(|tx| insert(tx, &new_cache("b"))).await.unwrap();
        assert!(index.get("b").await.unwrap().is_none());
        // Until the API that changed them says so.
        index.forget("b");
        assert!(index.get("b").await.unwrap().is_some());
        assert!(index.get("a").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn cache_stats_follow_paths_as_triggers_keep_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::Db::open(&dir.path().join("db")).unwrap();
        let new = new_cache;
        let (a, _) = (
            db.write(move |tx| insert(tx, &new("a"))).await.unwrap(),
            db.write(move |tx| insert(tx, &new("b"))).await.unwrap(),
        );
        let stats = db
            .write(move |tx| {
                let chunk = |b: &str| crate::db::nars::Chunk {
                    blob: b.repeat(32),
                    offset: 0,
                    size: 1,
                };
                let nar = |h: &[u8], size: u64, blob: &str| crate::db::nars::NewNar {
                    nar_hash: crate::nar::Sha256Hash::digest(h).to_string(),
                    nar_size: 10,
                    compression: "zstd".into(),
                    file_hash: crate::nar::Sha256Hash::digest(&[h, b"f"].concat()).to_string(),
                    file_size: size,
                    chunks: vec![chunk(blob)],
                };
                let (n1, _) = crate::db::nars::insert(tx, &nar(b"1", 100, "ab"))?;
                let (n2, _) = crate::db::nars::insert(tx, &nar(b"2", 50, "cd"))?;
                let h = |c: char| c.to_string().repeat(32);
                crate::db::nars::insert_path(tx, a.id, &h('x'), "/nix/store/x", n1.id, "ni")?;
                crate::db::nars::insert_path(tx, a.id, &h('y'), "/nix/store/y", n2.id, "ni")?;
                crate::db::nars::delete_path(tx, a.id, &h('x'))?;
                sizes(tx)
            })
            .await
            .unwrap();
        assert_eq!(
            stats,
            [("a".to_owned(), 50, 1), ("b".to_owned(), 0, 0)],
            "one path of 50 bytes left in a, nothing in b"
        );
    }
}
