//! Private caches refuse Nix without a token; public caches need none.

use super::support::{copy_back_and_compare, create_cache, netrc};
use crate::common::{self, ClosureSpec, InProcess};
use ferry::auth::Operation;
use std::time::Duration;

#[test]
fn private_cache_refuses_nix_without_token() {
    let server = InProcess::start();
    let private_key = create_cache(&server.url, &server.admin_token, "private", false);
    let public_key = create_cache(&server.url, &server.admin_token, "public", true);
    let push = server.mint(
        &[(Operation::Pull, "p*"), (Operation::Push, "p*")],
        Duration::from_secs(3600),
    );
    let built = common::build_closure(&ClosureSpec::new("access").compressible("text", 100_000));
    let (_d, push_netrc) = netrc(&push);
    for cache in ["private", "public"] {
        let url = format!("{}/{cache}?compression=zstd", server.url);
        if let Err(e) = common::nix_copy_to(&url, &[built.top.as_str()], Some(&push_netrc)) {
            panic!("nix copy --to {url}: {e:?}");
        }
    }

    // Private, no netrc: Nix fails and copies nothing.
    let private_url = format!("{}/private", server.url);
    match common::try_nix_copy_from(&private_url, &private_key, None, &built.top) {
        Ok(store) => panic!(
            "Nix copied from a private cache without a token (top present: {})",
            store.has(&built.top)
        ),
        Err(e) => assert!(!e.stderr.is_empty(), "{e:?}"),
    }
    // Without a token the narinfo is 401, not served.
    let hash = &built.top.rsplit('/').next().unwrap()[..32];
    let r = common::http_request(
        "GET",
        &format!("{private_url}/{hash}.narinfo"),
        &[],
        common::Body::None,
    );
    assert_eq!(r.status, 401, "{}", r.text());
    // The same copy with a pull token works: it was the token.
    let pull = server.mint(&[(Operation::Pull, "private")], Duration::from_secs(3600));
    let (_d2, pull_netrc) = netrc(&pull);
    copy_back_and_compare(
        &private_url,
        &private_key,
        Some(&pull_netrc),
        &built.top,
        &built.paths,
    );

    // Public: no netrc needed.
    copy_back_and_compare(
        &format!("{}/public", server.url),
        &public_key,
        None,
        &built.top,
        &built.paths,
    );
}
