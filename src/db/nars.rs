//! The `nars`, `nar_chunks` and `paths` tables: what has been published.
//!
//! A NAR row is global (deduplicated by NarHash); a path row publishes it
//! in one cache with a narinfo rendered and signed at publish time. A NAR
//! file is the concatenation of its chunks (blobs) in order.

use super::{Conn, Row, params};

use crate::error::Result;

/// A stored NAR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarRow {
    pub id: i64,
    /// `sha256:<nix32>`.
    pub nar_hash: String,
    pub nar_size: u64,
    /// `zstd` (what ferry stores).
    pub compression: String,
    /// `sha256:<nix32>` of the stored file.
    pub file_hash: String,
    pub file_size: u64,
}

/// One blob of a stored NAR file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// blake3 hex of the blob.
    pub blob: String,
    /// Where in the blob this piece of the file starts (0 but for chunked
    /// NARs, whose file is ranges of several blobs).
    pub offset: u64,
    pub size: u64,
}

/// A NAR about to be inserted.
#[derive(Clone, Debug)]
pub struct NewNar {
    pub nar_hash: String,
    pub nar_size: u64,
    pub compression: String,
    pub file_hash: String,
    pub file_size: u64,
    pub chunks: Vec<Chunk>,
}

const NAR_COLUMNS: &str = "id, nar_hash, nar_size, compression, file_hash, file_size";

fn nar_from_row(r: &Row<'_>) -> Result<NarRow> {
    Ok(NarRow {
        id: r.get(0)?,
        nar_hash: r.get(1)?,
        nar_size: r.get::<i64>(2)? as u64,
        compression: r.get(3)?,
        file_hash: r.get(4)?,
        file_size: r.get::<i64>(5)? as u64,
    })
}

/// The NAR with this NarHash, if stored.
pub fn find_by_nar_hash(conn: &Conn<'_>, nar_hash: &str) -> Result<Option<NarRow>> {
    conn.query_opt(
        &format!("SELECT {NAR_COLUMNS} FROM nars WHERE nar_hash = ?1"),
        params![nar_hash],
        nar_from_row,
    )
}

/// Inserts a NAR and its chunks, or returns the existing row when another
/// publish stored the same NarHash first (the new blobs are then orphans
/// for GC). Returns the row and whether it was inserted.
pub fn insert(conn: &Conn<'_>, nar: &NewNar) -> Result<(NarRow, bool)> {
    if let Some(existing) = find_by_nar_hash(conn, &nar.nar_hash)? {
        return Ok((existing, false));
    }
    let id: i64 = conn.query_one(
        "INSERT INTO nars (nar_hash, nar_size, compression, file_hash, file_size, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
        params![
            nar.nar_hash,
            nar.nar_size as i64,
            nar.compression,
            nar.file_hash,
            nar.file_size as i64,
            super::now()
        ],
        |r| r.get(0),
    )?;
    for (seq, c) in nar.chunks.iter().enumerate() {
        conn.execute(
            "INSERT INTO nar_chunks (nar_id, seq, blob, size, blob_offset) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, seq as i64, c.blob, c.size as i64, c.offset as i64],
        )?;
    }
    let row = NarRow {
        id,
        nar_hash: nar.nar_hash.clone(),
        nar_size: nar.nar_size,
        compression: nar.compression.clone(),
        file_hash: nar.file_hash.clone(),
        file_size: nar.file_size,
    };
    Ok((row, true))
}

/// The chunks of a NAR, in order.
pub fn chunks(conn: &Conn<'_>, nar_id: i64) -> Result<Vec<Chunk>> {
    conn.query_all(
        "SELECT blob, size, blob_offset FROM nar_chunks WHERE nar_id = ?1 ORDER BY seq",
        params![nar_id],
        |r| {
            Ok(Chunk {
                blob: r.get(0)?,
                size: r.get::<i64>(1)? as u64,
                offset: r.get::<i64>(2)? as u64,
            })
        },
    )
}

/// Publishes a store path in a cache. A path already published keeps its
/// row: a served narinfo never changes until the path is deleted (the
/// first writer wins). Returns whether this call published it.
pub fn insert_path(
    conn: &Conn<'_>,
    cache_id: i64,
    hash_part: &str,
    store_path: &str,
    nar_id: i64,
    narinfo: &str,
) -> Result<bool> {
    let now = super::now();
    let n = conn.execute(
        "INSERT INTO paths (cache_id, hash_part, store_path, nar_id, narinfo, created_at, last_access)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
         ON CONFLICT (cache_id, hash_part) DO NOTHING",
        params![cache_id, hash_part, store_path, nar_id, narinfo, now],
    )?;
    Ok(n > 0)
}

/// The NarHash a cache publishes for a path, if it has the path.
pub fn published_nar_hash(
    conn: &Conn<'_>,
    cache_id: i64,
    hash_part: &str,
) -> Result<Option<String>> {
    conn.query_opt(
        "SELECT n.nar_hash FROM paths p JOIN nars n ON n.id = p.nar_id
         WHERE p.cache_id = ?1 AND p.hash_part = ?2",
        params![cache_id, hash_part],
        |r| r.get(0),
    )
}

/// The caches that publish NAR `nar_id`: (name, public).
pub fn caches_publishing(conn: &Conn<'_>, nar_id: i64) -> Result<Vec<(String, bool)>> {
    conn.query_all(
        "SELECT DISTINCT c.name, c.public FROM paths p JOIN caches c ON c.id = p.cache_id
         WHERE p.nar_id = ?1",
        params![nar_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// The signed narinfo text of a path in a cache.
pub fn narinfo(conn: &Conn<'_>, cache_id: i64, hash_part: &str) -> Result<Option<String>> {
    conn.query_opt(
        "SELECT narinfo FROM paths WHERE cache_id = ?1 AND hash_part = ?2",
        params![cache_id, hash_part],
        |r| r.get(0),
    )
}

/// Whether a cache holds a path with this hash part.
pub fn has_path(conn: &Conn<'_>, cache_id: i64, hash_part: &str) -> Result<bool> {
    conn.exists(
        "SELECT 1 FROM paths WHERE cache_id = ?1 AND hash_part = ?2",
        params![cache_id, hash_part],
    )
}

/// Of `hash_parts`, those the cache has: one query per
/// [`crate::db::sql::IN_BATCH`] paths, not one per path.
pub fn present(
    conn: &Conn<'_>,
    cache_id: i64,
    hash_parts: &[String],
) -> Result<std::collections::HashSet<String>> {
    let found = conn.query_in(
        "SELECT hash_part FROM paths WHERE cache_id = ?1 AND hash_part IN (",
        params![cache_id],
        hash_parts,
        |r| r.get::<String>(0),
    )?;
    Ok(found.into_iter().collect())
}

/// The NAR a cache serves under this file hash (`sha256:<nix32>`), with
/// its chunks. `None` unless a path of this cache references it, so one
/// cache's NARs are never readable through another.
pub fn nar_for_file(
    conn: &Conn<'_>,
    cache_id: i64,
    file_hash: &str,
) -> Result<Option<(NarRow, Vec<Chunk>)>> {
    let Some(nar) = conn.query_opt(
        "SELECT n.id, n.nar_hash, n.nar_size, n.compression, n.file_hash, n.file_size
         FROM nars n WHERE n.file_hash = ?1
           AND EXISTS (SELECT 1 FROM paths p WHERE p.nar_id = n.id AND p.cache_id = ?2)",
        params![file_hash, cache_id],
        nar_from_row,
    )?
    else {
        return Ok(None);
    };
    let chunks = chunks(conn, nar.id)?;
    Ok(Some((nar, chunks)))
}

/// Stores the `.ls` listing (zstd-compressed JSON) of a NAR, keeping an
/// existing one (a NAR's listing never changes).
pub fn insert_listing(conn: &Conn<'_>, nar_id: i64, listing: &[u8]) -> Result<()> {
    conn.execute(
        "INSERT INTO nar_listings (nar_id, listing) VALUES (?1, ?2)
         ON CONFLICT (nar_id) DO NOTHING",
        params![nar_id, listing],
    )?;
    Ok(())
}

/// The stored listing (zstd-compressed JSON) of the NAR a cache serves for
/// a path hash part, if both exist.
pub fn listing(conn: &Conn<'_>, cache_id: i64, hash_part: &str) -> Result<Option<Vec<u8>>> {
    conn.query_opt(
        "SELECT l.listing FROM paths p JOIN nar_listings l ON l.nar_id = p.nar_id
         WHERE p.cache_id = ?1 AND p.hash_part = ?2",
        params![cache_id, hash_part],
        |r| r.get(0),
    )
}

/// Unpublishes a path from a cache. Returns whether it was there. The NAR
/// stays until garbage collection finds no cache referencing it.
pub fn delete_path(conn: &Conn<'_>, cache_id: i64, hash_part: &str) -> Result<bool> {
    let n = conn.execute(
        "DELETE FROM paths WHERE cache_id = ?1 AND hash_part = ?2",
        params![cache_id, hash_part],
    )?;
    Ok(n > 0)
}
