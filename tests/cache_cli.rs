//! `ferry cache configure` turning a public cache private warns that a CDN
//! may still hold its NARs (they were served `immutable` for a year).

mod common;

use common::InProcess;
use common::client::FerryClient;

#[test]
fn making_a_public_cache_private_warns_about_the_cdn() {
    let s = InProcess::start();
    let client = FerryClient::new();
    client.ok(&["login", "home", &s.url, &s.admin_token]);
    client.ok(&["cache", "create", "home:p", "--public"]);
    let out = client
        .cmd(&["cache", "configure", "home:p", "--public", "false"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Purge the CDN"), "{stderr}");
    // Private to private: nothing to purge, no warning.
    let out = client
        .cmd(&["cache", "configure", "home:p", "--public", "false"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("Purge"));
}
