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

use super::{Conn, params};
use crate::error::Result;

/// Records that upload `upload_id` is about to move `blobs` (id, size)
/// into the store: GC keeps them until the upload commits or goes.
pub fn claim(conn: &Conn<'_>, upload_id: &str, blobs: &[(String, u64)]) -> Result<()> {
    let now = super::now();
    for (id, size) in blobs {
        conn.execute(
            "INSERT INTO blobs (id, size, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO NOTHING",
            params![id, *size as i64, now],
        )?;
        conn.execute(
            "INSERT INTO upload_blobs (upload_id, blob) VALUES (?1, ?2)
             ON CONFLICT (upload_id, blob) DO NOTHING",
            params![upload_id, id],
        )?;
    }
    Ok(())
}

/// Claims a blob that has a row already (a stored frame a chunked upload
/// reuses): GC keeps it until the upload commits or goes.
pub fn claim_existing(conn: &Conn<'_>, upload_id: &str, blob: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO upload_blobs (upload_id, blob) VALUES (?1, ?2)
         ON CONFLICT (upload_id, blob) DO NOTHING",
        params![upload_id, blob],
    )?;
    Ok(())
}

/// Drops the claims of an upload (it published, or is going away).
pub fn release(conn: &Conn<'_>, upload_id: &str) -> Result<()> {
    conn.execute(
        "DELETE FROM upload_blobs WHERE upload_id = ?1",
        params![upload_id],
    )?;
    Ok(())
}

/// Blobs nothing refers to: neither a NAR, nor an upload's claim, nor a
/// part row (whose copy a shared store holds under the same name).
pub fn unreferenced(conn: &Conn<'_>) -> Result<Vec<(String, u64)>> {
    conn.query_all(
        "SELECT id, size FROM blobs b
         WHERE NOT EXISTS (SELECT 1 FROM nar_chunks c WHERE c.blob = b.id)
           AND NOT EXISTS (SELECT 1 FROM upload_blobs u WHERE u.blob = b.id)
           AND NOT EXISTS (SELECT 1 FROM upload_parts p WHERE p.blake3 = b.id)
           AND NOT EXISTS (SELECT 1 FROM upload_parts p WHERE p.blob = b.id)",
        &[],
        |r| Ok((r.get(0)?, r.get::<i64>(1)? as u64)),
    )
}

/// Removes the row of a blob whose file was deleted.
pub fn forget(conn: &Conn<'_>, id: &str) -> Result<()> {
    conn.execute("DELETE FROM blobs WHERE id = ?1", params![id])?;
    Ok(())
}

/// Whether a row knows the blob: its own, or a part row naming it (a
/// shared store holds each part under its blake3 until it publishes).
pub fn is_known(conn: &Conn<'_>, id: &str) -> Result<bool> {
    Ok(
        conn.exists("SELECT 1 FROM blobs WHERE id = ?1", params![id])?
            || conn.exists("SELECT 1 FROM upload_parts WHERE blake3 = ?1", params![id])?
            || conn.exists("SELECT 1 FROM upload_parts WHERE blob = ?1", params![id])?,
    )
}

/// Every blob a row knows (see [`is_known`]).
pub fn all(conn: &Conn<'_>) -> Result<HashSet<String>> {
    let mut ids: HashSet<String> = conn
        .query_all("SELECT id FROM blobs", &[], |r| r.get(0))?
        .into_iter()
        .collect();
    ids.extend(
        conn.query_all::<String>(
            "SELECT blake3 FROM upload_parts UNION SELECT blob FROM upload_parts WHERE blob IS NOT NULL",
            &[],
            |r| r.get(0),
        )?,
    );
    Ok(ids)
}

/// Every blob a stored NAR is made of.
pub fn live(conn: &Conn<'_>) -> Result<Vec<String>> {
    conn.query_all("SELECT DISTINCT blob FROM nar_chunks", &[], |r| r.get(0))
}

/// Unpublishes every path whose NAR uses blob `id` (its file is gone) and
/// drops those NARs. Returns the store paths unpublished.
pub fn unpublish_users_of(conn: &Conn<'_>, id: &str) -> Result<Vec<String>> {
    let paths = conn.query_all(
        "SELECT p.store_path FROM paths p
         WHERE p.nar_id IN (SELECT nar_id FROM nar_chunks WHERE blob = ?1)",
        params![id],
        |r| r.get(0),
    )?;
    conn.execute(
        "DELETE FROM paths WHERE nar_id IN (SELECT nar_id FROM nar_chunks WHERE blob = ?1)",
        params![id],
    )?;
    conn.execute(
        "DELETE FROM nars WHERE id IN (SELECT nar_id FROM nar_chunks WHERE blob = ?1)",
        params![id],
    )?;
    Ok(paths)
}
