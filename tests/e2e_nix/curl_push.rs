//! A closure with a 150 MiB incompressible path pushed with curl only
//! (`examples/curl-push.sh`) through nginx limited to 100 MB bodies, then
//! read back by Nix through the same proxy.

use super::support::{addr_of, copy_back_and_compare, create_cache, netrc, public_key};
use crate::common::{self, ClosureSpec, InProcess};
use ferry::auth::Operation;
use std::time::{Duration, SystemTime};

const MIB: u64 = 1024 * 1024;

fn script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/curl-push.sh")
}

/// Runs the script for one path; returns its output.
fn curl_push(server: &str, cache: &str, token: &str, path: &str, compression: &str) -> String {
    for t in [
        "curl",
        "nix-store",
        "split",
        "zstd",
        "sha256sum",
        "python3",
        "sed",
        "stat",
    ] {
        common::require_tool(t);
    }
    let mut c = common::nix_cmd("bash");
    c.arg(script())
        .args([server, cache, token, path, "64M", compression]);
    let out = common::tools::run(&mut c).unwrap_or_else(|e| panic!("curl-push.sh failed: {e:?}"));
    let text = String::from_utf8(out.stdout).unwrap();
    // Shown with --nocapture: this is the transcript the README quotes.
    println!("$ examples/curl-push.sh {server} {cache} $TOKEN {path} 64M {compression}\n{text}");
    text
}

#[test]
fn push_closure_with_curl_through_nginx() {
    let server = InProcess::start();
    let nginx = common::start_nginx(addr_of(&server.url));
    let base = nginx.url();
    let cache = "cache";
    create_cache(&server.url, &server.admin_token, cache, false);
    let in_an_hour = SystemTime::now() + Duration::from_secs(3600);
    let push = common::mint_in(
        server.data_dir.path(),
        &[(Operation::Pull, cache), (Operation::Push, cache)],
        in_an_hour,
    );
    let pull = common::mint_in(
        server.data_dir.path(),
        &[(Operation::Pull, cache)],
        in_an_hour,
    );

    let built = common::build_closure(
        &ClosureSpec::new("curl-top")
            .random("big-random", 150 * MIB)
            .compressible("text", 80 * MIB),
    );
    let (big, text, top) = (&built.blobs[0], &built.blobs[1], &built.top);
    let infos = common::path_info(&[top.as_str()], true);
    assert_eq!(infos.len(), 3, "{infos:?}");
    let top_info = infos.iter().find(|i| &i.path == top).unwrap();
    assert!(top_info.references.contains(big) && top_info.references.contains(text));
    assert!(infos.iter().all(|i| i.deriver.is_some()), "{infos:?}");
    assert!(infos.iter().find(|i| &i.path == big).unwrap().nar_size >= 150 * MIB);

    // References before referrers; zstd for two paths, none for one.
    let mut transcript = String::new();
    transcript += &curl_push(&base, cache, &push, big, "zstd");
    transcript += &curl_push(&base, cache, &push, text, "none");
    transcript += &curl_push(&base, cache, &push, top, "zstd");
    assert_eq!(transcript.matches("== pushed ").count(), 3, "{transcript}");

    // The proxy saw no body over its limit, and every part was accepted.
    let entries = nginx.log_entries();
    let max = common::nginx_max_request_length(&nginx);
    assert!(
        max <= 100_000_000,
        "a request of {max} bytes went through nginx: {entries:?}"
    );
    let parts: Vec<_> = entries
        .iter()
        .filter(|e| e.method == "PUT" && e.uri.contains("/parts/"))
        .collect();
    // 150 MiB random zstd: 3 parts; 80 MiB none: 2; the top: 1.
    assert_eq!(parts.len(), 6, "part requests: {parts:?}");
    for p in &parts {
        assert_eq!(p.status, 200, "part request {p:?}");
        assert!(p.request_length <= 64 * MIB + 4096, "part request {p:?}");
    }
    let full_parts = parts.iter().filter(|p| p.request_length > 64 * MIB).count();
    assert_eq!(full_parts, 3, "expected three 64 MiB parts: {parts:?}");
    let completes: Vec<_> = entries
        .iter()
        .filter(|e| e.uri.ends_with("/complete"))
        .collect();
    assert_eq!(completes.len(), 3, "{completes:?}");
    assert!(completes.iter().all(|e| e.status == 200), "{completes:?}");
    assert!(entries.iter().all(|e| e.status < 400), "{entries:?}");

    // Nix reads it back through the proxy with a pull-only token.
    let key = public_key(&base, cache, &pull);
    let (_d, netrc) = netrc(&pull);
    copy_back_and_compare(
        &format!("{base}/{cache}"),
        &key,
        Some(&netrc),
        top,
        &built.paths,
    );
    let max = common::nginx_max_request_length(&nginx);
    assert!(
        max <= 100_000_000,
        "a request of {max} bytes went through nginx"
    );
}
