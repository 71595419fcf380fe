//! Substituter reads: `nix-cache-info`, narinfo and NAR files with Range,
//! HEAD, Cache-Control, and isolation between caches.

use std::time::Duration;

use ferry::auth::Operation;
use ferry::nar::NarInfo;

use super::common::{Body, InProcess};
use super::*;

/// A server with a private cache `priv` and a public cache `pub`, one NAR
/// pushed to each; returns the NAR and its narinfo in each.
fn served() -> (InProcess, Nar, NarInfo) {
    let s = InProcess::start();
    create_cache(&s, "priv", false);
    create_cache(&s, "pub", true);
    let nar = Nar::new("served", 50_000);
    push_ok(&s, "priv", &nar);
    // The same NAR is linked into the public cache.
    let r = start_upload_with(&s, "pub", &s.admin_token, &nar.create_body("zstd", &[]));
    assert_eq!(r.json()["state"], "committed", "{}", r.text());
    let info = narinfo_ok(&s, "priv", &nar.path);
    (s, nar, info)
}

#[test]
fn nix_cache_info_has_store_dir_mass_query_and_priority() {
    let s = InProcess::start();
    let body = json!({"name": "gnu", "priority": 12, "store_dir": "/gnu/store"});
    assert_eq!(
        post_json(&s, "/_api/v1/caches", Some(&s.admin_token), &body).status,
        201
    );
    create_cache(&s, "plain", false);
    let r = get(&s, "/gnu/nix-cache-info", Some(&s.admin_token));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.text(),
        "StoreDir: /gnu/store\nWantMassQuery: 1\nPriority: 12\n"
    );
    assert_eq!(r.header("cache-control"), Some("private, no-store"));
    let r = get(&s, "/plain/nix-cache-info", Some(&s.admin_token));
    assert_eq!(
        r.text(),
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 41\n"
    );
}

#[test]
fn nix_cache_info_of_missing_cache_is_404_for_admin() {
    let s = InProcess::start();
    expect_err(
        &s,
        &get(&s, "/ghost/nix-cache-info", Some(&s.admin_token)),
        404,
        "cache_not_found",
    );
    expect_err(
        &s,
        &get(&s, "/Bad/nix-cache-info", Some(&s.admin_token)),
        400,
        "invalid_cache_name",
    );
}

#[test]
fn missing_narinfo_is_404_without_long_max_age() {
    let (s, _, _) = served();
    for cache in ["priv", "pub"] {
        let r = narinfo(&s, cache, &store_path("absent"), Some(&s.admin_token));
        expect_err(&s, &r, 404, "not_found");
        let cc = r.header("cache-control").unwrap_or("");
        assert!(
            !cc.contains("max-age") || cc.contains("max-age=0"),
            "404 is cacheable: {cc}"
        );
        assert!(!cc.contains("immutable"), "{cc}");
    }
    // A malformed hash part is refused.
    let r = get(&s, "/priv/not-a-hash.narinfo", Some(&s.admin_token));
    assert_eq!(r.status, 400, "{}", r.text());
    assert_healthy(&s);
}

#[test]
fn nar_range_request_is_206_with_content_range() {
    let (s, _, info) = served();
    let url = format!("/priv/{}", info.url);
    let whole = get(&s, &url, Some(&s.admin_token)).body;
    let size = whole.len();
    assert_eq!(Some(size as u64), info.file_size);
    let r = call(
        &s,
        "GET",
        &url,
        Some(&s.admin_token),
        &["Range: bytes=100-199"],
        Body::None,
    );
    assert_eq!(r.status, 206, "{}", r.text());
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 100-199/{size}").as_str())
    );
    assert_eq!(r.header("content-length"), Some("100"));
    assert_eq!(r.body, whole[100..200]);
    let r = call(
        &s,
        "GET",
        &url,
        Some(&s.admin_token),
        &["Range: bytes=1000-"],
        Body::None,
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.body, whole[1000..]);
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
}

#[test]
fn nar_suffix_range_returns_the_last_bytes() {
    let (s, _, info) = served();
    let url = format!("/priv/{}", info.url);
    let whole = get(&s, &url, Some(&s.admin_token)).body;
    let size = whole.len();
    let r = call(
        &s,
        "GET",
        &url,
        Some(&s.admin_token),
        &["Range: bytes=-10"],
        Body::None,
    );
    assert_eq!(r.status, 206, "{}", r.text());
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes {}-{}/{size}", size - 10, size - 1).as_str())
    );
    assert_eq!(r.body, whole[size - 10..]);
}

#[test]
fn unsatisfiable_range_is_416_with_content_range_star() {
    let (s, _, info) = served();
    let url = format!("/priv/{}", info.url);
    let size = info.file_size.unwrap();
    for range in [
        format!("bytes={size}-"),
        "bytes=5-2".to_owned(),
        format!("bytes={}-{}", size + 10, size + 20),
    ] {
        let r = call(
            &s,
            "GET",
            &url,
            Some(&s.admin_token),
            &[&format!("Range: {range}")],
            Body::None,
        );
        expect_err(&s, &r, 416, "range_not_satisfiable");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes */{size}").as_str()),
            "{range}"
        );
    }
    assert_healthy(&s);
}

#[test]
fn head_on_narinfo_and_nar_gives_length_and_no_body() {
    let (s, nar, info) = served();
    let text = narinfo(&s, "priv", &nar.path, Some(&s.admin_token)).text();
    let plain = format!("/priv/{}", info.url.trim_end_matches(".zst"));
    for (path, len) in [
        (
            format!("/priv/{}.narinfo", hash_part(&nar.path)),
            text.len() as u64,
        ),
        (format!("/priv/{}", info.url), info.file_size.unwrap()),
        (plain, nar.bytes.len() as u64),
    ] {
        let (head, body) = raw_head(&s, &path, &s.admin_token);
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        assert_eq!(
            raw_header(&head, "content-length"),
            Some(len.to_string().as_str()),
            "{path}: {head}"
        );
        assert!(
            body.is_empty(),
            "{path}: HEAD sent {} body bytes",
            body.len()
        );
        // curl agrees on the length.
        let r = call(&s, "HEAD", &path, Some(&s.admin_token), &[], Body::None);
        assert_eq!(
            (r.status, r.header("content-length")),
            (200, Some(len.to_string().as_str()))
        );
    }
    let (head, _) = raw_head(
        &s,
        &format!("/priv/{}.narinfo", hash_part(&store_path("absent"))),
        &s.admin_token,
    );
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}

#[test]
fn nar_responses_carry_no_content_encoding() {
    let (s, _, info) = served();
    let zst = format!("/priv/{}", info.url);
    for (path, headers) in [
        (zst.clone(), vec![]),
        (zst.clone(), vec!["Accept-Encoding: gzip, zstd, br"]),
        (zst.clone(), vec!["Range: bytes=0-9"]),
        (
            zst.trim_end_matches(".zst").to_owned(),
            vec!["Accept-Encoding: gzip, zstd, br"],
        ),
    ] {
        let r = call(&s, "GET", &path, Some(&s.admin_token), &headers, Body::None);
        assert!(r.status == 200 || r.status == 206, "{}", r.text());
        assert_eq!(r.header("content-encoding"), None, "{path} {headers:?}");
    }
}

#[test]
fn private_cache_reads_are_private_no_store() {
    let (s, nar, info) = served();
    let t = s.mint(&[(Operation::Pull, "priv")], Duration::from_secs(600));
    for path in [
        format!("/priv/{}.narinfo", hash_part(&nar.path)),
        format!("/priv/{}", info.url),
        format!("/priv/{}", info.url.trim_end_matches(".zst")),
        "/priv/nix-cache-info".to_owned(),
    ] {
        let r = get(&s, &path, Some(&t));
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(
            r.header("cache-control"),
            Some("private, no-store"),
            "{path}"
        );
    }
    // Without a token, even knowing the URL, nothing.
    let r = get(&s, &format!("/priv/{}", info.url), None);
    expect_err(&s, &r, 401, "unauthorized");
}

#[test]
fn public_cache_nar_is_immutable_and_narinfo_short_lived() {
    let (s, nar, _) = served();
    let info = narinfo_ok(&s, "pub", &nar.path);
    let r = get(&s, &format!("/pub/{}", info.url), None);
    assert_eq!(r.status, 200);
    let cc = r.header("cache-control").unwrap();
    assert!(
        cc.contains("public") && cc.contains("immutable") && cc.contains("max-age=31536000"),
        "{cc}"
    );
    let r = narinfo(&s, "pub", &nar.path, None);
    let cc = r.header("cache-control").unwrap();
    assert!(
        cc.contains("public") && cc.contains("max-age=") && !cc.contains("immutable"),
        "{cc}"
    );
    let age: u64 = cc
        .split("max-age=")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(age <= 3600, "narinfo max-age too long: {cc}");
}

#[test]
fn api_answers_carry_no_store() {
    let s = InProcess::start();
    create_cache(&s, "c", false);
    let nar = Nar::new("api", 100);
    let id = start_upload(&s, "c", &nar, "none");
    let answers = [
        get(&s, "/_api/v1/caches/c", Some(&s.admin_token)),
        get(&s, &format!("/_api/v1/uploads/{id}"), Some(&s.admin_token)),
        put_part_h(&s, &id, "1", &nar.bytes, &[]),
        get(&s, "/_api/v1/caches/c/uploads", Some(&s.admin_token)),
        post_json(
            &s,
            "/_api/v1/caches/c/missing",
            Some(&s.admin_token),
            &json!({"store_paths": []}),
        ),
        complete(&s, &id, 1),
        get(&s, "/healthz", None),
        get(&s, "/_api/v1/caches/c", None),
        get(&s, "/_api/v1/nothing", None),
    ];
    for r in answers {
        assert_eq!(
            r.header("cache-control"),
            Some("no-store"),
            "status {}: {}",
            r.status,
            r.text()
        );
    }
}

#[test]
fn nar_of_one_cache_is_not_readable_through_another() {
    let s = InProcess::start();
    create_cache(&s, "a", false);
    create_cache(&s, "b", false);
    create_cache(&s, "pub", true);
    let nar = Nar::new("only-in-a", 1000);
    push_ok(&s, "a", &nar);
    let info = narinfo_ok(&s, "a", &nar.path);
    let tb = s.mint(&[(Operation::Pull, "b")], Duration::from_secs(600));
    for url in [
        info.url.clone(),
        info.url.trim_end_matches(".zst").to_owned(),
    ] {
        expect_err(
            &s,
            &get(&s, &format!("/b/{url}"), Some(&tb)),
            404,
            "not_found",
        );
        expect_err(
            &s,
            &get(&s, &format!("/b/{url}"), Some(&s.admin_token)),
            404,
            "not_found",
        );
        expect_err(&s, &get(&s, &format!("/pub/{url}"), None), 404, "not_found");
    }
    expect_err(
        &s,
        &narinfo(&s, "b", &nar.path, Some(&tb)),
        404,
        "not_found",
    );
    // The token for b does not open a.
    expect_err(
        &s,
        &get(&s, &format!("/a/{}", info.url), Some(&tb)),
        401,
        "unauthorized",
    );
}

#[test]
fn unknown_nar_file_names_are_404() {
    let (s, _, _) = served();
    for f in [
        "nar/xyz.nar.zst",
        "nar/../../etc/passwd",
        "nar/abc.nar.xz",
        &format!("nar/{}.nar.zst", "0".repeat(52)),
    ] {
        let r = get(&s, &format!("/priv/{f}"), Some(&s.admin_token));
        assert_eq!(r.status, 404, "{f}: {}", r.text());
        assert_no_leak(&s, &r);
    }
    assert_healthy(&s);
}
