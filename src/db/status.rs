//! The reads behind the status page: every cache with its counters, and
//! the uploads in flight with their parts. Who may see which is decided by
//! the handler (`server::handlers::status`), not here.

use super::{Conn, params};

use super::uploads::{self, PartRow, UploadState};
use crate::error::Result;

/// A cache and its counters (`cache_stats`, kept by triggers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheSummary {
    pub name: String,
    pub public: bool,
    /// Store paths published.
    pub paths: u64,
    /// Compressed NAR bytes published (a NAR shared by caches counts in each).
    pub bytes: u64,
    /// When the cache last published a path (Unix seconds).
    pub last_push: Option<i64>,
}

/// Every cache, by name.
pub fn caches(conn: &Conn<'_>) -> Result<Vec<CacheSummary>> {
    conn.query_all(
        "SELECT c.name, c.public, COALESCE(s.paths, 0), COALESCE(s.bytes, 0), s.last_push
         FROM caches c LEFT JOIN cache_stats s ON s.cache_id = c.id ORDER BY c.name",
        &[],
        |r| {
            Ok(CacheSummary {
                name: r.get(0)?,
                public: r.get(1)?,
                paths: r.get::<i64>(2)?.max(0) as u64,
                bytes: r.get::<i64>(3)?.max(0) as u64,
                last_push: r.get(4)?,
            })
        },
    )
}

/// An upload that is open or verifying, with the parts received so far.
#[derive(Clone, Debug)]
pub struct InFlight {
    pub id: String,
    /// The cache's name.
    pub cache: String,
    pub store_path: String,
    pub state: UploadState,
    /// `none` or `zstd`: what the parts carry.
    pub compression: String,
    pub nar_size: u64,
    /// Known once `complete` was called.
    pub total_parts: Option<u32>,
    pub created_at: i64,
    pub expires_at: i64,
    pub parts: Vec<PartRow>,
}

/// The uploads open or verifying and not expired at `now`, oldest first.
pub fn in_flight(conn: &Conn<'_>, now: i64) -> Result<Vec<InFlight>> {
    let mut out = conn.query_all(
        "SELECT u.id, c.name, u.store_path, u.state, u.compression, u.nar_size,
             u.total_parts, u.created_at, u.expires_at
         FROM uploads u JOIN caches c ON c.id = u.cache_id
         WHERE u.state IN ('open', 'verifying') AND u.expires_at > ?1
         ORDER BY u.created_at, u.id",
        params![now],
        |r| {
            let state: String = r.get(3)?;
            Ok(InFlight {
                id: r.get(0)?,
                cache: r.get(1)?,
                store_path: r.get(2)?,
                state: if state == "verifying" {
                    UploadState::Verifying
                } else {
                    UploadState::Open
                },
                compression: r.get(4)?,
                nar_size: r.get::<i64>(5)?.max(0) as u64,
                total_parts: r.get::<Option<i64>>(6)?.map(|n| n as u32),
                created_at: r.get(7)?,
                expires_at: r.get(8)?,
                parts: vec![],
            })
        },
    )?;
    for u in &mut out {
        u.parts = uploads::parts(conn, &u.id)?;
    }
    Ok(out)
}
