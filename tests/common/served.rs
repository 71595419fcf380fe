//! What a ferry cache serves for a store path, checked byte for byte
//! against the local Nix store, the way a substituter would see it: the
//! narinfo's NarHash/NarSize must be the local path's, and the NAR behind
//! its URL must hash (after zstd decompression) to that NarHash, with
//! FileHash/FileSize matching the bytes as served. Hash conversions go
//! through Nix itself (`nix hash to-base32`), not through ferry's code.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use sha2::Digest as _;

use super::http::{Body, curl, http_request};
use super::nix::{PathInfo, nix_hash_to_base32};
use super::tools::run_ok;

/// What was served for one path.
#[derive(Clone, Debug)]
pub struct ServedNar {
    /// The narinfo's `URL` (relative to the cache).
    pub url: String,
    pub compression: String,
    /// Bytes of the NAR file as served (compressed).
    pub file_size: u64,
    pub nar_size: u64,
}

/// The `Key: value` lines of a narinfo.
pub fn parse_narinfo(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// SHA-256 (hex) and length of everything `r` yields.
fn sha256_of(mut r: impl Read) -> std::io::Result<(String, u64)> {
    let mut h = sha2::Sha256::new();
    let n = std::io::copy(&mut r, &mut h)?;
    Ok((format!("{:x}", h.finalize()), n))
}

/// `sha256:<nix32>` of a hex SHA-256, as Nix writes it.
fn nix32_of_hex(hex: &str) -> String {
    format!("sha256:{}", nix_hash_to_base32(hex))
}

/// Fetches the narinfo of `info.path` from `{base}/{cache}` (with `token`
/// as a Bearer token) and the NAR it points to, and checks both against
/// `info` (from `nix path-info` on the local store). `Err` says what
/// differs; a transport failure is an `Err` too.
pub fn check_served_path(
    base: &str,
    cache: &str,
    token: &str,
    info: &PathInfo,
) -> Result<ServedNar, String> {
    let auth = format!("Authorization: Bearer {token}");
    let r = http_request(
        "GET",
        &format!("{base}/{cache}/{}.narinfo", info.hash_part()),
        &[&auth],
        Body::None,
    );
    if r.status != 200 {
        return Err(format!(
            "narinfo of {}: status {} {}",
            info.path,
            r.status,
            r.text()
        ));
    }
    let text = r.text();
    let ni = parse_narinfo(&text);
    let field = |k: &str| {
        ni.get(k)
            .cloned()
            .ok_or_else(|| format!("narinfo of {} has no {k}:\n{text}", info.path))
    };
    let want_hash = info.nar_hash_nix32();
    if field("StorePath")? != info.path
        || field("NarHash")? != want_hash
        || field("NarSize")? != info.nar_size.to_string()
    {
        return Err(format!(
            "narinfo of {} does not describe the local path (NarHash {want_hash}, NarSize {}):\n{text}",
            info.path, info.nar_size
        ));
    }
    let mut refs: Vec<String> = field("References")?
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    refs.sort();
    let mut want_refs: Vec<String> = info
        .references
        .iter()
        .map(|p| p.rsplit('/').next().unwrap_or(p).to_owned())
        .collect();
    want_refs.sort();
    if refs != want_refs {
        return Err(format!(
            "narinfo of {}: References {refs:?}, local {want_refs:?}",
            info.path
        ));
    }

    let url = field("URL")?;
    let compression = field("Compression")?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let file = dir.path().join("nar");
    run_ok(
        curl()
            .args(["-f", "-H", &auth, "-o"])
            .arg(&file)
            .arg(format!("{base}/{cache}/{url}")),
    );
    let (file_hex, file_size) = sha256_of(open(&file)?).map_err(|e| e.to_string())?;
    if let Some(fs) = ni.get("FileSize")
        && *fs != file_size.to_string()
    {
        return Err(format!(
            "{url}: FileSize {fs} but {file_size} bytes were served"
        ));
    }
    if let Some(fh) = ni.get("FileHash")
        && *fh != nix32_of_hex(&file_hex)
    {
        return Err(format!(
            "{url}: FileHash {fh} differs from the bytes served"
        ));
    }
    let (nar_hex, nar_size) = match compression.as_str() {
        "zstd" => {
            let dec = zstd::stream::read::Decoder::new(open(&file)?)
                .map_err(|e| format!("{url}: {e}"))?;
            sha256_of(dec).map_err(|e| format!("{url}: not valid zstd: {e}"))?
        }
        "none" => (file_hex, file_size),
        other => return Err(format!("{url}: unexpected Compression {other}")),
    };
    if nar_size != info.nar_size {
        return Err(format!(
            "{url}: NarSize {} but the served NAR has {nar_size} bytes",
            info.nar_size
        ));
    }
    let got = nix32_of_hex(&nar_hex);
    if got != want_hash {
        return Err(format!(
            "{url}: the served NAR hashes to {got}, the narinfo says {want_hash}"
        ));
    }
    Ok(ServedNar {
        url,
        compression,
        file_size,
        nar_size,
    })
}

fn open(p: &Path) -> Result<std::fs::File, String> {
    std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))
}
