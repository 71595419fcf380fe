//! Receiving bytes: a request body streamed to a durable file.
//!
//! Bodies are written in batches of about 256 KiB on the blocking pool while
//! blake3 (always) and SHA-256 (when the client sent a `Content-Digest`
//! with it) run over the same bytes; the file is fsynced before the part
//! is recorded, so an acknowledged part survives a crash. With a shared
//! (S3) store the part is written to the bucket before it is recorded, and
//! that copy is the durable one: the local file is not fsynced.

use std::fmt::Display;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use super::Engine;
use super::compress::FrameWriter;
use super::verifier::Compression;
use crate::db::Commit;
use crate::db::uploads::{self, PartRow, StoredPart, UploadState};
use crate::error::{Error, Result};
use crate::store::fsync_dir;

/// Largest part number accepted.
pub const MAX_PART_NUMBER: u64 = 100_000;

/// Digest algorithms a client may declare for a body: `Content-Digest`
/// (sha-256, blake3) or tus `Upload-Checksum` (sha1, md5, sha256).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestAlgorithm {
    Sha256,
    Blake3,
    Sha1,
    Md5,
}

impl DigestAlgorithm {
    /// The name used in error messages.
    pub fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha-256",
            DigestAlgorithm::Blake3 => "blake3",
            DigestAlgorithm::Sha1 => "sha1",
            DigestAlgorithm::Md5 => "md5",
        }
    }
}

/// A digest the client declared for a part body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedDigest {
    pub algorithm: DigestAlgorithm,
    pub value: Vec<u8>,
}

/// What streaming a body to a file produced.
pub struct Received {
    pub size: u64,
    pub blake3: String,
    /// The file, when it holds the bytes as zstd frames.
    pub stored: Option<StoredPart>,
    /// The digest asked for (other than blake3), when one was.
    pub digest: Option<Vec<u8>>,
}

/// The one extra digest computed beside blake3, if any.
enum Extra {
    None,
    Sha256(Sha256),
    Sha1(sha1::Sha1),
    Md5(md5::Md5),
}

impl Extra {
    fn new(alg: Option<DigestAlgorithm>) -> Extra {
        match alg {
            Some(DigestAlgorithm::Sha256) => Extra::Sha256(Sha256::new()),
            Some(DigestAlgorithm::Sha1) => Extra::Sha1(sha1::Sha1::new()),
            Some(DigestAlgorithm::Md5) => Extra::Md5(md5::Md5::new()),
            Some(DigestAlgorithm::Blake3) | None => Extra::None,
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Extra::None => {}
            Extra::Sha256(h) => h.update(data),
            Extra::Sha1(h) => h.update(data),
            Extra::Md5(h) => h.update(data),
        }
    }

    fn finish(self) -> Option<Vec<u8>> {
        match self {
            Extra::None => None,
            Extra::Sha256(h) => Some(h.finalize().to_vec()),
            Extra::Sha1(h) => Some(h.finalize().to_vec()),
            Extra::Md5(h) => Some(h.finalize().to_vec()),
        }
    }
}

struct Sink {
    out: Out,
    blake: blake3::Hasher,
    extra: Extra,
}

/// Where received bytes go.
enum Out {
    /// Into the file as they are.
    AsSent(File),
    /// Through independent zstd frames into the file (a plain part: the
    /// file is then its piece of the stored `.nar.zst`).
    Frames(Box<FrameWriter<Kept>>),
}

/// The file of a part stored as frames, hashed as it is written.
struct Kept {
    file: File,
    blake: blake3::Hasher,
    size: u64,
}

impl Write for Kept {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.blake.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Sink {
    fn put(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.blake.update(data);
        self.extra.update(data);
        match &mut self.out {
            Out::AsSent(file) => file.write_all(data),
            Out::Frames(frames) => frames.write_all(data),
        }
    }

    /// Ends the file: syncs it when `durable`, and says what it holds
    /// when that is not the bytes as sent.
    fn close(self, durable: bool) -> std::io::Result<(Option<StoredPart>, blake3::Hasher, Extra)> {
        let (file, stored) = match self.out {
            Out::AsSent(file) => (file, None),
            Out::Frames(frames) => {
                let kept = frames.finish()?;
                let stored = StoredPart {
                    blob: kept.blake.finalize().to_hex().to_string(),
                    size: kept.size,
                };
                (kept.file, Some(stored))
            }
        };
        if durable {
            file.sync_all()?;
        }
        Ok((stored, self.blake, self.extra))
    }
}

/// Bytes per blocking write: small enough that parts in flight cost little
/// memory (a 4 GiB ingest with 4 parts in flight peaked 3 MiB higher with
/// 1 MiB batches), large enough that the hop to the blocking pool is rare.
const BATCH: usize = 256 << 10;

/// Streams `body` into a new file at `path` (as zstd frames at level
/// `frames`, when given), fsyncs it (when `durable`), and hashes it.
/// Stops with `PartTooLarge` past `limit` bytes. When the body breaks off
/// (the client went away), what arrived is still written, fsynced and
/// described, and the break is returned beside it: a door that keeps cut
/// bodies (tus) can use the prefix.
pub async fn write_stream<S, E>(
    path: &Path,
    mut body: S,
    limit: u64,
    extra: Option<DigestAlgorithm>,
    frames: Option<i32>,
    durable: bool,
) -> Result<(Received, Option<Error>)>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: Display,
{
    // Its directory too: an upload's directory is made after its row, and
    // a crash in between leaves a row without one.
    let at = path.to_owned();
    let file = tokio::task::spawn_blocking(move || {
        if let Some(dir) = at.parent() {
            std::fs::create_dir_all(dir)?;
        }
        File::create(&at)
    })
    .await
    .map_err(Error::internal)??;
    let out = match frames {
        None => Out::AsSent(file),
        Some(level) => Out::Frames(Box::new(FrameWriter::new(
            Kept {
                file,
                blake: blake3::Hasher::new(),
                size: 0,
            },
            level,
        )?)),
    };
    let mut sink = Some(Sink {
        out,
        blake: blake3::Hasher::new(),
        extra: Extra::new(extra),
    });
    let mut size = 0u64;
    // One batch buffer, handed to the blocking write and back, reused for
    // the whole part: a fresh buffer per batch made glibc's heap
    // (once its mmap threshold adapts) grow with the bytes received.
    let mut batch = Vec::with_capacity(BATCH);
    let flush = |sink: &mut Option<Sink>, data: Vec<u8>| {
        let mut s = sink.take();
        async move {
            tokio::task::spawn_blocking(move || -> std::io::Result<(Option<Sink>, Vec<u8>)> {
                if let Some(s) = &mut s {
                    s.put(&data)?;
                }
                Ok((s, data))
            })
            .await
            .map_err(Error::internal)?
            .map_err(Error::from)
        }
    };
    let mut broke = None;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                // The transport's own words (actix: "payload reached EOF
                // before completing: None") go to the log, not the client.
                tracing::debug!(received = size, error = %e, "request body broke off");
                broke = Some(Error::BadRequest(format!(
                    "the request body broke off after {size} bytes: send it again"
                )));
                break;
            }
        };
        size += chunk.len() as u64;
        if size > limit {
            return Err(Error::PartTooLarge { size, limit });
        }
        // Written before it would overflow, so the buffer keeps its size.
        if !batch.is_empty() && batch.len() + chunk.len() > BATCH {
            let (s, mut data) = flush(&mut sink, std::mem::take(&mut batch)).await?;
            sink = s;
            data.clear();
            batch = data;
        }
        batch.extend_from_slice(&chunk);
    }
    if !batch.is_empty() {
        sink = flush(&mut sink, batch).await?.0;
    }
    let sink = sink.ok_or_else(|| Error::internal("sink lost"))?;
    let received = tokio::task::spawn_blocking(move || -> Result<Received> {
        let (stored, blake, extra) = sink.close(durable)?;
        Ok(Received {
            size,
            blake3: blake.finalize().to_hex().to_string(),
            stored,
            digest: extra.finish(),
        })
    })
    .await
    .map_err(Error::internal)??;
    Ok((received, broke))
}

fn check_digest(got: &Received, want: &ExpectedDigest) -> Result<()> {
    let actual: Vec<u8> = match want.algorithm {
        DigestAlgorithm::Blake3 => hex::decode(&got.blake3).map_err(Error::internal)?,
        _ => got.digest.clone().unwrap_or_default(),
    };
    if actual != want.value {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        return Err(Error::PartDigestMismatch {
            algorithm: want.algorithm.name().to_owned(),
            expected: b64.encode(&want.value),
            actual: b64.encode(&actual),
        });
    }
    Ok(())
}

/// How a door wants a part body received.
#[derive(Clone, Debug, Default)]
pub struct PartRules {
    /// The declared length; required unless `keep_partial`.
    pub content_length: Option<u64>,
    /// A digest to check; on mismatch nothing is kept.
    pub digest: Option<ExpectedDigest>,
    /// Keep a body cut short (tus semantics) instead of refusing it.
    /// Ignored when a digest is given: a cut body cannot match it.
    pub keep_partial: bool,
}

fn temp_name(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n}.tmp-{}", uuid::Uuid::now_v7().simple()))
}

impl Engine {
    /// Path of a stored part.
    pub(super) fn part_path(&self, id: &str, n: u32) -> PathBuf {
        self.dir_of(id).join(format!("{n}.part"))
    }

    /// Receives part `n` of upload `id`. The answer means the part is on
    /// disk (fsynced) and recorded. Re-sending the same bytes is a no-op;
    /// other bytes replace the part.
    pub async fn put_part<S, E>(
        self: &Arc<Self>,
        id: &str,
        n: u64,
        rules: PartRules,
        body: S,
    ) -> Result<PartRow>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: Display,
    {
        if n == 0 || n > MAX_PART_NUMBER {
            return Err(Error::BadPartNumber(n));
        }
        let limit = self.cfg.max_part_size;
        let keep_partial = rules.keep_partial && rules.digest.is_none();
        let expected = match rules.content_length {
            Some(l) => Some(l),
            None if keep_partial => None,
            None => return Err(Error::LengthRequired),
        };
        if let Some(size) = expected.filter(|l| *l > limit) {
            return Err(Error::PartTooLarge { size, limit });
        }
        let row = self.get(id).await?;
        ensure_open(&row.id, row.state)?;
        self.refuse_after_verdict(id, n as u32)?;
        let dir = self.dir_of(id);
        let tmp = temp_name(&dir, n);
        let alg = rules.digest.as_ref().map(|d| d.algorithm);
        // On a shared store the bucket holds the acknowledged copy: the
        // local file only feeds this instance's verifier (a torn one is
        // found by its blake3 and read from the bucket instead), so it
        // is not fsynced.
        let durable = !self.store.shared();
        // A plain NAR's part is kept as zstd frames: the stored file is
        // written once, as it arrives (see `StoredPart`).
        let plain = Compression::parse(&row.compression) == Some(Compression::None);
        let frames = plain.then_some(self.cfg.zstd_level);
        let (received, broke) = match write_stream(&tmp, body, limit, alg, frames, durable).await {
            Ok(r) => r,
            Err(e) => {
                discard(tmp.clone()).await;
                return Err(e);
            }
        };
        let checked = if keep_partial {
            match broke {
                _ if received.size > 0 => Ok(()),
                Some(e) => Err(e),
                None => Err(Error::BadRequest("the request body was empty".into())),
            }
        } else if let Some(e) = broke {
            // A body that breaks off before its Content-Length (actix:
            // `PayloadError::Incomplete`, or a reset mid-body) is a
            // truncated part, the same as one that ends short.
            match expected {
                Some(expected) if received.size < expected => Err(Error::PartTruncated {
                    got: received.size,
                    expected,
                }),
                _ => Err(e),
            }
        } else if let Some(e) = expected.filter(|e| *e != received.size) {
            Err(Error::PartTruncated {
                got: received.size,
                expected: e,
            })
        } else if let Some(d) = &rules.digest {
            check_digest(&received, d)
        } else {
            Ok(())
        };
        if let Err(e) = checked {
            discard(tmp.clone()).await;
            return Err(e);
        }
        let part = PartRow {
            n: n as u32,
            size: received.size,
            blake3: received.blake3,
            stored: received.stored,
        };
        self.record_part(id, tmp, part).await
    }

    /// Takes a complete, fsynced local file as part `n` (Nix's PUT door).
    pub async fn adopt_part(self: &Arc<Self>, id: &str, n: u32, file: PathBuf) -> Result<PartRow> {
        let row = self.get(id).await?;
        ensure_open(&row.id, row.state)?;
        let part = tokio::task::spawn_blocking(move || -> Result<(PathBuf, PartRow)> {
            let mut hasher = blake3::Hasher::new();
            let size = std::io::copy(&mut File::open(&file)?, &mut hasher)?;
            Ok((
                file,
                PartRow {
                    n,
                    size,
                    blake3: hasher.finalize().to_hex().to_string(),
                    stored: None,
                },
            ))
        })
        .await
        .map_err(Error::internal)??;
        self.record_part(id, part.0, part.1).await
    }

    /// Moves a received file into place as a part and records it. On a
    /// shared (remote) store the part is written there first, so that any
    /// instance can fold it: the answer then means "in the store and
    /// recorded".
    async fn record_part(
        self: &Arc<Self>,
        id: &str,
        file: PathBuf,
        part: PartRow,
    ) -> Result<PartRow> {
        let key = id.to_owned();
        let n = part.n;
        let existing = self
            .db
            .call(move |c| Ok(uploads::parts(c, &key)?.into_iter().find(|p| p.n == n)))
            .await?;
        if existing.as_ref() == Some(&part) {
            discard(file.clone()).await;
            return Ok(part);
        }
        let slot = self.slot_or_load(id).await?;
        if let Err(e) = self.refuse_after_verdict(id, n) {
            discard(file.clone()).await;
            return Err(e);
        }
        if self.store.shared() {
            let (store, blob, from) = (self.store.clone(), part.blob().to_owned(), file.clone());
            let copied = tokio::task::spawn_blocking(move || store.copy_in(&blob, &from))
                .await
                .map_err(Error::internal)?;
            if let Err(e) = copied {
                discard(file.clone()).await;
                tracing::warn!(upload = %id, part = n, error = %e, "the blob store refused a part");
                return Err(Error::Unavailable(format!(
                    "the blob store did not take part {n}: send it again"
                )));
            }
        }
        // Hold the gate open across rename and row: `complete` cannot
        // close the upload halfway through recording this part.
        let gate = slot.closing.read().await;
        if *gate {
            discard(file.clone()).await;
            return Err(Error::UploadClosed {
                id: id.to_owned(),
                state: UploadState::Verifying.as_str().to_owned(),
            });
        }
        let dest = self.part_path(id, n);
        let dir = self.dir_of(id);
        crate::crash_point!("part.after_write");
        // A one-request upload's part needs no durable name here: the
        // publish moves it into the store, and syncs that directory.
        let commit = self.step_commit(id);
        let durable = !self.store.shared() && commit == Commit::Durable;
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::rename(&file, &dest)?;
            if durable { fsync_dir(&dir) } else { Ok(()) }
        })
        .await
        .map_err(Error::internal)??;
        crate::crash_point!("part.after_rename");
        let (key, p) = (id.to_owned(), part.clone());
        self.db
            .write_as(commit, move |tx| uploads::upsert_part(tx, &key, &p))
            .await?;
        {
            let mut s = slot.state.lock().await;
            s.present.insert(n);
            let folded = s.verifier.as_ref().is_some_and(|v| v.next > n);
            if existing.is_some() && (folded || s.failed.is_some()) {
                // A replaced part invalidates whatever was folded from it,
                // and may cure a failure the verifier met.
                s.stale = true;
            }
        }
        drop(gate);
        let engine = self.clone();
        let id = id.to_owned();
        self.rt.spawn(async move {
            if let Err(e) = engine.advance(&id, None).await {
                tracing::debug!(upload = %id, error = %e, "verifier stopped");
            }
        });
        Ok(part)
    }
}

impl Engine {
    /// Refuses part `n` when the verifier already found an earlier part
    /// wrong: nothing after it can change the verdict. Checked without
    /// waiting: while a fold runs, the part is taken.
    fn refuse_after_verdict(&self, id: &str, n: u32) -> Result<()> {
        let Some(slot) = self.slot(id)? else {
            return Ok(());
        };
        let Ok(s) = slot.state.try_lock() else {
            return Ok(());
        };
        match (s.verdict_at, &s.failed) {
            (Some(at), Some(e)) if n > at && !s.stale => Err(Error::PartAfterVerdict {
                n,
                at,
                verdict: e.to_string(),
            }),
            _ => Ok(()),
        }
    }
}

pub(super) fn ensure_open(id: &str, state: UploadState) -> Result<()> {
    if state == UploadState::Open {
        Ok(())
    } else {
        Err(Error::UploadClosed {
            id: id.to_owned(),
            state: state.as_str().to_owned(),
        })
    }
}

impl Engine {
    fn staged_path(&self, cache_id: i64, name: &str) -> Result<PathBuf> {
        let ok = !name.is_empty()
            && name.len() <= 128
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.')
            && !name.starts_with('.');
        if !ok {
            return Err(Error::BadRequest(format!(
                "{name:?} is not a NAR file name"
            )));
        }
        Ok(self
            .uploads_dir
            .join("staged")
            .join(format!("{cache_id}-{name}")))
    }

    /// Nix's door, first half: a whole NAR file `PUT` before its narinfo.
    /// It waits (fsynced) under `staged/` until the narinfo names it.
    pub async fn stage<S, E>(&self, cache_id: i64, name: &str, body: S) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let dest = self.staged_path(cache_id, name)?;
        let dir = self.uploads_dir.join("staged");
        let tmp = temp_name(&dir, 0);
        let received = match write_stream(&tmp, body, u64::MAX, None, None, true).await {
            Ok((r, None)) => r,
            Ok((_, Some(e))) => {
                discard(tmp.clone()).await;
                return Err(e);
            }
            Err(e) => {
                discard(tmp.clone()).await;
                return Err(e);
            }
        };
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::rename(&tmp, &dest)?;
            fsync_dir(&dir)
        })
        .await
        .map_err(Error::internal)??;
        Ok(received.size)
    }

    /// The staged file called `name`, if one was `PUT`.
    pub async fn staged(&self, cache_id: i64, name: &str) -> Result<Option<PathBuf>> {
        let p = self.staged_path(cache_id, name)?;
        tokio::task::spawn_blocking(move || p.exists().then_some(p))
            .await
            .map_err(Error::internal)
    }

    /// Drops a staged file that is no longer needed.
    pub async fn unstage(&self, file: PathBuf) {
        discard(file).await;
    }
}

/// Removes a file that is no longer wanted, on the blocking pool; a file
/// already gone is fine, and a failure only leaves a leftover for GC.
async fn discard(file: PathBuf) {
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(file)).await;
}
