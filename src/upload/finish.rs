//! Folding parts in order, finishing the verdict, and publishing.
//!
//! [`Engine::advance`] folds parts into the verifier as far as the
//! contiguous prefix reaches; it runs after every part and again at
//! `complete`, so by the time the last part lands most of the work is done.
//! Publishing moves the blobs into the store (a rename each, no copy),
//! then writes the NAR row (with its `.ls` listing), the path row with its
//! signed narinfo, and the upload's new state in one transaction.

use std::sync::Arc;

use rusqlite::Transaction;

use super::verifier::{Compression, Verdict, Verifier};
use super::{Completion, Engine};
use crate::db::Db;
use crate::db::caches::{self, CacheRow};
use crate::db::nars::{self, Chunk, NarRow, NewNar};
use crate::db::uploads::{self, PartRow, UploadMeta, UploadRow, UploadState};
use crate::error::{Error, Result};
use crate::nar::{NarInfo, Sha256Hash, SigningKey, StorePath};

impl Engine {
    /// Folds every received part that extends the verified prefix, up to
    /// part `until` when given.
    pub(super) async fn advance(self: &Arc<Self>, id: &str, until: Option<u32>) -> Result<()> {
        let slot = self.slot_or_load(id).await?;
        if until.is_none() && *slot.closing.read().await {
            return Ok(()); // finishing: only `complete`'s own fold runs
        }
        let mut s = slot.state.lock().await;
        if s.failed.is_some() && !s.stale {
            return Ok(());
        }
        let needs_reset = s.stale
            || s.verifier.is_none()
            || matches!((&s.verifier, until), (Some(v), Some(u)) if v.next > u + 1);
        let mut verifier = if needs_reset {
            s.stale = false;
            s.failed = None;
            let row = self.get(id).await?;
            if row.compression == super::BUCKET {
                return Ok(());
            }
            let compression = Compression::parse(&row.compression).unwrap_or(Compression::Zstd);
            // A file of its own per verifier: a reset never truncates a
            // file an earlier verifier wrote.
            let out = self
                .dir_of(id)
                .join(format!("nar-{}.zst", uuid::Uuid::now_v7().simple()));
            let level = self.cfg.zstd_level;
            tokio::task::spawn_blocking(move || {
                Verifier::new(compression, row.nar_size, &out, level)
            })
            .await
            .map_err(Error::internal)??
        } else {
            match s.verifier.take() {
                Some(v) => v,
                None => return Ok(()),
            }
        };
        let mut todo = vec![];
        let mut n = verifier.next;
        while s.present.contains(&n) && until.is_none_or(|u| n <= u) {
            todo.push(n);
            n += 1;
        }
        if todo.is_empty() {
            s.verifier = Some(verifier);
            return Ok(());
        }
        let key = id.to_owned();
        let parts = self.db.call(move |c| uploads::parts(c, &key)).await?;
        let sources: Vec<(std::path::PathBuf, Option<String>)> = todo
            .iter()
            .map(|&n| {
                let blob = parts.iter().find(|p| p.n == n).map(|p| p.blake3.clone());
                (self.part_path(id, n), blob)
            })
            .collect();
        let store = self.store.clone();
        let bytes: u64 = parts
            .iter()
            .filter(|p| todo.contains(&p.n))
            .map(|p| p.size)
            .sum();
        let started = std::time::Instant::now();
        let (verifier, res) = tokio::task::spawn_blocking(move || {
            for (path, blob) in sources {
                // A part already moved into the blob store by an
                // interrupted publish is read from there.
                let reader: Box<dyn std::io::Read + Send> = match std::fs::File::open(&path) {
                    Ok(f) => Box::new(f),
                    Err(e) => match blob {
                        Some(b) if store.exists(&b).unwrap_or(false) => match store.open(&b, 0) {
                            Ok(r) => r,
                            Err(e) => return (verifier, Err(Error::from(e))),
                        },
                        _ => return (verifier, Err(Error::from(e))),
                    },
                };
                if let Err(e) = verifier.fold(reader) {
                    return (verifier, Err(e));
                }
            }
            (verifier, Ok(()))
        })
        .await
        .map_err(Error::internal)?;
        self.stats.verified(bytes, started.elapsed());
        match res {
            Ok(()) => s.verifier = Some(verifier),
            Err(e) => s.failed = Some(e),
        }
        Ok(())
    }

    /// Completes an upload of `total` parts: verifies and publishes, or
    /// answers `Verifying` when that takes longer than the configured wait.
    pub async fn complete(self: &Arc<Self>, id: &str, total: u32) -> Result<Completion> {
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
        if total == 0 {
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
        let mut rx = {
            let mut finishing = self.finishing.lock().map_err(Error::internal)?;
            match finishing.get(id) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = tokio::sync::watch::channel(false);
                    finishing.insert(id.to_owned(), rx.clone());
                    let engine = self.clone();
                    let id = id.to_owned();
                    tokio::spawn(async move {
                        if let Err(e) = engine.finish(&id, total).await {
                            tracing::error!(upload = %id, error = %e, "finishing an upload failed");
                        }
                        if let Ok(mut f) = engine.finishing.lock() {
                            f.remove(&id);
                        }
                        let _ = tx.send(true);
                    });
                    rx
                }
            }
        };
        let timed_out = tokio::time::timeout(self.cfg.complete_wait, rx.wait_for(|d| *d))
            .await
            .is_err();
        if timed_out {
            return Ok(Completion::Verifying);
        }
        let row = self.get(id).await?;
        match row.state {
            UploadState::Committed => Ok(Completion::Committed {
                narinfo_url: self.narinfo_url(&row).await?,
            }),
            UploadState::Failed => Err(Error::UploadFailed(row.error.unwrap_or_default())),
            UploadState::Open | UploadState::Verifying => Err(Error::Unavailable(
                "verification could not finish; call complete again".into(),
            )),
        }
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
    async fn finish(self: &Arc<Self>, id: &str, total: u32) -> Result<()> {
        // Close the slot first: from here on no part may be replaced and no
        // background fold may start (record_part and advance check this
        // under the same lock).
        let slot = self.slot_or_load(id).await?;
        *slot.closing.write().await = true;
        let key = id.to_owned();
        let claimed = self
            .db
            .write(move |tx| uploads::claim_for_verifying(tx, &key, total))
            .await?;
        if !claimed {
            return Ok(()); // already committed or failed by another finisher
        }
        let verdict = self.verdict(id, total).await;
        let row = self.get(id).await?;
        let outcome = verdict.and_then(|v| judge(&row, v));
        match outcome {
            Ok(verdict) => self.publish(row, verdict, total).await,
            Err(e) if !e.is_verdict() => {
                // Not the client's fault (I/O, disk full): keep the parts,
                // reopen, and let `complete` be called again.
                let key = id.to_owned();
                self.db
                    .write(move |tx| uploads::set_state(tx, &key, UploadState::Open, None, None))
                    .await?;
                self.slots.lock().map_err(Error::internal)?.remove(id);
                Err(e)
            }
            Err(e) => {
                let body = e.to_json();
                let key = id.to_owned();
                self.db
                    .write(move |tx| {
                        uploads::set_state(tx, &key, UploadState::Failed, None, Some(&body))
                    })
                    .await?;
                self.slots.lock().map_err(Error::internal)?.remove(id);
                let dir = self.dir_of(id);
                tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir))
                    .await
                    .map_err(Error::internal)??;
                Ok(())
            }
        }
    }

    async fn verdict(self: &Arc<Self>, id: &str, total: u32) -> Result<Verdict> {
        self.advance(id, Some(total)).await?;
        let slot = self.slot_or_load(id).await?;
        let mut s = slot.state.lock().await;
        if let Some(e) = s.failed.take() {
            return Err(e);
        }
        let v = s
            .verifier
            .take()
            .ok_or_else(|| Error::internal("verifier missing"))?;
        if v.next != total + 1 {
            return Err(Error::internal(format!(
                "verifier at part {} of {total}",
                v.next
            )));
        }
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
        let key = row.id.clone();
        let parts = self.db.call(move |c| uploads::parts(c, &key)).await?;
        let parts: Vec<PartRow> = parts.into_iter().filter(|p| p.n <= total).collect();
        let store = self.store.clone();
        let paths: Vec<_> = parts.iter().map(|p| self.part_path(&row.id, p.n)).collect();
        let listing = verdict.listing.take();
        let (chunks, file_hash, file_size) = tokio::task::spawn_blocking(move || -> Result<_> {
            if let Some(c) = verdict.compressed {
                store.adopt(&c.blake3, &c.path)?;
                let chunk = Chunk {
                    blob: c.blake3,
                    size: c.size,
                };
                return Ok((vec![chunk], c.sha256, c.size));
            }
            let mut chunks = vec![];
            for (p, path) in parts.iter().zip(paths) {
                if p.size == 0 {
                    continue;
                }
                if path.exists() {
                    store.adopt(&p.blake3, &path)?;
                } else if !store.exists(&p.blake3)? {
                    return Err(Error::internal(format!("part {} vanished", p.n)));
                }
                chunks.push(Chunk {
                    blob: p.blake3.clone(),
                    size: p.size,
                });
            }
            Ok((chunks, verdict.upload_hash, verdict.upload_size))
        })
        .await
        .map_err(Error::internal)??;
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
                let cache = caches::get_by_id(tx, row.cache_id)?
                    .ok_or_else(|| Error::CacheNotFound(row.cache_id.to_string()))?;
                let (nar, _) = nars::insert(tx, &new)?;
                if let Some(listing) = &listing {
                    nars::insert_listing(tx, nar.id, listing)?;
                }
                let path = StorePath::parse(&row.store_path, &cache.store_dir)?;
                publish_path(tx, &cache, &path, &row.meta, &nar)?;
                uploads::set_state(tx, &row.id, UploadState::Committed, None, None)?;
                tx.execute("DELETE FROM upload_parts WHERE upload_id = ?1", [&row.id])?;
                Ok(())
            })
            .await?;
        self.slots.lock().map_err(Error::internal)?.remove(&id);
        let dir = self.dir_of(&id);
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
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
    tx: &Transaction<'_>,
    cache: &CacheRow,
    path: &StorePath,
    meta: &UploadMeta,
    nar: &NarRow,
) -> Result<()> {
    let narinfo = render_narinfo(cache, path, meta, nar)?;
    nars::upsert_path(
        tx,
        cache.id,
        path.hash_part(),
        &path.to_absolute(),
        nar.id,
        &narinfo,
    )
}

/// Publishes a path for a NAR that is already stored (dedup by NarHash).
/// `false` when that NAR is gone by now.
pub async fn link(
    db: &Db,
    cache: &CacheRow,
    path: &StorePath,
    meta: &UploadMeta,
    nar: NarRow,
) -> Result<bool> {
    let (cache, path, meta) = (cache.clone(), path.clone(), meta.clone());
    db.write(move |tx| {
        // GC may have removed an unreferenced NAR since it was looked up:
        // then there is nothing to link, and the caller uploads instead.
        if nars::find_by_nar_hash(tx, &nar.nar_hash)?.as_ref() != Some(&nar) {
            return Ok(false);
        }
        publish_path(tx, &cache, &path, &meta, &nar)?;
        Ok(true)
    })
    .await
}
