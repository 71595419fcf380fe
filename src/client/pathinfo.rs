//! Store paths to push: `nix path-info --json [--recursive]` parsed, the
//! upstream filter, and references-before-referrers ordering.
//!
//! Nix 2.8 prints an array of objects: `path`, `narHash` (SRI), `narSize`,
//! `references` (full paths), `deriver`, and only when set `signatures`
//! and `ca`. A path that is not valid shows up without `narHash`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::{Command, Stdio};

use serde::Deserialize;

use super::{ClientError, Result};

/// One valid store path and what its upload declares.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathInfo {
    pub path: String,
    #[serde(default)]
    pub nar_hash: Option<String>,
    #[serde(default)]
    pub nar_size: u64,
    #[serde(default)]
    pub references: Vec<String>,
    #[serde(default)]
    pub deriver: Option<String>,
    #[serde(default)]
    pub signatures: Vec<String>,
    #[serde(default)]
    pub ca: Option<String>,
}

impl PathInfo {
    /// The create-upload request for this path, its bytes in `compression`.
    pub fn create_request(&self, compression: &str) -> crate::api::CreateUpload {
        crate::api::CreateUpload {
            store_path: self.path.clone(),
            nar_hash: self.nar_hash.clone().unwrap_or_default(),
            nar_size: self.nar_size,
            references: self.references.clone(),
            deriver: self.deriver.clone(),
            ca: self.ca.clone(),
            sigs: self.signatures.clone(),
            compression: Some(compression.into()),
        }
    }

    /// Whether one of the signatures is made with a key named in `keys`
    /// (names only: `cache.nixos.org-1`, or full `name:base64` entries).
    pub fn signed_by_any(&self, keys: &[String]) -> bool {
        self.signatures.iter().any(|sig| {
            let name = sig.split(':').next().unwrap_or("");
            keys.iter().any(|k| k.split(':').next() == Some(name))
        })
    }
}

/// Parses `nix path-info --json` output, refusing invalid paths.
pub fn parse_path_info(json: &[u8]) -> Result<Vec<PathInfo>> {
    let infos: Vec<PathInfo> = serde_json::from_slice(json)
        .map_err(|e| ClientError::Nix(format!("cannot read `nix path-info --json` output: {e}")))?;
    for i in &infos {
        if i.nar_hash.is_none() || i.nar_size == 0 {
            return Err(ClientError::Nix(format!(
                "{} is not a valid store path (build or realise it first)",
                i.path
            )));
        }
    }
    Ok(infos)
}

/// Runs `nix path-info --json [--recursive] PATHS` in the local store.
pub fn query(paths: &[String], recursive: bool) -> Result<Vec<PathInfo>> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let mut c = Command::new("nix");
    c.args([
        "--extra-experimental-features",
        "nix-command",
        "path-info",
        "--json",
    ]);
    if recursive {
        c.arg("--recursive");
    }
    c.arg("--").args(paths);
    let out = c.stdin(Stdio::null()).output().map_err(|e| {
        ClientError::Nix(format!(
            "cannot run `nix path-info` (is Nix installed and on PATH?): {e}"
        ))
    })?;
    if !out.status.success() {
        return Err(ClientError::Nix(format!(
            "`nix path-info` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    parse_path_info(&out.stdout)
}

/// Orders `infos` so that every path comes after the paths it references
/// (references outside the set and self-references are ignored); ties
/// break by path, so the order is stable. A cycle (impossible in a real
/// store) is an error.
pub fn topological_order(infos: Vec<PathInfo>) -> Result<Vec<PathInfo>> {
    let index: HashMap<String, usize> = infos
        .iter()
        .enumerate()
        .map(|(i, p)| (p.path.clone(), i))
        .collect();
    let mut pending = vec![0usize; infos.len()];
    let mut referrers: Vec<Vec<usize>> = vec![Vec::new(); infos.len()];
    for (i, info) in infos.iter().enumerate() {
        let refs: BTreeSet<usize> = info
            .references
            .iter()
            .filter_map(|r| index.get(r).copied())
            .filter(|&j| j != i)
            .collect();
        pending[i] = refs.len();
        for j in refs {
            referrers[j].push(i);
        }
    }
    let mut ready: BTreeMap<String, usize> = (0..infos.len())
        .filter(|&i| pending[i] == 0)
        .map(|i| (infos[i].path.clone(), i))
        .collect();
    let mut order = Vec::with_capacity(infos.len());
    while let Some((_, i)) = ready.pop_first() {
        order.push(i);
        for &r in &referrers[i] {
            pending[r] -= 1;
            if pending[r] == 0 {
                ready.insert(infos[r].path.clone(), r);
            }
        }
    }
    if order.len() != infos.len() {
        return Err(ClientError::Nix(
            "the store paths reference each other in a cycle".into(),
        ));
    }
    let mut slots: Vec<Option<PathInfo>> = infos.into_iter().map(Some).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(path: &str, refs: &[&str]) -> PathInfo {
        PathInfo {
            path: path.into(),
            nar_hash: Some("sha256-AAAA".into()),
            nar_size: 1,
            references: refs.iter().map(|s| s.to_string()).collect(),
            deriver: None,
            signatures: vec![],
            ca: None,
        }
    }

    #[test]
    fn references_come_first() {
        let v = vec![
            info("/s/top", &["/s/a", "/s/b", "/s/top", "/s/outside"]),
            info("/s/b", &["/s/a"]),
            info("/s/a", &["/s/a"]),
            info("/s/c", &[]),
        ];
        let order: Vec<String> = topological_order(v)
            .unwrap()
            .into_iter()
            .map(|p| p.path)
            .collect();
        assert_eq!(order, ["/s/a", "/s/b", "/s/c", "/s/top"]);
    }

    #[test]
    fn cycles_are_refused() {
        assert!(topological_order(vec![info("/s/a", &["/s/b"]), info("/s/b", &["/s/a"])]).is_err());
    }

    #[test]
    fn parses_nix_2_8_output_and_filters_upstream() {
        let json = br#"[{"path":"/nix/store/aaaa-x","narHash":"sha256-AAAA","narSize":120,
            "references":["/nix/store/aaaa-x"],"deriver":"/nix/store/bbbb-x.drv","registrationTime":1,
            "signatures":["cache.nixos.org-1:sig"],"valid":true},
            {"path":"/nix/store/cccc-y","narHash":"sha256-BBBB","narSize":8,"references":[]}]"#;
        let v = parse_path_info(json).unwrap();
        assert_eq!(v.len(), 2);
        assert!(v[0].signed_by_any(&["cache.nixos.org-1".into()]));
        assert!(v[0].signed_by_any(&[
            "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=".into()
        ]));
        assert!(!v[1].signed_by_any(&["cache.nixos.org-1".into()]));
        assert!(parse_path_info(br#"[{"path":"/nix/store/dddd-z","valid":false}]"#).is_err());
    }
}
