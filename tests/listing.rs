//! In-process HTTP tests of the read-side extras: `GET /{cache}/{hash}.ls`
//! (NAR listings built while verifying) and build logs
//! (`PUT`/`GET /{cache}/log/{drv}`).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Body, HttpResponse, InProcess, hash_part, http_request, nix_cmd, run_ok, store_path};
use ferry::auth::Operation;
use ferry::nar::{Sha256Hash, Tree, write_nar};
use serde_json::{Value, json};

const TEN_MIN: Duration = Duration::from_secs(600);

fn call(
    s: &InProcess,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[&str],
    body: Body,
) -> HttpResponse {
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut h: Vec<&str> = headers.to_vec();
    if let Some(a) = &auth {
        h.push(a);
    }
    http_request(method, &format!("{}{path}", s.url), &h, body)
}

fn get(s: &InProcess, path: &str, token: Option<&str>) -> HttpResponse {
    call(s, "GET", path, token, &[], Body::None)
}

fn post_json(s: &InProcess, path: &str, token: &str, v: &Value) -> HttpResponse {
    call(
        s,
        "POST",
        path,
        Some(token),
        &["Content-Type: application/json"],
        Body::Bytes(v.to_string().into_bytes()),
    )
}

fn create_cache(s: &InProcess, name: &str, public: bool) {
    let r = post_json(
        s,
        "/_api/v1/caches",
        &s.admin_token,
        &json!({"name": name, "public": public}),
    );
    assert_eq!(r.status, 201, "create cache {name}: {}", r.text());
}

fn sample_tree() -> Tree {
    let mut bin = BTreeMap::new();
    bin.insert(
        "hello".to_owned(),
        Tree::Regular {
            executable: true,
            contents: b"#!/bin/sh\necho hello\n".to_vec(),
        },
    );
    let mut root = BTreeMap::new();
    root.insert("bin".to_owned(), Tree::Directory(bin));
    root.insert(
        "data".to_owned(),
        Tree::Regular {
            executable: false,
            contents: (0..5000u32).map(|i| (i % 251) as u8).collect(),
        },
    );
    root.insert(
        "link".to_owned(),
        Tree::Symlink {
            target: "bin/hello".into(),
        },
    );
    Tree::Directory(root)
}

/// Uploads `nar` as the NAR of `path` through the parts API (two parts).
fn push(s: &InProcess, cache: &str, path: &str, nar: &[u8], compression: &str) {
    let body = json!({
        "store_path": path,
        "nar_hash": Sha256Hash::digest(nar).to_string(),
        "nar_size": nar.len(),
        "references": [],
        "compression": compression,
    });
    let r = post_json(
        s,
        &format!("/_api/v1/caches/{cache}/uploads"),
        &s.admin_token,
        &body,
    );
    assert!(r.status == 201 || r.status == 200, "start: {}", r.text());
    if r.json()["state"] == "committed" {
        return;
    }
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let data = if compression == "zstd" {
        zstd::encode_all(nar, 3).unwrap()
    } else {
        nar.to_vec()
    };
    let pieces: Vec<&[u8]> = data.chunks(data.len().div_ceil(2)).collect();
    for (i, p) in pieces.iter().enumerate() {
        let r = call(
            s,
            "PUT",
            &format!("/_api/v1/uploads/{id}/parts/{}", i + 1),
            Some(&s.admin_token),
            &[],
            Body::Bytes(p.to_vec()),
        );
        assert_eq!(r.status, 200, "part: {}", r.text());
    }
    let r = post_json(
        s,
        &format!("/_api/v1/uploads/{id}/complete"),
        &s.admin_token,
        &json!({"parts": pieces.len()}),
    );
    assert_eq!(r.status, 200, "complete: {}", r.text());
    assert_eq!(r.json()["state"], "committed");
}

fn slice<'a>(nar: &'a [u8], node: &Value) -> &'a [u8] {
    let off = node["narOffset"].as_u64().unwrap() as usize;
    let size = node["size"].as_u64().unwrap() as usize;
    &nar[off..off + size]
}

fn check_listing(nar: &[u8], v: &Value) {
    assert_eq!(v["version"], 1, "{v}");
    let e = &v["root"]["entries"];
    assert_eq!(v["root"]["type"], "directory");
    let hello = &e["bin"]["entries"]["hello"];
    assert_eq!(hello["executable"], true);
    assert_eq!(slice(nar, hello), b"#!/bin/sh\necho hello\n");
    assert_eq!(e["data"]["size"], 5000);
    assert!(e["data"].get("executable").is_none());
    assert_eq!(slice(nar, &e["data"]).len(), 5000);
    assert_eq!(e["link"], json!({"type": "symlink", "target": "bin/hello"}));
}

#[test]
fn listing_served_for_zstd_and_plain_uploads_and_dedup_links() {
    let s = InProcess::start();
    create_cache(&s, "pub", true);
    create_cache(&s, "other", false);
    let nar = write_nar(&sample_tree());
    for (name, compression) in [("zpath", "zstd"), ("plainpath", "none")] {
        let path = store_path(name);
        // Different paths, same NAR: the second one dedups at create or
        // publish; both must answer.
        push(&s, "pub", &path, &nar, compression);
        let r = get(&s, &format!("/pub/{}.ls", hash_part(&path)), None);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.header("cache-control").unwrap().starts_with("public"));
        check_listing(&nar, &r.json());
    }
    // Linked by dedup into another cache: the listing is reused.
    let linked = store_path("linked");
    push(&s, "other", &linked, &nar, "zstd");
    let r = get(
        &s,
        &format!("/other/{}.ls", hash_part(&linked)),
        Some(&s.admin_token),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("private, no-store"));
    check_listing(&nar, &r.json());
}

#[test]
fn listing_access_and_absence() {
    let s = InProcess::start();
    create_cache(&s, "priv", false);
    let nar = write_nar(&sample_tree());
    let path = store_path("p");
    push(&s, "priv", &path, &nar, "zstd");
    let url = format!("/priv/{}.ls", hash_part(&path));
    assert_eq!(get(&s, &url, None).status, 401);
    let pull = s.mint(&[(Operation::Pull, "priv")], TEN_MIN);
    let r = get(&s, &url, Some(&pull));
    assert_eq!(r.status, 200, "{}", r.text());
    check_listing(&nar, &r.json());
    // A path the cache does not hold.
    let r = get(
        &s,
        &format!("/priv/{}.ls", hash_part(&store_path("absent"))),
        Some(&pull),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"], "not_found");
    // A malformed hash part.
    let r = get(&s, "/priv/not-a-hash.ls", Some(&pull));
    assert_eq!(r.status, 400, "{}", r.text());
}

/// The listing equals what Nix 2.8 itself computes for the NAR
/// (`nix nar ls --json --recursive`, which uses the same listing code as
/// `.ls` files).
#[test]
fn listing_matches_nix() {
    let s = InProcess::start();
    create_cache(&s, "pub", true);
    let nar = write_nar(&sample_tree());
    let path = store_path("vsnix");
    push(&s, "pub", &path, &nar, "none");
    let ours = get(&s, &format!("/pub/{}.ls", hash_part(&path)), None).json();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.nar");
    std::fs::write(&file, &nar).unwrap();
    let out = run_ok(
        nix_cmd("nix")
            .args(["nar", "ls", "--json", "--recursive"])
            .arg(&file)
            .arg("/"),
    );
    let theirs: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(ours["root"], theirs, "ours: {ours}\nnix: {theirs}");
}

const DRV: &str = "0c7wbbwkfq8bmq0frqvc7kbjpxv4zyaw-hello-2.12.drv";

#[test]
fn build_log_round_trip() {
    let s = InProcess::start();
    create_cache(&s, "pub", true);
    let log = "building '/nix/store/x.drv'...\nünïcode line\n".repeat(1000);
    let url = format!("/pub/log/{DRV}");
    assert_eq!(get(&s, &url, None).status, 404);
    let push = s.mint(&[(Operation::Push, "pub")], TEN_MIN);
    let r = call(
        &s,
        "PUT",
        &url,
        Some(&push),
        &["Content-Type: text/plain; charset=utf-8"],
        Body::Bytes(log.clone().into_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(&s, &url, None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.text(), log);
    // Replaced by a second PUT; a zstd Content-Encoding is undone.
    let r = call(
        &s,
        "PUT",
        &url,
        Some(&push),
        &["Content-Encoding: zstd"],
        Body::Bytes(zstd::encode_all(&b"second\n"[..], 3).unwrap()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&s, &url, None).text(), "second\n");
    // Pull rights do not allow writing.
    let pull = s.mint(&[(Operation::Pull, "pub")], TEN_MIN);
    let r = call(
        &s,
        "PUT",
        &url,
        Some(&pull),
        &[],
        Body::Bytes(b"x".to_vec()),
    );
    assert_eq!(r.status, 403, "{}", r.text());
}

#[test]
fn build_log_private_cache_needs_token() {
    let s = InProcess::start();
    create_cache(&s, "priv", false);
    let url = format!("/priv/log/{DRV}");
    let r = call(&s, "PUT", &url, None, &[], Body::Bytes(b"log".to_vec()));
    assert_eq!(r.status, 401, "{}", r.text());
    let r = call(
        &s,
        "PUT",
        &url,
        Some(&s.admin_token),
        &[],
        Body::Bytes(b"log".to_vec()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&s, &url, None).status, 401);
    let r = get(&s, &url, Some(&s.admin_token));
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "log");
    assert_eq!(r.header("cache-control"), Some("private, no-store"));
}

#[test]
fn build_log_bad_names_and_limits() {
    let s = InProcess::start();
    create_cache(&s, "pub", true);
    let t = Some(s.admin_token.as_str());
    let bad = [
        "0c7wbbwkfq8bmq0frqvc7kbjpxv4zyaw-hello-2.12", // not a .drv
        "short-hello.drv",                             // bad hash part
        "0c7wbbwkfq8bmq0frqvc7kbjpxv4zyaw-he%20llo.drv", // space in name
    ];
    for name in bad {
        let r = call(
            &s,
            "PUT",
            &format!("/pub/log/{name}"),
            t,
            &[],
            Body::Bytes(b"x".to_vec()),
        );
        assert_eq!(r.status, 400, "{name}: {}", r.text());
        let r = get(&s, &format!("/pub/log/{name}"), t);
        assert_eq!(r.status, 400, "{name}: {}", r.text());
    }
    let r = call(
        &s,
        "PUT",
        &format!("/pub/log/{DRV}"),
        t,
        &["Content-Encoding: xz"],
        Body::Bytes(b"x".to_vec()),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    // Over the limit (a zstd bomb: tiny on the wire, 65 MiB decoded).
    let big = zstd::encode_all(&vec![b'a'; 65 << 20][..], 3).unwrap();
    let r = call(
        &s,
        "PUT",
        &format!("/pub/log/{DRV}"),
        t,
        &["Content-Encoding: zstd"],
        Body::Bytes(big),
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["error"], "log_too_large");
    // A gzip bomb of 1 GiB decoded: refused one byte past the limit.
    let gz = {
        use std::io::Write as _;
        let mut e = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
        let block = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            e.write_all(&block).unwrap();
        }
        e.finish().unwrap()
    };
    assert!(gz.len() < 8 << 20, "{}", gz.len());
    let r = call(
        &s,
        "PUT",
        &format!("/pub/log/{DRV}"),
        t,
        &["Content-Encoding: gzip"],
        Body::Bytes(gz),
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(get(&s, &format!("/pub/log/{DRV}"), t).status, 404);
    // Not what its Content-Encoding says: 400.
    let r = call(
        &s,
        "PUT",
        &format!("/pub/log/{DRV}"),
        t,
        &["Content-Encoding: gzip"],
        Body::Bytes(b"plain text, not gzip".to_vec()),
    );
    assert_eq!(r.status, 400, "{}", r.text());
}
