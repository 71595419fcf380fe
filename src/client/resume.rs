//! The resume state of pushes to one cache:
//! `$XDG_STATE_HOME/ferry/push-<server>-<cache>.json` (default under
//! `~/.local/state`). Per store path it records the upload id, the part
//! size and each acknowledged part's blake3, written (atomically) after
//! every acknowledgement. A path's entry goes when the path is committed.
//!
//! After a crash the push asks the server which parts it holds, and sends
//! only the others; a re-produced part whose blake3 differs from the one
//! acknowledged makes the path start again with a new upload.

use std::collections::BTreeMap;
use std::path::PathBuf;
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

#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    #[serde(default)]
    paths: BTreeMap<String, PathState>,
}

/// The state file, shared by the tasks of one push.
pub struct StateFile {
    path: PathBuf,
    stored: Mutex<Stored>,
}

impl StateFile {
    /// Where the state of pushes to `server:cache` lives.
    pub fn location(server: &str, cache: &str) -> Result<PathBuf> {
        Ok(xdg_state_home()?
            .join("ferry")
            .join(format!("push-{server}-{cache}.json")))
    }

    /// Opens (or starts) the state file at `path`.
    pub fn open(path: PathBuf) -> Result<StateFile> {
        let stored = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!("ignoring unreadable push state {}: {e}", path.display());
                Stored::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stored::default(),
            Err(e) => return Err(ClientError::io("read", &path, e)),
        };
        Ok(StateFile {
            path,
            stored: Mutex::new(stored),
        })
    }

    /// The recorded upload of `store_path`, if any.
    pub fn get(&self, store_path: &str) -> Option<PathState> {
        self.lock().paths.get(store_path).cloned()
    }

    /// Records a new upload for `store_path` (dropping any older one).
    pub fn start(&self, store_path: &str, upload_id: &str, part_size: u64) -> Result<()> {
        self.update(|s| {
            s.paths.insert(
                store_path.to_owned(),
                PathState {
                    upload_id: upload_id.to_owned(),
                    part_size,
                    parts: BTreeMap::new(),
                },
            );
        })
    }

    /// Records an acknowledged part.
    pub fn ack(&self, store_path: &str, n: u32, blake3: &str) -> Result<()> {
        self.update(|s| {
            if let Some(p) = s.paths.get_mut(store_path) {
                p.parts.insert(n, blake3.to_owned());
            }
        })
    }

    /// Drops `store_path` (committed, or given up).
    pub fn forget(&self, store_path: &str) -> Result<()> {
        self.update(|s| {
            s.paths.remove(store_path);
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Stored> {
        self.stored.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut Stored)) -> Result<()> {
        let mut s = self.lock();
        f(&mut s);
        if s.paths.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(ClientError::io("remove", &self.path, e))
                }
                _ => Ok(()),
            };
        }
        let bytes = serde_json::to_vec_pretty(&*s)
            .map_err(|e| ClientError::Config(format!("cannot encode the push state: {e}")))?;
        write_private(&self.path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry/push-s-c.json");
        let s = StateFile::open(path.clone()).unwrap();
        s.start("/nix/store/a", "id1", 8).unwrap();
        s.ack("/nix/store/a", 2, "bb").unwrap();
        s.ack("/nix/store/a", 1, "aa").unwrap();
        let again = StateFile::open(path.clone()).unwrap();
        let p = again.get("/nix/store/a").unwrap();
        assert_eq!(
            (p.upload_id.as_str(), p.part_size, p.parts.len()),
            ("id1", 8, 2)
        );
        again.forget("/nix/store/a").unwrap();
        assert!(!path.exists());
    }
}
