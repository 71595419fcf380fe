//! Nix's own `nix copy --to` with a netrc token.

use super::support::{copy_back_and_compare, create_cache, netrc};
use crate::common::{self, ClosureSpec, InProcess};
use ferry::auth::Operation;
use std::time::Duration;

#[test]
fn nix_copy_to_with_netrc() {
    let server = InProcess::start();
    let key = create_cache(&server.url, &server.admin_token, "cache", false);
    let push = server.mint(
        &[(Operation::Pull, "cache"), (Operation::Push, "cache")],
        Duration::from_secs(3600),
    );
    let built = common::build_closure(
        &ClosureSpec::new("copy-to")
            .compressible("text", 2_000_000)
            .random("rnd", 500_000),
    );
    assert_eq!(built.paths.len(), 3);

    let (_d, push_netrc) = netrc(&push);
    let url = format!("{}/cache?compression=zstd", server.url);
    if let Err(e) = common::nix_copy_to(&url, &[built.top.as_str()], Some(&push_netrc)) {
        panic!("nix copy --to {url}: {e:?}");
    }
    // Every path is now there and signed by the cache key.
    assert_served_as_zstd(&format!("{}/cache", server.url), &push, &key, &built.paths);

    let pull = server.mint(&[(Operation::Pull, "cache")], Duration::from_secs(3600));
    let (_d2, pull_netrc) = netrc(&pull);
    copy_back_and_compare(
        &format!("{}/cache", server.url),
        &key,
        Some(&pull_netrc),
        &built.top,
        &built.paths,
    );
}

#[test]
fn a_bare_nix_copy_to_with_nix_defaults_works() {
    // No `?compression=`: Nix sends xz, its default.
    let server = InProcess::start();
    let key = create_cache(&server.url, &server.admin_token, "bare", false);
    let push = server.mint(
        &[(Operation::Pull, "bare"), (Operation::Push, "bare")],
        Duration::from_secs(3600),
    );
    let built = common::build_closure(
        &ClosureSpec::new("copy-bare")
            .salt(&common::unique_salt())
            .compressible("text", 300_000),
    );
    let (_d, push_netrc) = netrc(&push);
    let url = format!("{}/bare", server.url);
    if let Err(e) = common::nix_copy_to(&url, &[built.top.as_str()], Some(&push_netrc)) {
        panic!("nix copy --to {url}: {e:?}");
    }
    assert_served_as_zstd(&format!("{}/bare", server.url), &push, &key, &built.paths);
    let (_d2, pull_netrc) = netrc(&push);
    copy_back_and_compare(
        &format!("{}/bare", server.url),
        &key,
        Some(&pull_netrc),
        &built.top,
        &built.paths,
    );
}

/// Every path of `paths` is served by the cache at `url` as zstd, signed
/// with the cache's `key`.
fn assert_served_as_zstd(url: &str, token: &str, key: &str, paths: &[String]) {
    let key_name = key.split(':').next().unwrap();
    for p in paths {
        let hash = &p.rsplit('/').next().unwrap()[..32];
        let r = common::http_request(
            "GET",
            &format!("{url}/{hash}.narinfo"),
            &[&format!("Authorization: Bearer {token}")],
            common::Body::None,
        );
        assert_eq!(r.status, 200, "narinfo of {p}: {}", r.text());
        let text = r.text();
        assert!(text.contains(&format!("StorePath: {p}\n")), "{text}");
        assert!(text.contains("Compression: zstd\n"), "{text}");
        assert!(text.contains(&format!("Sig: {key_name}:")), "{text}");
    }
}
