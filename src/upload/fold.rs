//! Folding parts, in order, into an upload's verifier.
//!
//! [`Engine::advance`] folds parts into the verifier as far as the
//! contiguous prefix reaches; it runs after every part and again at
//! `complete`, so by the time the last part lands most of the work is done.
//! The database is the record of the parts (they may arrive through other
//! instances). Every part is hashed again (blake3) as it is folded: a part
//! whose file no longer matches its row, or vanished, is dropped and
//! reported as missing, so the client sends it again and no blob is ever
//! stored under a name that is not its hash.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use super::Engine;
use super::verifier::{Compression, Verifier};
use crate::db::uploads;
use crate::error::{Error, Result};

/// A reader that hashes (blake3) what it reads.
struct Hashing<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A part to fold: its number, its file, and the blob its row names.
pub(super) struct Source {
    pub(super) n: u32,
    pub(super) path: PathBuf,
    /// The blake3 of the file: the blob it becomes.
    pub(super) blake3: String,
    /// The blake3 of the part as sent (its row's), when the file holds it
    /// as zstd frames.
    pub(super) frames_of: Option<String>,
}

impl Source {
    /// Part `p`, its file at `path`.
    pub(super) fn of(p: &uploads::PartRow, path: PathBuf) -> Source {
        Source {
            n: p.n,
            path,
            blake3: p.blob().to_owned(),
            frames_of: p.stored.as_ref().map(|_| p.blake3.clone()),
        }
    }

    /// The blake3 its row names (what the client sent).
    pub(super) fn row_blake3(&self) -> &str {
        self.frames_of.as_deref().unwrap_or(&self.blake3)
    }
}

/// How a fold of several parts ended.
enum Folded {
    Done,
    /// Part `n`'s bytes are gone or are not those its row names.
    Lost(Source),
    /// The fold stopped at this part number.
    Failed(Error, u32),
    /// A local part file was not the part recorded (replaced through
    /// another instance), and the shared store has the recorded one: the
    /// file is gone now, fold again.
    Again,
}

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
        // The database is the record: parts may have come through another
        // instance, or replaced one this verifier folded.
        let key = id.to_owned();
        let parts = self.db.call(move |c| uploads::parts(c, &key)).await?;
        s.present = parts.iter().map(|p| p.n).collect();
        let replaced = s.folded.iter().enumerate().any(|(i, b)| {
            parts
                .iter()
                .find(|p| p.n as usize == i + 1)
                .is_none_or(|p| &p.blake3 != b)
        });
        if replaced {
            s.stale = true;
        }
        let needs_reset = s.stale
            || s.verifier.is_none()
            || matches!((&s.verifier, until), (Some(v), Some(u)) if v.next > u + 1);
        let verifier = if needs_reset {
            let row = self.get(id).await?;
            if row.compression == super::BUCKET {
                return Ok(());
            }
            // A place in the budget of live verifiers. Without one, a part
            // waits on disk; `complete` (`until`) folds anyway: it ends in
            // a verdict soon and lets go, and idle uploads holding every
            // place must not starve it.
            if s.permit.is_none() {
                match self.verifiers.clone().try_acquire_owned() {
                    Ok(p) => s.permit = Some(p),
                    Err(_) if until.is_none() => return Ok(()),
                    Err(_) => {}
                }
            }
            s.stale = false;
            s.failed = None;
            s.verdict_at = None;
            s.folded.clear();
            let compression = Compression::parse(&row.compression).unwrap_or(Compression::Zstd);
            // A file of its own per verifier: a reset never truncates a
            // file an earlier verifier wrote.
            let out = self
                .dir_of(id)
                .join(format!("nar-{}.zst", uuid::Uuid::now_v7().simple()));
            let level = self.cfg.zstd_level;
            let store = self.store.clone();
            let plain_frames = parts
                .iter()
                .find(|p| p.n == 1)
                .is_none_or(|p| p.stored.is_some());
            tokio::task::spawn_blocking(move || {
                if let Some(dir) = out.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                match compression {
                    Compression::Chunked => Verifier::chunked(row.nar_size, store),
                    // Parts kept as frames, unless part 1 was kept as
                    // sent (by a version before them): then the NAR is
                    // compressed here, as it was.
                    Compression::None if plain_frames => Verifier::plain_frames(row.nar_size),
                    _ => Verifier::new(compression, row.nar_size, &out, level),
                }
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
        // A chunked upload's manifest grows beside its parts: hand in what
        // was added since.
        let manifest = match verifier.manifest_known() {
            Some(known) => {
                let key = id.to_owned();
                self.db
                    .call(move |c| crate::db::chunks::manifest_from(c, &key, known, u64::MAX))
                    .await?
            }
            None => vec![],
        };
        if todo.is_empty() && manifest.is_empty() {
            s.verifier = Some(verifier);
            return Ok(());
        }
        let sources: Vec<Source> = todo
            .iter()
            .filter_map(|&n| parts.iter().find(|p| p.n == n))
            .map(|p| Source::of(p, self.part_path(id, p.n)))
            .collect();
        let store = self.store.clone();
        let bytes: u64 = parts
            .iter()
            .filter(|p| todo.contains(&p.n))
            .map(|p| p.size)
            .sum();
        let started = std::time::Instant::now();
        let (verifier, folded) = tokio::task::spawn_blocking(move || {
            let mut verifier = verifier;
            let folded = match verifier.extend_manifest(manifest) {
                Ok(()) => fold_parts(&mut verifier, &store, sources),
                Err(e) => Folded::Failed(e, verifier.next),
            };
            (verifier, folded)
        })
        .await
        .map_err(Error::internal)?;
        self.stats.verified(bytes, started.elapsed());
        s.touched = std::time::Instant::now();
        match folded {
            Folded::Done => {
                s.verifier = Some(verifier);
                let done: Vec<&crate::db::uploads::PartRow> = todo
                    .iter()
                    .filter_map(|&n| parts.iter().find(|p| p.n == n))
                    .collect();
                s.folded.extend(done.iter().map(|p| p.blake3.clone()));
                if self.store.shared() {
                    // Folded, and in the shared store already: the local
                    // copy has done its work (a new fold reads the store).
                    let files: Vec<PathBuf> =
                        done.iter().map(|p| self.part_path(id, p.n)).collect();
                    let _ = tokio::task::spawn_blocking(move || {
                        for f in files {
                            let _ = std::fs::remove_file(f);
                        }
                    })
                    .await;
                }
            }
            Folded::Failed(e, n) => {
                if e.is_verdict() {
                    s.verdict_at = Some(n);
                }
                s.failed = Some(e);
                // The verifier is gone: so is its place in the budget.
                s.permit = None;
            }
            Folded::Again => {
                s.stale = true;
                drop(s);
                return Box::pin(self.advance(id, until)).await;
            }
            Folded::Lost(part) => {
                tracing::warn!(
                    upload = %id, part = part.n,
                    "a part's file is gone or does not hash to its recorded blake3: dropped, the client will send it again"
                );
                let key = id.to_owned();
                let (n, blake3) = (part.n, part.row_blake3().to_owned());
                if self
                    .db
                    .write(move |tx| uploads::drop_part_if(tx, &key, n, &blake3))
                    .await?
                {
                    s.present.remove(&part.n);
                }
                // Fold again from part 1 once the part is back.
                s.stale = true;
                s.permit = None;
                s.failed = Some(Error::MissingParts {
                    missing: vec![part.n],
                });
            }
        }
        Ok(())
    }
}

/// Folds `sources` in order, checking each part's blake3 as it is read.
fn fold_parts(
    verifier: &mut Verifier,
    store: &crate::store::SharedStore,
    sources: Vec<Source>,
) -> Folded {
    for source in sources {
        // A part already moved into the blob store by an interrupted
        // publish (its blob claimed, so GC leaves it) is read from there.
        let mut local = true;
        let reader: Box<dyn Read + Send> = match std::fs::File::open(&source.path) {
            Ok(f) => Box::new(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                local = false;
                match store.exists(&source.blake3) {
                    Ok(true) => match store.open(&source.blake3, 0) {
                        Ok(r) => r,
                        Err(e) => return Folded::Failed(e.into(), source.n),
                    },
                    Ok(false) => return Folded::Lost(source),
                    Err(e) => return Folded::Failed(e.into(), source.n),
                }
            }
            Err(e) => return Folded::Failed(e.into(), source.n),
        };
        let mut hashing = Hashing {
            inner: reader,
            hasher: blake3::Hasher::new(),
        };
        let frames = source.frames_of.is_some();
        let folded = match (verifier.takes_frames(), frames) {
            (true, true) | (false, false) => {
                verifier.fold(&mut hashing, &source.blake3, &source.path)
            }
            // Frames kept by this version, folded after a part 1 kept as
            // sent: the verifier takes the NAR bytes.
            (false, true) => match zstd::stream::read::Decoder::new(&mut hashing) {
                Ok(frames) => verifier.fold(frames, &source.blake3, &source.path),
                Err(e) => Err(e.into()),
            },
            // A part kept as sent (by an older version) after parts kept
            // as frames: sent again, it is kept as frames too.
            (true, false) => {
                tracing::warn!(
                    part = source.n,
                    "a part kept as sent among parts kept as zstd frames: it is asked for again"
                );
                return Folded::Lost(source);
            }
        };
        if folded.is_err() {
            // Judge the part only if it still is the part acknowledged:
            // hash what the verifier left unread before deciding.
            let _ = std::io::copy(&mut hashing, &mut std::io::sink());
        }
        if hashing.hasher.finalize().to_hex().as_str() != source.blake3 {
            if local && store.shared() && store.exists(&source.blake3).unwrap_or(false) {
                return match std::fs::remove_file(&source.path) {
                    Ok(()) => Folded::Again,
                    Err(e) => Folded::Failed(e.into(), source.n),
                };
            }
            // Bytes changed or cut on disk are a fault, never a verdict.
            return Folded::Lost(source);
        }
        if let Err(e) = folded {
            return Folded::Failed(e, source.n);
        }
    }
    Folded::Done
}
