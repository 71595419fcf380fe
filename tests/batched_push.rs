//! `ferry push` of a closure of many small paths through nginx, the tunnel
//! stand-in: small paths travel many to a request (the batch door), so a
//! closure costs about one request per batch rather than three per path;
//! a large path in the same closure still goes through the parts API, and
//! the paths that refer to it are published after it. Nix copies the whole
//! closure back, checking every NarHash and the cache's signature.
//! `--no-batching` pushes one upload per path, as before.

mod common;

use std::path::Path;

use common::client::{FerryClient, public_key_of};
use common::*;

const SMALL: usize = 120;

#[test]
fn a_closure_of_small_paths_goes_in_a_few_requests_and_nix_reads_it_back() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&data.path().join("server"), free_port());
    let admin = server.admin_token.clone().unwrap();
    let nginx = start_nginx(format!("127.0.0.1:{}", server.port).parse().unwrap());
    let client = FerryClient::new();
    client.ok(&["login", "home", &nginx.url(), &admin]);
    let pubkey = public_key_of(&client.ok(&["cache", "create", "home:main"]));
    client.ok(&["cache", "create", "home:plain"]);

    // One large leaf (3 MiB, parts API) among many small ones; the top
    // path (small) refers to all of them.
    let mut spec = ClosureSpec::new("batched").random("large-leaf", 3 << 20);
    for i in 0..SMALL {
        spec = spec.random(&format!("small-{i}"), 200 + 37 * i as u64);
    }
    let built = build_closure(&spec);
    let paths = built.paths.len();

    // The client reads small paths in-process: the NAR it makes is the
    // one Nix recorded (files, an executable, a symlink, nested and empty
    // directories in the top path), so Nix is not run once per path.
    let top: Vec<&str> = vec![built.top.as_str(), built.blobs[1].as_str()];
    for info in path_info(&top, false) {
        assert!(
            ::ferry::client::dump::checked_nar_of(
                Path::new(&info.path),
                &info.nar_hash,
                info.nar_size
            )
            .is_some(),
            "the in-process NAR of {} differs from Nix's",
            info.path
        );
    }

    let before = nginx.log_entries().len();
    let out = client.ok(&["push", "home:main", &built.top]);
    let log = nginx.log_entries()[before..].to_vec();
    let batches = log.iter().filter(|e| e.uri.ends_with("/batch")).count();
    eprintln!(
        "{paths} paths pushed in {} requests ({batches} batches): {out}",
        log.len()
    );
    assert!(log.iter().all(|e| e.status < 300), "{log:?}");
    assert!(batches >= 1, "small paths go in batches: {log:?}");
    // The cache's settings, missing, the batches, and create + manifest +
    // part + complete for the large leaf.
    assert!(
        log.len() <= 10,
        "{} requests for {paths} paths: {log:?}",
        log.len()
    );

    // Nix copies the closure back, checking hashes and signatures.
    let netrc_dir = tempfile::tempdir().unwrap();
    let netrc = write_netrc(netrc_dir.path(), "127.0.0.1", &admin);
    let store = nix_copy_from(
        &format!("{}/main", nginx.url()),
        &pubkey,
        Some(&netrc),
        &built.top,
    );
    for p in &built.paths {
        compare_trees(Path::new(p), &store.real_path(p));
    }

    // Pushed again: the cache's settings and one `missing`, nothing else.
    let before = nginx.log_entries().len();
    client.ok(&["push", "home:main", &built.top]);
    let log = nginx.log_entries()[before..].to_vec();
    let uris: Vec<&str> = log.iter().map(|e| e.uri.as_str()).collect();
    assert_eq!(
        uris,
        ["/_api/v1/caches/main", "/_api/v1/caches/main/missing"]
    );

    // One upload per path on request: three requests per small path (a
    // closure of new paths: the NARs above would be linked in one request
    // each).
    let other = build_closure(&spec.clone().salt(&unique_salt()));
    let before = nginx.log_entries().len();
    client.ok(&["push", "home:plain", &other.top, "--no-batching"]);
    let log = nginx.log_entries()[before..].to_vec();
    assert!(log.iter().all(|e| !e.uri.ends_with("/batch")));
    assert!(
        log.len() >= 3 * SMALL,
        "--no-batching: {} requests",
        log.len()
    );
}
