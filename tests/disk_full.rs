//! A full disk is a fault, never a verdict.
//!
//! The server's data dir is a small tmpfs the test mounts itself (tests
//! and CI run as root), filled to the last byte by a filler file. Each door
//! meets the full disk where it writes: the parts API receiving a part
//! (as sent, or compressed as it arrives for a plain NAR), `complete`, a
//! tus PATCH, a batch of small NARs, and `ferry push` against a full
//! server. Every time the answer is 507
//! `insufficient_storage` with `Retry-After`, the upload stays open with
//! every acknowledged part, the server stays up, and once the filler is
//! gone the same upload (not a new one) completes. Nix then reads the
//! pushed closure back with signatures required.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::client::{FerryClient, public_key_of};
use common::*;
use serde_json::json;

/// A tmpfs mounted for one test, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size_mib: u64) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs failed (the disk-full tests need root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the filesystem to its last byte; the filler's path.
    fn fill(&self) -> PathBuf {
        let p = self.path().join("filler");
        let mut f = std::fs::File::create(&p).unwrap();
        let block = vec![0x5au8; 64 << 10];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        // Single bytes too, so not even a small write fits.
        while f.write(&[0]).is_ok_and(|n| n == 1) {}
        p
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn auth(s: &InProcess) -> String {
    format!("Authorization: Bearer {}", s.admin_token)
}

fn call(s: &InProcess, method: &str, path: &str, body: Body) -> HttpResponse {
    http_request(method, &format!("{}{path}", s.url), &[&auth(s)], body)
}

fn server_on(disk: &SmallDisk) -> InProcess {
    let data = disk.path().join("data");
    let s = InProcess::start_with(|c| c.data_dir = data);
    let r = call(
        &s,
        "POST",
        "/_api/v1/caches",
        Body::Bytes(json!({"name": "c"}).to_string().into_bytes()),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    s
}

/// The answer is the documented fault, and the server is still up.
fn assert_full(s: &InProcess, r: &HttpResponse, what: &str) {
    assert_eq!(r.status, 507, "{what}: {}", r.text());
    assert_eq!(r.json()["error"], "insufficient_storage", "{what}");
    let retry: u64 = r
        .header("retry-after")
        .unwrap_or_else(|| panic!("{what}: no Retry-After"))
        .parse()
        .unwrap();
    assert!(retry > 0, "{what}");
    assert_eq!(call(s, "GET", "/healthz", Body::None).status, 200, "{what}");
}

fn create(s: &InProcess, nar: &Nar, compression: &str) -> String {
    let body = json!({"store_path": nar.path, "nar_hash": nar.hash.to_string(),
        "nar_size": nar.bytes.len(), "compression": compression});
    let r = call(
        s,
        "POST",
        "/_api/v1/caches/c/uploads",
        Body::Bytes(body.to_string().into_bytes()),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_owned()
}

fn put(s: &InProcess, id: &str, n: usize, bytes: &[u8]) -> HttpResponse {
    call(
        s,
        "PUT",
        &format!("/_api/v1/uploads/{id}/parts/{n}"),
        Body::Bytes(bytes.to_vec()),
    )
}

fn complete(s: &InProcess, id: &str, parts: usize) -> HttpResponse {
    call(
        s,
        "POST",
        &format!("/_api/v1/uploads/{id}/complete"),
        Body::Bytes(json!({ "parts": parts }).to_string().into_bytes()),
    )
}

fn status(s: &InProcess, id: &str) -> serde_json::Value {
    call(s, "GET", &format!("/_api/v1/uploads/{id}"), Body::None).json()
}

/// The path is served, and its NAR hashes to what was sent.
fn assert_served(s: &InProcess, nar: &Nar) {
    let ni = call(
        s,
        "GET",
        &format!("/c/{}.narinfo", nar.hash_part()),
        Body::None,
    );
    assert_eq!(ni.status, 200, "{}", ni.text());
    let text = ni.text();
    let url = text.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap();
    let body = call(s, "GET", &format!("/c/{url}"), Body::None).body;
    let bytes = zstd::decode_all(&body[..]).unwrap();
    assert_eq!(::ferry::nar::Sha256Hash::digest(&bytes), nar.hash);
}

#[test]
fn a_plain_upload_compressed_on_a_full_disk_stays_open_and_completes_later() {
    let disk = SmallDisk::mount(48);
    let s = server_on(&disk);
    let nar = Nar::new("full-plain", 6 << 20);
    let id = create(&s, &nar, "none");
    let parts: Vec<&[u8]> = nar.bytes.chunks(3 << 20).collect();
    assert_eq!(put(&s, &id, 1, parts[0]).status, 200);
    // A plain part is compressed as it arrives: no room for its frames.
    let filler = disk.fill();
    assert_full(&s, &put(&s, &id, 2, parts[1]), "plain part 2");
    let st = status(&s, &id);
    assert_eq!(st["state"], "open", "{st}");
    assert_eq!(st["parts"].as_array().unwrap().len(), 1, "{st}");
    std::fs::remove_file(filler).unwrap();
    for (i, p) in parts.iter().enumerate().skip(1) {
        assert_eq!(put(&s, &id, i + 1, p).status, 200);
    }
    // Completing needs room too (the database's log).
    let filler = disk.fill();
    let r = complete(&s, &id, parts.len());
    assert_full(&s, &r, "complete");
    let st = status(&s, &id);
    assert_eq!(st["state"], "open", "{st}");
    assert_eq!(st["parts"].as_array().unwrap().len(), parts.len(), "{st}");
    std::fs::remove_file(filler).unwrap();
    let r = complete(&s, &id, parts.len());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_served(&s, &nar);
}

#[test]
fn a_batch_on_a_full_disk_is_507_and_the_same_batch_publishes_later() {
    let disk = SmallDisk::mount(48);
    let s = server_on(&disk);
    let nars: Vec<Nar> = (0..3)
        .map(|i| Nar::new(&format!("full-batch-{i}"), 40_000 + i))
        .collect();
    let mut body = vec![];
    for n in &nars {
        let zst = zstd::encode_all(&n.bytes[..], 3).unwrap();
        let header = json!({"store_path": n.path, "nar_hash": n.hash.to_string(),
            "nar_size": n.bytes.len(), "compression": "zstd", "size": zst.len()});
        body.extend(format!("{header}\n").into_bytes());
        body.extend(zst);
    }
    let filler = disk.fill();
    let r = call(
        &s,
        "POST",
        "/_api/v1/caches/c/batch",
        Body::Bytes(body.clone()),
    );
    assert_full(&s, &r, "batch");
    for n in &nars {
        let ni = call(
            &s,
            "GET",
            &format!("/c/{}.narinfo", n.hash_part()),
            Body::None,
        );
        assert_eq!(ni.status, 404, "nothing is half-published: {}", ni.text());
    }
    std::fs::remove_file(filler).unwrap();
    let r = call(&s, "POST", "/_api/v1/caches/c/batch", Body::Bytes(body));
    assert_eq!(r.status, 200, "{}", r.text());
    for (res, n) in r.json()["results"].as_array().unwrap().iter().zip(&nars) {
        assert_eq!(res["state"], "committed", "{res}");
        assert_served(&s, n);
    }
    // The upload the fault stopped was removed, not left open.
    let open = call(&s, "GET", "/_api/v1/caches/c/uploads", Body::None).json();
    assert_eq!(open["uploads"], json!([]), "{open}");
}

#[test]
fn a_part_that_meets_a_full_disk_is_not_acknowledged_and_is_sent_again() {
    let disk = SmallDisk::mount(48);
    let s = server_on(&disk);
    let nar = Nar::new("full-zstd", 6 << 20);
    let wire = zstd::encode_all(&nar.bytes[..], 1).unwrap();
    let parts: Vec<&[u8]> = wire.chunks(2 << 20).collect();
    let id = create(&s, &nar, "zstd");
    assert_eq!(put(&s, &id, 1, parts[0]).status, 200);
    let filler = disk.fill();
    assert_full(&s, &put(&s, &id, 2, parts[1]), "part 2");
    let st = status(&s, &id);
    assert_eq!(st["state"], "open", "{st}");
    assert_eq!(st["parts"].as_array().unwrap().len(), 1, "{st}");
    std::fs::remove_file(filler).unwrap();
    for (i, p) in parts.iter().enumerate().skip(1) {
        assert_eq!(put(&s, &id, i + 1, p).status, 200);
    }
    let r = complete(&s, &id, parts.len());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_served(&s, &nar);
}

#[test]
fn a_tus_patch_on_a_full_disk_is_507_and_the_same_upload_resumes() {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let disk = SmallDisk::mount(48);
    let s = server_on(&disk);
    let nar = Nar::new("full-tus", 4 << 20);
    let meta = format!(
        "store_path {},nar_hash {},nar_size {},references",
        b64(nar.path.as_bytes()),
        b64(nar.hash.to_string().as_bytes()),
        b64(nar.bytes.len().to_string().as_bytes()),
    );
    let tus = |method: &str, url: &str, extra: &[&str], body: Body| {
        let mut h = vec![auth(&s), "Tus-Resumable: 1.0.0".to_owned()];
        h.extend(extra.iter().map(|e| e.to_string()));
        let h: Vec<&str> = h.iter().map(String::as_str).collect();
        http_request(method, url, &h, body)
    };
    let r = tus(
        "POST",
        &format!("{}/_api/v1/caches/c/tus/", s.url),
        &[
            &format!("Upload-Length: {}", nar.bytes.len()),
            &format!("Upload-Metadata: {meta}"),
        ],
        Body::None,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let location = r.header("location").unwrap().to_owned();
    let url = if location.starts_with("http") {
        location
    } else {
        format!("{}{location}", s.url)
    };
    let half = nar.bytes.len() / 2;
    let patch = |offset: usize, bytes: &[u8]| {
        tus(
            "PATCH",
            &url,
            &[
                "Content-Type: application/offset+octet-stream",
                &format!("Upload-Offset: {offset}"),
            ],
            Body::Bytes(bytes.to_vec()),
        )
    };
    assert_eq!(patch(0, &nar.bytes[..half]).status, 204);
    let filler = disk.fill();
    let r = patch(half, &nar.bytes[half..]);
    assert_full(&s, &r, "PATCH");
    std::fs::remove_file(filler).unwrap();
    let head = tus("HEAD", &url, &[], Body::None);
    assert_eq!(
        head.header("upload-offset"),
        Some(half.to_string().as_str())
    );
    let r = patch(half, &nar.bytes[half..]);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(r.header("ferry-upload-state"), Some("committed"));
    assert_served(&s, &nar);
}

#[test]
fn ferry_push_waits_out_a_full_disk_and_nix_reads_the_closure_back() {
    let disk = SmallDisk::mount(64);
    let s = server_on(&disk);
    let client = FerryClient::new();
    client.ok(&["login", "home", &s.url, &s.admin_token]);
    let pubkey = public_key_of(&client.ok(&["cache", "info", "home:c"]));
    let closure = build_closure(
        &ClosureSpec::new("disk-full")
            .salt(&unique_salt())
            .random("blob", 5_000_000),
    );
    let filler = disk.fill();
    let mut push = client
        .cmd(&["push", "home:c", &closure.top])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Long enough for the push to meet the full disk a few times.
    std::thread::sleep(Duration::from_secs(3));
    assert!(push.try_wait().unwrap().is_none(), "the push gave up");
    std::fs::remove_file(filler).unwrap();
    let out = push.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ferry push: {stderr}");
    assert!(
        stderr.contains("disk is full"),
        "the push never met the full disk: {stderr}"
    );
    let netrc_dir = tempfile::tempdir().unwrap();
    let netrc = write_netrc(netrc_dir.path(), "127.0.0.1", &s.admin_token);
    let store = nix_copy_from(&format!("{}/c", s.url), &pubkey, Some(&netrc), &closure.top);
    for p in &closure.paths {
        assert!(store.has(p), "{p} was not copied");
    }
}
