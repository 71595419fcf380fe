//! Chunked uploads: an upload's manifest (`upload_manifest`, the chunks
//! of its NAR in order and where each one's zstd frame comes from) and
//! the stored frames later uploads may reuse (`chunk_frames`).
//!
//! See `schema/sqlite/0010_chunks.sql`. A stored chunked NAR is a list of
//! byte ranges of blobs (`nar_chunks.blob_offset`), read as any other; a
//! `chunk_frames` row says where in which blob a chunk's frame lies, and
//! goes with its blob.

use std::collections::{HashMap, HashSet};

use super::{Conn, params};
use crate::error::Result;

/// Where an entry's frame comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The next frame in the upload's parts.
    Sent,
    /// The frame of an earlier entry of the same manifest (same blake3).
    Repeat,
    /// A frame already stored: `csize` bytes at `offset` of blob `blob`.
    Held { blob: String, offset: u64 },
}

/// One entry of a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub idx: u64,
    /// blake3 (lowercase hex) of the chunk's bytes.
    pub blake3: String,
    /// The chunk's size.
    pub size: u64,
    /// The size of its zstd frame (the stored one for `Held`).
    pub csize: u64,
    pub source: Source,
}

/// A stored frame of a chunk, and one cache that publishes a NAR whose
/// file holds it.
#[derive(Clone, Debug)]
pub struct Holder {
    pub blob: String,
    pub offset: u64,
    pub csize: u64,
    pub size: u64,
    pub cache: String,
    pub public: bool,
}

/// Entries recorded so far.
pub fn manifest_len(conn: &Conn<'_>, upload: &str) -> Result<u64> {
    let n: i64 = conn.query_one(
        "SELECT COUNT(*) FROM upload_manifest WHERE upload_id = ?1",
        params![upload],
        |r| r.get(0),
    )?;
    Ok(n as u64)
}

/// The sum of the recorded entries' sizes.
pub fn manifest_bytes(conn: &Conn<'_>, upload: &str) -> Result<u64> {
    let n: i64 = conn.query_one(
        // PostgreSQL's SUM of BIGINT is NUMERIC: cast back.
        "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM upload_manifest WHERE upload_id = ?1",
        params![upload],
        |r| r.get(0),
    )?;
    Ok(n as u64)
}

/// Entries from `from` on, at most `limit`, in order.
pub fn manifest_from(conn: &Conn<'_>, upload: &str, from: u64, limit: u64) -> Result<Vec<Entry>> {
    conn.query_all(
        "SELECT idx, blake3, size, csize, source, blob, frame_offset FROM upload_manifest
         WHERE upload_id = ?1 AND idx >= ?2 ORDER BY idx LIMIT ?3",
        params![upload, from as i64, limit.min(i64::MAX as u64) as i64],
        |r| {
            let source: String = r.get(4)?;
            let source = match source.as_str() {
                "sent" => Source::Sent,
                "repeat" => Source::Repeat,
                _ => Source::Held {
                    blob: r.get(5)?,
                    offset: r.get::<i64>(6)? as u64,
                },
            };
            Ok(Entry {
                idx: r.get::<i64>(0)? as u64,
                blake3: r.get(1)?,
                size: r.get::<i64>(2)? as u64,
                csize: r.get::<i64>(3)? as u64,
                source,
            })
        },
    )
}

/// Of `hashes`, those the manifest has an entry for already.
pub fn in_manifest(conn: &Conn<'_>, upload: &str, hashes: &[String]) -> Result<HashSet<String>> {
    let found = conn.query_in(
        "SELECT blake3 FROM upload_manifest WHERE upload_id = ?1 AND blake3 IN (",
        params![upload],
        hashes,
        |r| r.get::<String>(0),
    )?;
    Ok(found.into_iter().collect())
}

/// Appends an entry.
pub fn insert_entry(conn: &Conn<'_>, upload: &str, e: &Entry) -> Result<()> {
    let (source, blob, offset) = match &e.source {
        Source::Sent => ("sent", None, None),
        Source::Repeat => ("repeat", None, None),
        Source::Held { blob, offset } => ("held", Some(blob.as_str()), Some(*offset as i64)),
    };
    conn.execute(
        "INSERT INTO upload_manifest (upload_id, idx, blake3, size, csize, source, blob, frame_offset)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            upload,
            e.idx as i64,
            e.blake3,
            e.size as i64,
            e.csize as i64,
            source,
            blob,
            offset
        ],
    )?;
    Ok(())
}

/// The stored frames of the chunks `hashes` in files of published NARs,
/// with the caches publishing them (one holder per frame and cache), by
/// chunk.
pub fn holders(conn: &Conn<'_>, hashes: &[String]) -> Result<HashMap<String, Vec<Holder>>> {
    let rows = conn.query_in(
        "SELECT DISTINCT f.blake3, f.blob, f.frame_offset, f.csize, f.size, c.name, c.public
         FROM chunk_frames f
         JOIN nar_chunks nc ON nc.blob = f.blob
         JOIN paths p ON p.nar_id = nc.nar_id
         JOIN caches c ON c.id = p.cache_id
         WHERE f.blake3 IN (",
        &[],
        hashes,
        |r| {
            let holder = Holder {
                blob: r.get(1)?,
                offset: r.get::<i64>(2)? as u64,
                csize: r.get::<i64>(3)? as u64,
                size: r.get::<i64>(4)? as u64,
                cache: r.get(5)?,
                public: r.get(6)?,
            };
            Ok((r.get::<String>(0)?, holder))
        },
    )?;
    let mut by_chunk: HashMap<String, Vec<Holder>> = HashMap::new();
    for (blake3, holder) in rows {
        by_chunk.entry(blake3).or_default().push(holder);
    }
    Ok(by_chunk)
}

/// Of the frames `(blake3, blob)` asked about, those still recorded
/// (checked under the writer, as GC deletes blobs there).
pub fn frames_exist(
    conn: &Conn<'_>,
    asked: &[(String, String)],
) -> Result<HashSet<(String, String)>> {
    let hashes: Vec<&str> = asked
        .iter()
        .map(|(h, _)| h.as_str())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let rows = conn.query_in(
        "SELECT blake3, blob FROM chunk_frames WHERE blake3 IN (",
        &[],
        &hashes,
        |r| Ok((r.get::<String>(0)?, r.get::<String>(1)?)),
    )?;
    let asked: HashSet<&(String, String)> = asked.iter().collect();
    Ok(rows.into_iter().filter(|f| asked.contains(f)).collect())
}

/// Records where the frames of new chunks are: (blake3, blob, offset,
/// csize, size) each.
pub fn record_frames(conn: &Conn<'_>, frames: &[crate::upload::FrameAt]) -> Result<()> {
    for (blake3, blob, offset, csize, size) in frames {
        conn.execute(
            "INSERT INTO chunk_frames (blake3, blob, frame_offset, csize, size)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (blake3, blob) DO NOTHING",
            params![blake3, blob, *offset as i64, *csize as i64, *size as i64],
        )?;
    }
    Ok(())
}

/// Drops an upload's manifest (it published, or failed).
pub fn delete_manifest(conn: &Conn<'_>, upload: &str) -> Result<()> {
    conn.execute(
        "DELETE FROM upload_manifest WHERE upload_id = ?1",
        params![upload],
    )?;
    Ok(())
}
