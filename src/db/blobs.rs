//! Blob rows: the database's record of every file in the blob store.
//!
//! A blob is recorded ([`claim`]) before its file is moved into the store,
//! and its row goes ([`forget`]) only after the file is deleted, inside the
//! same write transaction. Its state follows from what refers to it: an
//! upload about to publish it (`upload_blobs`, "pending"), a stored NAR
//! (`nar_chunks`, "live"), or nothing ("unreferenced", deleted by GC). So
//! GC, publish and dedup links coordinate through rows under the writer,
//! never through file times.

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Result;

/// Records that upload `upload_id` is about to move `blobs` (id, size)
/// into the store: GC keeps them until the upload commits or goes.
pub fn claim(conn: &Connection, upload_id: &str, blobs: &[(String, u64)]) -> Result<()> {
    let now = super::now();
    let mut row = conn
        .prepare_cached("INSERT OR IGNORE INTO blobs (id, size, created_at) VALUES (?1, ?2, ?3)")?;
    let mut claim = conn
        .prepare_cached("INSERT OR IGNORE INTO upload_blobs (upload_id, blob) VALUES (?1, ?2)")?;
    for (id, size) in blobs {
        row.execute(params![id, *size as i64, now])?;
        claim.execute(params![upload_id, id])?;
    }
    Ok(())
}

/// Drops the claims of an upload (it published, or is going away).
pub fn release(conn: &Connection, upload_id: &str) -> Result<()> {
    conn.execute("DELETE FROM upload_blobs WHERE upload_id = ?1", [upload_id])?;
    Ok(())
}

/// Blobs nothing refers to: neither a NAR nor an upload's claim.
pub fn unreferenced(conn: &Connection) -> Result<Vec<(String, u64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, size FROM blobs b
         WHERE NOT EXISTS (SELECT 1 FROM nar_chunks c WHERE c.blob = b.id)
           AND NOT EXISTS (SELECT 1 FROM upload_blobs u WHERE u.blob = b.id)",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Removes the row of a blob whose file was deleted.
pub fn forget(conn: &Connection, id: &str) -> Result<()> {
    conn.execute("DELETE FROM blobs WHERE id = ?1", [id])?;
    Ok(())
}

/// Whether a blob has a row.
pub fn is_known(conn: &Connection, id: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM blobs WHERE id = ?1")?
        .query_row([id], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Every blob with a row.
pub fn all(conn: &Connection) -> Result<HashSet<String>> {
    let mut stmt = conn.prepare("SELECT id FROM blobs")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Every blob a stored NAR is made of.
pub fn live(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT DISTINCT blob FROM nar_chunks")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Unpublishes every path whose NAR uses blob `id` (its file is gone) and
/// drops those NARs. Returns the store paths unpublished.
pub fn unpublish_users_of(conn: &Connection, id: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT p.store_path FROM paths p
         WHERE p.nar_id IN (SELECT nar_id FROM nar_chunks WHERE blob = ?1)",
    )?;
    let paths: Vec<String> = stmt
        .query_map([id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    conn.execute(
        "DELETE FROM paths WHERE nar_id IN (SELECT nar_id FROM nar_chunks WHERE blob = ?1)",
        [id],
    )?;
    conn.execute(
        "DELETE FROM nars WHERE id IN (SELECT nar_id FROM nar_chunks WHERE blob = ?1)",
        [id],
    )?;
    Ok(paths)
}
