//! The parts API against Nix: a wrong NarHash is refused and nothing is
//! published; an upload survives SIGKILL of `ferry serve`.

use super::support::{
    call, call_json, copy_back_and_compare, create_cache, create_upload, expect, nar_bytes, netrc,
    put_part, zstd_cli,
};
use crate::common::{self, Body, ClosureSpec, InProcess, ServerProcess};
use ferry::auth::Operation;
use serde_json::json;
use std::time::Duration;

const MIB: usize = 1024 * 1024;

fn narinfo_status(base: &str, cache: &str, token: &str, path: &str) -> u16 {
    let hash = &path.rsplit('/').next().unwrap()[..32];
    call(
        "GET",
        &format!("{base}/{cache}/{hash}.narinfo"),
        Some(token),
        &[],
        Body::None,
    )
    .status
}

#[test]
fn wrong_nar_hash_is_refused_then_correct_upload_succeeds() {
    let server = InProcess::start();
    let base = &server.url;
    let key = create_cache(base, &server.admin_token, "cache", false);
    let token = server.mint(
        &[(Operation::Pull, "cache"), (Operation::Push, "cache")],
        Duration::from_secs(3600),
    );
    // Two leaves: `text` is the path we upload; `other` lends a real but
    // wrong NarHash.
    let built = common::build_closure(
        &ClosureSpec::new("wrong-hash")
            .compressible("text", 3_000_000)
            .random("other", 10_000),
    );
    let (path, other) = (&built.blobs[0], &built.blobs[1]);
    let info = common::path_info(&[path.as_str()], false).remove(0);
    let other_info = common::path_info(&[other.as_str()], false).remove(0);
    assert_ne!(info.nar_hash, other_info.nar_hash);
    let tmp = tempfile::tempdir().unwrap();
    let compressed = zstd_cli(&nar_bytes(path, tmp.path()), tmp.path());
    let half = compressed.len() / 2;
    let parts = [&compressed[..half], &compressed[half..]];

    // Declared with the wrong hash (SRI form, as `nix path-info` prints it).
    let r = create_upload(base, "cache", &token, &info, &other_info.nar_hash, "zstd");
    let v = expect(&r, 201, "create upload");
    let id = v["id"].as_str().expect("id").to_string();
    for (i, p) in parts.iter().enumerate() {
        put_part(base, &token, &id, i + 1, p);
    }
    let r = call_json(
        "POST",
        &format!("{base}/_api/v1/uploads/{id}/complete"),
        &token,
        &json!({"parts": 2}),
    );
    let v = expect(&r, 422, "complete with a wrong NarHash");
    assert_eq!(v["error"], "nar_hash_mismatch", "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert_eq!(v["expected"], other_info.nar_hash_nix32(), "{v}");
    assert_eq!(v["actual"], info.nar_hash_nix32(), "{v}");
    let r = call(
        "GET",
        &format!("{base}/_api/v1/uploads/{id}"),
        Some(&token),
        &[],
        Body::None,
    );
    let v = expect(&r, 200, "upload state");
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(narinfo_status(base, "cache", &token, path), 404);
    let r = call_json(
        "POST",
        &format!("{base}/_api/v1/caches/cache/missing"),
        &token,
        &json!({"store_paths": [path]}),
    );
    assert_eq!(expect(&r, 200, "missing")["missing"], json!([path]));
    let err =
        common::try_nix_copy_from(&format!("{base}/cache"), &key, Some(&netrc(&token).1), path);
    assert!(err.is_err(), "Nix copied a path that was never published");

    // The same path with the right hash (nix32 form this time).
    let r = create_upload(base, "cache", &token, &info, &info.nar_hash_nix32(), "zstd");
    let v = expect(&r, 201, "create the correct upload");
    let id2 = v["id"].as_str().expect("id").to_string();
    assert_ne!(id, id2);
    for (i, p) in parts.iter().enumerate() {
        put_part(base, &token, &id2, i + 1, p);
    }
    let r = call_json(
        "POST",
        &format!("{base}/_api/v1/uploads/{id2}/complete"),
        &token,
        &json!({"parts": 2}),
    );
    let v = expect(&r, 200, "complete with the right NarHash");
    assert_eq!(v["state"], "committed", "{v}");
    assert!(v["narinfo_url"].as_str().is_some(), "{v}");
    assert_eq!(narinfo_status(base, "cache", &token, path), 200);

    let (_d, n) = netrc(&token);
    copy_back_and_compare(
        &format!("{base}/cache"),
        &key,
        Some(&n),
        path,
        std::slice::from_ref(path),
    );
}

#[test]
fn resume_after_sigkill() {
    let data = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let first = ServerProcess::start(data.path(), port);
    let admin = first
        .admin_token
        .clone()
        .expect("admin token printed at first start");
    let base = first.url.clone();
    let key = create_cache(&base, &admin, "cache", false);

    let built = common::build_closure(&ClosureSpec::new("resume").random("blob", 20 * MIB as u64));
    let path = &built.blobs[0];
    let info = common::path_info(&[path.as_str()], false).remove(0);
    let tmp = tempfile::tempdir().unwrap();
    let nar = nar_bytes(path, tmp.path());
    assert_eq!(nar.len() as u64, info.nar_size);
    let parts: Vec<&[u8]> = nar.chunks(4 * MIB).collect();
    assert_eq!(parts.len(), 6, "20 MiB + NAR framing in 4 MiB parts");

    let r = create_upload(&base, "cache", &admin, &info, &info.nar_hash, "none");
    let v = expect(&r, 201, "create upload");
    let id = v["id"].as_str().expect("id").to_string();
    // Acknowledged out of order: 1, 2 and 4.
    let sent = [1usize, 2, 4];
    for n in sent {
        put_part(&base, &admin, &id, n, parts[n - 1]);
    }
    first.kill9();

    let second = ServerProcess::start(data.path(), port);
    assert!(
        second.admin_token.is_none(),
        "a restart must not mint a new admin token"
    );
    let r = call(
        "GET",
        &format!("{base}/_api/v1/uploads/{id}"),
        Some(&admin),
        &[],
        Body::None,
    );
    let v = expect(&r, 200, "upload state after SIGKILL");
    assert_eq!(v["state"], "open", "{v}");
    let listed = v["parts"].as_array().expect("parts");
    let want: Vec<serde_json::Value> = sent
        .iter()
        .map(|&n| {
            json!({"n": n, "size": parts[n - 1].len(), "blake3": blake3::hash(parts[n - 1]).to_hex().as_str()})
        })
        .collect();
    let mut got = listed.clone();
    got.sort_by_key(|p| p["n"].as_u64());
    assert_eq!(got, want, "parts after restart: {v}");
    assert_eq!(v["received_bytes"], (3 * 4 * MIB) as u64, "{v}");
    assert_eq!(narinfo_status(&base, "cache", &admin, path), 404);

    // Completing early names what is missing, and keeps the upload open.
    let r = call_json(
        "POST",
        &format!("{base}/_api/v1/uploads/{id}/complete"),
        &admin,
        &json!({"parts": 6}),
    );
    let v = expect(&r, 422, "complete with missing parts");
    assert_eq!(v["error"], "missing_parts", "{v}");
    for n in [3usize, 5, 6] {
        put_part(&base, &admin, &id, n, parts[n - 1]);
    }
    let r = call_json(
        "POST",
        &format!("{base}/_api/v1/uploads/{id}/complete"),
        &admin,
        &json!({"parts": 6}),
    );
    let v = expect(&r, 200, "complete after restart");
    assert_eq!(v["state"], "committed", "{v}");

    let (_d, n) = netrc(&admin);
    copy_back_and_compare(
        &format!("{base}/cache"),
        &key,
        Some(&n),
        path,
        std::slice::from_ref(path),
    );
    drop(second);
}
