//! Pushing one store path: hold the lock of its resume state (waiting
//! while another process pushes the same path), pick up or create its
//! upload, stream its parts (several in flight, each retried alone), wait
//! for its references, then complete and wait for the verdict.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use indicatif::ProgressBar;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use super::chunked_parts::ChunkedStream;
use super::http::{Api, Completed, UploadStart};
use super::parts::NarStream;
use super::pathinfo::PathInfo;
use super::progress::Progress;
use super::resume::{PathLock, StateFile};
use super::{ClientError, Result};
use crate::api::CreateUpload;

/// What all path tasks of one push share.
pub(crate) struct Ctx {
    pub api: Api,
    pub cache: String,
    /// Requested part size, already capped by the server's `max_part_size`.
    pub part_size: u64,
    pub state: StateFile,
    /// One permit per part buffer in memory: bounds memory to
    /// `permits × part_size`.
    pub part_permits: Arc<Semaphore>,
    pub progress: Progress,
    pub bytes_sent: AtomicU64,
    /// New uploads are chunked (see [`super::chunked_parts`]).
    pub chunking: bool,
    /// Per path being pushed: `None` while pending, then whether it was
    /// committed. Referrers wait on it before they complete.
    pub done: HashMap<String, watch::Receiver<Option<bool>>>,
}

/// How a path ended.
#[derive(Debug, PartialEq)]
pub(crate) enum Outcome {
    Pushed,
    Deduplicated,
}

/// A part read from the NAR stream, with the permit for its buffer.
struct Produced {
    n: u32,
    bytes: Vec<u8>,
    _permit: OwnedSemaphorePermit,
}

/// Why the parts of an upload could not all be sent.
enum SendError {
    /// A re-produced part differs from the one the server acknowledged.
    Restart(u32),
    Fatal(ClientError),
}

impl From<ClientError> for SendError {
    fn from(e: ClientError) -> Self {
        SendError::Fatal(e)
    }
}

/// Pushes `info`; its bar is advanced as NAR bytes are read.
pub(crate) async fn push_one(ctx: Arc<Ctx>, info: PathInfo, bar: ProgressBar) -> Result<Outcome> {
    let path = info.path.clone();
    let _held = hold(&ctx, &path, &bar).await?;
    let fail = |message: String| ClientError::Push {
        path: path.clone(),
        message,
    };
    let mut restarts = 0;
    let mut rounds = 0;
    loop {
        let (id, parts) = loop {
            let (id, part_size, known, chunked) = match prepare(&ctx, &info).await? {
                Prepared::Committed(outcome) => return Ok(outcome),
                Prepared::Upload {
                    id,
                    part_size,
                    known,
                    chunked,
                } => (id, part_size, known, chunked),
            };
            match send_parts(&ctx, &path, &id, part_size, known, chunked, &bar).await {
                Ok(n) => break (id, n),
                Err(SendError::Fatal(e)) => return Err(e),
                Err(SendError::Restart(n)) => {
                    restarts += 1;
                    ctx.progress.println(&format!(
                        "{path}: part {n} differs from the one the server has; starting this path again"
                    ));
                    let _ = ctx.api.abandon(&id).await;
                    ctx.state.forget(&path)?;
                    if restarts > 2 {
                        return Err(fail(
                            "the NAR changes between dumps; is the store path being modified?"
                                .into(),
                        ));
                    }
                }
            }
        };
        wait_for_references(&ctx, &info).await?;
        bar.set_message("verifying");
        let done = match ctx.api.complete(&id, parts).await {
            Ok(Completed::Committed) => Ok(Settled::Committed),
            Ok(Completed::Verifying) => poll_until_settled(&ctx.api, &id).await,
            // A retried `complete` may find the upload already closed.
            Err(e) if e.status() == Some(409) => {
                poll_until_settled(&ctx.api, &id).await.map_err(|_| e)
            }
            // The server found a part lost (or a fault reopened the
            // upload): send what it lacks, then complete again.
            Err(e) if e.api_code() == Some("missing_parts") => Ok(Settled::Open),
            Err(e) => Err(e),
        };
        match done {
            Ok(Settled::Committed) => {
                ctx.state.forget(&path)?;
                return Ok(Outcome::Pushed);
            }
            Ok(Settled::Open) if rounds < 3 => {
                rounds += 1;
                ctx.progress.println(&format!(
                    "{path}: the server reopened the upload; sending the parts it lacks"
                ));
            }
            Ok(Settled::Open) => {
                return Err(fail(
                    "the server keeps reopening this upload; check its logs".into(),
                ));
            }
            Err(e) => {
                if matches!(
                    e.api_code(),
                    Some("nar_hash_mismatch" | "nar_size_mismatch") | Some("upload_failed")
                ) {
                    ctx.state.forget(&path)?;
                }
                return Err(e);
            }
        }
    }
}

/// Where a completed upload ended up.
pub(crate) enum Settled {
    Committed,
    /// Open again: parts to send (a fault or a lost part reopened it).
    Open,
}

/// Takes the lock of the path's resume state, waiting (off the async
/// threads) while another process pushes the same path.
async fn hold(ctx: &Arc<Ctx>, path: &str, bar: &ProgressBar) -> Result<PathLock> {
    if let Some(held) = ctx.state.try_lock_path(path)? {
        return Ok(held);
    }
    bar.set_message("waiting for another ferry push of this path");
    let (c, p) = (ctx.clone(), path.to_owned());
    let held = tokio::task::spawn_blocking(move || c.state.lock_path(&p))
        .await
        .map_err(|e| ClientError::Nix(format!("waiting for the path's lock stopped: {e}")))??;
    bar.set_message("");
    Ok(held)
}

enum Prepared {
    Committed(Outcome),
    Upload {
        id: String,
        part_size: u64,
        known: BTreeMap<u32, String>,
        /// Created with compression "chunked".
        chunked: bool,
    },
}

/// Picks up the recorded upload of the path if the server still has it
/// open, else starts a new one.
async fn prepare(ctx: &Ctx, info: &PathInfo) -> Result<Prepared> {
    if let Some(saved) = ctx.state.get(&info.path) {
        match ctx.api.upload_status(&saved.upload_id).await {
            Ok(st) if st.state == "open" => {
                let known: BTreeMap<u32, String> =
                    st.parts.into_iter().map(|p| (p.n, p.blake3)).collect();
                let conflict = saved
                    .parts
                    .iter()
                    .any(|(n, b)| known.get(n).is_some_and(|k| k != b));
                if !conflict {
                    return Ok(Prepared::Upload {
                        id: saved.upload_id,
                        part_size: saved.part_size,
                        known,
                        chunked: st.compression.as_deref() == Some("chunked"),
                    });
                }
                let _ = ctx.api.abandon(&saved.upload_id).await;
            }
            Ok(st) if st.state == "committed" || st.state == "verifying" => {
                if let Ok(Settled::Committed) = poll_until_settled(&ctx.api, &saved.upload_id).await
                {
                    ctx.state.forget(&info.path)?;
                    return Ok(Prepared::Committed(Outcome::Pushed));
                }
            }
            Ok(_) => {}
            Err(e) if e.status() == Some(404) => {}
            Err(e) => return Err(e),
        }
        ctx.state.forget(&info.path)?;
    }
    let req = info.create_request(if ctx.chunking { "chunked" } else { "zstd" });
    let mut chunked = ctx.chunking;
    let created = match ctx.api.create_upload(&ctx.cache, &req).await {
        // A server from before chunked uploads: send the NAR whole.
        Err(e) if chunked && e.status() == Some(400) && e.to_string().contains("\"chunked\"") => {
            chunked = false;
            let whole = CreateUpload {
                compression: Some("zstd".into()),
                ..req
            };
            ctx.api.create_upload(&ctx.cache, &whole).await?
        }
        other => other?,
    };
    match created {
        UploadStart::Committed => Ok(Prepared::Committed(Outcome::Deduplicated)),
        UploadStart::Created(c) => {
            let part_size = ctx.part_size.min(c.max_part_size).max(1);
            ctx.state.start(&info.path, &c.id, part_size)?;
            Ok(Prepared::Upload {
                id: c.id,
                part_size,
                known: BTreeMap::new(),
                chunked,
            })
        }
    }
}

/// Where the parts of an upload come from.
enum PartSource {
    Whole(NarStream),
    Chunked(ChunkedStream),
}

impl PartSource {
    fn next_part(&mut self, size: usize) -> Result<Option<Vec<u8>>> {
        match self {
            PartSource::Whole(s) => s.next_part(size),
            PartSource::Chunked(s) => s.next_part(size),
        }
    }

    fn nar_bytes(&self) -> u64 {
        match self {
            PartSource::Whole(s) => s.nar_bytes.load(Ordering::Relaxed),
            PartSource::Chunked(s) => s.nar_bytes.load(Ordering::Relaxed),
        }
    }
}

/// Dumps and compresses the NAR (whole, or chunked: declaring the
/// manifest as it goes), sends every part the server lacks, and returns
/// the number of parts.
async fn send_parts(
    ctx: &Arc<Ctx>,
    path: &str,
    id: &str,
    part_size: u64,
    known: BTreeMap<u32, String>,
    chunked: bool,
    bar: &ProgressBar,
) -> Result<u32, SendError> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Produced>();
    let producer = {
        let (ctx, path, bar, id) = (ctx.clone(), path.to_owned(), bar.clone(), id.to_owned());
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || -> Result<u32> {
            let mut stream = if chunked {
                PartSource::Chunked(ChunkedStream::start(
                    &path,
                    ctx.api.clone(),
                    &id,
                    handle.clone(),
                )?)
            } else {
                PartSource::Whole(NarStream::start(&path)?)
            };
            let (mut n, mut seen) = (0u32, 0u64);
            loop {
                let permit = handle
                    .block_on(ctx.part_permits.clone().acquire_owned())
                    .map_err(|_| ClientError::Nix("the push was stopped".into()))?;
                let Some(bytes) = stream.next_part(part_size as usize)? else {
                    break;
                };
                n += 1;
                let now = stream.nar_bytes();
                ctx.progress.add_bytes(now - seen);
                bar.set_position(now);
                seen = now;
                if tx
                    .send(Produced {
                        n,
                        bytes,
                        _permit: permit,
                    })
                    .is_err()
                {
                    break;
                }
            }
            Ok(n)
        })
    };
    let mut puts: JoinSet<Result<()>> = JoinSet::new();
    while let Some(part) = rx.recv().await {
        while let Some(done) = puts.try_join_next() {
            flatten(done)?;
        }
        let hash = blake3::hash(&part.bytes).to_hex().to_string();
        if let Some(acked) = known.get(&part.n) {
            if *acked == hash {
                continue; // the server has this part already
            }
            return Err(SendError::Restart(part.n));
        }
        let (ctx, path, id) = (ctx.clone(), path.to_owned(), id.to_owned());
        puts.spawn(async move {
            let Produced { n, bytes, _permit } = part;
            let len = bytes.len() as u64;
            let ack = ctx.api.put_part(&id, n, Bytes::from(bytes)).await?;
            if ack.blake3 != hash || ack.size != len {
                return Err(ClientError::Push {
                    path,
                    message: format!(
                        "the server acknowledged part {n} with other bytes than were sent"
                    ),
                });
            }
            ctx.bytes_sent.fetch_add(len, Ordering::Relaxed);
            ctx.state.ack(&path, n, &ack.blake3)
        });
    }
    while let Some(done) = puts.join_next().await {
        flatten(done)?;
    }
    let n = producer
        .await
        .map_err(|e| ClientError::Nix(format!("the NAR reader stopped: {e}")))??;
    Ok(n)
}

fn flatten(r: Result<Result<()>, tokio::task::JoinError>) -> Result<(), SendError> {
    match r {
        Ok(inner) => inner.map_err(SendError::Fatal),
        Err(e) => Err(SendError::Fatal(ClientError::Nix(format!(
            "a part upload stopped: {e}"
        )))),
    }
}

/// Waits until every reference pushed alongside this path is committed.
async fn wait_for_references(ctx: &Ctx, info: &PathInfo) -> Result<()> {
    wait_for_paths(ctx, info, |_| true).await
}

/// Waits until every reference of `info` that `which` picks, if pushed
/// alongside it, is committed.
pub(crate) async fn wait_for_paths(
    ctx: &Ctx,
    info: &PathInfo,
    which: impl Fn(&str) -> bool,
) -> Result<()> {
    for r in info
        .references
        .iter()
        .filter(|r| **r != info.path && which(r))
    {
        let Some(rx) = ctx.done.get(r) else { continue };
        let mut rx = rx.clone();
        let ok = rx
            .wait_for(|v| v.is_some())
            .await
            .map(|v| *v == Some(true))
            .unwrap_or(false);
        if !ok {
            return Err(ClientError::Push {
                path: info.path.clone(),
                message: format!("not published because its reference {r} failed to push"),
            });
        }
    }
    Ok(())
}

/// Polls an upload until it is committed, open again, or failed (`Err`).
pub(crate) async fn poll_until_settled(api: &Api, id: &str) -> Result<Settled> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
    loop {
        let st = api.upload_status(id).await?;
        match st.state.as_str() {
            "committed" => return Ok(Settled::Committed),
            "failed" => {
                return Err(ClientError::Push {
                    path: st.store_path,
                    message: format!(
                        "the server refused the upload: {}",
                        st.error
                            .map(|e| e.to_string())
                            .unwrap_or_else(|| "no reason given".into())
                    ),
                });
            }
            "open" => return Ok(Settled::Open),
            _ if tokio::time::Instant::now() > deadline => {
                return Err(ClientError::Push {
                    path: st.store_path,
                    message: "the server has been verifying for an hour; check its logs".into(),
                });
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}
