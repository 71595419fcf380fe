//! The tus 1.0.0 door (`/_api/v1/caches/{cache}/tus/`) at the wire level,
//! in-process, through the real `curl` (and a raw socket for a cut PATCH):
//! every status code the protocol and its seven extensions define, the
//! headers each answer must carry, publishing on the last byte, and CORS.
//!
//! Every test starts its own server (`common::InProcess`) and cache `c`.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Body, HttpResponse, InProcess, Nar, http_request};
use serde_json::json;
use sha1::Digest as _;

const CACHE: &str = "c";
const OFFSET_TYPE: &str = "Content-Type: application/offset+octet-stream";
const EXTENSIONS: [&str; 7] = [
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "expiration",
    "checksum",
    "termination",
    "concatenation",
];

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// How the tus door is told about a [`Nar`].
impl Nar {
    /// `Upload-Metadata` declaring this NAR with `nar_hash` (any Nix form).
    fn metadata_with_hash(&self, nar_hash: &str) -> String {
        // An empty value is the key alone (tus), here `references`.
        format!(
            "store_path {},nar_hash {},nar_size {},references",
            b64(self.path.as_bytes()),
            b64(nar_hash.as_bytes()),
            b64(self.bytes.len().to_string().as_bytes()),
        )
    }

    /// `Upload-Metadata` with the NAR's real hash in SRI form (as `nix
    /// path-info --json` prints it).
    fn metadata(&self) -> String {
        self.metadata_with_hash(&format!("sha256-{}", b64(&self.hash.0)))
    }
}

fn server() -> InProcess {
    with_cache(InProcess::start())
}

fn with_cache(s: InProcess) -> InProcess {
    let r = http_request(
        "POST",
        &format!("{}/_api/v1/caches", s.url),
        &[
            &format!("Authorization: Bearer {}", s.admin_token),
            "Content-Type: application/json",
        ],
        Body::Bytes(
            json!({"name": CACHE, "public": false})
                .to_string()
                .into_bytes(),
        ),
    );
    assert_eq!(r.status, 201, "create cache: {}", r.text());
    s
}

fn endpoint(s: &InProcess) -> String {
    format!("{}/_api/v1/caches/{CACHE}/tus/", s.url)
}

/// A tus request with `Tus-Resumable: 1.0.0` and the admin token, plus
/// `headers`. `target` is a Location (path) or an absolute URL.
fn tus(s: &InProcess, method: &str, target: &str, headers: &[&str], body: Body) -> HttpResponse {
    let auth = format!("Authorization: Bearer {}", s.admin_token);
    let mut h = vec!["Tus-Resumable: 1.0.0", auth.as_str()];
    h.extend_from_slice(headers);
    http_request(method, &url_of(s, target), &h, body)
}

fn url_of(s: &InProcess, target: &str) -> String {
    if target.starts_with("http") {
        target.to_owned()
    } else {
        format!("{}{target}", s.url)
    }
}

/// Asserts the status and that the answer echoes `Tus-Resumable: 1.0.0`.
fn check(r: &HttpResponse, status: u16, what: &str) {
    assert_eq!(
        r.status,
        status,
        "{what}: unexpected status; headers {:?}, body {}",
        r.headers,
        r.text()
    );
    assert_eq!(
        r.header("tus-resumable"),
        Some("1.0.0"),
        "{what}: Tus-Resumable not echoed: {:?}",
        r.headers
    );
}

/// POST with `Upload-Length` and the NAR's metadata; returns the Location.
fn create(s: &InProcess, nar: &Nar) -> String {
    create_with(s, &nar.bytes.len().to_string(), &nar.metadata())
}

fn create_with(s: &InProcess, length: &str, metadata: &str) -> String {
    let len = format!("Upload-Length: {length}");
    let meta = format!("Upload-Metadata: {metadata}");
    let r = tus(s, "POST", &endpoint(s), &[&len, &meta], Body::None);
    check(&r, 201, "create");
    assert_eq!(r.header("upload-offset"), Some("0"), "{:?}", r.headers);
    let loc = r.header("location").expect("Location").to_owned();
    assert!(
        loc.contains(&format!("/_api/v1/caches/{CACHE}/tus/")),
        "Location {loc}"
    );
    loc
}

fn patch(s: &InProcess, loc: &str, offset: u64, bytes: &[u8], extra: &[&str]) -> HttpResponse {
    let off = format!("Upload-Offset: {offset}");
    let mut h = vec![OFFSET_TYPE, off.as_str()];
    h.extend_from_slice(extra);
    tus(s, "PATCH", loc, &h, Body::Bytes(bytes.to_vec()))
}

/// PATCH that must succeed: 204 with the new offset.
fn patch_ok(s: &InProcess, loc: &str, offset: u64, bytes: &[u8], extra: &[&str]) {
    let r = patch(s, loc, offset, bytes, extra);
    check(&r, 204, "PATCH");
    let want = (offset + bytes.len() as u64).to_string();
    assert_eq!(
        r.header("upload-offset"),
        Some(want.as_str()),
        "{:?}",
        r.headers
    );
    assert!(r.header("upload-expires").is_some(), "{:?}", r.headers);
}

fn head(s: &InProcess, loc: &str) -> HttpResponse {
    tus(s, "HEAD", loc, &[], Body::None)
}

/// HEAD that must succeed; returns the offset. Checks `Cache-Control:
/// no-store`.
fn offset_of(s: &InProcess, loc: &str) -> u64 {
    let r = head(s, loc);
    check(&r, 200, "HEAD");
    assert_eq!(
        r.header("cache-control"),
        Some("no-store"),
        "{:?}",
        r.headers
    );
    r.header("upload-offset")
        .expect("Upload-Offset")
        .parse()
        .unwrap()
}

fn narinfo_status(s: &InProcess, nar: &Nar) -> u16 {
    http_request(
        "GET",
        &format!("{}/{CACHE}/{}.narinfo", s.url, nar.hash_part()),
        &[&format!("Authorization: Bearer {}", s.admin_token)],
        Body::None,
    )
    .status
}

fn assert_published(s: &InProcess, nar: &Nar) {
    let r = http_request(
        "GET",
        &format!("{}/{CACHE}/{}.narinfo", s.url, nar.hash_part()),
        &[&format!("Authorization: Bearer {}", s.admin_token)],
        Body::None,
    );
    assert_eq!(r.status, 200, "narinfo of {}: {}", nar.path, r.text());
    let text = r.text();
    assert!(
        text.contains(&format!("StorePath: {}\n", nar.path)),
        "{text}"
    );
    assert!(text.contains(&format!("NarHash: {}\n", nar.hash)), "{text}");
    assert!(
        text.contains(&format!("NarSize: {}\n", nar.bytes.len())),
        "{text}"
    );
}

fn list(header: Option<&str>) -> Vec<String> {
    header
        .unwrap_or("")
        .split(',')
        .map(|x| x.trim().to_owned())
        .filter(|x| !x.is_empty())
        .collect()
}

#[test]
fn options_advertises_version_extensions_and_limits_without_tus_resumable() {
    let s = server();
    // No Tus-Resumable and no token: OPTIONS is discovery.
    for target in [
        endpoint(&s),
        format!("{}/_api/v1/caches/{CACHE}/tus", s.url),
    ] {
        let r = http_request("OPTIONS", &target, &[], Body::None);
        assert_eq!(
            r.status,
            204,
            "OPTIONS {target}: {:?} {}",
            r.headers,
            r.text()
        );
        assert!(
            list(r.header("tus-version")).contains(&"1.0.0".to_owned()),
            "{:?}",
            r.headers
        );
        let mut ext = list(r.header("tus-extension"));
        ext.sort();
        let mut want: Vec<String> = EXTENSIONS.iter().map(|e| e.to_string()).collect();
        want.sort();
        assert_eq!(ext, want, "{:?}", r.headers);
        assert_eq!(
            r.header("tus-max-size"),
            Some((1u64 << 40).to_string().as_str())
        );
        let mut algs = list(r.header("tus-checksum-algorithm"));
        algs.sort();
        assert_eq!(algs, ["md5", "sha1", "sha256"], "{:?}", r.headers);
        assert_eq!(
            r.header("upload-limit"),
            Some(format!("max-append-size={}", 64 * 1024 * 1024).as_str())
        );
    }
    // The limits follow the configuration.
    let s = with_cache(InProcess::start_with(|c| {
        c.tus_max_size = 5_000_000;
        c.max_part_size = 10_000_000;
    }));
    let r = http_request("OPTIONS", &endpoint(&s), &[], Body::None);
    assert_eq!(r.status, 204);
    assert_eq!(r.header("tus-max-size"), Some("5000000"));
    assert_eq!(r.header("upload-limit"), Some("max-append-size=10000000"));
}

#[test]
fn missing_or_other_tus_resumable_is_412_with_tus_version() {
    let s = server();
    let nar = Nar::new("version", 100);
    let loc = create(&s, &nar);
    let auth = format!("Authorization: Bearer {}", s.admin_token);
    let len = format!("Upload-Length: {}", nar.bytes.len());
    let meta = format!("Upload-Metadata: {}", nar.metadata());
    for version in [None, Some("Tus-Resumable: 0.2.0")] {
        let mut h = vec![auth.as_str()];
        h.extend(version);
        let mut post = h.clone();
        post.extend([len.as_str(), meta.as_str()]);
        let answers = [
            (
                "POST",
                http_request("POST", &endpoint(&s), &post, Body::None),
            ),
            (
                "HEAD",
                http_request("HEAD", &url_of(&s, &loc), &h, Body::None),
            ),
            ("PATCH", {
                let mut p = h.clone();
                p.extend([OFFSET_TYPE, "Upload-Offset: 0"]);
                http_request(
                    "PATCH",
                    &url_of(&s, &loc),
                    &p,
                    Body::Bytes(nar.bytes.clone()),
                )
            }),
            (
                "DELETE",
                http_request("DELETE", &url_of(&s, &loc), &h, Body::None),
            ),
        ];
        for (method, r) in answers {
            let what = format!("{method} with {version:?}");
            check(&r, 412, &what);
            assert!(
                list(r.header("tus-version")).contains(&"1.0.0".to_owned()),
                "{what}: {:?}",
                r.headers
            );
        }
    }
    // Nothing above touched the upload.
    assert_eq!(offset_of(&s, &loc), 0);
    assert_eq!(narinfo_status(&s, &nar), 404);
}

#[test]
fn patch_without_offset_content_type_is_415() {
    let s = server();
    let nar = Nar::new("ctype", 100);
    let loc = create(&s, &nar);
    // curl's default form type, then none at all (an empty value removes it).
    for ctype in [
        None,
        Some("Content-Type:"),
        Some("Content-Type: application/octet-stream"),
    ] {
        let mut h = vec!["Upload-Offset: 0"];
        h.extend(ctype);
        let r = tus(&s, "PATCH", &loc, &h, Body::Bytes(nar.bytes.clone()));
        check(&r, 415, &format!("PATCH with {ctype:?}"));
    }
    assert_eq!(offset_of(&s, &loc), 0);
}

#[test]
fn wrong_upload_offset_is_409_and_changes_nothing() {
    let s = server();
    let nar = Nar::new("offset", 1000);
    let loc = create(&s, &nar);
    let r = patch(&s, &loc, 10, &nar.bytes[10..20], &[]);
    check(&r, 409, "PATCH at 10 of 0");
    assert_eq!(r.json()["error"], "offset_mismatch", "{}", r.text());
    patch_ok(&s, &loc, 0, &nar.bytes[..100], &[]);
    for wrong in [0, 99, 101] {
        let r = patch(&s, &loc, wrong, &nar.bytes[100..200], &[]);
        check(&r, 409, &format!("PATCH at {wrong} of 100"));
        assert_eq!(r.json()["offset"], 100, "{}", r.text());
    }
    assert_eq!(offset_of(&s, &loc), 100);
    patch_ok(&s, &loc, 100, &nar.bytes[100..], &[]);
    assert_published(&s, &nar);
}

#[test]
fn upload_checksum_sha1_md5_sha256_accepts_matching_refuses_wrong_with_460() {
    let s = server();
    let nar = Nar::new("checksums", 30_000);
    let loc = create(&s, &nar);
    let n = nar.bytes.len();
    let chunks = [
        &nar.bytes[..n / 3],
        &nar.bytes[n / 3..2 * n / 3],
        &nar.bytes[2 * n / 3..],
    ];
    let digest = |alg: &str, data: &[u8]| -> Vec<u8> {
        match alg {
            "sha1" => sha1::Sha1::digest(data).to_vec(),
            "md5" => md5::Md5::digest(data).to_vec(),
            "sha256" => sha2::Sha256::digest(data).to_vec(),
            _ => unreachable!(),
        }
    };
    let mut offset = 0u64;
    for (alg, chunk) in ["sha1", "md5", "sha256"].into_iter().zip(chunks) {
        // A checksum of other bytes (the right length for the algorithm).
        let wrong = format!("Upload-Checksum: {alg} {}", b64(&digest(alg, b"other")));
        let r = patch(&s, &loc, offset, chunk, &[&wrong]);
        check(&r, 460, &format!("wrong {alg}"));
        assert_eq!(
            offset_of(&s, &loc),
            offset,
            "a refused {alg} chunk moved the offset"
        );
        let right = format!("Upload-Checksum: {alg} {}", b64(&digest(alg, chunk)));
        patch_ok(&s, &loc, offset, chunk, &[&right]);
        offset += chunk.len() as u64;
        assert_eq!(offset_of(&s, &loc), offset);
    }
    assert_published(&s, &nar);
}

#[test]
fn unknown_checksum_algorithm_is_400() {
    let s = server();
    let nar = Nar::new("crc", 1000);
    let loc = create(&s, &nar);
    let crc = format!("Upload-Checksum: crc32 {}", b64(&[1, 2, 3, 4]));
    let r = patch(&s, &loc, 0, &nar.bytes, &[&crc]);
    check(&r, 400, "crc32 checksum");
    assert_eq!(offset_of(&s, &loc), 0);
    assert_eq!(narinfo_status(&s, &nar), 404);
}

#[test]
fn upload_length_over_max_size_and_patch_past_length_are_413() {
    let s = with_cache(InProcess::start_with(|c| c.tus_max_size = 1000));
    let nar = Nar::new("big", 2000);
    let len = format!("Upload-Length: {}", nar.bytes.len());
    let meta = format!("Upload-Metadata: {}", nar.metadata());
    let r = tus(&s, "POST", &endpoint(&s), &[&len, &meta], Body::None);
    check(&r, 413, "Upload-Length over Tus-Max-Size");
    assert!(r.header("location").is_none());
    let r = tus(
        &s,
        "POST",
        &endpoint(&s),
        &["Upload-Length: 1001", &meta],
        Body::None,
    );
    check(&r, 413, "Upload-Length 1001 over 1000");

    // A PATCH that would go past Upload-Length.
    let s = server();
    let nar = Nar::new("past", 500);
    let loc = create(&s, &nar);
    let mut longer = nar.bytes.clone();
    longer.push(0);
    let r = patch(&s, &loc, 0, &longer, &[]);
    check(&r, 413, "PATCH past Upload-Length");
    assert_eq!(offset_of(&s, &loc), 0);
    patch_ok(&s, &loc, 0, &nar.bytes[..100], &[]);
    let r = patch(&s, &loc, 100, &longer[100..], &[]);
    check(&r, 413, "second PATCH past Upload-Length");
    assert_eq!(offset_of(&s, &loc), 100);
    patch_ok(&s, &loc, 100, &nar.bytes[100..], &[]);
    assert_published(&s, &nar);
}

#[test]
fn termination_is_204_then_404_and_unknown_ids_are_404() {
    let s = server();
    let nar = Nar::new("terminate", 1000);
    let loc = create(&s, &nar);
    patch_ok(&s, &loc, 0, &nar.bytes[..300], &[]);
    let r = tus(&s, "DELETE", &loc, &[], Body::None);
    check(&r, 204, "DELETE");
    check(&head(&s, &loc), 404, "HEAD after DELETE");
    check(
        &patch(&s, &loc, 300, &nar.bytes[300..], &[]),
        404,
        "PATCH after DELETE",
    );
    check(
        &tus(&s, "DELETE", &loc, &[], Body::None),
        404,
        "DELETE again",
    );
    assert_eq!(narinfo_status(&s, &nar), 404);
    for id in ["0190f5a2-8c4e-7d3a-9b1e-123456789abc", "not-an-id"] {
        let unknown = format!("/_api/v1/caches/{CACHE}/tus/{id}");
        check(&head(&s, &unknown), 404, &format!("HEAD {id}"));
        check(
            &patch(&s, &unknown, 0, b"x", &[]),
            404,
            &format!("PATCH {id}"),
        );
        check(
            &tus(&s, "DELETE", &unknown, &[], Body::None),
            404,
            &format!("DELETE {id}"),
        );
    }
}

#[test]
fn expired_upload_is_gone() {
    let s = with_cache(InProcess::start_with(|c| c.upload_expiry_secs = 1));
    let nar = Nar::new("expire", 1000);
    let len = format!("Upload-Length: {}", nar.bytes.len());
    let meta = format!("Upload-Metadata: {}", nar.metadata());
    let r = tus(&s, "POST", &endpoint(&s), &[&len, &meta], Body::None);
    check(&r, 201, "create");
    // expiration: an RFC 7231 date.
    let expires = r
        .header("upload-expires")
        .expect("Upload-Expires")
        .to_owned();
    assert!(
        expires.ends_with(" GMT") && expires.contains(", "),
        "{expires}"
    );
    let loc = r.header("location").unwrap().to_owned();
    patch_ok(&s, &loc, 0, &nar.bytes[..100], &[]);
    std::thread::sleep(Duration::from_millis(2500));
    let gone = |r: &HttpResponse, what: &str| {
        assert!(
            r.status == 404 || r.status == 410,
            "{what} after expiry: {} {}",
            r.status,
            r.text()
        );
        assert_eq!(r.header("tus-resumable"), Some("1.0.0"), "{what}");
    };
    gone(&head(&s, &loc), "HEAD");
    gone(&patch(&s, &loc, 100, &nar.bytes[100..], &[]), "PATCH");
    assert_eq!(narinfo_status(&s, &nar), 404);
}

#[test]
fn creation_with_upload_answers_the_offset() {
    let s = server();
    // Part of the NAR in the POST, the rest by PATCH.
    let nar = Nar::new("with-upload", 5000);
    let len = format!("Upload-Length: {}", nar.bytes.len());
    let meta = format!("Upload-Metadata: {}", nar.metadata());
    let r = tus(
        &s,
        "POST",
        &endpoint(&s),
        &[&len, &meta, OFFSET_TYPE],
        Body::Bytes(nar.bytes[..1234].to_vec()),
    );
    check(&r, 201, "creation-with-upload");
    assert_eq!(r.header("upload-offset"), Some("1234"), "{:?}", r.headers);
    let loc = r.header("location").unwrap().to_owned();
    assert_eq!(offset_of(&s, &loc), 1234);
    assert_eq!(narinfo_status(&s, &nar), 404);
    patch_ok(&s, &loc, 1234, &nar.bytes[1234..], &[]);
    assert_published(&s, &nar);

    // The whole NAR in the POST publishes at once.
    let nar = Nar::new("with-upload-whole", 3000);
    let len = format!("Upload-Length: {}", nar.bytes.len());
    let meta = format!("Upload-Metadata: {}", nar.metadata());
    let r = tus(
        &s,
        "POST",
        &endpoint(&s),
        &[&len, &meta, OFFSET_TYPE],
        Body::Bytes(nar.bytes.clone()),
    );
    check(&r, 201, "creation-with-upload, whole NAR");
    let want = nar.bytes.len().to_string();
    assert_eq!(r.header("upload-offset"), Some(want.as_str()));
    assert_published(&s, &nar);
}

#[test]
fn creation_defer_length_takes_the_length_on_a_patch() {
    let s = server();
    let nar = Nar::new("deferred", 4000);
    let meta = format!("Upload-Metadata: {}", nar.metadata());
    let r = tus(
        &s,
        "POST",
        &endpoint(&s),
        &["Upload-Defer-Length: 1", &meta],
        Body::None,
    );
    check(&r, 201, "deferred creation");
    let loc = r.header("location").unwrap().to_owned();
    let r = head(&s, &loc);
    check(&r, 200, "HEAD deferred");
    assert_eq!(
        r.header("upload-defer-length"),
        Some("1"),
        "{:?}",
        r.headers
    );
    assert!(r.header("upload-length").is_none(), "{:?}", r.headers);
    assert_eq!(r.header("upload-metadata"), Some(nar.metadata().as_str()));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let len = format!("Upload-Length: {}", nar.bytes.len());
    patch_ok(&s, &loc, 0, &nar.bytes[..1000], &[&len]);
    let r = head(&s, &loc);
    check(&r, 200, "HEAD after length");
    assert_eq!(
        r.header("upload-length"),
        Some(nar.bytes.len().to_string().as_str())
    );
    assert!(r.header("upload-defer-length").is_none(), "{:?}", r.headers);
    assert_eq!(r.header("upload-offset"), Some("1000"));
    patch_ok(&s, &loc, 1000, &nar.bytes[1000..], &[]);
    assert_published(&s, &nar);
}

#[test]
fn head_reports_offset_length_metadata_no_store() {
    let s = server();
    let nar = Nar::new("head", 2000);
    let loc = create(&s, &nar);
    patch_ok(&s, &loc, 0, &nar.bytes[..700], &[]);
    let r = head(&s, &loc);
    check(&r, 200, "HEAD");
    assert_eq!(r.header("upload-offset"), Some("700"));
    assert_eq!(
        r.header("upload-length"),
        Some(nar.bytes.len().to_string().as_str())
    );
    assert_eq!(r.header("upload-metadata"), Some(nar.metadata().as_str()));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(r.header("upload-expires").is_some());
}

#[test]
fn concatenation_of_two_partials_publishes_and_final_refuses_patch() {
    let s = server();
    let nar = Nar::new("concat", 20_000);
    let (a, b) = nar.bytes.split_at(7_777);
    let mut partials = vec![];
    for piece in [a, b] {
        let len = format!("Upload-Length: {}", piece.len());
        let r = tus(
            &s,
            "POST",
            &endpoint(&s),
            &[&len, "Upload-Concat: partial"],
            Body::None,
        );
        check(&r, 201, "partial creation");
        let loc = r.header("location").unwrap().to_owned();
        patch_ok(&s, &loc, 0, piece, &[]);
        let h = head(&s, &loc);
        check(&h, 200, "HEAD partial");
        assert_eq!(h.header("upload-concat"), Some("partial"));
        partials.push(loc);
    }
    // A partial alone publishes nothing.
    assert_eq!(narinfo_status(&s, &nar), 404);
    // One URL absolute, one relative: both name an upload.
    let concat = format!(
        "Upload-Concat: final;{} {}",
        url_of(&s, &partials[0]),
        partials[1]
    );
    let meta = format!("Upload-Metadata: {}", nar.metadata());
    let r = tus(&s, "POST", &endpoint(&s), &[&concat, &meta], Body::None);
    check(&r, 201, "final creation");
    let fin = r.header("location").unwrap().to_owned();
    assert_published(&s, &nar);
    let r = head(&s, &fin);
    check(&r, 200, "HEAD final");
    let total = nar.bytes.len().to_string();
    assert_eq!(r.header("upload-offset"), Some(total.as_str()));
    assert_eq!(r.header("upload-length"), Some(total.as_str()));
    assert!(
        r.header("upload-concat")
            .is_some_and(|c| c.starts_with("final;")),
        "{:?}",
        r.headers
    );
    let r = patch(&s, &fin, 0, b"x", &[]);
    check(&r, 403, "PATCH to a final upload");
    // The NAR served is the concatenation.
    let r = http_request(
        "GET",
        &format!("{}/{CACHE}/{}.narinfo", s.url, nar.hash_part()),
        &[&format!("Authorization: Bearer {}", s.admin_token)],
        Body::None,
    );
    let url = r
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("URL: ").map(str::to_owned))
        .expect("URL line");
    let r = http_request(
        "GET",
        &format!("{}/{CACHE}/{url}", s.url),
        &[&format!("Authorization: Bearer {}", s.admin_token)],
        Body::None,
    );
    assert_eq!(r.status, 200);
    let served = if url.ends_with(".zst") {
        zstd::decode_all(&r.body[..]).unwrap()
    } else {
        r.body.clone()
    };
    assert!(
        served == nar.bytes,
        "served NAR differs from the two partials joined"
    );
}

#[test]
fn last_patch_with_wrong_nar_hash_is_422_and_publishes_nothing() {
    let s = server();
    let nar = Nar::new("wrong-hash", 3000);
    let other = Nar::new("other", 3000);
    let loc = create_with(
        &s,
        &nar.bytes.len().to_string(),
        &nar.metadata_with_hash(&other.hash.to_string()),
    );
    patch_ok(&s, &loc, 0, &nar.bytes[..1000], &[]);
    let r = patch(&s, &loc, 1000, &nar.bytes[1000..], &[]);
    check(&r, 422, "last PATCH with a wrong NarHash");
    let v = r.json();
    assert_eq!(v["error"], "nar_hash_mismatch", "{v}");
    assert_eq!(v["expected"], other.hash.to_string(), "{v}");
    assert_eq!(v["actual"], nar.hash.to_string(), "{v}");
    assert_eq!(narinfo_status(&s, &nar), 404);
}

#[test]
fn patch_cut_mid_body_keeps_what_arrived_and_resumes() {
    let s = server();
    let nar = Nar::new("cut", 200_000);
    let loc = create(&s, &nar);
    let sent = 80_000;
    let addr = s.url.trim_start_matches("http://");
    let mut sock = TcpStream::connect(addr).unwrap();
    let head_text = format!(
        "PATCH {loc} HTTP/1.1\r\nHost: {addr}\r\nTus-Resumable: 1.0.0\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/offset+octet-stream\r\n\
         Upload-Offset: 0\r\nContent-Length: {}\r\n\r\n",
        s.admin_token,
        nar.bytes.len()
    );
    sock.write_all(head_text.as_bytes()).unwrap();
    sock.write_all(&nar.bytes[..sent]).unwrap();
    sock.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    sock.shutdown(std::net::Shutdown::Both).unwrap();
    drop(sock);
    // The server notices the cut and keeps the bytes it got.
    let deadline = Instant::now() + Duration::from_secs(10);
    let offset = loop {
        let o = offset_of(&s, &loc);
        if o > 0 || Instant::now() > deadline {
            break o;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Every byte written before the cut arrived (the FIN follows them).
    assert_eq!(
        offset, sent as u64,
        "offset after a PATCH cut after {sent} bytes"
    );
    assert_eq!(narinfo_status(&s, &nar), 404);
    patch_ok(&s, &loc, offset, &nar.bytes[offset as usize..], &[]);
    assert_published(&s, &nar);
}

#[test]
fn no_token_is_401() {
    let s = server();
    let nar = Nar::new("no-token", 1000);
    let loc = create(&s, &nar);
    let len = format!("Upload-Length: {}", nar.bytes.len());
    let meta = format!("Upload-Metadata: {}", nar.metadata());
    let base = ["Tus-Resumable: 1.0.0"];
    let mut post = base.to_vec();
    post.extend([len.as_str(), meta.as_str()]);
    let r = http_request("POST", &endpoint(&s), &post, Body::None);
    check(&r, 401, "POST without token");
    let r = http_request("HEAD", &url_of(&s, &loc), &base, Body::None);
    check(&r, 401, "HEAD without token");
    let mut p = base.to_vec();
    p.extend([OFFSET_TYPE, "Upload-Offset: 0"]);
    let r = http_request(
        "PATCH",
        &url_of(&s, &loc),
        &p,
        Body::Bytes(nar.bytes.clone()),
    );
    check(&r, 401, "PATCH without token");
    let r = http_request("DELETE", &url_of(&s, &loc), &base, Body::None);
    check(&r, 401, "DELETE without token");
    assert_eq!(offset_of(&s, &loc), 0);
    assert_eq!(narinfo_status(&s, &nar), 404);
}

fn preflight(s: &InProcess, origin: &str) -> HttpResponse {
    let o = format!("Origin: {origin}");
    http_request(
        "OPTIONS",
        &endpoint(s),
        &[
            &o,
            "Access-Control-Request-Method: PATCH",
            "Access-Control-Request-Headers: tus-resumable, upload-offset, content-type, authorization",
        ],
        Body::None,
    )
}

const CORS_HEADERS: [&str; 4] = [
    "access-control-allow-origin",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-expose-headers",
];

#[test]
fn cors_answers_configured_origins_only() {
    let s = with_cache(InProcess::start_with(|c| {
        c.cors_origins = vec!["https://app.example".into()]
    }));
    let r = preflight(&s, "https://app.example");
    assert_eq!(r.status, 204, "{:?}", r.headers);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let methods = list(r.header("access-control-allow-methods"));
    for m in ["POST", "HEAD", "PATCH", "DELETE", "OPTIONS"] {
        assert!(methods.contains(&m.to_owned()), "{m} not in {methods:?}");
    }
    let allowed: Vec<String> = list(r.header("access-control-allow-headers"))
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    for h in [
        "tus-resumable",
        "upload-length",
        "upload-metadata",
        "upload-offset",
        "upload-concat",
        "upload-checksum",
        "content-type",
        "authorization",
    ] {
        assert!(allowed.contains(&h.to_owned()), "{h} not in {allowed:?}");
    }
    let exposed: Vec<String> = list(r.header("access-control-expose-headers"))
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    for h in [
        "location",
        "upload-offset",
        "upload-length",
        "tus-resumable",
    ] {
        assert!(exposed.contains(&h.to_owned()), "{h} not in {exposed:?}");
    }
    // The actual request from that origin gets the origin and the exposed
    // headers too (a browser reads Location and Upload-Offset through them).
    let nar = Nar::new("cors", 100);
    let len = format!("Upload-Length: {}", nar.bytes.len());
    let meta = format!("Upload-Metadata: {}", nar.metadata());
    let r = tus(
        &s,
        "POST",
        &endpoint(&s),
        &[&len, &meta, "Origin: https://app.example"],
        Body::None,
    );
    check(&r, 201, "POST from the allowed origin");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(r.header("access-control-expose-headers").is_some());

    // Another origin: no CORS header at all.
    for origin in ["https://evil.example", "https://app.example.evil.example"] {
        let r = preflight(&s, origin);
        for h in CORS_HEADERS {
            assert!(r.header(h).is_none(), "{origin}: {h} in {:?}", r.headers);
        }
    }
    // Default configuration: none for anyone.
    let s = server();
    let r = preflight(&s, "https://app.example");
    assert_eq!(r.status, 204);
    for h in CORS_HEADERS {
        assert!(
            r.header(h).is_none(),
            "default config: {h} in {:?}",
            r.headers
        );
    }
}

#[test]
fn a_deferred_length_over_max_size_is_413_and_so_are_bytes_past_it() {
    let s = with_cache(InProcess::start_with(|c| c.tus_max_size = 1000));
    let nar = Nar::new("deferred-big", 4000);
    let meta = format!("Upload-Metadata: {}", nar.metadata());
    let r = tus(
        &s,
        "POST",
        &endpoint(&s),
        &["Upload-Defer-Length: 1", &meta],
        Body::None,
    );
    check(&r, 201, "deferred creation");
    let loc = r.header("location").unwrap().to_owned();
    // Bytes past the limit while the length is still deferred.
    let r = patch(&s, &loc, 0, &nar.bytes[..1500], &[]);
    check(&r, 413, "bytes past Tus-Max-Size");
    assert_eq!(r.json()["error"], "upload_too_large");
    // A length over the limit, arriving on a PATCH.
    let len = format!("Upload-Length: {}", nar.bytes.len());
    let r = patch(&s, &loc, 0, &nar.bytes[..500], &[&len]);
    check(&r, 413, "late Upload-Length over Tus-Max-Size");
    assert_eq!(offset_of(&s, &loc), 0, "nothing was kept");
}

#[test]
fn x_http_method_override_patch_and_delete_work_through_post() {
    let s = server();
    let nar = Nar::new("override", 3000);
    let loc = create(&s, &nar);
    let r = tus(
        &s,
        "POST",
        &loc,
        &[
            OFFSET_TYPE,
            "Upload-Offset: 0",
            "X-HTTP-Method-Override: PATCH",
        ],
        Body::Bytes(nar.bytes.clone()),
    );
    check(&r, 204, "PATCH as POST");
    assert_published(&s, &nar);
    let other = Nar::new("override-delete", 1000);
    let loc = create(&s, &other);
    let r = tus(
        &s,
        "POST",
        &loc,
        &["X-HTTP-Method-Override: DELETE"],
        Body::None,
    );
    check(&r, 204, "DELETE as POST");
    check(&head(&s, &loc), 404, "HEAD after termination");
    let r = tus(&s, "POST", &loc, &[], Body::None);
    assert_eq!(r.status, 400, "{}", r.text());
}
