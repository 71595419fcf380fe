//! Assembling a running server from a [`Config`]: data directory layout,
//! database, blob store, root key, upload engine.
//!
//! Layout of the data directory:
//! `ferry.db` (SQLite), `root.key` (the token root key, mode 0600),
//! `blobs/` (the blob store), `uploads/` (parts of open uploads),
//! `serve.lock` (held by the one `ferry serve` of the directory: see
//! [`crate::serve_lock`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;

use crate::auth::{self, Authorizer, Operation, RootKey, TokenSpec};
use crate::config::Config;
use crate::db::{Db, revocations};
use crate::error::{Error, Result};
use crate::server::AppState;
use crate::store::{LocalStore, S3Store, SharedStore};
use crate::upload::{Engine, EngineConfig};

/// Paths inside a data directory (and the root key, which may live
/// outside it: `root-key-file`).
pub struct DataDir {
    pub root: PathBuf,
    key: PathBuf,
}

impl DataDir {
    pub fn new(root: &Path) -> DataDir {
        DataDir {
            root: root.to_owned(),
            key: root.join("root.key"),
        }
    }
    /// The data dir of a configuration, with its `root-key-file`.
    pub fn of(cfg: &Config) -> DataDir {
        DataDir {
            key: cfg
                .root_key_file
                .clone()
                .unwrap_or_else(|| cfg.data_dir.join("root.key")),
            ..DataDir::new(&cfg.data_dir)
        }
    }
    pub fn db(&self) -> PathBuf {
        self.root.join("ferry.db")
    }
    pub fn root_key(&self) -> PathBuf {
        self.key.clone()
    }
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }
    pub fn uploads(&self) -> PathBuf {
        self.root.join("uploads")
    }
    /// Takes the data dir's serve lock: only `ferry serve` does, before it
    /// opens anything (the offline commands share the database through
    /// SQLite instead). Fails, naming the running server, when another
    /// process holds it. See [`crate::serve_lock`].
    pub fn lock(&self) -> anyhow::Result<crate::serve_lock::ServeLock> {
        crate::serve_lock::ServeLock::acquire(&self.root)
    }
}

/// A server ready to run.
pub struct Opened {
    pub state: Arc<AppState>,
    /// Set on the first start: the admin token, to print once.
    pub first_admin_token: Option<String>,
}

/// Loads (or creates on first start) the root key of a data directory.
pub fn root_key(dir: &DataDir) -> anyhow::Result<(RootKey, bool)> {
    std::fs::create_dir_all(&dir.root)
        .with_context(|| format!("cannot create data dir {}", dir.root.display()))?;
    if let Some(parent) = dir.key.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    RootKey::load_or_create(&dir.root_key())
        .with_context(|| format!("cannot read or create {}", dir.root_key().display()))
}

/// A token with every right on every cache.
pub fn admin_spec(subject: &str, validity: Duration) -> TokenSpec {
    TokenSpec {
        subject: subject.to_owned(),
        rights: Operation::ALL
            .iter()
            .map(|op| (*op, "*".to_owned()))
            .collect(),
        expires_at: SystemTime::now() + validity,
    }
}

/// Opens everything the server needs.
pub fn open(cfg: &Config) -> anyhow::Result<Opened> {
    let dir = DataDir::of(cfg);
    let (root, created) = root_key(&dir)?;
    let db = Db::open_configured(cfg.database_url.as_deref(), &dir.db())
        .map_err(|e| anyhow::anyhow!("cannot open database: {e:?}"))?;
    let store: SharedStore = match &cfg.s3 {
        Some(s3) => {
            let s = S3Store::open(s3)?;
            s.check()?;
            Arc::new(s)
        }
        None => Arc::new(LocalStore::open(&dir.blobs()).context("cannot open blob store")?),
    };
    let engine = Engine::new(
        db.clone(),
        store.clone(),
        dir.uploads(),
        EngineConfig {
            max_part_size: cfg.max_part_size,
            upload_expiry: cfg.upload_expiry(),
            zstd_level: cfg.zstd_level,
            max_nar_size: cfg.max_nar_size,
            max_open_uploads_per_token: cfg.max_open_uploads_per_token,
            ..EngineConfig::default()
        },
    )
    .map_err(|e| anyhow::anyhow!("cannot open upload engine: {e:?}"))?;
    let first_admin_token = if created {
        let spec = admin_spec("admin", Duration::from_secs(365 * 86_400));
        Some(auth::mint(&root, &spec).map_err(|e| anyhow::anyhow!("{e}"))?)
    } else {
        None
    };
    let auth = Authorizer::new(root.public());
    auth.set_revoked(
        db.call_blocking(revocations::all)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?,
    );
    let state = AppState {
        caches: crate::db::caches::CacheIndex::new(db.clone()),
        access: Arc::new(crate::gc::AccessLog::default()),
        metrics: Arc::new(crate::server::metrics::Metrics::default()),
        settings: crate::server::Settings {
            default_retention_secs: match &cfg.default_retention {
                Some(r) => Some(
                    auth::parse_duration(r)
                        .map_err(|e| anyhow::anyhow!("{e}"))?
                        .as_secs() as i64,
                ),
                None => None,
            },
            allowed_hosts: cfg.allowed_hosts.clone(),
            trusted_proxies: cfg
                .trusted_proxies
                .iter()
                .filter_map(|p| p.parse().ok())
                .collect(),
            public_url: cfg
                .public_url
                .clone()
                .unwrap_or_default()
                .trim_end_matches('/')
                .to_owned(),
        },
        tus: crate::server::TusSettings {
            max_size: cfg.tus_max_size,
            cors_origins: cfg.cors_origins.clone(),
        },
        db,
        store,
        engine,
        auth,
    };
    Ok(Opened {
        state: Arc::new(state),
        first_admin_token,
    })
}

/// The id to store when revoking `token`: its last block's, so tokens
/// attenuated from it fail too while its parent keeps working.
pub fn revocation_id_of(token: &str) -> Result<String> {
    auth::revocation_ids(token)?
        .pop()
        .ok_or_else(|| Error::BadRequest("the token has no blocks".into()))
}

/// Stores a revoked id and makes the running authorizer see it at once.
pub async fn revoke(state: &AppState, id: &str) -> Result<()> {
    let key = id.to_owned();
    state
        .db
        .write(move |tx| revocations::insert(tx, &key))
        .await?;
    load_revocations(state).await
}

/// Loads the revoked set into the authorizer.
pub async fn load_revocations(state: &AppState) -> Result<()> {
    let ids = state.db.call(revocations::all).await?;
    state.auth.set_revoked(ids);
    Ok(())
}

/// Reloads the revoked set whenever the table changes (for example by
/// `ferry token revoke` run against the data dir). Polls every 2 s.
pub async fn watch_revocations(state: Arc<AppState>) {
    let mut seen = None;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        match state.db.call(revocations::generation).await {
            Ok(g) if seen != Some(g) => {
                if let Err(e) = load_revocations(&state).await {
                    tracing::warn!(error = %e, "reloading revocations failed");
                    continue;
                }
                seen = Some(g);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "checking revocations failed"),
        }
    }
}

/// The garbage collector of a running (or about to run) server.
pub fn collector(state: &AppState, cfg: &Config) -> crate::gc::Collector {
    crate::gc::Collector {
        db: state.db.clone(),
        store: state.store.clone(),
        engine: state.engine.clone(),
        access: state.access.clone(),
        grace: Duration::from_secs(cfg.orphan_grace_secs),
        metrics: state.metrics.clone(),
    }
}
