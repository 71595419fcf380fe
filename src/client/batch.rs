//! Small paths in batches: one request carries many small NARs.
//!
//! Through a tunnel every request costs a round trip, and a path pushed
//! through the parts API costs three (create, part, complete). Paths whose
//! NAR is at most [`SMALL_NAR`] bytes go instead in batches (`POST
//! /_api/v1/caches/{cache}/batch`): per path a header line (the create
//! request plus `size`) and the NAR compressed with zstd; the server
//! verifies and publishes each path on its own, in order, and answers one
//! result per path. A batch is small enough to be sent again whole (no
//! resume state), and is re-sent by the usual retries: paths it already
//! published answer "committed".

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use indicatif::ProgressBar;

use bytes::Bytes;

use super::parts::{ZSTD_LEVEL, dump, dump_succeeded};
use super::pathinfo::PathInfo;
use super::push_path::{Ctx, Outcome, Settled, poll_until_settled, push_one, wait_for_paths};
use super::{ClientError, Result};
use crate::api::{BATCH_SIZE_FIELD, BatchResult};

/// Paths whose NarSize is at most this go in batches.
pub const SMALL_NAR: u64 = 1 << 20;
/// NAR bytes (before compression) one batch carries at most.
pub const BATCH_NAR_BYTES: u64 = 16 << 20;
/// Paths one batch carries at most.
pub const BATCH_PATHS: usize = 500;

/// Dumps the paths (on up to `threads` threads) and lays out the body:
/// per path its header line, then its NAR as one zstd frame.
pub fn body(infos: &[PathInfo], threads: usize) -> Result<Vec<u8>> {
    let threads = threads.clamp(1, infos.len().max(1));
    let per = infos.len().div_ceil(threads).max(1);
    let frames: Vec<Result<Vec<Vec<u8>>>> = std::thread::scope(|s| {
        let handles: Vec<_> = infos
            .chunks(per)
            .map(|group| s.spawn(move || group.iter().map(frame_of).collect::<Result<Vec<_>>>()))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(ClientError::Nix("a NAR dump thread stopped".into())))
            })
            .collect()
    });
    let frames = frames.into_iter().collect::<Result<Vec<_>>>()?;
    let mut out = vec![];
    for (info, frame) in infos.iter().zip(frames.into_iter().flatten()) {
        let mut header = serde_json::to_value(info.create_request("zstd"))
            .map_err(|e| ClientError::Config(format!("cannot encode a batch record: {e}")))?;
        if let Some(map) = header.as_object_mut() {
            map.insert(BATCH_SIZE_FIELD.into(), frame.len().into());
        }
        serde_json::to_writer(&mut out, &header)
            .map_err(|e| ClientError::Config(format!("cannot encode a batch record: {e}")))?;
        out.push(b'\n');
        out.extend_from_slice(&frame);
    }
    Ok(out)
}

/// The NAR of `info`, compressed: read in-process (checked against its
/// NarHash), else dumped by Nix.
fn frame_of(info: &PathInfo) -> Result<Vec<u8>> {
    let nar = match super::dump::checked_nar_of(
        std::path::Path::new(&info.path),
        info.nar_hash.as_deref().unwrap_or_default(),
        info.nar_size,
    ) {
        Some(nar) => nar,
        None => nix_dump(info)?,
    };
    zstd::bulk::compress(&nar, ZSTD_LEVEL)
        .map_err(|e| ClientError::Nix(format!("cannot compress the NAR of {}: {e}", info.path)))
}

/// `nix-store --dump` of `info`, whole.
fn nix_dump(info: &PathInfo) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let (mut child, mut stdout) = dump(&info.path)?;
    let mut nar = Vec::with_capacity(info.nar_size as usize);
    stdout
        .read_to_end(&mut nar)
        .map_err(|e| ClientError::Nix(format!("reading `nix-store --dump {}`: {e}", info.path)))?;
    dump_succeeded(&mut child, &info.path)?;
    Ok(nar)
}

/// Pushes `infos` (small paths in topological order) as one batch, after
/// the references pushed outside it; one by one when the server has no
/// batch door. The outcome of every path, by path.
pub(crate) async fn push_batch(
    ctx: &Arc<Ctx>,
    infos: &[PathInfo],
    bar: &ProgressBar,
) -> HashMap<String, Result<Outcome>> {
    let inside: HashSet<&str> = infos.iter().map(|i| i.path.as_str()).collect();
    // Paths whose references outside the batch failed stay out, and so do
    // the paths of the batch that refer to them.
    let mut out: HashMap<String, Result<Outcome>> = HashMap::new();
    for info in infos {
        let inner = info
            .references
            .iter()
            .find(|r| *r != &info.path && out.contains_key(*r));
        let why = match inner {
            Some(r) => Some(ClientError::Push {
                path: info.path.clone(),
                message: format!("not published because its reference {r} failed to push"),
            }),
            None => wait_for_paths(ctx, info, |r| !inside.contains(r))
                .await
                .err(),
        };
        if let Some(e) = why {
            out.insert(info.path.clone(), Err(e));
        }
    }
    let go: Vec<PathInfo> = infos
        .iter()
        .filter(|i| !out.contains_key(&i.path))
        .cloned()
        .collect();
    if go.is_empty() {
        return out;
    }
    match send(ctx, &go).await {
        Ok(Some(outcomes)) => {
            ctx.progress.add_bytes(go.iter().map(|i| i.nar_size).sum());
            out.extend(go.into_iter().map(|i| i.path).zip(outcomes));
        }
        // A server from before the batch door: one upload per path (which
        // counts its own bytes).
        Ok(None) => {
            for i in go {
                let path = i.path.clone();
                out.insert(path, push_one(ctx.clone(), i, bar.clone()).await);
            }
        }
        Err(e) => {
            let message = e.to_string();
            for i in go {
                let r = Err(ClientError::Push {
                    path: i.path.clone(),
                    message: message.clone(),
                });
                out.insert(i.path, r);
            }
        }
    }
    out
}

/// Sends `infos` as one batch. `None` when the server has no batch door
/// (a server from before it): push the paths one by one.
async fn send(ctx: &Arc<Ctx>, infos: &[PathInfo]) -> Result<Option<Vec<Result<Outcome>>>> {
    let owned = infos.to_vec();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let body = tokio::task::spawn_blocking(move || body(&owned, threads))
        .await
        .map_err(|e| ClientError::Nix(format!("the NAR dumps stopped: {e}")))??;
    let len = body.len() as u64;
    let results = match ctx.api.batch(&ctx.cache, Bytes::from(body)).await {
        Err(e) if matches!(e.status(), Some(404 | 405)) => return Ok(None),
        other => other?,
    };
    ctx.bytes_sent
        .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
    if results.len() != infos.len() {
        return Err(ClientError::Push {
            path: format!("a batch of {} paths", infos.len()),
            message: format!("the server answered {} results", results.len()),
        });
    }
    let mut out = vec![];
    for (info, r) in infos.iter().zip(results) {
        out.push(outcome(ctx, info, r).await);
    }
    Ok(Some(out))
}

/// One path's outcome from its result.
async fn outcome(ctx: &Ctx, info: &PathInfo, r: BatchResult) -> Result<Outcome> {
    let fail = |message: String| ClientError::Push {
        path: info.path.clone(),
        message,
    };
    match r.state.as_str() {
        "committed" if r.narinfo_url.is_some() => Ok(Outcome::Pushed),
        "committed" => Ok(Outcome::Deduplicated),
        "verifying" => {
            let id = r.id.unwrap_or_default();
            match poll_until_settled(&ctx.api, &id).await? {
                Settled::Committed => Ok(Outcome::Pushed),
                Settled::Open => {
                    let _ = ctx.api.abandon(&id).await;
                    Err(fail(
                        "the server reopened its upload after a fault; push it again".into(),
                    ))
                }
            }
        }
        _ => {
            let why = r
                .error
                .as_ref()
                .and_then(|e| e.get("message"))
                .and_then(|m| m.as_str())
                .unwrap_or("no reason given");
            Err(fail(format!("the server refused it: {why}")))
        }
    }
}
