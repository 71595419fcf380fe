//! `ferry watch-store`: poll the store directory, push what appears.
//!
//! Every `interval` the store directory is listed and compared with the
//! previous listing. New entries (not `.drv`, `.lock` or other non-path
//! names) wait until Nix registers them as valid (a path being built is
//! on disk before it is valid), then go in one batch through the push
//! engine with their closure. When the server cannot be reached the batch
//! is kept and tried again with growing pauses; nothing is dropped.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::backoff::Backoff;
use super::http::Api;
use super::push::{PushOptions, push};
use super::resume::StateFile;
use super::{ClientError, Result};
use crate::api::CacheInfo;

/// Whether a store directory entry can be a store path worth pushing.
pub fn is_candidate(name: &str) -> bool {
    let Some((hash, rest)) = name.split_at_checked(32) else {
        return false;
    };
    rest.starts_with('-')
        && rest.len() > 1
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        && ![".drv", ".lock", ".check", ".chroot"]
            .iter()
            .any(|s| name.ends_with(s))
}

/// Full paths of the candidate entries of `store_dir`.
pub fn list_store(store_dir: &Path) -> Result<BTreeSet<String>> {
    let rd = std::fs::read_dir(store_dir).map_err(|e| ClientError::io("list", store_dir, e))?;
    let mut out = BTreeSet::new();
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_candidate(&name) {
            out.insert(store_dir.join(&name).to_string_lossy().into_owned());
        }
    }
    Ok(out)
}

/// The paths of `paths` that Nix says are valid.
fn valid_paths(paths: &BTreeSet<String>) -> Result<Vec<String>> {
    if paths.is_empty() {
        return Ok(vec![]);
    }
    let out = Command::new("nix-store")
        .args(["--check-validity", "--print-invalid"])
        .args(paths)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ClientError::Nix(format!("cannot run `nix-store --check-validity`: {e}")))?;
    if !out.status.success() {
        return Err(ClientError::Nix(format!(
            "`nix-store --check-validity` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let invalid: BTreeSet<&str> = std::str::from_utf8(&out.stdout)
        .unwrap_or("")
        .lines()
        .collect();
    Ok(paths
        .iter()
        .filter(|p| !invalid.contains(p.as_str()))
        .cloned()
        .collect())
}

/// Watches `info.store_dir` forever (until the process is stopped).
pub async fn watch_store(
    api: &Api,
    cache: &str,
    info: &CacheInfo,
    state_path: &Path,
    interval: Duration,
    opts: &PushOptions,
) -> Result<()> {
    let store_dir = Path::new(&info.store_dir);
    let mut seen = list_store(store_dir)?;
    let mut pending: BTreeSet<String> = BTreeSet::new();
    let backoff = Backoff {
        base: interval,
        cap: Duration::from_secs(300),
        max_attempts: None,
    };
    let mut failures = 0u32;
    eprintln!(
        "watching {} ({} paths present); pushing new paths to {cache}",
        info.store_dir,
        seen.len()
    );
    loop {
        tokio::time::sleep(interval).await;
        let now = match list_store(store_dir) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("warning: {e}");
                continue;
            }
        };
        pending.extend(now.difference(&seen).cloned());
        pending.retain(|p| now.contains(p));
        seen = now;
        let batch = {
            let pending = pending.clone();
            tokio::task::spawn_blocking(move || valid_paths(&pending))
                .await
                .map_err(|e| ClientError::Nix(format!("validity check stopped: {e}")))??
        };
        if batch.is_empty() {
            continue;
        }
        let state = StateFile::open(state_path.to_owned())?;
        match push(api, cache, info, state, batch.clone(), opts).await {
            Ok(summary) => {
                failures = 0;
                for p in &batch {
                    pending.remove(p);
                }
                eprintln!("{summary}");
            }
            Err(e) => {
                let wait = backoff.delay(failures);
                failures = failures.saturating_add(1);
                eprintln!(
                    "push failed ({e}); trying again in {:.0}s",
                    wait.as_secs_f64()
                );
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates() {
        assert!(is_candidate("0123456789abcdfghijklmnpqrsvwxyz-hello-2.12"));
        assert!(!is_candidate(
            "0123456789abcdfghijklmnpqrsvwxyz-hello-2.12.drv"
        ));
        assert!(!is_candidate("0123456789abcdfghijklmnpqrsvwxyz-hello.lock"));
        assert!(!is_candidate(".links"));
        assert!(!is_candidate("0123456789abcdfghijklmnpqrsvwxyz"));
    }
}
