//! The `uploads` and `upload_parts` tables: sessions not yet published.

use super::{Conn, Row, params};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Upload states, as stored and as sent on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadState {
    Open,
    Verifying,
    Committed,
    Failed,
}

impl UploadState {
    pub fn as_str(self) -> &'static str {
        match self {
            UploadState::Open => "open",
            UploadState::Verifying => "verifying",
            UploadState::Committed => "committed",
            UploadState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> UploadState {
        match s {
            "verifying" => UploadState::Verifying,
            "committed" => UploadState::Committed,
            "failed" => UploadState::Failed,
            _ => UploadState::Open,
        }
    }
}

/// The narinfo fields a client declared beside hash and size.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadMeta {
    /// Full store paths.
    pub references: Vec<String>,
    pub deriver: Option<String>,
    pub ca: Option<String>,
    pub sigs: Vec<String>,
    /// For Nix's PUT door: the FileHash/FileSize its narinfo declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_size: Option<u64>,
}

/// An upload session.
#[derive(Clone, Debug)]
pub struct UploadRow {
    pub id: String,
    pub cache_id: i64,
    pub store_path: String,
    /// `sha256:<nix32>`.
    pub nar_hash: String,
    pub nar_size: u64,
    pub meta: UploadMeta,
    /// `none` or `zstd`: what the parts carry.
    pub compression: String,
    pub state: UploadState,
    pub total_parts: Option<u32>,
    pub error: Option<serde_json::Value>,
    pub created_at: i64,
    pub expires_at: i64,
}

/// A received part: its size and blake3 as sent (what the client is told
/// and resumes by).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRow {
    pub n: u32,
    pub size: u64,
    pub blake3: String,
    /// The file kept, when it is not the bytes as sent (a plain part,
    /// stored as zstd frames).
    #[serde(skip)]
    pub stored: Option<StoredPart>,
}

/// The file kept for a part stored other than as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPart {
    /// Its blake3: the blob it becomes.
    pub blob: String,
    pub size: u64,
}

impl PartRow {
    /// The blob the part's file is (and becomes once published).
    pub fn blob(&self) -> &str {
        self.stored.as_ref().map_or(&self.blake3, |s| &s.blob)
    }

    /// The size of the part's file.
    pub fn blob_size(&self) -> u64 {
        self.stored.as_ref().map_or(self.size, |s| s.size)
    }
}

const COLUMNS: &str = "id, cache_id, store_path, nar_hash, nar_size, meta, compression, state, total_parts, error, created_at, expires_at";

fn from_row(r: &Row<'_>) -> Result<UploadRow> {
    let meta: String = r.get(5)?;
    let state: String = r.get(7)?;
    let error: Option<String> = r.get(9)?;
    Ok(UploadRow {
        id: r.get(0)?,
        cache_id: r.get(1)?,
        store_path: r.get(2)?,
        nar_hash: r.get(3)?,
        nar_size: r.get::<i64>(4)? as u64,
        meta: serde_json::from_str(&meta).unwrap_or_default(),
        compression: r.get(6)?,
        state: UploadState::parse(&state),
        total_parts: r.get::<Option<i64>>(8)?.map(|n| n as u32),
        error: error.and_then(|e| serde_json::from_str(&e).ok()),
        created_at: r.get(10)?,
        expires_at: r.get(11)?,
    })
}

/// Inserts a new upload.
pub fn insert(conn: &Conn<'_>, u: &UploadRow) -> Result<()> {
    let meta = serde_json::to_string(&u.meta).map_err(Error::internal)?;
    conn.execute(
        &format!("INSERT INTO uploads ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
        params![
            u.id,
            u.cache_id,
            u.store_path,
            u.nar_hash,
            u.nar_size as i64,
            meta,
            u.compression,
            u.state.as_str(),
            u.total_parts,
            u.error.as_ref().map(|e| e.to_string()),
            u.created_at,
            u.expires_at
        ],
    )?;
    Ok(())
}

/// The upload with this id.
pub fn get(conn: &Conn<'_>, id: &str) -> Result<Option<UploadRow>> {
    conn.query_opt(
        &format!("SELECT {COLUMNS} FROM uploads WHERE id = ?1"),
        params![id],
        from_row,
    )
}

/// Uploads of a cache that are not committed, oldest first.
pub fn list_uncommitted(conn: &Conn<'_>, cache_id: i64) -> Result<Vec<UploadRow>> {
    conn.query_all(
        &format!(
            "SELECT {COLUMNS} FROM uploads WHERE cache_id = ?1 AND state != 'committed' ORDER BY id"
        ),
        params![cache_id],
        from_row,
    )
}

/// Uploads in a given state (e.g. `verifying` ones to resume at start-up).
pub fn in_state(conn: &Conn<'_>, state: UploadState) -> Result<Vec<UploadRow>> {
    conn.query_all(
        &format!("SELECT {COLUMNS} FROM uploads WHERE state = ?1"),
        params![state.as_str()],
        from_row,
    )
}

/// Ids of uploads past their expiry.
pub fn expired(conn: &Conn<'_>, now: i64) -> Result<Vec<String>> {
    // One being verified under a live lease is not expired: its verifier
    // may be publishing.
    conn.query_all(
        "SELECT id FROM uploads WHERE expires_at <= ?1
         AND NOT (state = 'verifying' AND verify_lease > ?1)",
        params![now],
        |r| r.get(0),
    )
}

/// The parts of an upload, by number.
pub fn parts(conn: &Conn<'_>, id: &str) -> Result<Vec<PartRow>> {
    conn.query_all(
        "SELECT n, size, blake3, blob, blob_size FROM upload_parts WHERE upload_id = ?1 ORDER BY n",
        params![id],
        |r| {
            let blob: Option<String> = r.get(3)?;
            let blob_size: Option<i64> = r.get(4)?;
            Ok(PartRow {
                n: r.get::<i64>(0)? as u32,
                size: r.get::<i64>(1)? as u64,
                blake3: r.get(2)?,
                stored: blob.map(|blob| StoredPart {
                    blob,
                    size: blob_size.unwrap_or(0) as u64,
                }),
            })
        },
    )
}

/// Records a part (replacing an earlier one with the same number) of an
/// open upload. Checked here, under the writer, because another instance
/// may have closed the upload for verification meanwhile.
pub fn upsert_part(conn: &Conn<'_>, id: &str, p: &PartRow) -> Result<()> {
    match get(conn, id)? {
        Some(row) if row.state == UploadState::Open => {}
        Some(row) => {
            return Err(crate::error::Error::UploadClosed {
                id: id.to_owned(),
                state: row.state.as_str().to_owned(),
            });
        }
        None => return Err(crate::error::Error::UploadNotFound(id.to_owned())),
    }
    conn.execute(
        "INSERT INTO upload_parts (upload_id, n, size, blake3, blob, blob_size)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (upload_id, n) DO UPDATE SET size = excluded.size,
           blake3 = excluded.blake3, blob = excluded.blob, blob_size = excluded.blob_size",
        params![
            id,
            p.n,
            p.size as i64,
            p.blake3,
            p.stored.as_ref().map(|s| s.blob.clone()),
            p.stored.as_ref().map(|s| s.size as i64)
        ],
    )?;
    Ok(())
}

/// Moves an upload's expiry forward (any request for it counts as activity).
pub fn touch(conn: &Conn<'_>, id: &str, expires_at: i64) -> Result<()> {
    conn.execute(
        "UPDATE uploads SET expires_at = CASE WHEN expires_at > ?2 THEN expires_at ELSE ?2 END
         WHERE id = ?1",
        params![id, expires_at],
    )?;
    Ok(())
}

/// Sets state, parts count and error of an upload.
pub fn set_state(
    conn: &Conn<'_>,
    id: &str,
    state: UploadState,
    total_parts: Option<u32>,
    error: Option<&serde_json::Value>,
) -> Result<()> {
    conn.execute(
        "UPDATE uploads SET state = ?2, total_parts = COALESCE(?3, total_parts), error = ?4 WHERE id = ?1",
        params![id, state.as_str(), total_parts, error.map(|e| e.to_string())],
    )?;
    Ok(())
}

/// Moves an upload that was verifying back to `open` (a fault stopped
/// its verification; the same upload can be completed again).
pub fn reopen(conn: &Conn<'_>, id: &str) -> Result<()> {
    conn.execute(
        "UPDATE uploads SET state = 'open' WHERE id = ?1 AND state = 'verifying'",
        params![id],
    )?;
    Ok(())
}

/// Drops the row of part `n` if it still names `blake3`: the file was
/// found lost or changed, and the client must send the part again.
/// `false` when the part was replaced meanwhile.
pub fn drop_part_if(conn: &Conn<'_>, id: &str, n: u32, blake3: &str) -> Result<bool> {
    let k = conn.execute(
        "DELETE FROM upload_parts WHERE upload_id = ?1 AND n = ?2 AND blake3 = ?3",
        params![id, n, blake3],
    )?;
    Ok(k > 0)
}

/// Drops every part row of an upload (it was published).
pub fn delete_parts(conn: &Conn<'_>, id: &str) -> Result<()> {
    conn.execute("DELETE FROM upload_parts WHERE upload_id = ?1", params![id])?;
    Ok(())
}

/// Records who opened an upload (see `schema/0006_upload_owners.sql`).
pub fn set_owner(conn: &Conn<'_>, id: &str, owner: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO upload_owners (upload_id, owner) VALUES (?1, ?2)
         ON CONFLICT (upload_id) DO UPDATE SET owner = excluded.owner",
        params![id, owner],
    )?;
    Ok(())
}

/// Uploads `owner` has open (not settled, not expired).
pub fn open_of_owner(conn: &Conn<'_>, owner: &str, now: i64) -> Result<u64> {
    let n: i64 = conn.query_one(
        "SELECT COUNT(*) FROM upload_owners o JOIN uploads u ON u.id = o.upload_id
         WHERE o.owner = ?1 AND u.state IN ('open', 'verifying') AND u.expires_at > ?2",
        params![owner, now],
        |r| r.get(0),
    )?;
    Ok(n as u64)
}

/// How many uploads are in each state (for `/metrics`).
pub fn count_by_state(conn: &Conn<'_>) -> Result<Vec<(String, i64)>> {
    conn.query_all(
        "SELECT state, COUNT(*) FROM uploads GROUP BY state",
        &[],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// Removes an upload and its part rows.
pub fn delete(conn: &Conn<'_>, id: &str) -> Result<()> {
    conn.execute("DELETE FROM uploads WHERE id = ?1", params![id])?;
    Ok(())
}

/// Ids of every upload of a cache, whatever its state.
pub fn ids_of_cache(conn: &Conn<'_>, cache_id: i64) -> Result<Vec<String>> {
    conn.query_all(
        "SELECT id FROM uploads WHERE cache_id = ?1",
        params![cache_id],
        |r| r.get(0),
    )
}

/// Moves an open upload to `verifying` with its parts count, leased to
/// the caller until `lease_until`; an upload already verifying is taken
/// only once its lease has passed (its verifier stopped). `false` when it
/// is committed or failed already, or another verifier holds it.
pub fn claim_for_verifying(
    conn: &Conn<'_>,
    id: &str,
    total: u32,
    now: i64,
    lease_until: i64,
) -> Result<bool> {
    let n = conn.execute(
        "UPDATE uploads SET state = 'verifying', total_parts = ?2, verify_lease = ?4
         WHERE id = ?1 AND (state = 'open' OR (state = 'verifying' AND verify_lease <= ?3))",
        params![id, total, now, lease_until],
    )?;
    Ok(n > 0)
}

/// Moves the lease of a verifying upload forward.
pub fn renew_lease(conn: &Conn<'_>, id: &str, lease_until: i64) -> Result<()> {
    conn.execute(
        "UPDATE uploads SET verify_lease = ?2 WHERE id = ?1 AND state = 'verifying'",
        params![id, lease_until],
    )?;
    Ok(())
}

/// Until when an upload's verification is leased (0: never leased).
pub fn lease_of(conn: &Conn<'_>, id: &str) -> Result<i64> {
    Ok(conn
        .query_opt(
            "SELECT verify_lease FROM uploads WHERE id = ?1",
            params![id],
            |r| r.get(0),
        )?
        .unwrap_or(0))
}

/// Voids every lease (a lone server starting: nobody else verifies).
pub fn clear_leases(conn: &Conn<'_>) -> Result<()> {
    conn.execute(
        "UPDATE uploads SET verify_lease = 0 WHERE state = 'verifying'",
        &[],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_verified_under_a_live_lease_is_not_expired() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::Db::open(&dir.path().join("t.db")).unwrap();
        db.call_blocking(|c| {
            c.execute(
                "INSERT INTO caches (name, signing_key, created_at) VALUES ('c', 'k', 0)",
                &[],
            )?;
            let cache_id: i64 = c.query_one("SELECT id FROM caches", &[], |r| r.get(0))?;
            let row = |id: &str| UploadRow {
                id: id.into(),
                cache_id,
                store_path: "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x".into(),
                nar_hash: String::new(),
                nar_size: 1,
                meta: UploadMeta::default(),
                compression: "none".into(),
                state: UploadState::Open,
                total_parts: None,
                error: None,
                created_at: 0,
                expires_at: 100,
            };
            for id in ["open", "leased", "lapsed"] {
                insert(c, &row(id))?;
            }
            // At 200 every one is past its expiry; "leased" is being
            // verified until 300, "lapsed" was until 150.
            assert!(claim_for_verifying(c, "leased", 1, 200, 300)?);
            assert!(claim_for_verifying(c, "lapsed", 1, 100, 150)?);
            let mut gone = expired(c, 200)?;
            gone.sort();
            assert_eq!(gone, ["lapsed", "open"]);
            let mut gone = expired(c, 300)?;
            gone.sort();
            assert_eq!(gone, ["lapsed", "leased", "open"]);
            Ok(())
        })
        .unwrap();
    }
}
