//! Leftovers: uploads past their expiry, staged Nix uploads whose narinfo
//! never came, and upload directories no open upload owns (a crash's). Run
//! by garbage collection; every listed entry may vanish while it is looked
//! at (the server goes on beside `ferry gc`).

use std::path::PathBuf;
use std::time::Duration;

use super::{Engine, remove_dir_if_present};
use crate::db::{self, uploads, uploads::UploadState};
use crate::error::{Error, Result};
use crate::gc::{Failed, Tried};

impl Engine {
    /// Removes upload directories that no open upload owns (leftovers of
    /// a crash), once older than `grace`. Each is checked again under the
    /// writer: an upload's row is written before its directory is made.
    /// Returns (removed, failed).
    pub async fn sweep_unknown_dirs(&self, grace: Duration) -> Result<(u64, u64)> {
        let root = self.uploads_dir.clone();
        let candidates = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<PathBuf>> {
            let mut out = vec![];
            for entry in std::fs::read_dir(&root)? {
                let entry = entry?;
                let name = entry.file_name();
                let is_upload = name
                    .to_str()
                    .is_some_and(|n| uuid::Uuid::try_parse(n).is_ok());
                // Gone since the listing: the server finished with it.
                let Some(meta) = crate::store::listed_metadata(&entry)? else {
                    continue;
                };
                let old = meta.modified()?.elapsed().is_ok_and(|age| age >= grace);
                if is_upload && old && meta.is_dir() {
                    out.push(entry.path());
                }
            }
            Ok(out)
        })
        .await
        .map_err(Error::internal)??;
        if candidates.is_empty() {
            return Ok((0, 0));
        }
        self.db
            .write(move |tx| {
                let mut n = 0;
                let mut failed = Failed::default();
                for dir in candidates {
                    let id = dir
                        .file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or_default()
                        .to_owned();
                    // No row, or a settled one: a crash after the commit
                    // (or the verdict) left the directory behind.
                    let settled = uploads::get(tx, &id)?.is_none_or(|r| {
                        matches!(r.state, UploadState::Committed | UploadState::Failed)
                    });
                    if settled {
                        tracing::info!(upload = %id, "removing a leftover upload directory");
                        let what = || format!("upload directory {}", dir.display());
                        match failed.tried(what, remove_dir_if_present(&dir)) {
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

    /// Removes every upload past its expiry, and staged Nix uploads whose
    /// narinfo never came. Returns how many uploads were removed, and how
    /// many could not be.
    pub async fn sweep_expired(&self) -> Result<(u64, u64)> {
        let ids = self.db.call(|c| uploads::expired(c, db::now())).await?;
        let mut failed = Failed::default();
        let mut removed = 0;
        for id in &ids {
            // Its directory first, on its own: a directory that cannot be
            // removed is one failure, not the end of the run.
            match failed.tried(|| format!("upload {id}"), self.remove_dir(id).await) {
                Tried::Done => {
                    self.forget(id).await?;
                    removed += 1;
                }
                Tried::Failed => {}
                Tried::Stop => break,
            }
        }
        let staged = self.uploads_dir.join("staged");
        let max_age = self.cfg.upload_expiry;
        let failed = tokio::task::spawn_blocking(move || {
            remove_older_than(&staged, max_age, &mut failed)?;
            Ok::<_, Error>(failed)
        })
        .await
        .map_err(Error::internal)??;
        Ok((removed, failed.total))
    }
}

/// Removes the files of `dir` last modified more than `age` ago; one
/// that cannot be removed is noted in `failed`.
fn remove_older_than(dir: &std::path::Path, age: Duration, failed: &mut Failed) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let entry = entry?;
        let Some(meta) = crate::store::listed_metadata(&entry)? else {
            continue;
        };
        if meta.modified()?.elapsed().is_ok_and(|e| e > age) {
            let removed = match std::fs::remove_file(entry.path()) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            };
            let what = || format!("staged file {}", entry.path().display());
            if let Tried::Stop = failed.tried(what, removed) {
                break;
            }
        }
    }
    Ok(())
}
