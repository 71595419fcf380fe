//! Finishing the verdict (`complete`, its lease across instances) and
//! publishing. Folding the parts into the verifier is [`super::fold`].
//!
//! Publishing, each step durable before the next (a crash point between
//! each two):
//! 1. claim the blobs: their rows are written, tied to the upload, before
//!    any file moves, so GC cannot take them;
//! 2. move the files into the store (a rename each, no copy);
//! 3. one transaction: the NAR row (with its `.ls` listing), the path row
//!    with its signed narinfo, the upload committed, its claims released.
//!    A path already published in the cache is never replaced: the first
//!    writer wins, and the later upload's bytes are released to GC;
//! 4. remove the upload's directory.
//!
//! A fault (disk full, I/O error, a lost part) reopens the upload with
//! every acknowledged part; only a verdict on the bytes fails it.

use std::sync::Arc;

use crate::db::Tx;

use super::fold::Source;
use super::verifier::Verdict;
use super::{Completion, Engine, Finished};
use crate::db::caches::{self, CacheRow};
use crate::db::nars::{self, Chunk, NarRow, NewNar};
use crate::db::uploads::{self, UploadMeta, UploadRow, UploadState};
use crate::db::{Db, blobs};
use crate::error::{Error, Result};
use crate::nar::{NarInfo, Sha256Hash, SigningKey, StorePath};

/// How long a verification stays leased to its instance without renewal
/// (renewed every third of it while it runs).
pub const LEASE: std::time::Duration = std::time::Duration::from_secs(30);

pub(super) fn lease_until() -> i64 {
    crate::db::now() + LEASE.as_secs() as i64
}

/// Blobs moved into a remote store at once (uploads, for S3).
const ADOPT_JOBS: usize = 4;

/// Moves every source into the store, [`ADOPT_JOBS`] at a time; the first
/// part (in order) whose file is gone and whose blob the store lacks is
/// returned as lost.
fn adopt_all(
    store: &dyn crate::store::BlobStore,
    sources: Vec<(Source, u64)>,
) -> Result<Option<Source>> {
    let adopt = |source: &Source| -> Result<bool> {
        if source.path.exists() {
            store.adopt(&source.blake3, &source.path)?;
            Ok(true)
        } else {
            Ok(store.exists(&source.blake3)?)
        }
    };
    let mut sources: Vec<Source> = sources.into_iter().map(|(s, _)| s).collect();
    // Moving into a local store is a rename: no threads for that.
    let jobs = if store.shared() { ADOPT_JOBS } else { 1 };
    let results: Vec<Result<bool>> = if jobs == 1 || sources.len() < 2 {
        sources.iter().map(adopt).collect()
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = sources
                .chunks(sources.len().div_ceil(jobs))
                .map(|group| scope.spawn(move || group.iter().map(adopt).collect::<Vec<_>>()))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| {
                    h.join()
                        .unwrap_or_else(|_| vec![Err(Error::internal("adopt panicked"))])
                })
                .collect()
        })
    };
    for (i, r) in results.into_iter().enumerate() {
        if !r? {
            return Ok(Some(sources.swap_remove(i)));
        }
    }
    Ok(None)
}

impl Engine {
    /// Completes an upload of `total` parts: verifies and publishes, or
    /// answers `Verifying` when that takes longer than the configured wait.
    pub async fn complete(self: &Arc<Self>, id: &str, total: u32) -> Result<Completion> {
        self.complete_within(id, total, self.cfg.complete_wait)
            .await
    }

    /// [`Engine::complete`], waiting up to `wait` for the verdict.
    pub async fn complete_within(
        self: &Arc<Self>,
        id: &str,
        total: u32,
        wait: std::time::Duration,
    ) -> Result<Completion> {
        let row = self.get(id).await?;
        match row.state {
            UploadState::Committed => {
                return Ok(Completion::Committed {
                    narinfo_url: self.narinfo_url(&row).await?,
                });
            }
            UploadState::Failed => return Err(Error::UploadFailed(row.error.unwrap_or_default())),
            UploadState::Open | UploadState::Verifying => {}
        }
        // A chunked upload whose every chunk the server held has no parts.
        if total == 0 && row.compression != "chunked" {
            return Err(Error::BadRequest("parts must be at least 1".into()));
        }
        let key = id.to_owned();
        let parts = self.db.call(move |c| uploads::parts(c, &key)).await?;
        let missing: Vec<u32> = (1..=total)
            .filter(|n| !parts.iter().any(|p| p.n == *n))
            .collect();
        if !missing.is_empty() {
            return Err(Error::MissingParts { missing });
        }
        let mut rx = self.start_finishing(id, total)?;
        let fault = match tokio::time::timeout(wait, rx.wait_for(|d| d.is_some())).await {
            Err(_) => return Ok(Completion::Verifying),
            Ok(Err(_)) => None,
            Ok(Ok(done)) => done
                .as_ref()
                .and_then(|e| e.as_ref().map(Error::retry_copy)),
        };
        let row = self.get(id).await?;
        match row.state {
            UploadState::Committed => Ok(Completion::Committed {
                narinfo_url: self.narinfo_url(&row).await?,
            }),
            UploadState::Failed => Err(Error::UploadFailed(row.error.unwrap_or_default())),
            // Another instance holds the verification (its lease is live).
            UploadState::Verifying if fault.is_none() => Ok(Completion::Verifying),
            UploadState::Open | UploadState::Verifying => Err(fault.unwrap_or_else(|| {
                Error::Unavailable("verification could not finish; call complete again".into())
            })),
        }
    }

    /// Starts finishing upload `id` in the background (or joins the run
    /// already going here); the receiver carries its outcome. While it
    /// runs, the upload's lease in the database is renewed, so that
    /// another instance sharing the database leaves it alone.
    fn start_finishing(
        self: &Arc<Self>,
        id: &str,
        total: u32,
    ) -> Result<tokio::sync::watch::Receiver<Finished>> {
        let mut finishing = self.finishing.lock().map_err(Error::internal)?;
        if let Some(rx) = finishing.get(id) {
            return Ok(rx.clone());
        }
        let (tx, rx) = tokio::sync::watch::channel(None);
        finishing.insert(id.to_owned(), rx.clone());
        let engine = self.clone();
        let id = id.to_owned();
        self.rt.spawn(async move {
            let run = engine.finish(&id, total);
            tokio::pin!(run);
            let mut renew = tokio::time::interval_at(
                tokio::time::Instant::now() + LEASE / 3,
                LEASE / 3,
            );
            let outcome = loop {
                tokio::select! {
                    outcome = &mut run => break outcome,
                    _ = renew.tick() => {
                        let (key, until) = (id.clone(), lease_until());
                        if let Err(e) = engine.db.write(move |tx| uploads::renew_lease(tx, &key, until)).await {
                            tracing::warn!(upload = %id, error = %e, "renewing the verification lease failed");
                        }
                    }
                }
            };
            if let Err(e) = &outcome {
                tracing::warn!(upload = %id, error = %e, "finishing an upload stopped; it stays open");
            }
            if let Ok(mut f) = engine.finishing.lock() {
                f.remove(&id);
            }
            let _ = tx.send(Some(outcome.err()));
        });
        Ok(rx)
    }

    /// Takes over the verification of `row` when it is `verifying` and
    /// its lease has passed: the instance that held it stopped (another
    /// instance sharing the database, or this one before a restart).
    pub(super) async fn take_over_if_abandoned(self: &Arc<Self>, row: &UploadRow) -> Result<()> {
        let Some(total) = row.total_parts else {
            return Ok(());
        };
        if row.state != UploadState::Verifying
            || self
                .finishing
                .lock()
                .map_err(Error::internal)?
                .contains_key(&row.id)
        {
            return Ok(());
        }
        let key = row.id.clone();
        let lease = self.db.call(move |c| uploads::lease_of(c, &key)).await?;
        if lease <= crate::db::now() {
            tracing::info!(upload = %row.id, "taking over a verification whose instance stopped");
            self.start_finishing(&row.id, total)?;
        }
        Ok(())
    }

    async fn narinfo_url(&self, row: &UploadRow) -> Result<String> {
        let cache_id = row.cache_id;
        let cache = self
            .db
            .call(move |c| caches::get_by_id(c, cache_id))
            .await?;
        let name = cache.map(|c| c.name).unwrap_or_default();
        let hash = row
            .store_path
            .rsplit('/')
            .next()
            .unwrap_or("")
            .get(..32)
            .unwrap_or("");
        Ok(format!("/{name}/{hash}.narinfo"))
    }

    /// The background half of `complete`: fold the tail, judge, publish.
    /// `Err` means a fault left the upload open (it can be completed
    /// again); a verdict against the bytes is `Ok`, with the upload failed.
    async fn finish(self: &Arc<Self>, id: &str, total: u32) -> Result<()> {
        // Close the slot first: from here on no part may be replaced and no
        // background fold may start (record_part and advance check this
        // under the same lock).
        let slot = self.slot_or_load(id).await?;
        *slot.closing.write().await = true;
        let key = id.to_owned();
        let until = lease_until();
        let claimed = self
            .db
            .write_as(self.step_commit(id), move |tx| {
                uploads::claim_for_verifying(tx, &key, total, crate::db::now(), until)
            })
            .await;
        match claimed {
            Ok(true) => {}
            Ok(false) => {
                // Settled, or verifying in another instance: this slot
                // was closed for nothing, and a reopened upload must find
                // it open here.
                self.slots.lock().map_err(Error::internal)?.remove(id);
                return Ok(());
            }
            Err(e) => {
                self.slots.lock().map_err(Error::internal)?.remove(id);
                return Err(e);
            }
        }
        let verdict = self.verdict(id, total).await;
        let outcome = match self.get(id).await {
            Ok(row) => match verdict.and_then(|v| judge(&row, v)) {
                Ok(verdict) => self.publish(row, verdict, total).await,
                Err(e) if e.is_verdict() => return self.fail(id, e).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        if outcome.is_err() {
            // Not the client's fault (disk full, I/O, a lost part): keep
            // every part, reopen, and let `complete` be called again.
            self.slots.lock().map_err(Error::internal)?.remove(id);
            let key = id.to_owned();
            self.db.write(move |tx| uploads::reopen(tx, &key)).await?;
        }
        outcome
    }

    /// Fails an upload for good with verdict `e`; its parts are removed.
    async fn fail(&self, id: &str, e: Error) -> Result<()> {
        let body = e.to_json();
        let key = id.to_owned();
        self.db
            .write(move |tx| {
                uploads::set_state(tx, &key, UploadState::Failed, None, Some(&body))?;
                crate::db::chunks::delete_manifest(tx, &key)?;
                blobs::release(tx, &key)
            })
            .await?;
        self.slots.lock().map_err(Error::internal)?.remove(id);
        let dir = self.dir_of(id);
        tokio::task::spawn_blocking(move || super::remove_dir_if_present(&dir))
            .await
            .map_err(Error::internal)??;
        Ok(())
    }

    async fn verdict(self: &Arc<Self>, id: &str, total: u32) -> Result<Verdict> {
        self.advance(id, Some(total)).await?;
        let slot = self.slot_or_load(id).await?;
        let mut s = slot.state.lock().await;
        if let Some(e) = s.failed.take() {
            return Err(e);
        }
        let v = match s.verifier.take() {
            Some(v) if v.next == total + 1 => v,
            other => {
                // A part was dropped (lost) since `complete` checked.
                let next = other.map_or(1, |v| v.next);
                let missing = (next..=total).filter(|n| !s.present.contains(n)).collect();
                return Err(Error::MissingParts { missing });
            }
        };
        tokio::task::spawn_blocking(move || v.finish())
            .await
            .map_err(Error::internal)?
    }

    async fn publish(
        self: &Arc<Self>,
        row: UploadRow,
        mut verdict: Verdict,
        total: u32,
    ) -> Result<()> {
        crate::crash_point!("publish.after_verdict");
        let key = row.id.clone();
        let parts = self.db.call(move |c| uploads::parts(c, &key)).await?;
        let listing = verdict.listing.take();
        let layout = verdict.layout.take();
        // The blobs of the stored file, and the file each comes from now.
        let (sources, file_hash, file_size) = match verdict.compressed.take() {
            Some(c) => {
                let source = Source {
                    n: 0,
                    path: c.path,
                    blake3: c.blake3,
                    frames_of: None,
                };
                (vec![(source, c.size)], c.sha256, c.size)
            }
            None => {
                let sources = parts
                    .iter()
                    .filter(|p| p.n <= total && p.size > 0)
                    .map(|p| (Source::of(p, self.part_path(&row.id, p.n)), p.blob_size()))
                    .collect();
                match (&layout, verdict.frames_file) {
                    (Some(l), _) => (sources, l.file_hash, l.file_size),
                    (None, Some((hash, size))) => (sources, hash, size),
                    (None, None) => (sources, verdict.upload_hash, verdict.upload_size),
                }
            }
        };
        // The stored file: the blobs whole, or (chunked) ranges of the
        // parts and of the blobs that held frames came from.
        let chunks: Vec<Chunk> = match &layout {
            Some(l) => l
                .ranges
                .iter()
                .map(|(blob, offset, size)| Chunk {
                    blob: blob.clone(),
                    offset: *offset,
                    size: *size,
                })
                .collect(),
            None => sources
                .iter()
                .map(|(s, size)| Chunk {
                    blob: s.blake3.clone(),
                    offset: 0,
                    size: *size,
                })
                .collect(),
        };
        let held: Vec<String> = match &layout {
            Some(_) => {
                let mut held: Vec<String> = chunks
                    .iter()
                    .map(|c| c.blob.clone())
                    .filter(|b| !sources.iter().any(|(s, _)| &s.blake3 == b))
                    .collect();
                held.sort();
                held.dedup();
                held
            }
            None => vec![],
        };
        let frames = layout.map(|l| l.frames).unwrap_or_default();
        let path = {
            let cache_id = row.cache_id;
            let cache = self
                .db
                .call(move |c| caches::get_by_id(c, cache_id))
                .await?
                .ok_or_else(|| Error::CacheNotFound(row.cache_id.to_string()))?;
            StorePath::parse(&row.store_path, &cache.store_dir)?
        };
        // 1. Claim: rows before files. Nothing to store when the cache
        // has the path already (first writer wins).
        let claim: Vec<(String, u64)> = sources
            .iter()
            .map(|(s, size)| (s.blake3.clone(), *size))
            .collect();
        let (id, cache_id, hash_part) = (row.id.clone(), row.cache_id, path.hash_part().to_owned());
        let published = self
            .db
            .write_as(self.step_commit(&row.id), move |tx| {
                if nars::has_path(tx, cache_id, &hash_part)? {
                    return Ok(true);
                }
                blobs::claim(tx, &id, &claim)?;
                for blob in &held {
                    blobs::claim_existing(tx, &id, blob)?;
                }
                Ok(false)
            })
            .await?;
        if !published {
            crate::crash_point!("publish.after_claim");
            // 2. Move the files in.
            let store = self.store.clone();
            let lost = tokio::task::spawn_blocking(move || adopt_all(store.as_ref(), sources))
                .await
                .map_err(Error::internal)??;
            if let Some(part) = lost {
                let (key, n, blake3) = (row.id.clone(), part.n, part.row_blake3().to_owned());
                self.db
                    .write(move |tx| uploads::drop_part_if(tx, &key, n, &blake3))
                    .await?;
                return Err(Error::MissingParts {
                    missing: vec![part.n],
                });
            }
            crate::crash_point!("publish.after_adopt");
        }
        // 3. One transaction publishes.
        let new = NewNar {
            nar_hash: row.nar_hash.clone(),
            nar_size: row.nar_size,
            compression: "zstd".into(),
            file_hash: file_hash.to_string(),
            file_size,
            chunks,
        };
        let id = row.id.clone();
        self.db
            .write(move |tx| {
                // Still ours to publish: an upload removed meanwhile (by
                // the expiry sweep, with its claims) publishes nothing,
                // since GC may have freed the blobs it claimed.
                let ours =
                    uploads::get(tx, &row.id)?.is_some_and(|r| r.state == UploadState::Verifying);
                if !ours {
                    return Err(Error::UploadNotFound(row.id.clone()));
                }
                let cache = caches::get_by_id(tx, row.cache_id)?
                    .ok_or_else(|| Error::CacheNotFound(row.cache_id.to_string()))?;
                if !nars::has_path(tx, cache.id, path.hash_part())? {
                    let (nar, created) = nars::insert(tx, &new)?;
                    if let Some(listing) = &listing {
                        nars::insert_listing(tx, nar.id, listing)?;
                    }
                    // A chunked NAR: where its new chunks' frames are, for
                    // later uploads to reuse.
                    if created {
                        crate::db::chunks::record_frames(tx, &frames)?;
                    }
                    publish_path(tx, &cache, &path, &row.meta, &nar)?;
                }
                uploads::set_state(tx, &row.id, UploadState::Committed, None, None)?;
                uploads::delete_parts(tx, &row.id)?;
                crate::db::chunks::delete_manifest(tx, &row.id)?;
                blobs::release(tx, &row.id)
            })
            .await?;
        crate::crash_point!("publish.after_commit");
        // 4. The directory (a leftover here is swept by GC).
        self.slots.lock().map_err(Error::internal)?.remove(&id);
        let dir = self.dir_of(&id);
        let _ = tokio::task::spawn_blocking(move || super::remove_dir_if_present(&dir)).await;
        Ok(())
    }
}

/// Compares the verdict with what the client declared.
fn judge(row: &UploadRow, v: Verdict) -> Result<Verdict> {
    if v.nar_size != row.nar_size {
        return Err(Error::NarSizeMismatch {
            expected: row.nar_size,
            actual: v.nar_size,
        });
    }
    let actual = v.nar_hash.to_string();
    if actual != row.nar_hash {
        return Err(Error::NarHashMismatch {
            expected: row.nar_hash.clone(),
            actual,
        });
    }
    if let Some(size) = row.meta.file_size
        && size != v.upload_size
    {
        return Err(Error::FileSizeMismatch {
            expected: size,
            actual: v.upload_size,
        });
    }
    if let Some(hash) = &row.meta.file_hash {
        let expected = Sha256Hash::parse(hash)?;
        if expected != v.upload_hash {
            return Err(Error::FileHashMismatch {
                expected: expected.to_string(),
                actual: v.upload_hash.to_string(),
            });
        }
    }
    Ok(v)
}

/// Renders the narinfo of `path` in `cache` for `nar` and signs it with the
/// cache's key.
pub fn render_narinfo(
    cache: &CacheRow,
    path: &StorePath,
    meta: &UploadMeta,
    nar: &NarRow,
) -> Result<String> {
    let key = SigningKey::parse(&cache.signing_key)?;
    let mut references = meta
        .references
        .iter()
        .map(|r| StorePath::parse(r, &cache.store_dir))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    references.sort_by_key(|r| r.base_name());
    references.dedup();
    let deriver = match &meta.deriver {
        Some(d) => Some(StorePath::parse(d, &cache.store_dir)?),
        None => None,
    };
    let file_hash = Sha256Hash::parse(&nar.file_hash)?;
    let mut info = NarInfo {
        store_path: path.clone(),
        url: format!("nar/{}.nar.zst", file_hash.nix32()),
        compression: nar.compression.clone(),
        file_hash: Some(file_hash),
        file_size: Some(nar.file_size),
        nar_hash: Sha256Hash::parse(&nar.nar_hash)?,
        nar_size: nar.nar_size,
        references,
        deriver,
        ca: meta.ca.clone(),
        sigs: vec![],
    };
    let ours = key.sign(&info.fingerprint());
    // Keep signatures the client brought (e.g. upstream ones) unless they
    // use our key's name.
    info.sigs = meta
        .sigs
        .iter()
        .filter(|s| s.split(':').next() != Some(key.name()))
        .cloned()
        .collect();
    info.sigs.push(ours);
    Ok(info.render())
}

/// Writes the path row for a verified NAR (inside the caller's transaction).
fn publish_path(
    tx: &Tx<'_>,
    cache: &CacheRow,
    path: &StorePath,
    meta: &UploadMeta,
    nar: &NarRow,
) -> Result<()> {
    let narinfo = render_narinfo(cache, path, meta, nar)?;
    nars::insert_path(
        tx,
        cache.id,
        path.hash_part(),
        &path.to_absolute(),
        nar.id,
        &narinfo,
    )?;
    Ok(())
}

/// Publishes a path for a NAR that is already stored (dedup by NarHash).
/// Returns the NarHash the cache now publishes for the path (a path
/// published meanwhile keeps its own), or `None` when that NAR is gone
/// by now.
pub async fn link(
    db: &Db,
    cache: &CacheRow,
    path: &StorePath,
    meta: &UploadMeta,
    nar: NarRow,
) -> Result<Option<String>> {
    let (cache, path, meta) = (cache.clone(), path.clone(), meta.clone());
    db.write(move |tx| {
        if let Some(published) = nars::published_nar_hash(tx, cache.id, path.hash_part())? {
            return Ok(Some(published));
        }
        // GC may have removed an unreferenced NAR since it was looked up:
        // then there is nothing to link, and the caller uploads instead.
        if nars::find_by_nar_hash(tx, &nar.nar_hash)?.as_ref() != Some(&nar) {
            return Ok(None);
        }
        publish_path(tx, &cache, &path, &meta, &nar)?;
        Ok(Some(nar.nar_hash.clone()))
    })
    .await
}
