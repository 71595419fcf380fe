//! The resume state of pushes to one cache: the directory
//! `$XDG_STATE_HOME/ferry/push-<server>-<cache>/` (default under
//! `~/.local/state`), with one file per store path being uploaded,
//! `<hash-part>.json`: the store path, its upload id, the part size and
//! each acknowledged part's blake3, rewritten (temp file + rename) after
//! every acknowledgement. A path's file goes when the path is committed.
//!
//! After a crash the push asks the server which parts it holds, and sends
//! only the others; a re-produced part whose blake3 differs from the one
//! acknowledged makes the path start again with a new upload.
//!
//! Several pushes to one cache may run at once (`watch-store` beside a
//! manual `ferry push`, two CI jobs on one runner):
//! - each path has its own file, so a process never rewrites the entries
//!   of another;
//! - a process pushing a path holds an advisory lock (`flock(2)`) on
//!   `<hash-part>.lock` from before it reads the path's state until it is
//!   done with it ([`StateFile::lock_path`], released when the
//!   [`PathLock`] drops or the process dies). A second process pushing the
//!   same path waits for that lock rather than using the same upload at
//!   the same time; once it holds it, it finds the path committed (no
//!   state left: the server answers that it has the path) or the state
//!   the first left (a failed push: it resumes that upload). Waiting keeps
//!   both pushes' results right, and costs no bytes sent twice.
//! - the holder removes the lock file when it lets go of a path with no
//!   state left; a waiter that then gets the lock of the removed file
//!   notices (the name is gone or names another file) and takes the lock
//!   again by name.
//!
//! The single state file of earlier versions, `push-<server>-<cache>.json`,
//! is migrated when the state is opened: each path in it that no process
//! holds and that has no file of its own yet gets one, then the old file
//! is removed.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::config::{write_private, xdg_state_home};
use super::{ClientError, Result};

/// One store path's upload in progress.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PathState {
    pub upload_id: String,
    /// Bytes per part (the last part is shorter).
    pub part_size: u64,
    /// Acknowledged parts: number → blake3 (hex) the server returned.
    #[serde(default)]
    pub parts: BTreeMap<u32, String>,
}

/// A path's file: the store path it belongs to and its [`PathState`]
/// (spelled out: serde's `flatten` cannot read the numbered parts back).
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    store_path: String,
    upload_id: String,
    part_size: u64,
    #[serde(default)]
    parts: BTreeMap<u32, String>,
}

/// The single file of earlier versions.
#[derive(Debug, Default, Deserialize)]
struct Legacy {
    #[serde(default)]
    paths: BTreeMap<String, PathState>,
}

/// The resume state of one cache, shared by the tasks of one push.
pub struct StateFile {
    dir: PathBuf,
    /// Serializes this process's read-modify-writes (the parts of one path
    /// are acknowledged concurrently).
    write: Mutex<()>,
}

/// The lock on one path's state, held while pushing the path.
#[derive(Debug)]
pub struct PathLock {
    _file: File,
    lock_path: PathBuf,
    state_path: PathBuf,
}

impl Drop for PathLock {
    fn drop(&mut self) {
        // Still held here: nobody else can be using the path's state.
        if !self.state_path.exists() {
            let _ = std::fs::remove_file(&self.lock_path);
        }
    }
}

impl StateFile {
    /// The directory of the state of pushes to `server:cache`.
    pub fn location(server: &str, cache: &str) -> Result<PathBuf> {
        Ok(xdg_state_home()?
            .join("ferry")
            .join(format!("push-{server}-{cache}")))
    }

    /// Opens (or starts) the state directory `dir`, migrating the single
    /// file of earlier versions beside it.
    pub fn open(dir: PathBuf) -> Result<StateFile> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| ClientError::io("create", &dir, e))?;
        let state = StateFile {
            dir,
            write: Mutex::new(()),
        };
        if let Some(name) = state.dir.file_name() {
            let legacy = state
                .dir
                .with_file_name(format!("{}.json", name.to_string_lossy()));
            state.migrate(&legacy)?;
        }
        Ok(state)
    }

    /// Takes the lock of `store_path`'s state, waiting while another
    /// process (or [`StateFile`]) holds it. Blocks: call it off the async
    /// threads.
    pub fn lock_path(&self, store_path: &str) -> Result<PathLock> {
        self.take_lock(store_path, true)?
            .ok_or_else(|| ClientError::Config("a waited-for lock was not taken".into()))
    }

    /// Takes the lock of `store_path`'s state if no one holds it.
    pub fn try_lock_path(&self, store_path: &str) -> Result<Option<PathLock>> {
        self.take_lock(store_path, false)
    }

    /// The recorded upload of `store_path`, if any.
    pub fn get(&self, store_path: &str) -> Option<PathState> {
        let path = self.state_path(store_path);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("ignoring unreadable push state {}: {e}", path.display());
                }
                return None;
            }
        };
        match serde_json::from_slice::<Entry>(&bytes) {
            Ok(e) if e.store_path == store_path => Some(PathState {
                upload_id: e.upload_id,
                part_size: e.part_size,
                parts: e.parts,
            }),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!("ignoring unreadable push state {}: {e}", path.display());
                None
            }
        }
    }

    /// Records a new upload for `store_path` (dropping any older one).
    pub fn start(&self, store_path: &str, upload_id: &str, part_size: u64) -> Result<()> {
        let _w = self.serialize();
        self.put(
            store_path,
            PathState {
                upload_id: upload_id.to_owned(),
                part_size,
                parts: BTreeMap::new(),
            },
        )
    }

    /// Records an acknowledged part.
    pub fn ack(&self, store_path: &str, n: u32, blake3: &str) -> Result<()> {
        let _w = self.serialize();
        let Some(mut state) = self.get(store_path) else {
            return Ok(());
        };
        state.parts.insert(n, blake3.to_owned());
        self.put(store_path, state)
    }

    /// Drops `store_path` (committed, or given up).
    pub fn forget(&self, store_path: &str) -> Result<()> {
        let _w = self.serialize();
        let path = self.state_path(store_path);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(ClientError::io("remove", &path, e))
            }
            _ => Ok(()),
        }
    }

    fn serialize(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put(&self, store_path: &str, state: PathState) -> Result<()> {
        let entry = Entry {
            store_path: store_path.to_owned(),
            upload_id: state.upload_id,
            part_size: state.part_size,
            parts: state.parts,
        };
        let bytes = serde_json::to_vec_pretty(&entry)
            .map_err(|e| ClientError::Config(format!("cannot encode the push state: {e}")))?;
        write_private(&self.state_path(store_path), &bytes)
    }

    /// The file name of a path's state, without extension: the store
    /// path's hash part (or a hash of the whole name when it has none).
    fn stem(store_path: &str) -> String {
        let base = store_path.rsplit('/').next().unwrap_or(store_path);
        let hash = base.split('-').next().unwrap_or_default();
        if (1..=64).contains(&hash.len()) && hash.bytes().all(|b| b.is_ascii_alphanumeric()) {
            hash.to_owned()
        } else {
            format!("h{}", blake3::hash(store_path.as_bytes()).to_hex())
        }
    }

    fn state_path(&self, store_path: &str) -> PathBuf {
        self.dir.join(format!("{}.json", Self::stem(store_path)))
    }

    fn take_lock(&self, store_path: &str, wait: bool) -> Result<Option<PathLock>> {
        let lock_path = self.dir.join(format!("{}.lock", Self::stem(store_path)));
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&lock_path)
                .map_err(|e| ClientError::io("open", &lock_path, e))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) if wait => file
                    .lock()
                    .map_err(|e| ClientError::io("lock", &lock_path, e))?,
                Err(TryLockError::WouldBlock) => return Ok(None),
                Err(TryLockError::Error(e)) => return Err(ClientError::io("lock", &lock_path, e)),
            }
            if still_named(&file, &lock_path) {
                return Ok(Some(PathLock {
                    _file: file,
                    lock_path,
                    state_path: self.state_path(store_path),
                }));
            }
            // Its holder removed it on the way out: lock the name again.
        }
    }

    fn migrate(&self, legacy: &Path) -> Result<()> {
        let bytes = match std::fs::read(legacy) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(ClientError::io("read", legacy, e)),
        };
        let old: Legacy = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!("ignoring unreadable push state {}: {e}", legacy.display());
            Legacy::default()
        });
        for (store_path, state) in old.paths {
            // A path someone pushes now has state of its own.
            let Some(_held) = self.try_lock_path(&store_path)? else {
                continue;
            };
            if self.get(&store_path).is_none() {
                let _w = self.serialize();
                self.put(&store_path, state)?;
            }
        }
        match std::fs::remove_file(legacy) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(ClientError::io("remove", legacy, e))
            }
            _ => Ok(()),
        }
    }
}

/// Whether `path` still names the open `file`.
fn still_named(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
#[path = "resume_tests.rs"]
mod tests;
