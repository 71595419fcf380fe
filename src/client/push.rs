//! The push engine: closure → upstream filter → `missing` → uploads in
//! topological order, several paths and parts in flight.
//!
//! Memory is bounded: a part buffer is read only after taking one of
//! `jobs` permits, and the permit goes back when the server acknowledged
//! the part, so at most `jobs × part_size` bytes of parts are held.
//! Paths start in topological order and a path completes only after the
//! references pushed with it are committed, so a substituter never sees a
//! path whose references are missing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::http::Api;
use super::pathinfo::{self, PathInfo};
use super::progress::{Progress, Summary};
use super::push_path::{Ctx, Outcome, push_one};
use super::resume::StateFile;
use super::{ClientError, Result};
use crate::api::CacheInfo;

/// Default part size: 64 MiB.
pub const DEFAULT_PART_SIZE: u64 = 64 << 20;

/// How to push.
#[derive(Clone, Debug)]
pub struct PushOptions {
    /// Push the closure of the paths (`false`: only the paths named).
    pub closure: bool,
    /// Parts in flight (and paths in flight) at once.
    pub jobs: usize,
    /// Bytes per part (capped by the server's `max_part_size`).
    pub part_size: u64,
    /// Push paths signed by the cache's upstream keys too.
    pub ignore_upstream_filter: bool,
    /// Send content-defined chunks (only those the server lacks) rather
    /// than each NAR whole.
    pub chunking: bool,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            closure: true,
            jobs: 4,
            part_size: DEFAULT_PART_SIZE,
            ignore_upstream_filter: false,
            chunking: true,
        }
    }
}

/// Pushes `paths` to `cache` (whose settings are `info`), recording resume
/// state in `state`. Returns the summary; `Err` when any path failed
/// (after the others were tried).
pub async fn push(
    api: &Api,
    cache: &str,
    info: &CacheInfo,
    state: StateFile,
    paths: Vec<String>,
    opts: &PushOptions,
) -> Result<Summary> {
    let started = Instant::now();
    let closure = opts.closure;
    let infos = tokio::task::spawn_blocking(move || pathinfo::query(&paths, closure))
        .await
        .map_err(|e| ClientError::Nix(format!("nix path-info stopped: {e}")))??;
    let mut summary = Summary::default();
    let (upstream, candidates): (Vec<PathInfo>, Vec<PathInfo>) = infos
        .into_iter()
        .partition(|i| !opts.ignore_upstream_filter && i.signed_by_any(&info.upstream_keys));
    summary.upstream = upstream.len() as u64;
    let names: Vec<String> = candidates.iter().map(|i| i.path.clone()).collect();
    let missing: std::collections::HashSet<String> =
        api.missing(cache, &names).await?.into_iter().collect();
    let (todo, present): (Vec<PathInfo>, Vec<PathInfo>) = candidates
        .into_iter()
        .partition(|i| missing.contains(&i.path));
    summary.skipped = present.len() as u64;
    let todo = pathinfo::topological_order(todo)?;

    let mut senders = HashMap::new();
    let mut done = HashMap::new();
    for i in &todo {
        let (tx, rx) = watch::channel(None);
        senders.insert(i.path.clone(), tx);
        done.insert(i.path.clone(), rx);
    }
    let jobs = opts.jobs.max(1);
    let ctx = Arc::new(Ctx {
        api: api.clone(),
        cache: cache.to_owned(),
        part_size: opts.part_size.min(info.max_part_size).max(1),
        state,
        part_permits: Arc::new(Semaphore::new(jobs)),
        progress: Progress::new(todo.len() as u64, todo.iter().map(|i| i.nar_size).sum()),
        bytes_sent: AtomicU64::new(0),
        chunking: opts.chunking,
        done,
    });
    let path_permits = Arc::new(Semaphore::new(jobs));
    let mut tasks = JoinSet::new();
    for info in todo {
        let permit = path_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ClientError::Nix("the push was stopped".into()))?;
        let tx = senders.remove(&info.path);
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let name = info
                .path
                .rsplit('/')
                .next()
                .unwrap_or(&info.path)
                .to_owned();
            let bar = ctx.progress.path_bar(&name, info.nar_size);
            let path = info.path.clone();
            let r = push_one(ctx.clone(), info, bar.clone()).await;
            if let Some(tx) = tx {
                let _ = tx.send(Some(r.is_ok()));
            }
            if let Err(e) = &r {
                ctx.progress.println(&format!("error: {e}"));
            }
            ctx.progress.finish_path(&bar);
            drop(permit);
            (path, r)
        });
    }
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((_, Ok(Outcome::Pushed))) => summary.pushed += 1,
            Ok((_, Ok(Outcome::Deduplicated))) => summary.deduplicated += 1,
            Ok((_, Err(e))) => {
                summary.failed += 1;
                first_error.get_or_insert(e);
            }
            Err(e) => {
                summary.failed += 1;
                first_error.get_or_insert(ClientError::Nix(format!("a push task stopped: {e}")));
            }
        }
    }
    ctx.progress.finish();
    summary.bytes_sent = ctx.bytes_sent.load(Ordering::Relaxed);
    summary.elapsed = started.elapsed();
    match first_error {
        None => Ok(summary),
        Some(e) => Err(ClientError::Push {
            path: format!("{} of the paths failed ({summary})", summary.failed),
            message: e.to_string(),
        }),
    }
}
