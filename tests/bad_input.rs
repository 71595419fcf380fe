//! Malformed requests at every door of the server, as one table.
//!
//! [`setup`] makes a private cache `c` (and a second cache `other`), mints
//! tokens (pull-only, another cache's, expired, revoked, signed by a
//! foreign root key), opens uploads through the parts API (one left open,
//! one holding bytes that are no NAR, one holding a NAR whose directory
//! entries are unsorted, one holding a part bigger than its declared NAR),
//! opens two tus uploads (one of them declaring bytes that are no NAR),
//! and stages NAR files through Nix's own `PUT /{cache}/nar/…` door.
//!
//! Then [`rows`] drives the test: each row is data — a request (method,
//! path, headers, body, and how it travels: through curl, or over a raw
//! socket when the bytes must go out unnormalised or the body must end
//! early) and the status and stable `error` code that the wire contract and
//! `src/error.rs` give it. For every row the test checks that
//! - the answer has exactly that status,
//! - its body is JSON `{"error": <code>, "message": <sentence>, ...}` that
//!   names no server file,
//! - `/healthz` still answers 200 afterwards;
//!
//! and after the whole table, that nothing got published: every store path
//! the table touched has no narinfo (404) and `missing` lists it.
//!
//! Rows run in order on one server, so a row may rely on an earlier one
//! (a part sent to an upload that an earlier row failed). Failures are
//! collected and reported together, each under its row's name.
//!
//! A row whose answer breaks the contract today is *pinned*
//! ([`Row::pinned`]): it passes only while the server gives exactly the
//! pinned (wrong) status, says why in the pin's note, and fails with
//! "unpin" once the server is fixed. Nothing is skipped silently.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use common::{
    Body, HttpResponse, InProcess, Nar, hash_part, http_request, mint_in, noise, store_path,
};
use ferry::auth::{self, Operation, RootKey, TokenSpec};
use ferry::nar::Sha256Hash;
use serde_json::{Value, json};
use sha2::Digest as _;

/// `max_part_size` of the server under test: small, so oversize parts are cheap.
const MAX_PART: u64 = 64 * 1024;
/// `tus_max_size` of the server under test.
const TUS_MAX: u64 = 1 << 30;
const JSON: &str = "Content-Type: application/json";
const OFFSET_TYPE: &str = "Content-Type: application/offset+octet-stream";
const TUS: &str = "Tus-Resumable: 1.0.0";
const TEN_MIN: Duration = Duration::from_secs(600);
/// `max-open-uploads-per-token` of the table's server.
const QUOTA: u64 = 40;

/// How a row's request travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    /// Through `curl` (`common::http_request`): curl normalises the URL
    /// and sends the body's own `Content-Length`.
    Curl,
    /// Over a raw socket, byte for byte: the path and headers as written
    /// (`Content-Length` added only when the row gives none).
    Raw,
    /// Like `Raw`, then the client closes its sending side: a body shorter
    /// than its `Content-Length` ends there.
    RawCut,
}

/// One malformed request and the answer it must get.
struct Row {
    name: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<String>,
    body: Option<Vec<u8>>,
    wire: Wire,
    /// The status the wire contract promises.
    status: u16,
    /// The `error` code (`Error::code` in `src/error.rs`).
    code: &'static str,
    /// Set when the server breaks the contract today.
    pin: Option<Pin>,
}

/// What the server answers today where it breaks the contract: exactly
/// this status and this body.
struct Pin {
    status: u16,
    body: &'static [u8],
    note: &'static str,
}

/// A row sent through curl.
fn row(
    name: &'static str,
    method: &'static str,
    path: impl Into<String>,
    headers: &[&str],
    body: Option<Vec<u8>>,
    status: u16,
    code: &'static str,
) -> Row {
    Row {
        name,
        method,
        path: path.into(),
        headers: headers.iter().map(|h| h.to_string()).collect(),
        body,
        wire: Wire::Curl,
        status,
        code,
        pin: None,
    }
}

impl Row {
    /// The same row sent over `wire`.
    fn via(self, wire: Wire) -> Row {
        Row { wire, ..self }
    }

    /// Marks a known server bug: today the answer is `status` with
    /// exactly `body`, not the row's expectation; `note` says what is
    /// wrong.
    fn pinned(self, status: u16, body: &'static [u8], note: &'static str) -> Row {
        Row {
            pin: Some(Pin { status, body, note }),
            ..self
        }
    }
}

/// A JSON body.
fn j(v: Value) -> Option<Vec<u8>> {
    Some(v.to_string().into_bytes())
}

/// Borrowed header lines.
fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A raw body.
fn b(bytes: &[u8]) -> Option<Vec<u8>> {
    Some(bytes.to_vec())
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// What this table sends of a [`Nar`].
impl Nar {
    /// The body of `POST /caches/{c}/uploads` for this NAR.
    fn create_body(&self) -> Value {
        json!({
            "store_path": self.path,
            "nar_hash": self.hash.to_string(),
            "nar_size": self.bytes.len(),
            "references": [],
            "compression": "none",
        })
    }

    /// tus `Upload-Metadata` pairs declaring this NAR.
    fn tus_pairs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("store_path", self.path.clone()),
            ("nar_hash", self.hash.to_string()),
            ("nar_size", self.bytes.len().to_string()),
        ]
    }
}

/// An `Upload-Metadata` header of `pairs` (values base64-encoded).
fn tus_metadata<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> String {
    let m: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{} {}", k.as_ref(), b64(v.as_ref().as_bytes())))
        .collect();
    format!("Upload-Metadata: {}", m.join(","))
}

/// A NAR string: 8-byte little-endian length, bytes, zero padding to 8.
fn nar_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
    out.resize(out.len().next_multiple_of(8), 0);
}

/// A hand-made NAR of a directory whose entries come as `names`, in that
/// order, each a small regular file: with `["b", "a"]` it is well framed
/// but unsorted, which Nix refuses.
fn nar_with_entries(names: &[&str]) -> Vec<u8> {
    let mut out = vec![];
    for s in ["nix-archive-1", "(", "type", "directory"] {
        nar_str(&mut out, s.as_bytes());
    }
    for name in names {
        for s in ["entry", "(", "name", name, "node", "("] {
            nar_str(&mut out, s.as_bytes());
        }
        for s in ["type", "regular", "contents"] {
            nar_str(&mut out, s.as_bytes());
        }
        nar_str(&mut out, format!("contents of {name}\n").as_bytes());
        nar_str(&mut out, b")");
        nar_str(&mut out, b")");
    }
    nar_str(&mut out, b")");
    out
}

/// A NAR compressed as Nix pushes it, and the URL Nix gives it.
struct NixFile {
    nar: Nar,
    file: Vec<u8>,
    url: String,
}

impl NixFile {
    fn new(name: &str) -> NixFile {
        let nar = Nar::new(name, 2000);
        let file = zstd::encode_all(&nar.bytes[..], 3).unwrap();
        let url = format!("nar/{}.nar.zst", Sha256Hash::digest(&file).nix32());
        NixFile { nar, file, url }
    }

    /// The narinfo text Nix `PUT`s for it (unsigned).
    fn narinfo(&self) -> String {
        format!(
            "StorePath: {}\nURL: {}\nCompression: zstd\nFileHash: {}\nFileSize: {}\n\
             NarHash: {}\nNarSize: {}\nReferences: \n",
            self.nar.path,
            self.url,
            Sha256Hash::digest(&self.file),
            self.file.len(),
            self.nar.hash,
            self.nar.bytes.len(),
        )
    }

    /// The narinfo with `line` (a whole `Key: value`) replaced by `with`.
    fn narinfo_with(&self, key: &str, with: &str) -> Option<Vec<u8>> {
        let text = self.narinfo();
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("no {key} in {text}"));
        Some(text.replace(line, with).into_bytes())
    }

    /// Where its narinfo is `PUT`.
    fn narinfo_path(&self) -> String {
        format!("/c/{}.narinfo", hash_part(&self.nar.path))
    }
}

/// `Content-Digest: <alg>=:<base64>:`.
fn content_digest(alg: &str, digest: &[u8]) -> String {
    format!("Content-Digest: {alg}=:{}:", b64(digest))
}

/// Sends a row's request over a raw socket (see [`Wire`]) and reads the
/// answer until the server closes (`Connection: close`).
fn send_raw(s: &InProcess, r: &Row) -> Result<HttpResponse, String> {
    let addr = s.url.trim_start_matches("http://");
    let mut sock = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n",
        r.method, r.path
    );
    for h in &r.headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    let has_length = r
        .headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("content-length:"));
    if let Some(body) = &r.body
        && !has_length
    {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    // The server may answer and close before reading everything; that is
    // not the row's failure, so write errors are ignored.
    let _ = sock.write_all(head.as_bytes());
    if let Some(body) = &r.body {
        let _ = sock.write_all(body);
    }
    let _ = sock.flush();
    if r.wire == Wire::RawCut {
        let _ = sock.shutdown(Shutdown::Write);
    }
    let mut out = vec![];
    if let Err(e) = sock.read_to_end(&mut out)
        && out.is_empty()
    {
        return Err(format!("no answer: {e}"));
    }
    parse_raw(&out)
}

/// Status, headers and (de-chunked) body of a raw HTTP/1.1 answer.
fn parse_raw(raw: &[u8]) -> Result<HttpResponse, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no header block in {:?}", String::from_utf8_lossy(raw)))?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        let mut plain = vec![];
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size_text = String::from_utf8_lossy(&rest[..eol]);
            let size = usize::from_str_radix(size_text.trim(), 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            rest = &rest[eol + 2..];
            if size == 0 || rest.len() < size {
                break;
            }
            plain.extend_from_slice(&rest[..size]);
            rest = &rest[(size + 2).min(rest.len())..];
        }
        body = plain;
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// Sends a row's request the way the row says.
fn send(s: &InProcess, r: &Row) -> Result<HttpResponse, String> {
    match r.wire {
        Wire::Curl => {
            let headers: Vec<&str> = r.headers.iter().map(String::as_str).collect();
            let body = match &r.body {
                Some(b) => Body::Bytes(b.clone()),
                None => Body::None,
            };
            Ok(http_request(
                r.method,
                &format!("{}{}", s.url, r.path),
                &headers,
                body,
            ))
        }
        Wire::Raw | Wire::RawCut => send_raw(s, r),
    }
}

/// What is wrong with `res` as the contract's answer to `r`, if anything.
fn judge(s: &InProcess, r: &Row, res: &HttpResponse) -> Result<(), String> {
    let text = res.text();
    let shown: String = text.chars().take(300).collect();
    if res.status != r.status {
        return Err(format!(
            "expected {} {}, got {}: {shown:?}",
            r.status, r.code, res.status
        ));
    }
    let content_type = res.header("content-type").unwrap_or("");
    if !content_type.starts_with("application/json") {
        return Err(format!(
            "the body is not JSON (Content-Type {content_type:?}): {shown:?}"
        ));
    }
    let body: Value = serde_json::from_slice(&res.body)
        .map_err(|e| format!("the body is not JSON ({e}): {shown:?}"))?;
    if body["error"] != r.code {
        return Err(format!("expected error {:?}, got body {shown}", r.code));
    }
    let message = body["message"].as_str().unwrap_or("");
    if message.trim().len() < 10 || !message.contains(' ') {
        return Err(format!("no human message in {shown}"));
    }
    no_leak(s, res)
}

/// The body names no file of the server's.
fn no_leak(s: &InProcess, res: &HttpResponse) -> Result<(), String> {
    let text = res.text();
    let dir = s.data_dir.path().to_string_lossy().into_owned();
    if text.contains(&dir) || text.contains("/tmp/") {
        let shown: String = text.chars().take(300).collect();
        return Err(format!("the body names a server file: {shown}"));
    }
    Ok(())
}

/// [`judge`], or for a pinned row: the pinned status and nothing else.
fn judge_row(s: &InProcess, r: &Row, res: &HttpResponse) -> Result<(), String> {
    let Some(pin) = &r.pin else {
        return judge(s, r, res);
    };
    if judge(s, r, res).is_ok() {
        return Err(format!(
            "now answers {} {} as the contract says: unpin this row (was: {})",
            r.status, r.code, pin.note
        ));
    }
    if res.status != pin.status || res.body != pin.body {
        return Err(format!(
            "pinned at {} {:?} ({}) but answered {}: {:?}",
            pin.status,
            String::from_utf8_lossy(pin.body),
            pin.note,
            res.status,
            res.text().chars().take(300).collect::<String>()
        ));
    }
    no_leak(s, res)?;
    eprintln!("known bug, row {:?}: {}", r.name, pin.note);
    Ok(())
}

/// `/healthz` answers 200 (panics naming the row otherwise).
fn assert_up(s: &InProcess, after: &str) {
    let r = http_request("GET", &format!("{}/healthz", s.url), &[], Body::None);
    assert_eq!(
        r.status,
        200,
        "server unhealthy after row {after:?}: {}",
        r.text()
    );
}

/// A JSON request with the admin token.
fn admin_json(s: &InProcess, method: &str, path: &str, v: &Value) -> HttpResponse {
    http_request(
        method,
        &format!("{}{path}", s.url),
        &[&bearer(&s.admin_token), JSON],
        Body::Bytes(v.to_string().into_bytes()),
    )
}

/// Starts a parts-API upload of `nar` in cache `c`; returns its id.
fn start_upload(s: &InProcess, nar: &Nar) -> String {
    let r = admin_json(s, "POST", "/_api/v1/caches/c/uploads", &nar.create_body());
    assert_eq!(r.status, 201, "setup: start upload: {}", r.text());
    r.json()["id"].as_str().unwrap().to_owned()
}

/// Starts a parts-API upload of `nar` and puts `part` as its part 1.
fn upload_with_part(s: &InProcess, nar: &Nar, part: &[u8]) -> String {
    let id = start_upload(s, nar);
    let r = http_request(
        "PUT",
        &format!("{}/_api/v1/uploads/{id}/parts/1", s.url),
        &[&bearer(&s.admin_token)],
        Body::Bytes(part.to_vec()),
    );
    assert_eq!(r.status, 200, "setup: part 1 of {id}: {}", r.text());
    id
}

/// Creates a tus upload of `nar` in cache `c`; returns its Location.
fn tus_create(s: &InProcess, nar: &Nar) -> String {
    let r = http_request(
        "POST",
        &format!("{}/_api/v1/caches/c/tus/", s.url),
        &[
            TUS,
            &bearer(&s.admin_token),
            &format!("Upload-Length: {}", nar.bytes.len()),
            &tus_metadata(&nar.tus_pairs()),
        ],
        Body::None,
    );
    assert_eq!(r.status, 201, "setup: tus create: {}", r.text());
    r.header("location").expect("Location").to_owned()
}

/// Stages `f` through Nix's `PUT /c/nar/<file>` door (asserts 200).
fn stage(s: &InProcess, f: &NixFile) {
    let r = http_request(
        "PUT",
        &format!("{}/c/{}", s.url, f.url),
        &[&bearer(&s.admin_token)],
        Body::Bytes(f.file.clone()),
    );
    assert_eq!(r.status, 200, "setup: stage {}: {}", f.url, r.text());
}

/// Everything the setup made that rows point at.
struct Fixture {
    /// `Authorization` headers.
    admin: String,
    pull_only: String,
    other_cache: String,
    /// A token holding `QUOTA` open uploads already.
    quota_full: String,
    expired: String,
    revoked: String,
    foreign: String,
    /// An open parts-API upload of `open` with no parts.
    open: Nar,
    id: String,
    /// Uploads whose part 1 is bytes that are no NAR, an unsorted NAR, and
    /// a NAR bigger than the one declared.
    garbage: Nar,
    id_garbage: String,
    unsorted: Nar,
    id_unsorted: String,
    small: Nar,
    id_small: String,
    /// An open tus upload (Location) of `tus_nar`, nothing sent yet.
    tus_nar: Nar,
    tus: String,
    /// An open tus upload declaring `tus_garbage`, which is no NAR.
    tus_garbage: Nar,
    tus_g: String,
    /// Staged for Nix's narinfo `PUT`: one file for each failing verdict.
    nix_size: NixFile,
    nix_hash: NixFile,
    nix_narhash: NixFile,
    /// Never staged.
    nix_unstaged: NixFile,
}

impl Fixture {
    /// Every store path the table may touch.
    fn store_paths(&self) -> Vec<String> {
        let mut out: Vec<String> = [
            &self.open,
            &self.garbage,
            &self.unsorted,
            &self.small,
            &self.tus_nar,
            &self.tus_garbage,
            &self.nix_size.nar,
            &self.nix_hash.nar,
            &self.nix_narhash.nar,
            &self.nix_unstaged.nar,
        ]
        .iter()
        .map(|n| n.path.clone())
        .collect();
        out.extend(["bad-input-create", "bad-input-dup"].map(store_path));
        out
    }
}

/// A server with small limits, caches `c` and `other`, and the fixture.
fn setup() -> (InProcess, Fixture) {
    let s = InProcess::start_with(|c| {
        c.max_part_size = MAX_PART;
        c.tus_max_size = TUS_MAX;
        c.max_open_uploads_per_token = QUOTA;
    });
    for name in ["c", "other"] {
        let body = json!({"name": name, "public": false});
        let r = admin_json(&s, "POST", "/_api/v1/caches", &body);
        assert_eq!(r.status, 201, "setup: create cache {name}: {}", r.text());
    }
    let push_c = [(Operation::Pull, "c"), (Operation::Push, "c")];
    let revoked = s.mint(&push_c, TEN_MIN);
    let r = admin_json(
        &s,
        "POST",
        "/_api/v1/tokens/revoke",
        &json!({ "token": revoked }),
    );
    assert_eq!(r.status, 200, "setup: revoke: {}", r.text());
    let foreign = auth::mint(
        &RootKey::generate(),
        &TokenSpec {
            subject: "intruder".into(),
            rights: Operation::ALL.iter().map(|o| (*o, "*".into())).collect(),
            expires_at: SystemTime::now() + TEN_MIN,
        },
    )
    .expect("mint with a foreign root key");
    let open = Nar::new("bad-input-open", 3000);
    let garbage = Nar::from_bytes(
        &store_path("bad-input-garbage"),
        b"no NAR, only words ".repeat(40),
    );
    let unsorted = Nar::from_bytes(
        &store_path("bad-input-unsorted"),
        nar_with_entries(&["b", "a"]),
    );
    let small = Nar::new("bad-input-small", 1000);
    // Longer than a part may be, so a PATCH can break either limit.
    let tus_nar = Nar::new("bad-input-tus", MAX_PART as usize + 10_000);
    let tus_garbage = Nar::from_bytes(
        &store_path("bad-input-tus-garbage"),
        b"not a NAR either ".repeat(50),
    );
    let nix_size = NixFile::new("bad-input-nix-size");
    let nix_hash = NixFile::new("bad-input-nix-hash");
    let nix_narhash = NixFile::new("bad-input-nix-narhash");
    for f in [&nix_size, &nix_hash, &nix_narhash] {
        stage(&s, f);
    }
    // A token that already holds every upload it may open.
    let quota_full = s.mint(&push_c, TEN_MIN);
    for i in 0..QUOTA {
        let nar = Nar::new(&format!("bad-input-quota-{i}"), 100);
        let r = http_request(
            "POST",
            &format!("{}/_api/v1/caches/c/uploads", s.url),
            &[&bearer(&quota_full)],
            Body::Bytes(nar.create_body().to_string().into_bytes()),
        );
        assert_eq!(r.status, 201, "setup: quota upload {i}: {}", r.text());
    }
    let f = Fixture {
        admin: bearer(&s.admin_token),
        quota_full: bearer(&quota_full),
        pull_only: bearer(&s.mint(&[(Operation::Pull, "c")], TEN_MIN)),
        other_cache: bearer(&s.mint(
            &[(Operation::Pull, "other"), (Operation::Push, "other")],
            TEN_MIN,
        )),
        expired: bearer(&mint_in(
            s.data_dir.path(),
            &push_c,
            SystemTime::now() - Duration::from_secs(60),
        )),
        revoked: bearer(&revoked),
        foreign: bearer(&foreign),
        id: start_upload(&s, &open),
        id_garbage: upload_with_part(&s, &garbage, &garbage.bytes),
        id_unsorted: upload_with_part(&s, &unsorted, &unsorted.bytes),
        id_small: upload_with_part(&s, &small, &Nar::new("bad-input-big", 5000).bytes),
        tus: tus_create(&s, &tus_nar),
        tus_g: tus_create(&s, &tus_garbage),
        open,
        garbage,
        unsorted,
        small,
        tus_nar,
        tus_garbage,
        nix_size,
        nix_hash,
        nix_narhash,
        nix_unstaged: NixFile::new("bad-input-nix-unstaged"),
    };
    (s, f)
}

/// The table. One line per row where it fits: name, method, path,
/// headers, body, status, code.
#[rustfmt::skip]
fn rows(f: &Fixture) -> Vec<Row> {
    let (admin, pull_only) = (f.admin.as_str(), f.pull_only.as_str());
    let uploads = "/_api/v1/caches/c/uploads";
    let part = |n: &str| format!("/_api/v1/uploads/{}/parts/{n}", f.id);
    let complete = |id: &str| format!("/_api/v1/uploads/{id}/complete");
    let parts = |n: Value| j(json!({ "parts": n }));
    let ghost = uuid::Uuid::now_v7().to_string();
    let chunk = &f.tus_nar.bytes[..1000];
    // A create-upload body for store path `bad-input-create` with `field` set.
    let create_with = |field: &str, value: Value| {
        let mut body = f.open.create_body();
        body["store_path"] = json!(store_path("bad-input-create"));
        body[field] = value;
        j(body)
    };
    // The same with JSON text serde_json cannot build (a number above u64).
    let create_raw = |field: &str, raw: &str| {
        let text = String::from_utf8(create_with(field, json!("@RAW@")).unwrap()).unwrap();
        Some(text.replace("\"@RAW@\"", raw).into_bytes())
    };
    let h = hash_part(&store_path("bad-input-create")).to_owned();
    // About 10 MB of references, all valid but the last.
    let mut huge_refs: Vec<String> = (0..200_000).map(|i| store_path(&format!("ref-{i}"))).collect();
    huge_refs.push("/nix/store/../../etc/passwd".into());
    let many_refs: Vec<String> = (0..10_001).map(|i| store_path(&format!("r-{i}"))).collect();
    let too_many_paths: Vec<String> = (0..100_001).map(|i| store_path(&format!("p-{i}"))).collect();
    let tus_root = "/_api/v1/caches/c/tus/";
    let tus = f.tus.as_str();
    let tus_id = tus.rsplit('/').next().unwrap();
    let tus_len = format!("Upload-Length: {}", f.tus_nar.bytes.len());
    let meta = tus_metadata(&f.tus_nar.tus_pairs());
    let meta_without = |key: &str| {
        let pairs: Vec<_> = f.tus_nar.tus_pairs().into_iter().filter(|(k, _)| *k != key).collect();
        tus_metadata(&pairs)
    };
    let meta_with = |key: &'static str, value: &str| {
        let mut pairs = f.tus_nar.tus_pairs();
        pairs.retain(|(k, _)| *k != key);
        pairs.push((key, value.to_owned()));
        tus_metadata(&pairs)
    };
    let meta_dup = {
        let mut pairs = f.tus_nar.tus_pairs();
        pairs.push(("store_path", store_path("bad-input-dup")));
        tus_metadata(&pairs)
    };
    let patch = [TUS, admin, OFFSET_TYPE, "Upload-Offset: 0"];
    let with = |base: &[&str], extra: &str| -> Vec<String> {
        base.iter().map(|h| h.to_string()).chain([extra.to_owned()]).collect()
    };
    let wrong_sha = content_digest("sha-256", &sha2::Sha256::digest(b"x"));
    let wrong_blake3 = content_digest("blake3", blake3::hash(b"x").as_bytes());
    let wrong_checksum = format!("Upload-Checksum: sha256 {}", b64(&sha2::Sha256::digest(b"x")));
    let other = Sha256Hash::digest(b"other").to_string();
    let (ns, nh, nn, nu) = (&f.nix_size, &f.nix_hash, &f.nix_narhash, &f.nix_unstaged);
    let patch_sha = with(&patch, &wrong_checksum);
    let patch_crc = with(&patch, "Upload-Checksum: crc32 AAAAAA==");
    let patch_nob64 = with(&patch, "Upload-Checksum: sha256 !!!");
    let patch_len = with(&patch, "Upload-Length: 5000");
    let junk = format!("X-Junk: {}", "j".repeat(64 * 1024));
    let giant = format!("X-Junk: {}", "j".repeat(200 * 1024));
    let many: Vec<String> = (0..120).map(|i| format!("X-Many-{i}: {i}")).collect();
    let mut many_h: Vec<&str> = vec![admin];
    many_h.extend(many.iter().map(String::as_str));
    let huge_bearer = bearer(&"A".repeat(64 * 1024));
    let random = bearer(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(noise("t", 300)));

    vec![
        // --- Creating an upload: sizes, hashes, names, metadata. ---
        row("nar_size 0", "POST", uploads, &[admin, JSON], create_with("nar_size", json!(0)), 400, "bad_request"),
        row("nar_size negative", "POST", uploads, &[admin, JSON], create_with("nar_size", json!(-1)), 400, "bad_request"),
        row("nar_size above u64", "POST", uploads, &[admin, JSON], create_raw("nar_size", "18446744073709551616"), 400, "bad_request"),
        row("nar_size a 100 kB string", "POST", uploads, &[admin, JSON], create_with("nar_size", json!("9".repeat(100_000))), 400, "bad_request"),
        row("a token with every upload it may open", "POST", uploads, &[&f.quota_full, JSON], j(f.open.create_body()), 429, "too_many_uploads"),
        row("nar_size over max-nar-size (1 TiB)", "POST", uploads, &[admin, JSON], create_with("nar_size", json!(1u64 << 40)), 413, "nar_too_large"),
        row("nar_size fractional", "POST", uploads, &[admin, JSON], create_with("nar_size", json!(1.5)), 400, "bad_request"),
        row("nar_hash garbage", "POST", uploads, &[admin, JSON], create_with("nar_hash", json!("sha256:not-a-hash")), 400, "invalid_format"),
        row("nar_hash md5", "POST", uploads, &[admin, JSON], create_with("nar_hash", json!("md5:d41d8cd98f00b204e9800998ecf8427e")), 400, "invalid_format"),
        row("store_path with ..", "POST", uploads, &[admin, JSON], create_with("store_path", json!(format!("/nix/store/{h}-../../etc"))), 400, "invalid_format"),
        row("store_path with a / in its name", "POST", uploads, &[admin, JSON], create_with("store_path", json!(format!("/nix/store/{h}-a/b"))), 400, "invalid_format"),
        row("store_path with %2F in its name", "POST", uploads, &[admin, JSON], create_with("store_path", json!(format!("/nix/store/{h}-a%2Fb"))), 400, "invalid_format"),
        row("store_path outside the store dir", "POST", uploads, &[admin, JSON], create_with("store_path", json!(format!("/etc/{h}-passwd"))), 400, "invalid_format"),
        row("reference with ..", "POST", uploads, &[admin, JSON], create_with("references", json!(["/nix/store/../../etc/passwd"])), 400, "invalid_format"),
        row("sig with a newline", "POST", uploads, &[admin, JSON], create_with("sigs", json!(["k:AAAA\nStorePath: /nix/store/x"])), 400, "bad_request"),
        row("compression xz", "POST", uploads, &[admin, JSON], create_with("compression", json!("xz")), 400, "bad_request"),
        row("unknown field", "POST", uploads, &[admin, JSON], create_with("narhash", json!("typo")), 400, "bad_request"),
        row("truncated JSON", "POST", uploads, &[admin, JSON], b(b"{\"store_path\": \"/nix/st"), 400, "bad_request"),
        row("JSON array instead of object", "POST", uploads, &[admin, JSON], j(json!([1, 2, 3])), 400, "bad_request"),
        row("10 MB references array", "POST", uploads, &[admin, JSON], create_with("references", json!(huge_refs)), 413, "body_too_large"),
        row("20 MB JSON body", "POST", uploads, &[admin, JSON], create_with("ca", json!("x".repeat(20 << 20))), 413, "body_too_large"),
        row("10 001 references", "POST", uploads, &[admin, JSON], create_with("references", json!(many_refs)), 413, "too_many_paths"),
        row("15 MB JSON to a private cache without a token", "POST", "/_api/v1/caches/c/missing", &[JSON], j(json!({"store_paths": [], "pad": "x".repeat(15 << 20)})), 401, "unauthorized"),
        row("15 MB JSON with a token for another cache", "POST", uploads, &[&f.other_cache, JSON], create_with("ca", json!("x".repeat(15 << 20))), 401, "unauthorized"),
        row("100 001 paths in one missing", "POST", "/_api/v1/caches/c/missing", &[admin, JSON], j(json!({"store_paths": too_many_paths})), 413, "too_many_paths"),
        // --- Cache names in URLs and bodies. ---
        row("cache name .. in a push", "POST", "/_api/v1/caches/../uploads", &[admin, JSON], j(f.open.create_body()), 400, "invalid_cache_name").via(Wire::Raw),
        row("cache name with %2F", "POST", "/_api/v1/caches/c%2F..%2Fother/uploads", &[admin, JSON], j(f.open.create_body()), 400, "invalid_cache_name"),
        row("cache name in upper case", "GET", "/C/nix-cache-info", &[admin], None, 400, "invalid_cache_name"),
        row("cache name .. in a read", "GET", "/../nix-cache-info", &[admin], None, 400, "invalid_cache_name").via(Wire::Raw),
        row("create cache named ../etc", "POST", "/_api/v1/caches", &[admin, JSON], j(json!({"name": "../etc"})), 400, "invalid_cache_name"),
        row("create cache named a/b", "POST", "/_api/v1/caches", &[admin, JSON], j(json!({"name": "a/b"})), 400, "invalid_cache_name"),
        row("create cache named _api", "POST", "/_api/v1/caches", &[admin, JSON], j(json!({"name": "_api"})), 400, "invalid_cache_name"),
        row("create cache with a 65-char name", "POST", "/_api/v1/caches", &[admin, JSON], j(json!({"name": "a".repeat(65)})), 400, "invalid_cache_name"),
        // --- missing. ---
        row("missing with a .. path", "POST", "/_api/v1/caches/c/missing", &[admin, JSON], j(json!({"store_paths": ["/nix/store/../../etc/passwd"]})), 400, "invalid_format"),
        row("missing with a string for the list", "POST", "/_api/v1/caches/c/missing", &[admin, JSON], j(json!({"store_paths": "all"})), 400, "bad_request"),
        // --- Parts: numbers, ids, sizes, digests. ---
        row("part number 0", "PUT", part("0"), &[admin], b(chunk), 400, "bad_part_number"),
        row("part number 100001", "PUT", part("100001"), &[admin], b(chunk), 400, "bad_part_number"),
        row("part number above u64", "PUT", part("18446744073709551616"), &[admin], b(chunk), 400, "bad_request"),
        row("part number negative", "PUT", part("-1"), &[admin], b(chunk), 400, "bad_request"),
        row("part upload id not a UUID", "PUT", "/_api/v1/uploads/not-a-uuid/parts/1", &[admin], b(chunk), 404, "upload_not_found"),
        row("part upload id ..%2F..", "PUT", "/_api/v1/uploads/..%2F..%2Fetc/parts/1", &[admin], b(chunk), 404, "upload_not_found"),
        row("part upload id ..", "PUT", "/_api/v1/uploads/../parts/1", &[admin], b(chunk), 404, "upload_not_found").via(Wire::Raw),
        row("part of an unknown UUID", "PUT", format!("/_api/v1/uploads/{ghost}/parts/1"), &[admin], b(chunk), 404, "upload_not_found"),
        row("part without Content-Length", "PUT", part("1"), &[admin, "Transfer-Encoding: chunked"], b(chunk), 411, "length_required"),
        row("part over max_part_size", "PUT", part("1"), &[admin], Some(noise("big", MAX_PART as usize + 1)), 413, "part_too_large"),
        row("part declaring a 1 TiB Content-Length", "PUT", part("1"), &[admin, "Content-Length: 1099511627776"], b(chunk), 413, "part_too_large").via(Wire::RawCut),
        row("part with a non-numeric Content-Length", "PUT", part("1"), &[admin, "Content-Length: abc"], b(chunk), 400, "bad_request").via(Wire::Raw)
            .pinned(400, b"", "actix's HTTP parser answers 400 with an empty, non-JSON body"),
        row("part shorter than its Content-Length", "PUT", part("1"), &[admin, "Content-Length: 2000"], b(chunk), 400, "part_truncated").via(Wire::RawCut),
        row("part with a wrong sha-256 digest", "PUT", part("1"), &[admin, &wrong_sha], b(chunk), 400, "part_digest_mismatch"),
        row("part with a wrong blake3 digest", "PUT", part("1"), &[admin, &wrong_blake3], b(chunk), 400, "part_digest_mismatch"),
        row("part with a malformed Content-Digest", "PUT", part("1"), &[admin, "Content-Digest: sha-256=nocolons"], b(chunk), 400, "bad_request"),
        row("part with a short sha-256 digest", "PUT", part("1"), &[admin, "Content-Digest: sha-256=:AAAA:"], b(chunk), 400, "bad_request"),
        // --- complete: bad counts, then verdicts on what setup sent. ---
        row("complete with 0 parts", "POST", complete(&f.id), &[admin, JSON], parts(json!(0)), 400, "bad_request"),
        row("complete with -1 parts", "POST", complete(&f.id), &[admin, JSON], parts(json!(-1)), 400, "bad_request"),
        row("complete with parts above u32", "POST", complete(&f.id), &[admin, JSON], parts(json!(4_294_967_296u64)), 400, "bad_request"),
        row("complete with missing parts", "POST", complete(&f.id), &[admin, JSON], parts(json!(3)), 422, "missing_parts"),
        row("complete of an unknown UUID", "POST", complete(&ghost), &[admin, JSON], parts(json!(1)), 404, "upload_not_found"),
        row("complete of bytes that are no NAR", "POST", complete(&f.id_garbage), &[admin, JSON], parts(json!(1)), 422, "invalid_nar"),
        row("complete of a NAR with unsorted entries", "POST", complete(&f.id_unsorted), &[admin, JSON], parts(json!(1)), 422, "invalid_nar"),
        row("complete of a part bigger than the NAR", "POST", complete(&f.id_small), &[admin, JSON], parts(json!(1)), 422, "nar_size_mismatch"),
        row("part to an upload that failed", "PUT", format!("/_api/v1/uploads/{}/parts/2", f.id_garbage), &[admin], b(chunk), 409, "upload_closed"),
        // --- Tokens. ---
        row("no token", "GET", "/c/nix-cache-info", &[], None, 401, "unauthorized"),
        row("random bytes as a token", "GET", "/c/nix-cache-info", &[&random], None, 401, "token_invalid"),
        row("token signed by another key", "GET", "/c/nix-cache-info", &[&f.foreign], None, 401, "token_bad_signature"),
        row("expired token", "PUT", part("1"), &[&f.expired], b(chunk), 401, "token_expired"),
        row("revoked token", "POST", uploads, &[&f.revoked, JSON], j(f.open.create_body()), 401, "token_revoked"),
        row("token for another cache", "POST", uploads, &[&f.other_cache, JSON], j(f.open.create_body()), 401, "unauthorized"),
        row("token for another cache on an upload", "PUT", part("1"), &[&f.other_cache], b(chunk), 401, "unauthorized"),
        row("pull-only token pushing a part", "PUT", part("1"), &[pull_only], b(chunk), 403, "forbidden"),
        row("Basic auth that is not base64", "GET", "/c/nix-cache-info", &["Authorization: Basic !!!not-base64!!!"], None, 401, "unauthorized"),
        row("64 KiB bearer token", "GET", "/c/nix-cache-info", &[&huge_bearer], None, 401, "token_invalid"),
        // --- tus: protocol headers. ---
        row("tus PATCH without Tus-Resumable", "PATCH", tus, &[admin, OFFSET_TYPE, "Upload-Offset: 0"], b(chunk), 412, "unsupported_tus_version"),
        row("tus PATCH with Tus-Resumable 0.2.2", "PATCH", tus, &["Tus-Resumable: 0.2.2", admin, OFFSET_TYPE, "Upload-Offset: 0"], b(chunk), 412, "unsupported_tus_version"),
        row("tus POST without Tus-Resumable", "POST", tus_root, &[admin, &tus_len, &meta], None, 412, "unsupported_tus_version"),
        row("tus PATCH with the wrong Content-Type", "PATCH", tus, &[TUS, admin, JSON, "Upload-Offset: 0"], b(chunk), 415, "unsupported_media_type"),
        row("tus PATCH at the wrong offset", "PATCH", tus, &[TUS, admin, OFFSET_TYPE, "Upload-Offset: 1000"], b(chunk), 409, "offset_mismatch"),
        row("tus PATCH with a negative offset", "PATCH", tus, &[TUS, admin, OFFSET_TYPE, "Upload-Offset: -1"], b(chunk), 400, "bad_request"),
        row("tus PATCH with an offset above u64", "PATCH", tus, &[TUS, admin, OFFSET_TYPE, "Upload-Offset: 18446744073709551616"], b(chunk), 400, "bad_request"),
        row("tus PATCH without Upload-Offset", "PATCH", tus, &[TUS, admin, OFFSET_TYPE], b(chunk), 400, "bad_request"),
        row("tus PATCH past Upload-Length", "PATCH", tus, &patch, Some(noise("past", f.tus_nar.bytes.len() + 1)), 413, "upload_length_exceeded"),
        row("tus PATCH over max_part_size", "PATCH", tus, &patch, Some(noise("big", MAX_PART as usize + 1)), 413, "part_too_large"),
        row("tus PATCH changing Upload-Length", "PATCH", tus, &strs(&patch_len), b(chunk), 400, "bad_request"),
        row("tus PATCH with a wrong sha256 checksum", "PATCH", tus, &strs(&patch_sha), b(chunk), 460, "checksum_mismatch"),
        row("tus PATCH with an unknown checksum algorithm", "PATCH", tus, &strs(&patch_crc), b(chunk), 400, "bad_request"),
        row("tus PATCH with a checksum that is not base64", "PATCH", tus, &strs(&patch_nob64), b(chunk), 400, "bad_request"),
        // --- tus: ids. ---
        row("tus PATCH through another cache", "PATCH", format!("/_api/v1/caches/other/tus/{tus_id}"), &patch, b(chunk), 404, "upload_not_found"),
        row("tus PATCH with a bad UUID", "PATCH", format!("{tus_root}not-a-uuid"), &patch, b(chunk), 404, "upload_not_found"),
        row("tus PATCH on a parts-API upload", "PATCH", format!("{tus_root}{}", f.id), &patch, b(chunk), 404, "upload_not_found"),
        row("tus PATCH of bytes that are no NAR", "PATCH", f.tus_g.as_str(), &patch, Some(f.tus_garbage.bytes.clone()), 422, "invalid_nar"),
        // --- tus: creation. ---
        row("tus POST with Upload-Length above u64", "POST", tus_root, &[TUS, admin, "Upload-Length: 99999999999999999999999", &meta], None, 400, "bad_request"),
        row("tus POST with a negative Upload-Length", "POST", tus_root, &[TUS, admin, "Upload-Length: -5", &meta], None, 400, "bad_request"),
        row("tus POST over Tus-Max-Size", "POST", tus_root, &[TUS, admin, &format!("Upload-Length: {}", TUS_MAX + 1), &meta], None, 413, "upload_too_large"),
        row("tus POST without Upload-Length", "POST", tus_root, &[TUS, admin, &meta], None, 400, "bad_request"),
        row("tus POST with metadata that is not base64", "POST", tus_root, &[TUS, admin, &tus_len, "Upload-Metadata: store_path !!!,nar_hash ???"], None, 400, "bad_request"),
        row("tus POST without store_path", "POST", tus_root, &[TUS, admin, &tus_len, &meta_without("store_path")], None, 400, "bad_request"),
        row("tus POST without nar_hash", "POST", tus_root, &[TUS, admin, &tus_len, &meta_without("nar_hash")], None, 400, "bad_request"),
        row("tus POST with nar_size above u64", "POST", tus_root, &[TUS, admin, &tus_len, &meta_with("nar_size", "18446744073709551616")], None, 400, "bad_request"),
        row("tus POST with a .. store_path", "POST", tus_root, &[TUS, admin, &tus_len, &meta_with("store_path", "/nix/store/../../etc/passwd")], None, 400, "invalid_format"),
        row("tus POST with duplicate metadata keys", "POST", tus_root, &[TUS, admin, &tus_len, &meta_dup], None, 400, "bad_request"),
        // --- Nix's own door. ---
        row("Nix PUT of a NAR named ..hidden", "PUT", "/c/nar/..hidden", &[admin], b(chunk), 400, "bad_request"),
        row("Nix PUT of a NAR named a%2Fb", "PUT", "/c/nar/a%2Fb.nar.zst", &[admin], b(chunk), 400, "bad_request"),
        row("Nix PUT of a narinfo that is not one", "PUT", ns.narinfo_path(), &[admin], b(b"this is not a narinfo\n"), 400, "invalid_format"),
        row("Nix PUT of a narinfo with NarSize 0", "PUT", ns.narinfo_path(), &[admin], ns.narinfo_with("NarSize", "NarSize: 0"), 400, "invalid_format"),
        row("Nix PUT of a narinfo with NarSize above u64", "PUT", ns.narinfo_path(), &[admin], ns.narinfo_with("NarSize", "NarSize: 18446744073709551616"), 400, "invalid_format"),
        row("Nix PUT of a narinfo with a .. reference", "PUT", ns.narinfo_path(), &[admin], ns.narinfo_with("References", "References: ../../etc/passwd"), 400, "invalid_format"),
        row("Nix PUT of a narinfo for another hash", "PUT", nh.narinfo_path(), &[admin], b(ns.narinfo().as_bytes()), 400, "bad_request"),
        row("Nix PUT of a narinfo with Compression bzip2", "PUT", ns.narinfo_path(), &[admin], ns.narinfo_with("Compression", "Compression: bzip2"), 400, "bad_request"),
        row("Nix PUT of a narinfo before its NAR", "PUT", nu.narinfo_path(), &[admin], b(nu.narinfo().as_bytes()), 400, "nar_file_missing"),
        row("Nix PUT of a narinfo with a pull-only token", "PUT", ns.narinfo_path(), &[pull_only], b(ns.narinfo().as_bytes()), 403, "forbidden"),
        row("Nix PUT of a narinfo with a wrong FileSize", "PUT", ns.narinfo_path(), &[admin], ns.narinfo_with("FileSize", &format!("FileSize: {}", ns.file.len() + 1)), 422, "file_size_mismatch"),
        row("Nix PUT of a narinfo with a wrong FileHash", "PUT", nh.narinfo_path(), &[admin], nh.narinfo_with("FileHash", &format!("FileHash: {other}")), 422, "file_hash_mismatch"),
        row("Nix PUT of a narinfo with a wrong NarHash", "PUT", nn.narinfo_path(), &[admin], nn.narinfo_with("NarHash", &format!("NarHash: {other}")), 422, "nar_hash_mismatch"),
        // --- Reads, routes, settings. ---
        row("narinfo with a hash outside nix32", "GET", "/c/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.narinfo", &[admin], None, 400, "invalid_format"),
        row("NAR file name with ..%2F", "GET", "/c/nar/..%2F..%2Fdb.sqlite", &[admin], None, 404, "not_found"),
        row("unknown API route", "GET", "/_api/v1/nothing-here", &[admin], None, 404, "not_found"),
        row("cache settings with a bad priority", "PATCH", "/_api/v1/caches/c", &[admin, JSON], j(json!({"priority": "high"})), 400, "bad_request"),
        // --- Huge and many headers. ---
        row("64 KiB junk header on a push", "POST", uploads, &[pull_only, JSON, &junk], j(f.open.create_body()), 403, "forbidden"),
        row("200 KiB junk header on a push", "POST", uploads, &[pull_only, JSON, &giant], j(f.open.create_body()), 431, "request_header_fields_too_large").via(Wire::Raw)
            .pinned(431, b"", "actix answers 431 with an empty, non-JSON body (no code exists for it)"),
        row("120 headers on a read", "GET", "/c/nix-cache-info", &many_h, None, 431, "request_header_fields_too_large").via(Wire::Raw)
            .pinned(431, b"", "actix answers 431 with an empty, non-JSON body (no code exists for it)"),
    ]
}

#[test]
fn malformed_requests_get_a_json_4xx_and_publish_nothing() {
    let (s, f) = setup();
    let rows = rows(&f);
    let mut names = BTreeSet::new();
    for r in &rows {
        assert!(names.insert(r.name), "two rows are named {:?}", r.name);
        assert!(
            (400..500).contains(&r.status),
            "row {:?} expects no 4xx",
            r.name
        );
    }
    let mut failures = vec![];
    for r in &rows {
        let verdict = send(&s, r).and_then(|res| judge_row(&s, r, &res));
        if let Err(why) = verdict {
            failures.push(format!("row {:?} ({} {}): {why}", r.name, r.method, r.path));
        }
        assert_up(&s, r.name);
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );

    // Nothing the table touched was published.
    let paths = f.store_paths();
    for p in &paths {
        let url = format!("{}/c/{}.narinfo", s.url, hash_part(p));
        let r = http_request("GET", &url, &[&f.admin], Body::None);
        assert_eq!(r.status, 404, "{p} was published: {}", r.text());
    }
    let body = json!({ "store_paths": paths });
    let r = admin_json(&s, "POST", "/_api/v1/caches/c/missing", &body);
    assert_eq!(r.status, 200, "missing: {}", r.text());
    assert_eq!(
        r.json()["missing"],
        body["store_paths"],
        "a path is not missing"
    );
    assert_up(&s, "the final checks");
}

/// A part cut short of its `Content-Length` is `400 part_truncated` saying
/// how much arrived; nothing of it is kept, and the same part sent whole
/// afterwards is taken and the upload commits.
#[test]
fn cut_part_is_truncated_not_kept_and_can_be_sent_again() {
    let s = InProcess::start();
    let r = admin_json(
        &s,
        "POST",
        "/_api/v1/caches",
        &json!({"name": "c", "public": false}),
    );
    assert_eq!(r.status, 201, "create cache: {}", r.text());
    let nar = Nar::new("bad-input-cut", 3000);
    let id = start_upload(&s, &nar);
    let admin = bearer(&s.admin_token);
    let part = format!("/_api/v1/uploads/{id}/parts/1");
    let length = format!("Content-Length: {}", nar.bytes.len());
    let cut = row(
        "cut part",
        "PUT",
        part.as_str(),
        &[&admin, &length],
        b(&nar.bytes[..1000]),
        400,
        "part_truncated",
    )
    .via(Wire::RawCut);
    let res = send(&s, &cut).expect("an answer to the cut part");
    judge(&s, &cut, &res).unwrap_or_else(|why| panic!("cut part: {why}"));
    let body = res.json();
    assert_eq!(body["received"], 1000, "{body}");
    assert_eq!(body["expected"], nar.bytes.len(), "{body}");
    let message = body["message"].as_str().unwrap();
    for want in ["1000", &nar.bytes.len().to_string(), "again"] {
        assert!(message.contains(want), "message lacks {want:?}: {message}");
    }
    assert!(
        !message.contains("payload") && !message.contains("None"),
        "message shows transport internals: {message}"
    );

    // Nothing of the cut part was recorded.
    let url = format!("{}/_api/v1/uploads/{id}", s.url);
    let st = http_request("GET", &url, &[&admin], Body::None);
    assert_eq!(st.status, 200, "status: {}", st.text());
    let st = st.json();
    assert_eq!(st["state"], "open", "{st}");
    assert_eq!(st["parts"], json!([]), "{st}");
    assert_eq!(st["received_bytes"], 0, "{st}");

    // The part sent whole is taken, and the upload commits.
    let r = http_request(
        "PUT",
        &format!("{}{part}", s.url),
        &[&admin],
        Body::Bytes(nar.bytes.clone()),
    );
    assert_eq!(r.status, 200, "part sent again: {}", r.text());
    assert_eq!(r.json()["size"], nar.bytes.len(), "{}", r.text());
    let r = admin_json(
        &s,
        "POST",
        &format!("/_api/v1/uploads/{id}/complete"),
        &json!({"parts": 1}),
    );
    assert_eq!(r.status, 200, "complete: {}", r.text());
    assert_eq!(r.json()["state"], "committed", "{}", r.text());
    let narinfo = format!("{}/c/{}.narinfo", s.url, hash_part(&nar.path));
    let r = http_request("GET", &narinfo, &[&admin], Body::None);
    assert_eq!(r.status, 200, "narinfo after commit: {}", r.text());
    assert_up(&s, "the cut part");
}
