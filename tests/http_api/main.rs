//! In-process HTTP tests of the wire contract (README): every endpoint and
//! every error code, one test per behaviour, through the real `curl`.
//!
//! Each test starts its own server (`common::InProcess`, port 0, fresh data
//! dir). The helpers below keep the tests short: make a cache, make a NAR,
//! start an upload, put a part, complete, and check an error body.

#[path = "../common/mod.rs"]
mod common;

mod auth;
mod batch;
mod caches;
mod chunks;
mod complete;
mod nix_put;
mod parts;
mod reads;
mod uploads;

use common::{Body, HttpResponse, InProcess, http_request};
pub use common::{Nar, hash_part, noise, store_path};
use ferry::nar::Sha256Hash;
use serde_json::{Value, json};

/// `Authorization: Bearer <token>`.
pub fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

/// A request to `path` on `s`, with an optional token and extra headers.
pub fn call(
    s: &InProcess,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[&str],
    body: Body,
) -> HttpResponse {
    let auth = token.map(bearer);
    let mut h: Vec<&str> = headers.to_vec();
    if let Some(a) = &auth {
        h.push(a);
    }
    http_request(method, &format!("{}{path}", s.url), &h, body)
}

/// GET with an optional token.
pub fn get(s: &InProcess, path: &str, token: Option<&str>) -> HttpResponse {
    call(s, "GET", path, token, &[], Body::None)
}

/// A JSON request body.
pub fn send_json(
    s: &InProcess,
    method: &str,
    path: &str,
    token: Option<&str>,
    v: &Value,
) -> HttpResponse {
    call(
        s,
        method,
        path,
        token,
        &["Content-Type: application/json"],
        Body::Bytes(v.to_string().into_bytes()),
    )
}

/// POST a JSON body.
pub fn post_json(s: &InProcess, path: &str, token: Option<&str>, v: &Value) -> HttpResponse {
    send_json(s, "POST", path, token, v)
}

/// Creates a cache with the admin token; returns its JSON description.
pub fn create_cache(s: &InProcess, name: &str, public: bool) -> Value {
    let r = post_json(
        s,
        "/_api/v1/caches",
        Some(&s.admin_token),
        &json!({"name": name, "public": public}),
    );
    assert_eq!(r.status, 201, "create cache {name}: {}", r.text());
    r.json()
}

/// What these tests send of a [`Nar`].
impl Nar {
    /// The NAR compressed with zstd.
    pub fn zst(&self) -> Vec<u8> {
        zstd::encode_all(&self.bytes[..], 3).unwrap()
    }

    /// The body of `POST /caches/{c}/uploads` for this NAR.
    pub fn create_body(&self, compression: &str, references: &[&str]) -> Value {
        json!({
            "store_path": self.path,
            "nar_hash": self.hash.to_string(),
            "nar_size": self.bytes.len(),
            "references": references,
            "compression": compression,
        })
    }
}

/// `POST /caches/{cache}/uploads` with `body`.
pub fn start_upload_with(s: &InProcess, cache: &str, token: &str, body: &Value) -> HttpResponse {
    post_json(
        s,
        &format!("/_api/v1/caches/{cache}/uploads"),
        Some(token),
        body,
    )
}

/// Starts an upload of `nar` and returns its id (asserts 201).
pub fn start_upload(s: &InProcess, cache: &str, nar: &Nar, compression: &str) -> String {
    let r = start_upload_with(s, cache, &s.admin_token, &nar.create_body(compression, &[]));
    assert_eq!(r.status, 201, "start upload: {}", r.text());
    r.json()["id"].as_str().unwrap().to_owned()
}

/// `PUT /uploads/{id}/parts/{n}` with the admin token and extra headers.
pub fn put_part_h(
    s: &InProcess,
    id: &str,
    n: &str,
    bytes: &[u8],
    headers: &[&str],
) -> HttpResponse {
    call(
        s,
        "PUT",
        &format!("/_api/v1/uploads/{id}/parts/{n}"),
        Some(&s.admin_token),
        headers,
        Body::Bytes(bytes.to_vec()),
    )
}

/// Puts part `n` and asserts 200.
pub fn put_part(s: &InProcess, id: &str, n: u32, bytes: &[u8]) -> Value {
    let r = put_part_h(s, id, &n.to_string(), bytes, &[]);
    assert_eq!(r.status, 200, "part {n}: {}", r.text());
    r.json()
}

/// `POST /uploads/{id}/complete` with `{"parts": parts}`.
pub fn complete(s: &InProcess, id: &str, parts: u32) -> HttpResponse {
    post_json(
        s,
        &format!("/_api/v1/uploads/{id}/complete"),
        Some(&s.admin_token),
        &json!({"parts": parts}),
    )
}

/// `GET /uploads/{id}` with the admin token.
pub fn upload_status(s: &InProcess, id: &str) -> HttpResponse {
    get(s, &format!("/_api/v1/uploads/{id}"), Some(&s.admin_token))
}

/// `bytes` in `n` nearly equal pieces (the last may be shorter).
pub fn split(bytes: &[u8], n: usize) -> Vec<Vec<u8>> {
    let size = bytes.len().div_ceil(n);
    bytes.chunks(size).map(<[u8]>::to_vec).collect()
}

/// The whole flow: start, parts in order, complete. Returns the complete
/// answer.
pub fn push(
    s: &InProcess,
    cache: &str,
    nar: &Nar,
    compression: &str,
    parts: usize,
) -> HttpResponse {
    let id = start_upload(s, cache, nar, compression);
    let data = if compression == "zstd" {
        nar.zst()
    } else {
        nar.bytes.clone()
    };
    let pieces = split(&data, parts);
    for (i, p) in pieces.iter().enumerate() {
        put_part(s, &id, i as u32 + 1, p);
    }
    complete(s, &id, pieces.len() as u32)
}

/// [`push`] and assert it committed.
pub fn push_ok(s: &InProcess, cache: &str, nar: &Nar) {
    let r = push(s, cache, nar, "zstd", 2);
    assert_eq!(r.status, 200, "complete: {}", r.text());
    assert_eq!(r.json()["state"], "committed");
}

/// `GET /{cache}/{hash}.narinfo`.
pub fn narinfo(s: &InProcess, cache: &str, path: &str, token: Option<&str>) -> HttpResponse {
    get(s, &format!("/{cache}/{}.narinfo", hash_part(path)), token)
}

/// The narinfo of `path` in `cache`, parsed (asserts 200).
pub fn narinfo_ok(s: &InProcess, cache: &str, path: &str) -> ferry::nar::NarInfo {
    let r = narinfo(s, cache, path, Some(&s.admin_token));
    assert_eq!(r.status, 200, "narinfo: {}", r.text());
    ferry::nar::NarInfo::parse(&r.text(), "/nix/store").unwrap()
}

/// Asserts the status and JSON error code of `r`, that the message is a
/// sentence, and that the body names no file of the server; returns the body.
pub fn expect_err(s: &InProcess, r: &HttpResponse, status: u16, code: &str) -> Value {
    assert_eq!(
        r.status,
        status,
        "expected {status} {code}, got: {}",
        r.text()
    );
    let body = r.json();
    assert_eq!(body["error"], code, "body: {body}");
    let msg = body["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message: {body}"));
    assert!(msg.len() > 10, "message too short: {body}");
    assert_no_leak(s, r);
    body
}

/// The body names no temporary or data-dir path.
pub fn assert_no_leak(s: &InProcess, r: &HttpResponse) {
    let text = r.text();
    let dir = s.data_dir.path().to_string_lossy().into_owned();
    assert!(!text.contains("/tmp"), "body leaks a path: {text}");
    assert!(!text.contains(&dir), "body leaks the data dir: {text}");
    assert!(
        !text.contains("uploads/"),
        "body leaks an upload dir: {text}"
    );
}

/// `/healthz` still answers 200.
pub fn assert_healthy(s: &InProcess) {
    let r = get(s, "/healthz", None);
    assert_eq!(r.status, 200, "healthz after errors: {}", r.text());
}

/// SHA-256 of `data` as a `Content-Digest` value.
pub fn sha256_digest_header(data: &[u8]) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(data);
    format!(
        "Content-Digest: sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(d)
    )
}

/// BLAKE3 of `data` as a `Content-Digest` value.
pub fn blake3_digest_header(data: &[u8]) -> String {
    use base64::Engine as _;
    let d = blake3::hash(data);
    format!(
        "Content-Digest: blake3=:{}:",
        base64::engine::general_purpose::STANDARD.encode(d.as_bytes())
    )
}

/// A `HEAD` sent over a raw socket (`Connection: close`), so that any byte
/// after the header block is seen: returns the header block and what
/// followed it. (curl `-I` would hide a body.)
pub fn raw_head(s: &InProcess, path: &str, token: &str) -> (String, Vec<u8>) {
    use std::io::{Read, Write};
    let addr = s.url.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let req = format!(
        "HEAD {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(req.as_bytes()).unwrap();
    let mut out = vec![];
    conn.read_to_end(&mut out).unwrap();
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no header block")
        + 4;
    (
        String::from_utf8_lossy(&out[..end]).into_owned(),
        out[end..].to_vec(),
    )
}

/// The value of header `name` in a raw header block.
pub fn raw_header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// The servers run on the engine the harness was asked for: PostgreSQL in
/// `http_api_pg` (or with `FERRY_TEST_DATABASE=postgres`), else SQLite.
#[test]
fn the_servers_keep_metadata_in_the_engine_asked_for() {
    let s = InProcess::start();
    let pg = common::postgres::enabled();
    assert_eq!(
        pg,
        option_env!("CARGO_CRATE_NAME") == Some("http_api_pg")
            || std::env::var("FERRY_TEST_DATABASE").is_ok_and(|v| v == "postgres")
    );
    assert_eq!(s.database_url.is_some(), pg);
    assert_eq!(s.data_dir.path().join("ferry.db").exists(), !pg);
    let engine = s.db().engine();
    assert_eq!(engine == ferry::db::Engine::Postgres, pg, "{engine:?}");
}
