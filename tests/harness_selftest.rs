//! Self-test of the end-to-end harness in `tests/common/`, independent of
//! ferry: builds closures with Nix, publishes one as a signed `file://`
//! binary cache served by nginx, copies it back into a fresh store with
//! signature checking, and checks that the nginx proxy refuses bodies over
//! 100 MB the way a Cloudflare Tunnel does.

mod common;

use common::*;
use std::time::Instant;

const MB: u64 = 1_000_000;

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn closure_builds_with_right_references() {
    let t = Instant::now();
    let spec = ClosureSpec::new("selftest-refs")
        .random("rand", 20 * MB)
        .compressible("text", 5 * MB);
    let c = build_closure(&spec);
    assert_eq!(c.paths.len(), 3);
    assert_eq!(c.blobs.len(), 2);
    assert!(
        c.blobs[0].ends_with("-rand") && c.blobs[1].ends_with("-text"),
        "{c:?}"
    );

    let infos = path_info(&[&c.top], true);
    assert_eq!(
        sorted(infos.iter().map(|i| i.path.clone()).collect()),
        sorted(c.paths.clone())
    );
    let top = infos.iter().find(|i| i.path == c.top).unwrap();
    assert_eq!(top.references, sorted(c.blobs.clone()));
    assert!(
        top.deriver
            .as_deref()
            .unwrap()
            .ends_with("-selftest-refs.drv")
    );
    for b in &c.blobs {
        let i = infos.iter().find(|i| &i.path == b).unwrap();
        assert!(i.references.is_empty(), "{i:?}");
        assert!(
            i.nar_hash.starts_with("sha256-"),
            "Nix 2.8 prints SRI: {i:?}"
        );
        let n32 = i.nar_hash_nix32();
        assert_eq!(n32.len(), "sha256:".len() + 52, "{n32}");
    }
    let rand = infos.iter().find(|i| i.path == c.blobs[0]).unwrap();
    assert!(rand.nar_size > 20 * MB && rand.nar_size < 20 * MB + 1000);

    // the NAR dump matches narSize, and the same spec with the same salt is the same path
    let tmp = tempfile::tempdir().unwrap();
    let nar = tmp.path().join("rand.nar");
    dump_nar(&c.blobs[0], &nar);
    assert_eq!(std::fs::metadata(&nar).unwrap().len(), rand.nar_size);
    let again = build_closure(&spec);
    assert_eq!(again.top, c.top);
    let other = build_closure(&ClosureSpec::new("selftest-refs").random("rand", 1000));
    assert_ne!(other.top, c.top);
    eprintln!("closure_builds_with_right_references: {:?}", t.elapsed());
}

#[test]
fn signed_file_cache_served_by_nginx_copies_back() {
    let t = Instant::now();
    let c = build_closure(
        &ClosureSpec::new("selftest-copy")
            .random("rand", 20 * MB)
            .compressible("text", 5 * MB),
    );
    let key = generate_key("selftest-1");
    assert!(key.public.starts_with("selftest-1:"));
    nix_sign(&[&c.top], &key);
    for i in path_info(&[&c.top], true) {
        assert!(i.sigs.iter().any(|s| s.starts_with("selftest-1:")), "{i:?}");
    }

    let cache = tempfile::tempdir().unwrap();
    let url = format!("file://{}?compression=zstd", cache.path().display());
    nix_copy_to(&url, &[&c.top], None).unwrap();
    let ngx = start_nginx_static(cache.path());

    let r = http_request(
        "GET",
        &format!("{}/nix-cache-info", ngx.url()),
        &[],
        Body::None,
    );
    assert_eq!(r.status, 200);
    assert!(r.text().contains("StoreDir: /nix/store"));

    let store = nix_copy_from(&ngx.url(), &key.public, None, &c.top);
    for p in &c.paths {
        assert!(store.has(p), "{p} missing from fresh store");
        compare_trees(std::path::Path::new(p), &store.real_path(p));
    }
    // the copied paths are valid in the fresh store with the same NAR hashes
    let fresh = path_info_in(Some(&store.url()), &[&c.top], true);
    let local = path_info(&[&c.top], true);
    for f in &fresh {
        let l = local.iter().find(|l| l.path == f.path).unwrap();
        assert_eq!(
            (f.nar_hash.clone(), f.nar_size),
            (l.nar_hash.clone(), l.nar_size)
        );
    }
    assert!(
        ngx.log_entries()
            .iter()
            .any(|e| e.uri.ends_with(".nar.zst") && e.status == 200)
    );

    // a key that did not sign: Nix refuses
    let wrong = generate_key("selftest-2");
    let err = try_nix_copy_from(&ngx.url(), &wrong.public, None, &c.top)
        .err()
        .expect("must fail with a wrong key");
    assert!(err.stderr.contains("lacks a valid signature"), "{err:?}");

    // netrc: a cache that wants Basic auth, with and without the netrc
    let ngx_auth = start_nginx_static_auth(cache.path(), "sekrit");
    assert!(try_nix_copy_from(&ngx_auth.url(), &key.public, None, &c.top).is_err());
    let tmp = tempfile::tempdir().unwrap();
    let netrc = write_netrc(tmp.path(), "127.0.0.1", "sekrit");
    let store2 = nix_copy_from(&ngx_auth.url(), &key.public, Some(&netrc), &c.top);
    compare_trees(std::path::Path::new(&c.top), &store2.real_path(&c.top));
    eprintln!(
        "signed_file_cache_served_by_nginx_copies_back: {:?}",
        t.elapsed()
    );
}

#[test]
fn nginx_proxy_refuses_bodies_over_100mb() {
    let t = Instant::now();
    let sink = start_sink_upstream();
    let ngx = start_nginx(sink.addr);
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big");
    let small = tmp.path().join("small");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(120 * MB)
        .unwrap();
    std::fs::File::create(&small)
        .unwrap()
        .set_len(50 * MB)
        .unwrap();

    let r = http_request(
        "POST",
        &format!("{}/upload", ngx.url()),
        &[],
        Body::File(big),
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(
        sink.requests(),
        0,
        "the refused body must not reach the origin"
    );

    let r = http_request(
        "PUT",
        &format!("{}/upload", ngx.url()),
        &["Content-Type: application/octet-stream"],
        Body::File(small),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["received"], 50 * MB);
    assert_eq!(sink.max_body(), 50 * MB);

    let max = nginx_max_request_length(&ngx);
    assert!(
        max > 50 * MB && max < 50 * MB + 2000,
        "max request length {max}"
    );
    let log = ngx.log_entries();
    assert!(
        log.iter()
            .any(|e| e.status == 413 && e.method == "POST" && e.request_length < 10_000),
        "{log:?}"
    );
    eprintln!("nginx_proxy_refuses_bodies_over_100mb: {:?}", t.elapsed());
}
