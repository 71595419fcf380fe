//! Garbage collection: what a cache may forget, and what the disk may drop.
//!
//! One run, in order:
//! 1. record the reads noted since the last flush (narinfo and NAR reads
//!    bump a path's last access; they are batched in memory by
//!    [`AccessLog`], not written one per request);
//! 2. unpublish paths whose cache has a retention and whose last access
//!    is older than it, except those a kept path needs (a kept path keeps
//!    its whole closure);
//! 3. remove uploads past their expiry, with their parts;
//! 4. delete NAR rows no path publishes;
//! 5. delete the blobs nothing refers to any more, at once: under the
//!    writer, file first, then row (see `db::blobs`), so the bytes of a
//!    path unpublished in step 2 are freed in this same run;
//! 6. sweep what no row knows: store files and upload directories left by
//!    a crash (or an older version), once older than the grace period.
//!    The grace protects only files the database does not know yet.
//!
//! Every step works on the whole backlog in one pass: there is no batch
//! size that could leave work behind. A file or directory that cannot be
//! deleted is logged, counted (`failed`) and left for the next run; the
//! step goes on with the others, and stops (the run goes on) only after
//! [`FAILED_IN_A_ROW`] failures in a row that are not about one file
//! (then the disk or the bucket is failing). A finished run is recorded in the
//! database (`gc_last_run`, shown by the status page), whether the server
//! or `ferry gc` ran it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::db::{self, Db, blobs};
use crate::error::{Error, Result};
use crate::store::SharedStore;
use crate::upload::Engine;

/// Reads waiting to be written as last-access times.
#[derive(Default)]
pub struct AccessLog {
    paths: Mutex<HashSet<(i64, String)>>,
    nars: Mutex<HashSet<(i64, i64)>>,
}

impl AccessLog {
    /// A narinfo of `hash_part` was read from cache `cache_id`.
    pub fn narinfo(&self, cache_id: i64, hash_part: &str) {
        if let Ok(mut p) = self.paths.lock() {
            p.insert((cache_id, hash_part.to_owned()));
        }
    }

    /// The NAR `nar_id` was read from cache `cache_id`.
    pub fn nar(&self, cache_id: i64, nar_id: i64) {
        if let Ok(mut n) = self.nars.lock() {
            n.insert((cache_id, nar_id));
        }
    }

    /// Writes everything noted so far, in one transaction.
    pub async fn flush(&self, db: &Db) -> Result<()> {
        let paths: Vec<_> = std::mem::take(&mut *self.paths.lock().map_err(Error::internal)?)
            .into_iter()
            .collect();
        let nars: Vec<_> = std::mem::take(&mut *self.nars.lock().map_err(Error::internal)?)
            .into_iter()
            .collect();
        if paths.is_empty() && nars.is_empty() {
            return Ok(());
        }
        db.write(move |tx| db::gc::touch(tx, &paths, &nars, db::now()))
            .await
    }
}

/// What one run did.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Report {
    pub paths_expired: u64,
    pub uploads_removed: u64,
    pub nars_removed: u64,
    pub blobs_removed: u64,
    pub bytes_freed: u64,
    /// Store files and upload directories no row knew, swept.
    pub leftovers_removed: u64,
    /// Deletions that failed (each logged); the next run tries again.
    pub failed: u64,
}

/// Deletions in a row that may fail, for reasons not about one file,
/// before a step stops.
pub const FAILED_IN_A_ROW: u32 = 8;

/// The deletions of one step that failed.
#[derive(Default)]
pub(crate) struct Failed {
    pub total: u64,
    in_a_row: u32,
}

/// How one deletion went, for the step's loop.
pub(crate) enum Tried {
    Done,
    /// Failed, logged and counted: go on with the next.
    Failed,
    /// Failed, and [`FAILED_IN_A_ROW`] failures in a row that are not
    /// about one file say the disk or the blob store is failing: stop.
    Stop,
}

impl Failed {
    /// Deleting `what` ended with `r`. A failure is logged and counted;
    /// a permission, or a directory where a file was, never stops a step.
    pub(crate) fn tried(&mut self, what: impl FnOnce() -> String, r: std::io::Result<()>) -> Tried {
        use std::io::ErrorKind::*;
        let e = match r {
            Ok(()) => {
                self.in_a_row = 0;
                return Tried::Done;
            }
            Err(e) => e,
        };
        self.total += 1;
        tracing::warn!(what = what(), error = %e, "could not delete it; the next collection tries again");
        let one_file = matches!(
            e.kind(),
            PermissionDenied
                | IsADirectory
                | DirectoryNotEmpty
                | NotADirectory
                | InvalidInput
                | InvalidFilename
        );
        if !one_file {
            self.in_a_row += 1;
        }
        if self.in_a_row >= FAILED_IN_A_ROW {
            tracing::warn!(
                "{FAILED_IN_A_ROW} deletions in a row failed: the disk or the blob store is failing; this step of the collection stops here"
            );
            return Tried::Stop;
        }
        Tried::Failed
    }
}

/// Everything a run needs.
pub struct Collector {
    pub db: Db,
    pub store: SharedStore,
    pub engine: Arc<Engine>,
    pub access: Arc<AccessLog>,
    /// Files no row knows that are younger than this are left alone.
    pub grace: Duration,
    /// Where runs and freed bytes are counted.
    pub metrics: Arc<crate::server::metrics::Metrics>,
}

impl Collector {
    /// One full run.
    pub async fn run(&self) -> Result<Report> {
        let started_at = db::now();
        let mut report = Report::default();
        self.access.flush(&self.db).await?;
        report.paths_expired = self
            .db
            .write(|tx| db::gc::expire_paths(tx, db::now()))
            .await?;
        let (uploads, failed) = self.engine.sweep_expired().await?;
        report.uploads_removed = uploads;
        report.failed += failed;
        report.nars_removed = self.db.write(db::gc::delete_unpublished_nars).await?;
        let (blobs, bytes, failed) = self.delete_unreferenced().await?;
        report.blobs_removed = blobs;
        report.bytes_freed = bytes;
        report.failed += failed;
        let (files, failed) = self.sweep_unknown_blobs().await?;
        let (dirs, failed_dirs) = self.engine.sweep_unknown_dirs(self.grace).await?;
        report.leftovers_removed = files + dirs;
        report.failed += failed + failed_dirs;
        self.metrics.gc(bytes);
        // For the status page; the run's work is done whether or not this
        // row is written.
        let run = db::gc::LastRun {
            started_at,
            finished_at: db::now(),
            report: report.clone(),
        };
        if let Err(e) = self.db.write(move |tx| db::gc::record_run(tx, &run)).await {
            tracing::warn!(error = %e, "recording the garbage collection run failed");
        }
        Ok(report)
    }

    /// Deletes the blobs no NAR and no upload refers to: each file, then
    /// its row, inside one write transaction, so nothing can claim a blob
    /// between the check and the delete. A file that cannot be deleted
    /// keeps its row. Returns (blobs, bytes, failed).
    async fn delete_unreferenced(&self) -> Result<(u64, u64, u64)> {
        let store = self.store.clone();
        self.db
            .write(move |tx| {
                let (mut count, mut bytes) = (0, 0);
                let mut failed = Failed::default();
                for (id, size) in blobs::unreferenced(tx)? {
                    crate::crash_point!("gc.before_delete");
                    match failed.tried(|| format!("blob {id}"), store.delete(&id)) {
                        Tried::Done => {}
                        Tried::Failed => continue,
                        Tried::Stop => break,
                    }
                    crate::crash_point!("gc.after_delete");
                    blobs::forget(tx, &id)?;
                    count += 1;
                    bytes += size;
                }
                Ok((count, bytes, failed.total))
            })
            .await
    }

    /// Deletes store files that no row knows, once older than the grace.
    /// Each is checked again under the writer, since a publish records
    /// its blobs (under the writer) before it moves them in, and a part
    /// row (which also keeps its blob) is written after its copy.
    async fn sweep_unknown_blobs(&self) -> Result<(u64, u64)> {
        let known = self.db.call(blobs::all).await?;
        let store = self.store.clone();
        let grace = self.grace;
        let candidates: Vec<String> = tokio::task::spawn_blocking(move || -> Result<_> {
            let now = SystemTime::now();
            Ok(store
                .list()?
                .into_iter()
                .filter(|b| !known.contains(&b.id))
                .filter(|b| now.duration_since(b.modified).is_ok_and(|a| a >= grace))
                .map(|b| b.id)
                .collect())
        })
        .await
        .map_err(Error::internal)??;
        if candidates.is_empty() {
            return Ok((0, 0));
        }
        let store = self.store.clone();
        self.db
            .write(move |tx| {
                let mut n = 0;
                let mut failed = Failed::default();
                let now = SystemTime::now();
                for id in candidates {
                    // Written again since the listing (a part's copy in a
                    // shared store, about to get its row): young again.
                    let what = || format!("store file {id}");
                    let young = match store.modified(&id) {
                        Ok(m) => {
                            m.is_some_and(|m| now.duration_since(m).map_or(true, |a| a < grace))
                        }
                        Err(e) => match failed.tried(what, Err(e)) {
                            Tried::Stop => break,
                            _ => continue,
                        },
                    };
                    if !young && !blobs::is_known(tx, &id)? {
                        tracing::info!(blob = %id, "removing a store file no row knows");
                        match failed.tried(what, store.delete(&id)) {
                            Tried::Done => n += 1,
                            Tried::Failed => {}
                            Tried::Stop => break,
                        }
                    }
                }
                Ok((n, failed.total))
            })
            .await
    }

    /// At start: every blob a stored NAR is made of must have its file.
    /// A NAR whose file vanished is unpublished (with a log line naming
    /// its paths) rather than served broken.
    pub async fn reconcile(&self) -> Result<u64> {
        let live = self.db.call(blobs::live).await?;
        let store = self.store.clone();
        let missing: Vec<String> =
            tokio::task::spawn_blocking(move || -> Result<_> { Ok(store.missing(live)?) })
                .await
                .map_err(Error::internal)??;
        let mut unpublished = 0;
        for id in missing {
            let key = id.clone();
            let paths = self
                .db
                .write(move |tx| blobs::unpublish_users_of(tx, &key))
                .await?;
            for p in &paths {
                tracing::error!(blob = %id, path = %p, "a stored blob is missing: unpublished the path; push it again");
            }
            unpublished += paths.len() as u64;
        }
        Ok(unpublished)
    }
}

/// Runs `collector` every `interval`, forever, and writes the recorded
/// read times every `flush_every` in between.
pub async fn run_periodic(collector: Arc<Collector>, interval: Duration, flush_every: Duration) {
    let mut gc = tokio::time::interval(interval);
    let mut flush = tokio::time::interval(flush_every);
    loop {
        tokio::select! {
            _ = gc.tick() => match collector.run().await {
                Ok(r) => tracing::info!(
                    paths_expired = r.paths_expired,
                    uploads_removed = r.uploads_removed,
                    nars_removed = r.nars_removed,
                    blobs_removed = r.blobs_removed,
                    bytes_freed = r.bytes_freed,
                    leftovers_removed = r.leftovers_removed,
                    failed = r.failed,
                    "garbage collection done"
                ),
                Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
            },
            _ = flush.tick() => {
                if let Err(e) = collector.access.flush(&collector.db).await {
                    tracing::warn!(error = %e, "recording read times failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_stops_after_failures_in_a_row_that_are_not_about_one_file() {
        use std::io::{Error as IoError, ErrorKind};
        let mut f = Failed::default();
        let what = || "x".to_string();
        let failed = |f: &mut Failed, e: IoError| f.tried(what, Err(e));
        // A file in the way, a permission: never a reason to stop.
        for _ in 0..3 * FAILED_IN_A_ROW {
            assert!(matches!(
                failed(&mut f, ErrorKind::IsADirectory.into()),
                Tried::Failed
            ));
            assert!(matches!(
                failed(&mut f, ErrorKind::PermissionDenied.into()),
                Tried::Failed
            ));
        }
        // The disk failing: the step stops at the limit, not before; a
        // success in between starts the count again.
        let eio = || IoError::from_raw_os_error(5);
        for _ in 1..FAILED_IN_A_ROW {
            assert!(matches!(failed(&mut f, eio()), Tried::Failed));
        }
        assert!(matches!(f.tried(what, Ok(())), Tried::Done));
        for _ in 1..FAILED_IN_A_ROW {
            assert!(matches!(failed(&mut f, eio()), Tried::Failed));
        }
        assert!(matches!(failed(&mut f, eio()), Tried::Stop));
        assert_eq!(
            f.total,
            6 * FAILED_IN_A_ROW as u64 + 2 * (FAILED_IN_A_ROW as u64 - 1) + 1
        );
    }
}
