//! The upload engine: sessions, parts, the in-order verifier, publishing.
//!
//! One engine, several doors: the parts API (`/_api/v1/uploads/…`), Nix's
//! own `PUT` of a NAR and its narinfo, and later tus all call the same
//! methods here. The engine knows nothing of HTTP: bodies arrive as byte
//! streams, answers leave as plain values or [`Error`]s.
//!
//! Life of an upload: [`Engine::create`] (or a dedup link, which publishes
//! at once) → [`Engine::put_part`] any number of times, any order, in
//! parallel; each part is fsynced and recorded before it is acknowledged,
//! then folded into the verifier if it extends the contiguous prefix →
//! [`Engine::complete`] finishes the tail and publishes in one transaction,
//! or marks the upload failed with the reason. Nothing is visible to
//! substituters before that transaction commits.
//!
//! On disk: `<data>/uploads/<id>/<n>.part` for parts (a plain NAR's parts
//! as zstd frames, see `receive`), `<id>/nar-*.zst` for the file the server
//! compresses from an xz upload (or from plain parts an earlier version
//! kept as sent).

mod chunked;
mod compress;
mod finish;
mod fold;
mod manifest;
mod pool;
mod receive;
mod sweep;
pub mod tus;
pub mod verifier;
mod whole;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::db::caches::CacheRow;
use crate::db::uploads::{self, PartRow, UploadMeta, UploadRow, UploadState};
use crate::db::{self, Commit, Db, nars};
use crate::error::{Error, Result};
use crate::nar::{Sha256Hash, StorePath};
use crate::store::SharedStore;

pub use chunked::FrameAt;
pub use manifest::MAX_BATCH as MAX_CHUNK_BATCH;
pub use receive::{DigestAlgorithm, ExpectedDigest, PartRules};
pub use verifier::Compression;
pub use whole::{ONE_REQUEST_EXPIRY, Whole};

/// The `compression` of a bucket upload (parts only, never verified).
pub const BUCKET: &str = "bucket";

/// Verifiers alive at once, whatever the number of open uploads.
pub const LIVE_VERIFIERS: usize = 32;

/// An upload whose verifier has folded nothing for this long gives it up.
pub const VERIFIER_IDLE: Duration = Duration::from_secs(30);

/// Default `max-nar-size`: 256 GiB.
pub const DEFAULT_MAX_NAR_SIZE: u64 = 256 << 30;
/// Default `max-open-uploads-per-token`.
pub const DEFAULT_MAX_OPEN_UPLOADS: u64 = 256;

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Largest part accepted, in bytes.
    pub max_part_size: u64,
    /// An upload with no request for this long is removed.
    pub upload_expiry: Duration,
    /// zstd level used when the server compresses a plain NAR.
    pub zstd_level: i32,
    /// How long `complete` waits before answering "verifying".
    pub complete_wait: Duration,
    /// The largest NarSize an upload may declare, in bytes.
    pub max_nar_size: u64,
    /// Uploads one token (with its attenuations) may have open at once.
    pub max_open_uploads_per_token: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_part_size: 64 * 1024 * 1024,
            upload_expiry: Duration::from_secs(24 * 3600),
            zstd_level: crate::store::zstd_io::DEFAULT_LEVEL,
            complete_wait: Duration::from_secs(30),
            max_nar_size: DEFAULT_MAX_NAR_SIZE,
            max_open_uploads_per_token: DEFAULT_MAX_OPEN_UPLOADS,
        }
    }
}

/// What a door asks for when it starts an upload.
#[derive(Clone, Debug)]
pub struct NewUpload {
    pub store_path: StorePath,
    pub nar_hash: Sha256Hash,
    pub nar_size: u64,
    pub meta: UploadMeta,
    pub compression: Compression,
    /// Who opens it (the token's first revocation id), for the per-token
    /// quota; `None`: not counted.
    pub owner: Option<String>,
}

/// The answer to [`Engine::create`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    /// Send parts to this upload.
    Upload { id: String, expires_at: i64 },
    /// Nothing to send: the cache has the path now, with this NarHash
    /// (the published one, which may differ from the one asked: the
    /// first writer wins).
    Committed { nar_hash: String },
}

/// The answer to [`Engine::complete`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    Committed {
        narinfo_url: String,
    },
    /// Still verifying: poll the upload's state.
    Verifying,
}

/// An upload's state as a resuming client needs it.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub id: String,
    pub store_path: String,
    pub compression: String,
    pub state: UploadState,
    pub parts: Vec<PartRow>,
    pub received_bytes: u64,
    pub expires_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<serde_json::Value>,
    #[serde(skip)]
    pub cache_id: i64,
}

/// Verifier state of one upload, kept between requests.
struct Slot {
    verifier: Option<verifier::Verifier>,
    /// The verifier's place in the engine's budget, held while it lives.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// When the verifier last folded a part.
    touched: std::time::Instant,
    /// Part numbers recorded in the database (as last read: parts may
    /// arrive through other instances; `advance` reads them again).
    present: BTreeSet<u32>,
    /// The blake3 of each part the verifier has folded, in order: a part
    /// replaced since (through any instance) makes the fold stale.
    folded: Vec<String>,
    /// Set by a part replacement: fold again from part 1.
    stale: bool,
    /// The first error the verifier met; reported at `complete`.
    failed: Option<Error>,
    /// When that error is a verdict: the part it was found in. Parts
    /// after it can change nothing and are refused; a replacement of it
    /// or of an earlier part may still cure the upload.
    verdict_at: Option<u32>,
}

/// An upload's verifier state and its gate.
struct SlotCell {
    state: tokio::sync::Mutex<Slot>,
    /// `true` once `complete` starts finishing. Recording a part holds a
    /// read lock across its rename and row; finishing takes the write lock
    /// to close, so no part changes under a verdict, while parts still
    /// land in parallel before that.
    closing: tokio::sync::RwLock<bool>,
}

type SlotRef = Arc<SlotCell>;

/// What a finishing run reports to the `complete` calls waiting on it.
type Finished = Option<Option<Error>>;

/// The upload engine. Cheap to share behind an `Arc`.
///
/// Concurrency: requests run on actix's workers (one single-threaded
/// runtime each) and call into the engine there. The engine's own
/// background work (folding parts into a verifier, finishing and
/// publishing, resumed verifications) runs on the runtime it was created
/// in ([`Engine::rt`], the server's multi-threaded one), so it outlives
/// the worker and the request that started it. Blocking file and SQLite
/// work goes to that runtime's blocking pool; SQL writes queue on
/// `Db::write`, one at a time.
pub struct Engine {
    db: Db,
    /// The runtime background work is spawned on.
    rt: tokio::runtime::Handle,
    store: SharedStore,
    cfg: EngineConfig,
    uploads_dir: PathBuf,
    slots: Mutex<HashMap<String, SlotRef>>,
    /// Uploads whose `complete` is running, with a channel that carries
    /// the outcome once done: `Some(None)` settled, `Some(Some(e))` left
    /// open by a fault `e` that the caller of `complete` should see.
    finishing: Mutex<HashMap<String, tokio::sync::watch::Receiver<Finished>>>,
    /// tus PATCHes of one upload run one at a time.
    tus_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Live verifiers (each holds buffers, a thread and a zstd window):
    /// at most [`LIVE_VERIFIERS`] at once. A part that finds no place is
    /// folded later, by `complete`, which waits for one.
    verifiers: Arc<tokio::sync::Semaphore>,
    /// One-request uploads in progress (the batch door): their steps
    /// before the publishing commit are [`Commit::Deferred`], since the
    /// client hears only of the publish and sends the NAR again if it
    /// was lost.
    one_request: Mutex<HashSet<String>>,
    /// Verification counters, for `/metrics`.
    pub stats: Stats,
}

/// What the verifier has done since start.
#[derive(Default)]
pub struct Stats {
    /// Uploaded bytes folded into verifiers.
    pub verified_bytes: std::sync::atomic::AtomicU64,
    /// Time spent folding them, in nanoseconds.
    pub verify_nanos: std::sync::atomic::AtomicU64,
}

impl Stats {
    fn verified(&self, bytes: u64, took: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        self.verified_bytes.fetch_add(bytes, Relaxed);
        self.verify_nanos.fetch_add(took.as_nanos() as u64, Relaxed);
    }
}

impl Engine {
    /// An engine storing parts under `uploads_dir`; must be called inside
    /// the tokio runtime that will run its background work.
    pub fn new(
        db: Db,
        store: SharedStore,
        uploads_dir: PathBuf,
        cfg: EngineConfig,
    ) -> Result<Arc<Engine>> {
        std::fs::create_dir_all(&uploads_dir)?;
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::internal("the upload engine needs a tokio runtime"))?;
        Ok(Arc::new(Engine {
            db,
            rt,
            store,
            cfg,
            uploads_dir,
            slots: Mutex::new(HashMap::new()),
            finishing: Mutex::new(HashMap::new()),
            tus_locks: Mutex::new(HashMap::new()),
            verifiers: Arc::new(tokio::sync::Semaphore::new(LIVE_VERIFIERS)),
            one_request: Mutex::new(HashSet::new()),
            stats: Stats::default(),
        }))
        .inspect(|engine| engine.release_idle_verifiers())
    }

    /// Every few seconds, drops the verifiers of uploads idle for
    /// [`VERIFIER_IDLE`]: their memory and thread go, and the next part or
    /// `complete` rebuilds the verifier from the parts on disk. Stops when
    /// the engine is dropped.
    fn release_idle_verifiers(self: &Arc<Self>) {
        let engine = Arc::downgrade(self);
        self.rt.spawn(async move {
            let mut tick = tokio::time::interval(VERIFIER_IDLE / 4);
            loop {
                tick.tick().await;
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                let slots: Vec<SlotRef> = match engine.slots.lock() {
                    Ok(s) => s.values().cloned().collect(),
                    Err(_) => return,
                };
                for slot in slots {
                    // A slot busy folding is not idle.
                    if let Ok(mut s) = slot.state.try_lock()
                        && s.verifier.is_some()
                        && s.touched.elapsed() >= VERIFIER_IDLE
                    {
                        s.verifier = None;
                        s.permit = None;
                    }
                }
            }
        });
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    fn dir_of(&self, id: &str) -> PathBuf {
        self.uploads_dir.join(id)
    }

    /// How the steps of upload `id` before its publishing commit commit:
    /// deferred for a one-request upload, durable otherwise (an answer
    /// about a part or an upload is a promise to a client who may resume).
    fn step_commit(&self, id: &str) -> Commit {
        match self.one_request.lock() {
            Ok(set) if set.contains(id) => Commit::Deferred,
            _ => Commit::Durable,
        }
    }

    /// Whether `row` is a one-request upload that keeps its short expiry
    /// (see `open`): activity does not move it, also after its request
    /// is gone (a verifier left running, a restart). One answered
    /// `verifying` was given the usual expiry, and is touched as usual.
    fn keeps_short_expiry(&self, row: &UploadRow) -> bool {
        let short = whole::ONE_REQUEST_EXPIRY;
        self.cfg.upload_expiry > short && row.expires_at - row.created_at <= short.as_secs() as i64
    }

    fn expiry_from_now(&self) -> i64 {
        db::now() + self.cfg.upload_expiry.as_secs() as i64
    }

    /// How far an upload's expiry may lag behind "now + expiry" before a
    /// request for it writes the new expiry: 1 % of the expiry, at most a
    /// minute.
    fn touch_slack(&self) -> i64 {
        (self.cfg.upload_expiry.as_secs() as i64 / 100).min(60)
    }

    /// Starts an upload, or links an already stored NAR and publishes at
    /// once (dedup by NarHash), or says the cache already has the path.
    ///
    /// A stored NAR is linked only when `may_read` says the uploader may
    /// pull from a cache that publishes it, or a public cache does:
    /// knowing a NarHash proves nothing, so anyone else sends the bytes
    /// (which are then stored once).
    pub async fn create(
        &self,
        cache: &CacheRow,
        new: NewUpload,
        may_read: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Created> {
        self.create_as(cache, new, may_read, Commit::Durable).await
    }

    /// [`Engine::create`], with the new upload's row committed as `commit`.
    async fn create_as(
        &self,
        cache: &CacheRow,
        new: NewUpload,
        may_read: &(dyn Fn(&str) -> bool + Sync),
        commit: Commit,
    ) -> Result<Created> {
        self.check_new(cache, &new)?;
        let (cache_id, hash_part, nar_hash) = (
            cache.id,
            new.store_path.hash_part().to_owned(),
            new.nar_hash.to_string(),
        );
        let existing = self
            .db
            .call(move |c| {
                if let Some(published) = nars::published_nar_hash(c, cache_id, &hash_part)? {
                    return Ok(Err(published));
                }
                Ok(Ok(match nars::find_by_nar_hash(c, &nar_hash)? {
                    Some(nar) => {
                        let holders = nars::caches_publishing(c, nar.id)?;
                        Some((nar, holders))
                    }
                    None => None,
                }))
            })
            .await?;
        let linkable = match existing {
            Err(nar_hash) => return Ok(Created::Committed { nar_hash }),
            Ok(Some((nar, holders)))
                if nar.nar_size == new.nar_size
                    && holders
                        .iter()
                        .any(|(name, public)| *public || may_read(name)) =>
            {
                Some(nar)
            }
            Ok(_) => None,
        };
        if let Some(nar) = linkable
            && let Some(nar_hash) =
                finish::link(&self.db, cache, &new.store_path, &new.meta, nar).await?
        {
            return Ok(Created::Committed { nar_hash });
        }
        let owner = new.owner.clone();
        let (id, expires_at) = self.open(cache.id, Some(new), owner, commit).await?;
        Ok(Created::Upload { id, expires_at })
    }

    /// Starts an upload without looking for a stored copy: for doors whose
    /// protocol has no "nothing to send" answer (tus). A NAR already stored
    /// is still deduplicated at publish time.
    pub async fn create_upload(&self, cache: &CacheRow, new: NewUpload) -> Result<(String, i64)> {
        self.check_new(cache, &new)?;
        let owner = new.owner.clone();
        self.open(cache.id, Some(new), owner, Commit::Durable).await
    }

    /// Starts a bucket: an upload that only collects parts, to be absorbed
    /// into another upload later (tus partial uploads).
    pub async fn create_bucket(
        &self,
        cache: &CacheRow,
        owner: Option<String>,
    ) -> Result<(String, i64)> {
        self.open(cache.id, None, owner, Commit::Durable).await
    }

    async fn open(
        &self,
        cache_id: i64,
        new: Option<NewUpload>,
        owner: Option<String>,
        commit: Commit,
    ) -> Result<(String, i64)> {
        let id = uuid::Uuid::now_v7().to_string();
        // A one-request upload (the only kind whose steps commit
        // deferred) is never resumed: its client sends the bytes again.
        // One cut off by a crash or a dropped request expires soon, and
        // stops counting against its token's open uploads.
        let expires_at = match commit {
            Commit::Deferred => {
                db::now()
                    + whole::ONE_REQUEST_EXPIRY
                        .min(self.cfg.upload_expiry)
                        .as_secs() as i64
            }
            Commit::Durable => self.expiry_from_now(),
        };
        let row = match new {
            Some(new) => UploadRow {
                id: id.clone(),
                cache_id,
                store_path: new.store_path.to_absolute(),
                nar_hash: new.nar_hash.to_string(),
                nar_size: new.nar_size,
                meta: new.meta,
                compression: new.compression.as_str().to_owned(),
                state: UploadState::Open,
                total_parts: None,
                error: None,
                created_at: db::now(),
                expires_at,
            },
            None => UploadRow {
                id: id.clone(),
                cache_id,
                store_path: String::new(),
                nar_hash: String::new(),
                nar_size: 0,
                meta: UploadMeta::default(),
                compression: BUCKET.to_owned(),
                state: UploadState::Open,
                total_parts: None,
                error: None,
                created_at: db::now(),
                expires_at,
            },
        };
        // The row first, then its directory: a directory without a row is
        // a leftover that GC may sweep.
        let quota = self.cfg.max_open_uploads_per_token;
        self.db
            .write_as(commit, move |tx| {
                if let Some(owner) = &owner
                    && uploads::open_of_owner(tx, owner, db::now())? >= quota
                {
                    return Err(Error::TooManyUploads { limit: quota });
                }
                uploads::insert(tx, &row)?;
                match &owner {
                    Some(owner) => uploads::set_owner(tx, &row.id, owner),
                    None => Ok(()),
                }
            })
            .await?;
        let dir = self.dir_of(&id);
        tokio::task::spawn_blocking(move || std::fs::create_dir_all(dir))
            .await
            .map_err(Error::internal)??;
        Ok((id, expires_at))
    }

    /// Moves the parts of `buckets`, in order, to the end of upload `id`
    /// (renames, no copies), then removes the buckets.
    pub async fn absorb(self: &Arc<Self>, id: &str, buckets: &[String]) -> Result<()> {
        let target = self.get(id).await?;
        let mut next = {
            let key = id.to_owned();
            self.db.call(move |c| uploads::parts(c, &key)).await?.len() as u32 + 1
        };
        for bucket in buckets {
            let row = self.get(bucket).await?;
            if row.compression != BUCKET || row.cache_id != target.cache_id {
                return Err(Error::BadRequest(format!(
                    "upload {bucket} is not a partial upload of this cache"
                )));
            }
            let key = bucket.clone();
            let parts = self.db.call(move |c| uploads::parts(c, &key)).await?;
            for p in parts {
                let from = self.part_path(bucket, p.n);
                let to = self.part_path(id, next);
                // A bucket filled through another instance has its parts
                // in the shared store only: the row moves, the fold reads
                // them from there (or finds them lost).
                tokio::task::spawn_blocking(move || match std::fs::rename(from, to) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                })
                .await
                .map_err(Error::internal)??;
                let (key, part) = (id.to_owned(), PartRow { n: next, ..p });
                self.db
                    .write(move |tx| uploads::upsert_part(tx, &key, &part))
                    .await?;
                let slot = self.slot_or_load(id).await?;
                slot.state.lock().await.present.insert(next);
                next += 1;
            }
            let dir = self.dir_of(id);
            tokio::task::spawn_blocking(move || crate::store::fsync_dir(&dir))
                .await
                .map_err(Error::internal)??;
            self.remove(bucket).await?;
        }
        self.advance(id, None).await
    }

    /// The upload row, refreshed expiry. `UploadNotFound` when absent or expired.
    pub async fn get(&self, id: &str) -> Result<UploadRow> {
        let key = id.to_owned();
        let expires = self.expiry_from_now();
        let row = self.db.call(move |c| uploads::get(c, &key)).await?;
        // Activity moves the expiry forward; written only when it would
        // move by more than the slack, so most reads of an upload's state
        // are not database writes.
        if let Some(r) = &row
            && r.expires_at > db::now()
            && r.state != UploadState::Committed
            && r.expires_at < expires - self.touch_slack()
            && !self.keeps_short_expiry(r)
        {
            let key = id.to_owned();
            self.db
                .write(move |tx| uploads::touch(tx, &key, expires))
                .await?;
        }
        match row {
            Some(r) if r.expires_at > db::now() || r.state == UploadState::Committed => Ok(r),
            _ => Err(Error::UploadNotFound(id.to_owned())),
        }
    }

    /// What a resuming client needs: state, parts, bytes received.
    pub async fn status(self: &Arc<Self>, id: &str) -> Result<Status> {
        let row = self.get(id).await?;
        self.take_over_if_abandoned(&row).await?;
        let key = id.to_owned();
        let parts = self.db.call(move |c| uploads::parts(c, &key)).await?;
        Ok(status_of(row, parts))
    }

    /// Uploads of a cache not yet committed.
    pub async fn list(&self, cache_id: i64) -> Result<Vec<Status>> {
        self.db
            .call(move |c| {
                let now = db::now();
                let mut out = vec![];
                for row in uploads::list_uncommitted(c, cache_id)? {
                    if row.expires_at <= now {
                        continue;
                    }
                    let parts = uploads::parts(c, &row.id)?;
                    out.push(status_of(row, parts));
                }
                Ok(out)
            })
            .await
    }

    /// Abandons an upload: its parts and row are removed.
    pub async fn abandon(&self, id: &str) -> Result<()> {
        let row = self.get(id).await?;
        if row.state == UploadState::Verifying || row.state == UploadState::Committed {
            return Err(Error::UploadClosed {
                id: id.to_owned(),
                state: row.state.as_str().to_owned(),
            });
        }
        self.remove(id).await
    }

    /// Removes an upload's files and rows (abandon, expiry).
    pub async fn remove(&self, id: &str) -> Result<()> {
        // The directory first, then the row (which releases the blobs the
        // upload had claimed): a crash in between leaves a row whose
        // parts are gone, which reads as parts to send again.
        self.remove_dir(id).await?;
        self.forget(id).await
    }

    /// The first half of [`Engine::remove`]: the upload's slot and its
    /// directory.
    async fn remove_dir(&self, id: &str) -> std::io::Result<()> {
        self.slots
            .lock()
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .remove(id);
        let dir = self.dir_of(id);
        tokio::task::spawn_blocking(move || remove_dir_if_present(&dir))
            .await
            .map_err(std::io::Error::other)?
    }

    /// The second half of [`Engine::remove`]: the upload's row.
    async fn forget(&self, id: &str) -> Result<()> {
        let key = id.to_owned();
        self.db.write(move |tx| uploads::delete(tx, &key)).await
    }

    /// Restarts `complete` for uploads that were verifying when the server
    /// stopped.
    pub async fn resume_verifying(self: &Arc<Self>) -> Result<()> {
        // SQLite has one server at a time (the serve lock): a lease left
        // by an earlier run is void. On PostgreSQL a live lease belongs to
        // another instance, and `complete` leaves it alone.
        if self.db.engine() == crate::db::sql::Engine::Sqlite {
            self.db.write(uploads::clear_leases).await?;
        }
        let rows = self
            .db
            .call(|c| uploads::in_state(c, UploadState::Verifying))
            .await?;
        for row in rows {
            if let Some(total) = row.total_parts {
                let engine = self.clone();
                self.rt.spawn(async move {
                    if let Err(e) = engine.complete(&row.id, total).await {
                        tracing::warn!(upload = %row.id, error = %e, "resumed verification failed");
                    }
                });
            }
        }
        Ok(())
    }

    fn slot(&self, id: &str) -> Result<Option<SlotRef>> {
        Ok(self.slots.lock().map_err(Error::internal)?.get(id).cloned())
    }

    async fn slot_or_load(&self, id: &str) -> Result<SlotRef> {
        if let Some(s) = self.slot(id)? {
            return Ok(s);
        }
        let key = id.to_owned();
        let parts = self.db.call(move |c| uploads::parts(c, &key)).await?;
        let mut slots = self.slots.lock().map_err(Error::internal)?;
        let slot = slots.entry(id.to_owned()).or_insert_with(|| {
            Arc::new(SlotCell {
                state: tokio::sync::Mutex::new(Slot {
                    verifier: None,
                    permit: None,
                    touched: std::time::Instant::now(),
                    present: parts.iter().map(|p| p.n).collect(),
                    folded: vec![],
                    stale: false,
                    failed: None,
                    verdict_at: None,
                }),
                closing: tokio::sync::RwLock::new(false),
            })
        });
        Ok(slot.clone())
    }
}

/// Removes a directory tree; an absent one is not an error.
fn remove_dir_if_present(dir: &std::path::Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Engine {
    /// What an upload of `new` into `cache` must satisfy.
    fn check_new(&self, cache: &CacheRow, new: &NewUpload) -> Result<()> {
        if new.store_path.store_dir() != cache.store_dir {
            return Err(Error::BadRequest(format!(
                "store_path {} is not in this cache's store dir {}",
                new.store_path, cache.store_dir
            )));
        }
        if new.nar_size == 0 {
            return Err(Error::BadRequest("nar_size must be greater than 0".into()));
        }
        if new.nar_size > self.cfg.max_nar_size {
            return Err(Error::NarTooLarge {
                size: new.nar_size,
                limit: self.cfg.max_nar_size,
            });
        }
        check_meta(&new.meta)
    }
}

/// Refuses declared fields that could not be written into a narinfo
/// line as they are (a newline would forge other fields).
fn check_meta(meta: &UploadMeta) -> Result<()> {
    for sig in &meta.sigs {
        let ok = sig.split_once(':').is_some_and(|(name, b64)| {
            !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
                && !b64.is_empty()
                && b64
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        });
        if !ok {
            return Err(Error::BadRequest(format!(
                "signature {sig:?} is not of the form keyname:base64"
            )));
        }
    }
    if let Some(ca) = &meta.ca
        && (ca.is_empty() || ca.bytes().any(|b| b.is_ascii_control()))
    {
        return Err(Error::BadRequest(format!(
            "ca {ca:?} is not a valid content address"
        )));
    }
    Ok(())
}

fn status_of(row: UploadRow, parts: Vec<PartRow>) -> Status {
    Status {
        received_bytes: parts.iter().map(|p| p.size).sum(),
        id: row.id,
        store_path: row.store_path,
        compression: row.compression,
        state: row.state,
        parts,
        expires_at: row.expires_at,
        error: row.error,
        cache_id: row.cache_id,
    }
}
