//! The `revoked_ids` table: revoked token block ids.

use std::collections::HashSet;

use super::{Conn, params};
use crate::error::Result;

/// Records a revoked id (revoking twice is a no-op).
pub fn insert(conn: &Conn<'_>, id: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO revoked_ids (id, revoked_at) VALUES (?1, ?2) ON CONFLICT (id) DO NOTHING",
        params![id, super::now()],
    )?;
    Ok(())
}

/// Every revoked id.
pub fn all(conn: &Conn<'_>) -> Result<HashSet<String>> {
    Ok(conn
        .query_all("SELECT id FROM revoked_ids", &[], |r| r.get(0))?
        .into_iter()
        .collect())
}

/// A cheap fingerprint of the table, to notice changes made by another
/// process (`ferry token revoke` against the data dir) or another
/// instance sharing the database. Rows are only ever added, so the count
/// moves with each revocation.
pub fn generation(conn: &Conn<'_>) -> Result<(i64, i64)> {
    conn.query_one(
        "SELECT COUNT(*), COALESCE(MAX(revoked_at), 0) FROM revoked_ids",
        &[],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}
