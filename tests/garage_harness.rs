//! Self-test of the Garage harness (`tests/common/garage.rs`): a fresh
//! single-node Garage takes a signed PUT and returns the same bytes on a
//! GET, whole and ranged; several start at once without sharing anything.

mod common;

use common::*;
use std::process::Command;
use std::time::Instant;

/// Run a `curl` command that writes `%{http_code}` on stdout; return it.
fn status_of(cmd: &mut Command) -> u16 {
    let out = run_ok(cmd.args(["-w", "%{http_code}"]));
    String::from_utf8_lossy(&out)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no status from curl: {out:?}"))
}

/// PUT `bytes` as `key` (from a file, as `curl -T` streams it), then GET it
/// back whole and as two ranges; panic on any difference.
fn put_get_roundtrip(g: &Garage, key: &str, bytes: &[u8]) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::write(&src, bytes).unwrap();
    let url = g.object_url(key);

    let put = status_of(
        g.curl()
            .arg("-o")
            .arg("/dev/null")
            .arg("-T")
            .arg(&src)
            .arg(&url),
    );
    assert_eq!(put, 200, "PUT {url}\n{}", g.log_text());

    let got = tmp.path().join("got");
    let get = status_of(g.curl().arg("-o").arg(&got).arg(&url));
    assert_eq!(get, 200, "GET {url}");
    let back = std::fs::read(&got).unwrap();
    assert!(
        back == bytes,
        "GET {url}: {} bytes back, {} put",
        back.len(),
        bytes.len()
    );

    // From an offset to the end (what a resumed download asks for).
    let from = bytes.len() / 3;
    let get = status_of(
        g.curl()
            .arg("-o")
            .arg(&got)
            .arg("-H")
            .arg(format!("Range: bytes={from}-"))
            .arg(&url),
    );
    assert_eq!(get, 206, "GET {url} Range: bytes={from}-");
    assert!(std::fs::read(&got).unwrap() == bytes[from..]);

    // A small range in the middle.
    let a = bytes.len() / 2;
    let b = (a + 65_535).min(bytes.len() - 1);
    let get = status_of(
        g.curl()
            .arg("-o")
            .arg(&got)
            .arg("-H")
            .arg(format!("Range: bytes={a}-{b}"))
            .arg(&url),
    );
    assert_eq!(get, 206, "GET {url} Range: bytes={a}-{b}");
    assert!(std::fs::read(&got).unwrap() == bytes[a..=b]);

    // A missing key is a 404, not an empty 200.
    let missing = status_of(
        g.curl()
            .arg("-o")
            .arg("/dev/null")
            .arg(g.object_url("no-such-key")),
    );
    assert_eq!(missing, 404);
}

#[test]
fn put_then_get_whole_and_ranged() {
    let t = Instant::now();
    let g = start_garage();
    eprintln!(
        "start_garage: {:.2} s ({} on {}, bucket {})",
        t.elapsed().as_secs_f64(),
        g.access_key_id,
        g.endpoint,
        g.bucket
    );
    assert!(g.endpoint.starts_with("http://127.0.0.1:"));
    assert_eq!(g.region, "garage");
    assert!(g.access_key_id.starts_with("GK"), "{}", g.access_key_id);
    assert_eq!(g.secret_access_key.len(), 64);

    // 5 MiB + 1: several Garage blocks (1 MiB each) and a short last one.
    let bytes = noise("garage-harness", 5 * 1024 * 1024 + 1);
    let t = Instant::now();
    put_get_roundtrip(&g, "nar/some-object.nar.zst", &bytes);
    eprintln!("round trip: {:.2} s", t.elapsed().as_secs_f64());

    // Unsigned requests are refused: the bucket is private.
    let anon = status_of(
        Command::new(require_tool("curl"))
            .args(["-sS", "-o", "/dev/null"])
            .arg(g.object_url("nar/some-object.nar.zst")),
    );
    assert_eq!(anon, 403);
}

#[test]
fn several_at_once() {
    let t = Instant::now();
    let handles: Vec<_> = (0..3)
        .map(|i| {
            std::thread::spawn(move || {
                let g = start_garage();
                let bytes = noise(&format!("garage-{i}"), 100_000 + i);
                put_get_roundtrip(&g, "k", &bytes);
                (g.endpoint.clone(), g.access_key_id.clone(), g.startup)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    eprintln!(
        "3 Garages at once: {:.2} s; start-up each: {:?}",
        t.elapsed().as_secs_f64(),
        results.iter().map(|r| r.2).collect::<Vec<_>>()
    );
    for (i, a) in results.iter().enumerate() {
        for b in &results[i + 1..] {
            assert_ne!(a.0, b.0);
            assert_ne!(a.1, b.1);
        }
    }
}
