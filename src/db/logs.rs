//! The `build_logs` table: build logs per cache, keyed by the derivation's
//! store path base name, stored zstd-compressed.

use super::{Conn, params};
use crate::error::Result;

/// Stores (or replaces) the compressed log of `drv` in a cache.
pub fn put(conn: &Conn<'_>, cache_id: i64, drv: &str, log: &[u8]) -> Result<()> {
    conn.execute(
        "INSERT INTO build_logs (cache_id, drv, log, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (cache_id, drv) DO UPDATE SET
           log = excluded.log, created_at = excluded.created_at",
        params![cache_id, drv, log, super::now()],
    )?;
    Ok(())
}

/// The compressed log of `drv` in a cache.
pub fn get(conn: &Conn<'_>, cache_id: i64, drv: &str) -> Result<Option<Vec<u8>>> {
    conn.query_opt(
        "SELECT log FROM build_logs WHERE cache_id = ?1 AND drv = ?2",
        params![cache_id, drv],
        |r| r.get(0),
    )
}
