//! `ferry push` in content-defined chunks (the default) through nginx, the
//! tunnel stand-in, with real Nix:
//! - a second version of a path (six small edits spread over it and an
//!   insertion that shifts every later offset) sends a small share of the
//!   bytes the first version sent, counted at the proxy;
//! - Nix copies both versions back from the cache, checking NarHash and
//!   the cache's signature;
//! - `--no-chunking` sends the NAR whole, as before chunking existed.

mod common;

use std::path::Path;

use common::client::{FerryClient, public_key_of};
use common::*;

/// Bytes nginx read for the requests logged from `from` on.
fn wire_bytes(nginx: &Nginx, from: usize) -> u64 {
    nginx.log_entries()[from..]
        .iter()
        .map(|e| e.request_length)
        .sum()
}

/// A copy of `bytes` with six 64-byte edits spread over it and a
/// 600-byte insertion near the start (shifting every later offset).
fn scattered_edits(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for k in 1..=6 {
        let at = out.len() / 7 * k;
        for b in &mut out[at..at + 64] {
            *b = b.wrapping_add(1);
        }
    }
    out.splice(10_000..10_000, std::iter::repeat_n(b'+', 600));
    out
}

#[test]
fn a_changed_path_sends_only_new_chunks_and_nix_reads_both_back() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&data.path().join("server"), free_port());
    let admin = server.admin_token.clone().unwrap();
    let nginx = start_nginx(format!("127.0.0.1:{}", server.port).parse().unwrap());
    let client = FerryClient::new();
    client.ok(&["login", "home", &nginx.url(), &admin]);
    let pubkey = public_key_of(&client.ok(&["cache", "create", "home:main"]));

    let salt = unique_salt();
    let src = tempfile::tempdir().unwrap();
    let v1 = noise(&format!("chunked-push-{salt}"), 24_000_000);
    let v2 = scattered_edits(&v1);
    std::fs::write(src.path().join("v1"), &v1).unwrap();
    std::fs::write(src.path().join("v2"), &v2).unwrap();
    let p1 = build_copy_of("chunked-v1", &src.path().join("v1"), &salt);
    let p2 = build_copy_of("chunked-v2", &src.path().join("v2"), &salt);

    let before = nginx.log_entries().len();
    client.ok(&["push", "home:main", &p1]);
    let first = wire_bytes(&nginx, before);
    let before = nginx.log_entries().len();
    client.ok(&["push", "home:main", &p2]);
    let second = wire_bytes(&nginx, before);
    eprintln!(
        "first push {first} bytes at the proxy, second (7 small edits) {second} ({:.1} %)",
        100.0 * second as f64 / first as f64
    );
    assert!(first > 24_000_000, "the first push sent the path: {first}");
    // About 190 chunks of 128 KiB on average; 7 edits touch at most 14.
    assert!(
        second * 100 < first * 16,
        "the second push sent {second} bytes, the first {first}"
    );

    // Nix reads both back, checking hashes and the signature.
    let netrc_dir = tempfile::tempdir().unwrap();
    let netrc = write_netrc(netrc_dir.path(), "127.0.0.1", &admin);
    for p in [&p1, &p2] {
        let store = nix_copy_from(&format!("{}/main", nginx.url()), &pubkey, Some(&netrc), p);
        compare_trees(Path::new(p), &store.real_path(p));
    }

    // Whole NARs on request: a third version goes in full.
    let mut v3 = v2.clone();
    v3.extend_from_slice(b"third");
    std::fs::write(src.path().join("v3"), &v3).unwrap();
    let p3 = build_copy_of("chunked-v3", &src.path().join("v3"), &salt);
    let before = nginx.log_entries().len();
    client.ok(&["push", "home:main", &p3, "--no-chunking"]);
    let whole = wire_bytes(&nginx, before);
    assert!(
        whole > 24_000_000,
        "--no-chunking sends the whole NAR: {whole}"
    );
    let store = nix_copy_from(&format!("{}/main", nginx.url()), &pubkey, Some(&netrc), &p3);
    compare_trees(Path::new(&p3), &store.real_path(&p3));
}
