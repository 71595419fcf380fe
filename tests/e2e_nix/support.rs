//! Helpers shared by the end-to-end tests: authenticated JSON calls,
//! cache creation, netrc files and part digests.

use crate::common::{self, Body, HttpResponse};
use base64::Engine as _;
use sha2::Digest as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// `METHOD url` with `Authorization: Bearer token` (when given) and `body`.
pub fn call(
    method: &str,
    url: &str,
    token: Option<&str>,
    extra: &[&str],
    body: Body,
) -> HttpResponse {
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut headers: Vec<&str> = auth.iter().map(String::as_str).collect();
    headers.extend_from_slice(extra);
    common::http_request(method, url, &headers, body)
}

/// A JSON request with a token.
pub fn call_json(method: &str, url: &str, token: &str, json: &serde_json::Value) -> HttpResponse {
    call(
        method,
        url,
        Some(token),
        &["Content-Type: application/json"],
        Body::Bytes(serde_json::to_vec(json).unwrap()),
    )
}

/// Asserts the status, showing the body when it differs.
pub fn expect(r: &HttpResponse, status: u16, what: &str) -> serde_json::Value {
    assert_eq!(
        r.status,
        status,
        "{what}: unexpected status, body: {}",
        r.text()
    );
    r.json()
}

/// Creates `name` on the server at `base` and returns its public key.
pub fn create_cache(base: &str, admin: &str, name: &str, public: bool) -> String {
    let r = call_json(
        "POST",
        &format!("{base}/_api/v1/caches"),
        admin,
        &serde_json::json!({"name": name, "public": public}),
    );
    let v = expect(&r, 201, "create cache");
    assert_eq!(v["name"], name);
    assert_eq!(v["public"], public);
    let key = v["public_key"].as_str().expect("public_key").to_string();
    assert!(key.contains(':'), "public key {key:?} is not name:base64");
    key
}

/// The cache's public key as `GET /_api/v1/caches/{cache}` shows it to
/// `token`.
pub fn public_key(base: &str, cache: &str, token: &str) -> String {
    let r = call(
        "GET",
        &format!("{base}/_api/v1/caches/{cache}"),
        Some(token),
        &[],
        Body::None,
    );
    let v = expect(&r, 200, "cache info");
    v["public_key"].as_str().expect("public_key").to_string()
}

/// `127.0.0.1:PORT` of an `http://127.0.0.1:PORT` URL.
pub fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("socket address")
}

/// A netrc for 127.0.0.1 holding `token`, in a temp dir kept alive by the
/// returned guard.
pub fn netrc(token: &str) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = common::write_netrc(d.path(), "127.0.0.1", token);
    (d, p)
}

/// `Content-Digest: sha-256=:<base64>:` for `bytes`.
pub fn content_digest(bytes: &[u8]) -> String {
    let d = sha2::Sha256::digest(bytes);
    format!(
        "Content-Digest: sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(d)
    )
}

/// `nix-store --dump` of `path` into memory (small paths only).
pub fn nar_bytes(path: &str, dir: &Path) -> Vec<u8> {
    let f = dir.join("nar");
    common::dump_nar(path, &f);
    std::fs::read(&f).unwrap()
}

/// `zstd` CLI compression of `data`.
pub fn zstd_cli(data: &[u8], dir: &Path) -> Vec<u8> {
    let src = dir.join("to-compress");
    let dst = dir.join("compressed.zst");
    std::fs::write(&src, data).unwrap();
    common::run_ok(
        std::process::Command::new(common::require_tool("zstd"))
            .args(["-q", "-f", "-o"])
            .arg(&dst)
            .arg(&src),
    );
    std::fs::read(&dst).unwrap()
}

/// PUT part `n` of upload `id` with its Content-Digest; asserts 200 and the
/// answer (`n`, `size`, `blake3`).
pub fn put_part(base: &str, token: &str, id: &str, n: usize, bytes: &[u8]) {
    let digest = content_digest(bytes);
    let r = call(
        "PUT",
        &format!("{base}/_api/v1/uploads/{id}/parts/{n}"),
        Some(token),
        &[&digest],
        Body::Bytes(bytes.to_vec()),
    );
    let v = expect(&r, 200, &format!("part {n}"));
    assert_eq!(v["n"], n as u64, "{v}");
    assert_eq!(v["size"], bytes.len() as u64, "{v}");
    assert_eq!(v["blake3"], blake3::hash(bytes).to_hex().as_str(), "{v}");
}

/// Creates an upload for `info` with `nar_hash` (possibly wrong) and
/// `compression`; returns the response.
pub fn create_upload(
    base: &str,
    cache: &str,
    token: &str,
    info: &common::PathInfo,
    nar_hash: &str,
    compression: &str,
) -> HttpResponse {
    let mut body = serde_json::json!({
        "store_path": info.path,
        "nar_hash": nar_hash,
        "nar_size": info.nar_size,
        "references": info.references,
        "compression": compression,
    });
    if let Some(d) = &info.deriver {
        body["deriver"] = serde_json::json!(d);
    }
    call_json(
        "POST",
        &format!("{base}/_api/v1/caches/{cache}/uploads"),
        token,
        &body,
    )
}

/// Copies `top` from `url` into a fresh store and compares every path of
/// `paths` (tree and path-info) with the local store.
pub fn copy_back_and_compare(
    url: &str,
    pubkey: &str,
    netrc: Option<&Path>,
    top: &str,
    paths: &[String],
) {
    let store = common::nix_copy_from(url, pubkey, netrc, top);
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let original = common::path_info(&refs, false);
    let copied = common::path_info_in(Some(&store.url()), &refs, false);
    for (o, c) in original.iter().zip(&copied) {
        assert_eq!(o.path, c.path);
        assert_eq!(o.nar_hash, c.nar_hash, "NarHash of {}", o.path);
        assert_eq!(o.nar_size, c.nar_size, "NarSize of {}", o.path);
        assert_eq!(o.references, c.references, "references of {}", o.path);
        assert_eq!(o.deriver, c.deriver, "deriver of {}", o.path);
        common::compare_trees(Path::new(&o.path), &store.real_path(&o.path));
    }
}
