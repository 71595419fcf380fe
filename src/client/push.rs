//! The push engine: closure → upstream filter → `missing` → uploads in
//! topological order, several paths and parts in flight.
//!
//! Memory is bounded: a part buffer is read only after taking one of
//! `jobs` permits, and the permit goes back when the server acknowledged
//! the part, so at most `jobs × part_size` bytes of parts are held.
//! Paths start in topological order and a path completes only after the
//! references pushed with it are committed, so a substituter never sees a
//! path whose references are missing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use super::batch;
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
    /// Send small paths many to a request (see [`super::batch`]).
    pub batching: bool,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            closure: true,
            jobs: 4,
            part_size: DEFAULT_PART_SIZE,
            ignore_upstream_filter: false,
            chunking: true,
            batching: true,
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
    let mut tasks: Tasks = JoinSet::new();
    let mut batch = Batch::default();
    for info in todo {
        if opts.batching && info.nar_size <= batch::SMALL_NAR {
            if batch.infos.len() == batch::BATCH_PATHS
                || batch.nar_bytes + info.nar_size > batch::BATCH_NAR_BYTES
            {
                let permit = acquire(&path_permits).await?;
                spawn_batch(&mut tasks, &ctx, &mut senders, batch.take(), permit);
            }
            batch.add(info);
            continue;
        }
        // A path waiting on a batch not sent yet would hold its permit
        // while the batch waits for one: send the batch first.
        if info.references.iter().any(|r| batch.paths.contains(r)) {
            let permit = acquire(&path_permits).await?;
            spawn_batch(&mut tasks, &ctx, &mut senders, batch.take(), permit);
        }
        let permit = acquire(&path_permits).await?;
        let tx = senders.remove(&info.path);
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let r = push_single(&ctx, info, tx).await;
            drop(permit);
            vec![r]
        });
    }
    if !batch.infos.is_empty() {
        let permit = acquire(&path_permits).await?;
        spawn_batch(&mut tasks, &ctx, &mut senders, batch.take(), permit);
    }
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let results = match joined {
            Ok(results) => results,
            Err(e) => vec![Err(ClientError::Nix(format!("a push task stopped: {e}")))],
        };
        for r in results {
            match r {
                Ok(Outcome::Pushed) => summary.pushed += 1,
                Ok(Outcome::Deduplicated) => summary.deduplicated += 1,
                Err(e) => {
                    summary.failed += 1;
                    first_error.get_or_insert(e);
                }
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

/// Tasks of a push: each ends with the outcomes of its paths.
type Tasks = JoinSet<Vec<Result<Outcome>>>;

/// Small paths gathered for one batch.
#[derive(Default)]
struct Batch {
    infos: Vec<PathInfo>,
    paths: HashSet<String>,
    nar_bytes: u64,
}

impl Batch {
    fn add(&mut self, info: PathInfo) {
        self.nar_bytes += info.nar_size;
        self.paths.insert(info.path.clone());
        self.infos.push(info);
    }

    fn take(&mut self) -> Vec<PathInfo> {
        self.paths.clear();
        self.nar_bytes = 0;
        std::mem::take(&mut self.infos)
    }
}

async fn acquire(permits: &Arc<Semaphore>) -> Result<OwnedSemaphorePermit> {
    permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ClientError::Nix("the push was stopped".into()))
}

/// Pushes one path through the parts API, with its own bar; tells its
/// referrers how it ended.
async fn push_single(
    ctx: &Arc<Ctx>,
    info: PathInfo,
    tx: Option<watch::Sender<Option<bool>>>,
) -> Result<Outcome> {
    let name = info
        .path
        .rsplit('/')
        .next()
        .unwrap_or(&info.path)
        .to_owned();
    let bar = ctx.progress.path_bar(&name, info.nar_size);
    let r = push_one(ctx.clone(), info, bar.clone()).await;
    if let Some(tx) = tx {
        let _ = tx.send(Some(r.is_ok()));
    }
    if let Err(e) = &r {
        ctx.progress.println(&format!("error: {e}"));
    }
    ctx.progress.finish_path(&bar);
    r
}

/// Starts a task sending `infos` (small paths in topological order) as one
/// batch, after the references pushed outside it; paths one by one when
/// the server has no batch door.
fn spawn_batch(
    tasks: &mut Tasks,
    ctx: &Arc<Ctx>,
    senders: &mut HashMap<String, watch::Sender<Option<bool>>>,
    infos: Vec<PathInfo>,
    permit: OwnedSemaphorePermit,
) {
    if infos.is_empty() {
        return;
    }
    let txs: Vec<_> = infos.iter().map(|i| senders.remove(&i.path)).collect();
    let ctx = ctx.clone();
    tasks.spawn(async move {
        let nar_bytes = infos.iter().map(|i| i.nar_size).sum();
        let bar = ctx
            .progress
            .path_bar(&format!("{} small paths", infos.len()), nar_bytes);
        let mut results = batch::push_batch(&ctx, &infos, &bar).await;
        let mut out = vec![];
        for (info, tx) in infos.iter().zip(txs) {
            let r = results
                .remove(&info.path)
                .unwrap_or_else(|| Err(ClientError::Nix(format!("{} was not pushed", info.path))));
            if let Some(tx) = tx {
                let _ = tx.send(Some(r.is_ok()));
            }
            if let Err(e) = &r {
                ctx.progress.println(&format!("error: {e}"));
            }
            out.push(r);
        }
        ctx.progress.finish_paths(&bar, infos.len() as u64);
        drop(permit);
        out
    });
}
