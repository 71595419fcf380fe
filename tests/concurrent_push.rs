//! Two `ferry push` processes on one machine, one client home, one cache,
//! at once, with overlapping closures (as `watch-store` beside a manual
//! push, or two CI jobs on one runner): both finish, every path is served
//! with its local NarHash, no resume state is left, and Nix substitutes
//! both closures with signatures required.

mod common;

use std::process::Stdio;

use common::client::{FerryClient, public_key_of};
use common::served::check_served_path;
use common::*;

#[test]
fn two_pushes_of_overlapping_closures_at_once_both_finish() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), free_port());
    let token = server.admin_token.clone().expect("admin token");
    let client = FerryClient::new();
    client.ok(&["login", "home", &server.url, &token]);
    let pubkey = public_key_of(&client.ok(&["cache", "create", "home:c"]));
    let salt = unique_salt();
    // The same `shared` derivation in both: one store path, two closures.
    let spec = |name: &str, own: &str| {
        ClosureSpec::new(name)
            .salt(&salt)
            .random("shared", 12_000_000)
            .random(own, 3_000_000)
    };
    let a = build_closure(&spec("concurrent-a", "only-a"));
    let b = build_closure(&spec("concurrent-b", "only-b"));
    assert_eq!(a.blobs[0], b.blobs[0], "the closures overlap");
    let args = |top: &str| -> Vec<String> {
        ["push", "home:c", "--part-size", "1MiB", "-j", "2", top]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let spawn = |top: &str| {
        let args = args(top);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        client
            .cmd(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (pa, pb) = (spawn(&a.top), spawn(&b.top));
    for (name, p) in [("a", pa), ("b", pb)] {
        let out = p.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "push {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        !client.push_state_left("home", "c"),
        "resume state left after both pushes"
    );
    let mut all: Vec<&str> = a.paths.iter().chain(&b.paths).map(String::as_str).collect();
    all.sort();
    all.dedup();
    for info in path_info(&all, false) {
        check_served_path(&server.url, "c", &token, &info).unwrap();
    }
    let netrc_dir = tempfile::tempdir().unwrap();
    let netrc = write_netrc(netrc_dir.path(), "127.0.0.1", &token);
    for top in [&a.top, &b.top] {
        nix_copy_from(&format!("{}/c", server.url), &pubkey, Some(&netrc), top);
    }
}
