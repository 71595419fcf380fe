//! Real Nix with attenuated tokens: a private cache substitutes through a
//! netrc holding a pull-only token narrowed offline, and `nix copy --to`
//! with that same token is refused.

mod common;

use std::time::Duration;

use common::{Body, ClosureSpec, InProcess, build_closure, http_request};
use ferry::auth::{self, Attenuation, Operation};

#[test]
fn attenuated_pull_only_token_substitutes_but_cannot_push() {
    let s = InProcess::start();
    let auth_header = format!("Authorization: Bearer {}", s.admin_token);
    let r = http_request(
        "POST",
        &format!("{}/_api/v1/caches", s.url),
        &[&auth_header],
        Body::Bytes(br#"{"name": "private", "public": false}"#.to_vec()),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let public_key = r.json()["public_key"].as_str().unwrap().to_owned();

    // Push with a push+pull token, through Nix's own door.
    let closure = build_closure(&ClosureSpec::new("tokens").random("blob", 2_000_000));
    let dir = tempfile::tempdir().unwrap();
    let host = "127.0.0.1";
    let pusher = s.mint(
        &[(Operation::Push, "private"), (Operation::Pull, "private")],
        Duration::from_secs(3600),
    );
    let netrc = common::write_netrc(dir.path(), host, &pusher);
    let url = format!("{}/private", s.url);
    let paths: Vec<&str> = closure.paths.iter().map(|p| p.as_str()).collect();
    common::nix_copy_to(&format!("{url}?compression=zstd"), &paths, Some(&netrc))
        .expect("push with a push token");

    // Narrow it offline: pull only, this cache only, one hour.
    let pull_only = auth::attenuate(
        &pusher,
        &Attenuation {
            caches: vec!["private".into()],
            operations: Some(vec![Operation::Pull]),
            expires_at: Some(std::time::SystemTime::now() + Duration::from_secs(3600)),
        },
    )
    .unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let netrc2 = common::write_netrc(dir2.path(), host, &pull_only);
    let fresh = common::nix_copy_from(&url, &public_key, Some(&netrc2), &closure.top);
    for p in &closure.paths {
        common::compare_trees(std::path::Path::new(p), &fresh.real_path(p));
    }

    // The same token cannot push: a new path must not arrive.
    let other = build_closure(&ClosureSpec::new("tokens-refused").random("blob", 100_000));
    let refused = common::nix_copy_to(
        &format!("{url}?compression=zstd"),
        &[&other.top],
        Some(&netrc2),
    );
    assert!(
        refused.is_err(),
        "nix copy --to with a pull-only token must fail"
    );
    let hash = other
        .top
        .trim_start_matches("/nix/store/")
        .get(..32)
        .unwrap()
        .to_owned();
    let r = http_request(
        "GET",
        &format!("{url}/{hash}.narinfo"),
        &[&auth_header],
        Body::None,
    );
    assert_eq!(r.status, 404, "{}", r.text());
    // And without any token Nix cannot read the private cache.
    assert!(common::try_nix_copy_from(&url, &public_key, None, &closure.top).is_err());
}
