//! The manifest of a chunked upload: the chunks of its NAR, declared in
//! order and in batches, each answered with whether its frame must be sent.
//!
//! A chunk is not sent when it appeared earlier in the same manifest, or
//! when the server holds its frame in the file of a NAR that a cache
//! publishes which the uploader may pull from, or which is public: the
//! same rule as linking a stored NAR by its NarHash, since knowing a
//! chunk's blake3 proves nothing. A held frame's blob is claimed for the
//! upload at once, so GC keeps it until the upload commits or goes.
//!
//! A batch is idempotent: sent again (a retry, a resumed push) it gets the
//! answer recorded the first time.

use std::collections::{HashMap, HashSet};

use super::Engine;
use super::chunked::MAX_CHUNK_SIZE;
use super::receive::ensure_open;
pub use crate::api::ChunkDecl;
use crate::db::blobs;
use crate::db::chunks::{self, Entry, Holder, Source};
use crate::error::{Error, Result};

/// Entries one request may declare.
pub const MAX_BATCH: usize = 10_000;

fn check(decl: &ChunkDecl, idx: u64) -> Result<()> {
    let hex = decl.blake3.len() == 64
        && decl
            .blake3
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex {
        return Err(Error::BadRequest(format!(
            "chunk {idx}: blake3 must be 64 lowercase hex digits"
        )));
    }
    if decl.size == 0 || decl.size > MAX_CHUNK_SIZE {
        return Err(Error::BadRequest(format!(
            "chunk {idx}: size must be between 1 and {MAX_CHUNK_SIZE} bytes"
        )));
    }
    let bound = zstd::zstd_safe::compress_bound(decl.size as usize) as u64 + 64;
    if decl.csize == 0 || decl.csize > bound {
        return Err(Error::BadRequest(format!(
            "chunk {idx}: csize must be between 1 and {bound} (a zstd frame of {} bytes)",
            decl.size
        )));
    }
    Ok(())
}

impl Engine {
    /// Records chunks `from..from + decls.len()` of upload `id`'s manifest
    /// and returns the indices whose frames the client must send, in order.
    pub async fn add_chunks(
        &self,
        id: &str,
        from: u64,
        decls: Vec<ChunkDecl>,
        may_read: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Vec<u64>> {
        if decls.len() > MAX_BATCH {
            return Err(Error::BadRequest(format!(
                "at most {MAX_BATCH} chunks per request"
            )));
        }
        for (k, d) in decls.iter().enumerate() {
            check(d, from + k as u64)?;
        }
        let row = self.get(id).await?;
        ensure_open(&row.id, row.state)?;
        if row.compression != "chunked" {
            return Err(Error::BadRequest(format!(
                "upload {id} was not created with compression \"chunked\""
            )));
        }
        // Frames the uploader may reuse, found before the writer is taken
        // (and checked again under it).
        let wanted: Vec<String> = decls
            .iter()
            .map(|d| d.blake3.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let candidates = self.db.call(move |c| chunks::holders(c, &wanted)).await?;
        let held: HashMap<String, Holder> = candidates
            .into_iter()
            .filter_map(|(h, holders)| {
                holders
                    .into_iter()
                    .find(|x| x.public || may_read(&x.cache))
                    .map(|x| (h, x))
            })
            .collect();
        let (key, nar_size) = (id.to_owned(), row.nar_size);
        self.db
            .write(move |tx| {
                let len = chunks::manifest_len(tx, &key)?;
                if from < len {
                    let stored = chunks::manifest_from(tx, &key, from, decls.len() as u64)?;
                    let same = stored.len() == decls.len()
                        && stored
                            .iter()
                            .zip(&decls)
                            .all(|(s, d)| s.blake3 == d.blake3 && s.size == d.size);
                    if !same {
                        return Err(Error::ManifestConflict { expected: len });
                    }
                    return Ok(stored
                        .iter()
                        .filter(|s| s.source == Source::Sent)
                        .map(|s| s.idx)
                        .collect());
                }
                if from > len {
                    return Err(Error::ManifestConflict { expected: len });
                }
                let mut total = chunks::manifest_bytes(tx, &key)?;
                // What the batch needs to know, asked once for all of it.
                let hashes: Vec<String> = decls.iter().map(|d| d.blake3.clone()).collect();
                let mut seen = chunks::in_manifest(tx, &key, &hashes)?;
                let reusable: Vec<(String, String)> = decls
                    .iter()
                    .filter_map(|d| {
                        let h = held.get(&d.blake3).filter(|h| h.size == d.size)?;
                        Some((d.blake3.clone(), h.blob.clone()))
                    })
                    .collect();
                let still = chunks::frames_exist(tx, &reusable)?;
                let mut claimed = HashSet::new();
                let mut send = vec![];
                for (k, d) in decls.into_iter().enumerate() {
                    let idx = from + k as u64;
                    total += d.size;
                    if total > nar_size {
                        return Err(Error::BadRequest(format!(
                            "chunk {idx}: the chunks add up to more than nar_size ({nar_size})"
                        )));
                    }
                    let reusable = held
                        .get(&d.blake3)
                        .filter(|h| h.size == d.size)
                        .filter(|h| still.contains(&(d.blake3.clone(), h.blob.clone())));
                    let (source, csize) = if seen.contains(&d.blake3) {
                        (Source::Repeat, d.csize)
                    } else if let Some(h) = reusable {
                        if claimed.insert(h.blob.clone()) {
                            blobs::claim_existing(tx, &key, &h.blob)?;
                        }
                        let source = Source::Held {
                            blob: h.blob.clone(),
                            offset: h.offset,
                        };
                        (source, h.csize)
                    } else {
                        send.push(idx);
                        (Source::Sent, d.csize)
                    };
                    chunks::insert_entry(
                        tx,
                        &key,
                        &Entry {
                            idx,
                            blake3: d.blake3.clone(),
                            size: d.size,
                            csize,
                            source,
                        },
                    )?;
                    seen.insert(d.blake3);
                }
                Ok(send)
            })
            .await
    }
}
