//! The `revoked_ids` table: revoked token block ids.

use std::collections::HashSet;

use rusqlite::{Connection, params};

use crate::error::Result;

/// Records a revoked id (revoking twice is a no-op).
pub fn insert(conn: &Connection, id: &str) -> Result<()> {
    conn.execute(
        "INSERT OR IGNORE INTO revoked_ids (id, revoked_at) VALUES (?1, ?2)",
        params![id, super::now()],
    )?;
    Ok(())
}

/// Every revoked id.
pub fn all(conn: &Connection) -> Result<HashSet<String>> {
    let mut stmt = conn.prepare_cached("SELECT id FROM revoked_ids")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A cheap fingerprint of the table, to notice changes made by another
/// process (`ferry token revoke` against the data dir).
pub fn generation(conn: &Connection) -> Result<(i64, i64)> {
    Ok(conn.query_row(
        "SELECT COUNT(*), COALESCE(MAX(rowid), 0) FROM revoked_ids",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?)
}
