//! Assembling a running server from a [`Config`]: data directory layout,
//! database, blob store, root key, upload engine.
//!
//! Layout of the data directory:
//! `ferry.db` (SQLite), `root.key` (the token root key, mode 0600),
//! `blobs/` (the blob store), `uploads/` (parts of open uploads).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;

use crate::auth::{self, Authorizer, Operation, RootKey, TokenSpec};
use crate::config::Config;
use crate::db::Db;
use crate::server::AppState;
use crate::store::LocalStore;
use crate::upload::{Engine, EngineConfig};

/// Paths inside a data directory.
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn new(root: &Path) -> DataDir {
        DataDir { root: root.to_owned() }
    }
    pub fn db(&self) -> PathBuf {
        self.root.join("ferry.db")
    }
    pub fn root_key(&self) -> PathBuf {
        self.root.join("root.key")
    }
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }
    pub fn uploads(&self) -> PathBuf {
        self.root.join("uploads")
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
    RootKey::load_or_create(&dir.root_key())
        .with_context(|| format!("cannot read or create {}", dir.root_key().display()))
}

/// A token with every right on every cache.
pub fn admin_spec(subject: &str, validity: Duration) -> TokenSpec {
    TokenSpec {
        subject: subject.to_owned(),
        rights: Operation::ALL.iter().map(|op| (*op, "*".to_owned())).collect(),
        expires_at: SystemTime::now() + validity,
    }
}

/// Opens everything the server needs.
pub fn open(cfg: &Config) -> anyhow::Result<Opened> {
    let dir = DataDir::new(&cfg.data_dir);
    let (root, created) = root_key(&dir)?;
    let db = Db::open(&dir.db()).map_err(|e| anyhow::anyhow!("cannot open database: {e:?}"))?;
    let store = Arc::new(LocalStore::open(&dir.blobs()).context("cannot open blob store")?);
    let engine = Engine::new(
        db.clone(),
        store.clone(),
        dir.uploads(),
        EngineConfig {
            max_part_size: cfg.max_part_size,
            upload_expiry: cfg.upload_expiry(),
            zstd_level: cfg.zstd_level,
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
    let state = AppState {
        db,
        store,
        engine,
        auth: Authorizer::new(root.public()),
    };
    Ok(Opened {
        state: Arc::new(state),
        first_admin_token,
    })
}
