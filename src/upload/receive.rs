//! Receiving bytes: a request body streamed to a durable file.
//!
//! Bodies are written in batches of about 1 MiB on the blocking pool while
//! blake3 (always) and SHA-256 (when the client sent a `Content-Digest`
//! with it) run over the same bytes; the file is fsynced before the part
//! is recorded, so an acknowledged part survives a crash.

use std::fmt::Display;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use super::Engine;
use crate::db::uploads::{self, PartRow, UploadState};
use crate::error::{Error, Result};
use crate::store::fsync_dir;

/// Largest part number accepted.
pub const MAX_PART_NUMBER: u64 = 100_000;

/// Digest algorithms a client may send in `Content-Digest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestAlgorithm {
    Sha256,
    Blake3,
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
    pub sha256: Option<[u8; 32]>,
}

struct Sink {
    file: File,
    blake: blake3::Hasher,
    sha: Option<Sha256>,
}

impl Sink {
    fn put(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.blake.update(data);
        if let Some(sha) = &mut self.sha {
            sha.update(data);
        }
        self.file.write_all(data)
    }
}

const BATCH: usize = 1 << 20;

/// Streams `body` into a new file at `path`, fsyncs it, and hashes it.
/// Stops with `PartTooLarge` past `limit` bytes.
pub async fn write_stream<S, E>(path: &Path, mut body: S, limit: u64, want_sha: bool) -> Result<Received>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: Display,
{
    let file = File::create(path)?;
    let mut sink = Some(Sink {
        file,
        blake: blake3::Hasher::new(),
        sha: want_sha.then(Sha256::new),
    });
    let mut size = 0u64;
    let mut batch = BytesMut::with_capacity(BATCH);
    let flush = |sink: &mut Option<Sink>, data: Bytes| {
        let mut s = sink.take();
        async move {
            let s = tokio::task::spawn_blocking(move || -> std::io::Result<Option<Sink>> {
                if let Some(s) = &mut s {
                    s.put(&data)?;
                }
                Ok(s)
            })
            .await
            .map_err(Error::internal)??;
            Ok::<_, Error>(s)
        }
    };
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Error::BadRequest(format!("the request body broke off: {e}")))?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(Error::PartTooLarge { size, limit });
        }
        batch.extend_from_slice(&chunk);
        if batch.len() >= BATCH {
            let data = batch.split().freeze();
            sink = flush(&mut sink, data).await?;
        }
    }
    if !batch.is_empty() {
        let data = batch.split().freeze();
        sink = flush(&mut sink, data).await?;
    }
    let sink = sink.ok_or_else(|| Error::internal("sink lost"))?;
    tokio::task::spawn_blocking(move || -> Result<Received> {
        sink.file.sync_all()?;
        Ok(Received {
            size,
            blake3: sink.blake.finalize().to_hex().to_string(),
            sha256: sink.sha.map(|s| s.finalize().into()),
        })
    })
    .await
    .map_err(Error::internal)?
}

fn check_digest(got: &Received, want: &ExpectedDigest) -> Result<()> {
    let (name, actual): (&str, Vec<u8>) = match want.algorithm {
        DigestAlgorithm::Sha256 => ("sha-256", got.sha256.map(|h| h.to_vec()).unwrap_or_default()),
        DigestAlgorithm::Blake3 => (
            "blake3",
            hex::decode(&got.blake3).map_err(Error::internal)?,
        ),
    };
    if actual != want.value {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        return Err(Error::PartDigestMismatch {
            algorithm: name.to_owned(),
            expected: b64.encode(&want.value),
            actual: b64.encode(&actual),
        });
    }
    Ok(())
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
        content_length: Option<u64>,
        digest: Option<ExpectedDigest>,
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
        let expected = content_length.ok_or(Error::LengthRequired)?;
        if expected > limit {
            return Err(Error::PartTooLarge {
                size: expected,
                limit,
            });
        }
        let row = self.get(id).await?;
        ensure_open(&row.id, row.state)?;
        let dir = self.dir_of(id);
        let tmp = temp_name(&dir, n);
        let want_sha = matches!(&digest, Some(d) if d.algorithm == DigestAlgorithm::Sha256);
        let received = match write_stream(&tmp, body, limit, want_sha).await {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let checked = if received.size != expected {
            Err(Error::PartTruncated {
                got: received.size,
                expected,
            })
        } else if let Some(d) = &digest {
            check_digest(&received, d)
        } else {
            Ok(())
        };
        if let Err(e) = checked {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let part = PartRow {
            n: n as u32,
            size: received.size,
            blake3: received.blake3,
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
                },
            ))
        })
        .await
        .map_err(Error::internal)??;
        self.record_part(id, part.0, part.1).await
    }

    /// Moves a received file into place as a part and records it.
    async fn record_part(self: &Arc<Self>, id: &str, file: PathBuf, part: PartRow) -> Result<PartRow> {
        let key = id.to_owned();
        let n = part.n;
        let existing = self
            .db
            .call(move |c| Ok(uploads::parts(c, &key)?.into_iter().find(|p| p.n == n)))
            .await?;
        if existing.as_ref() == Some(&part) {
            let _ = std::fs::remove_file(&file);
            return Ok(part);
        }
        let dest = self.part_path(id, n);
        let dir = self.dir_of(id);
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::rename(&file, &dest)?;
            fsync_dir(&dir)
        })
        .await
        .map_err(Error::internal)??;
        let (key, p) = (id.to_owned(), part.clone());
        self.db.call(move |c| uploads::upsert_part(c, &key, &p)).await?;
        let slot = self.slot_or_load(id).await?;
        {
            let mut s = slot.lock().await;
            s.present.insert(n);
            if existing.is_some() && (s.failed.is_some() || s.verifier.as_ref().is_some_and(|v| v.next > n)) {
                // A replaced part invalidates whatever was folded from it,
                // and may cure a failure the verifier met.
                s.stale = true;
            }
        }
        let engine = self.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            if let Err(e) = engine.advance(&id, None).await {
                tracing::debug!(upload = %id, error = %e, "verifier stopped");
            }
        });
        Ok(part)
    }
}

fn ensure_open(id: &str, state: UploadState) -> Result<()> {
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
            return Err(Error::BadRequest(format!("{name:?} is not a NAR file name")));
        }
        Ok(self.uploads_dir.join("staged").join(format!("{cache_id}-{name}")))
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
        std::fs::create_dir_all(&dir)?;
        let tmp = temp_name(&dir, 0);
        let received = match write_stream(&tmp, body, u64::MAX, false).await {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
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
    pub fn staged(&self, cache_id: i64, name: &str) -> Result<Option<PathBuf>> {
        let p = self.staged_path(cache_id, name)?;
        Ok(p.exists().then_some(p))
    }
}
