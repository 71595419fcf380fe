//! Garbage collection: what a cache may forget, and what the disk may drop.
//!
//! One run, in order:
//! 1. record the reads noted since the last flush (narinfo and NAR reads
//!    bump a path's last access; they are batched in memory by
//!    [`AccessLog`], not written one per request);
//! 2. unpublish paths whose cache has a retention and whose last access
//!    is older than it (one statement per cache, whatever the backlog);
//! 3. remove uploads past their expiry, with their parts;
//! 4. delete NAR rows no path references (older than the grace period,
//!    so a dedup link in flight still finds its NAR);
//! 5. delete blob files no NAR chunk references and last touched before
//!    the grace period (the store stamps a blob when it adopts it, so a
//!    publish about to commit is never robbed of its blob).
//!
//! Every step works on the whole backlog in one pass: there is no batch
//! size that could leave work behind.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rusqlite::params;
use serde::Serialize;

use crate::db::{self, Db};
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
        db.write(move |tx| {
            let now = db::now();
            let mut p = tx.prepare_cached(
                "UPDATE paths SET last_access = ?3 WHERE cache_id = ?1 AND hash_part = ?2",
            )?;
            for (cache, hash) in &paths {
                p.execute(params![cache, hash, now])?;
            }
            let mut n = tx.prepare_cached(
                "UPDATE paths SET last_access = ?3 WHERE cache_id = ?1 AND nar_id = ?2",
            )?;
            for (cache, nar) in &nars {
                n.execute(params![cache, nar, now])?;
            }
            Ok(())
        })
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
}

/// Everything a run needs.
pub struct Collector {
    pub db: Db,
    pub store: SharedStore,
    pub engine: Arc<Engine>,
    pub access: Arc<AccessLog>,
    /// Blobs and NAR rows younger than this are left alone.
    pub grace: Duration,
    /// Where runs and freed bytes are counted.
    pub metrics: Arc<crate::server::metrics::Metrics>,
}

impl Collector {
    /// One full run.
    pub async fn run(&self) -> Result<Report> {
        let mut report = Report::default();
        self.access.flush(&self.db).await?;
        report.paths_expired = self
            .db
            .write(|tx| {
                let now = db::now();
                let n = tx.execute(
                    "DELETE FROM paths WHERE id IN (
                       SELECT p.id FROM paths p JOIN caches c ON c.id = p.cache_id
                       WHERE c.retention_secs IS NOT NULL AND p.last_access < ?1 - c.retention_secs)",
                    [now],
                )?;
                Ok(n as u64)
            })
            .await?;
        report.uploads_removed = self.engine.sweep_expired().await? as u64;
        let grace = self.grace.as_secs() as i64;
        report.nars_removed = self
            .db
            .write(move |tx| {
                let n = tx.execute(
                    "DELETE FROM nars WHERE created_at <= ?1
                       AND NOT EXISTS (SELECT 1 FROM paths p WHERE p.nar_id = nars.id)",
                    [db::now() - grace],
                )?;
                Ok(n as u64)
            })
            .await?;
        let (blobs, bytes) = self.sweep_blobs().await?;
        report.blobs_removed = blobs;
        report.bytes_freed = bytes;
        self.metrics.gc(bytes);
        Ok(report)
    }

    /// Deletes blobs that no chunk references, past the grace period.
    async fn sweep_blobs(&self) -> Result<(u64, u64)> {
        let referenced: HashSet<String> = self
            .db
            .call(|c| {
                let mut stmt = c.prepare("SELECT DISTINCT blob FROM nar_chunks")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            })
            .await?;
        let store = self.store.clone();
        let grace = self.grace;
        tokio::task::spawn_blocking(move || -> Result<(u64, u64)> {
            let now = SystemTime::now();
            let (mut count, mut bytes) = (0, 0);
            for blob in store.list()? {
                let old = now
                    .duration_since(blob.modified)
                    .is_ok_and(|age| age >= grace);
                // Look again right before deleting: a publish may have
                // re-stored (and so re-stamped) it since the listing.
                let still_old = || -> std::io::Result<bool> {
                    Ok(store
                        .modified(&blob.id)?
                        .is_some_and(|m| now.duration_since(m).is_ok_and(|age| age >= grace)))
                };
                if old && !referenced.contains(&blob.id) && still_old()? {
                    store.delete(&blob.id)?;
                    count += 1;
                    bytes += blob.size;
                }
            }
            Ok((count, bytes))
        })
        .await
        .map_err(Error::internal)?
    }
}

/// Runs `collector` every `interval`, forever, and flushes read times
/// every minute in between.
pub async fn run_periodic(collector: Arc<Collector>, interval: Duration) {
    let mut gc = tokio::time::interval(interval);
    let mut flush = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = gc.tick() => match collector.run().await {
                Ok(r) => tracing::info!(?r, "garbage collection done"),
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
