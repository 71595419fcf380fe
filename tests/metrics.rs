//! `/metrics` is valid Prometheus text (checked with the reference Python
//! parser, `prometheus_client`) and counts what happened.

mod common;

use common::{Body, InProcess, http_request};

#[test]
fn metrics_parse_and_count_requests() {
    let s = InProcess::start();
    let auth = format!("Authorization: Bearer {}", s.admin_token);
    let r = http_request(
        "POST",
        &format!("{}/_api/v1/caches", s.url),
        &[&auth],
        Body::Bytes(br#"{"name":"m"}"#.to_vec()),
    );
    assert_eq!(r.status, 201);
    assert_eq!(
        http_request(
            "GET",
            &format!("{}/m/nix-cache-info", s.url),
            &[],
            Body::None
        )
        .status,
        401
    );
    // A push moves the part counters.
    let nar = ferry::nar::write_nar(&ferry::nar::Tree::Regular {
        executable: false,
        contents: b"metrics".to_vec(),
    });
    let body = serde_json::json!({
        "store_path": "/nix/store/0000000000000000000000000000000m-x",
        "nar_hash": ferry::nar::Sha256Hash::digest(&nar).to_string(),
        "nar_size": nar.len(),
    });
    let r = http_request(
        "POST",
        &format!("{}/_api/v1/caches/m/uploads", s.url),
        &[&auth],
        Body::Bytes(body.to_string().into_bytes()),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let url = r.json()["upload_url"].as_str().unwrap().to_owned();
    let r = http_request(
        "PUT",
        &format!("{}{url}/parts/1", s.url),
        &[&auth],
        Body::Bytes(nar.clone()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // Nobody without `admin` reads it on the main listener: it names every
    // cache, private ones included.
    let metrics = format!("{}/metrics", s.url);
    let anonymous = http_request("GET", &metrics, &[], Body::None);
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    assert!(!anonymous.text().contains("\"m\""), "{}", anonymous.text());
    let puller = s.mint(
        &[(ferry::auth::Operation::Pull, "*")],
        std::time::Duration::from_secs(600),
    );
    let r = http_request(
        "GET",
        &metrics,
        &[&format!("Authorization: Bearer {puller}")],
        Body::None,
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let text = http_request("GET", &metrics, &[&auth], Body::None).text();
    let script = r#"
import sys, json
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.setdefault(s.name, []).append([s.labels, s.value])
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client could not parse /metrics (is it installed? run .ci/run): {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let requests = parsed["ferry_http_requests_total"]
        .as_array()
        .expect("request counter");
    let count = |route: &str, status: &str| {
        requests
            .iter()
            .filter(|s| s[0]["route"] == route && s[0]["status"] == status)
            .map(|s| s[1].as_f64().unwrap())
            .sum::<f64>()
    };
    assert_eq!(count("/_api/v1/caches", "201"), 1.0, "{parsed}");
    assert_eq!(count("/{cache}/nix-cache-info", "401"), 1.0, "{parsed}");
    for name in [
        "ferry_uploads",
        "ferry_cache_paths",
        "ferry_cache_stored_bytes",
        "ferry_gc_runs_total",
        "ferry_part_bytes_total",
        "ferry_part_size_bytes_bucket",
        "ferry_verified_bytes_total",
        "ferry_verify_seconds_total",
        "ferry_db_busy_total",
    ] {
        assert!(parsed.get(name).is_some(), "{name} missing: {parsed}");
    }
    let parts = parsed["ferry_parts_received_total"][0][1].as_f64().unwrap();
    let bytes = parsed["ferry_part_bytes_total"][0][1].as_f64().unwrap();
    assert_eq!((parts, bytes), (1.0, nar.len() as f64), "{parsed}");
    let open = parsed["ferry_uploads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s[0]["state"] == "open")
        .unwrap()[1]
        .as_f64();
    assert_eq!(open, Some(1.0), "{parsed}");
    let caches = parsed["ferry_cache_paths"].as_array().unwrap();
    assert!(caches.iter().any(|s| s[0]["cache"] == "m"), "{parsed}");
}

/// `ferry_db_busy_total` as `/metrics` reports it.
fn busy_total(s: &InProcess) -> u64 {
    let auth = format!("Authorization: Bearer {}", s.admin_token);
    http_request("GET", &format!("{}/metrics", s.url), &[&auth], Body::None)
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("ferry_db_busy_total "))
        .expect("ferry_db_busy_total")
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_write_that_waits_on_another_connections_lock_is_counted() {
    let s = InProcess::start();
    let before = busy_total(&s);
    // Another writer (as `ferry gc` or `ferry token revoke` would be)
    // holds SQLite's write lock while the server writes.
    let db = rusqlite::Connection::open(s.data_dir.path().join("ferry.db")).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    let create = std::thread::spawn({
        let (url, auth) = (
            s.url.clone(),
            format!("Authorization: Bearer {}", s.admin_token),
        );
        move || {
            http_request(
                "POST",
                &format!("{url}/_api/v1/caches"),
                &[&auth],
                Body::Bytes(br#"{"name":"waits"}"#.to_vec()),
            )
            .status
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!create.is_finished(), "the write did not wait for the lock");
    db.execute_batch("COMMIT").unwrap();
    assert_eq!(
        create.join().unwrap(),
        201,
        "the write went through after the wait"
    );
    assert!(busy_total(&s) > before, "the wait was not counted");
}

#[test]
fn metrics_listen_serves_metrics_alone_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let cfg = dir.path().join("ferry.toml");
    std::fs::write(&cfg, format!("metrics-listen = \"127.0.0.1:{port}\"\n")).unwrap();
    let server = common::ServerProcess::start_with(
        dir.path(),
        common::free_port(),
        &[],
        &["--config", cfg.to_str().unwrap()],
    );
    let side = format!("http://127.0.0.1:{port}");
    let r = http_request("GET", &format!("{side}/metrics"), &[], Body::None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("ferry_http_requests_total"),
        "{}",
        r.text()
    );
    // Nothing else is served there, and the main listener still wants admin.
    let r = http_request("GET", &format!("{side}/_api/v1/caches/x"), &[], Body::None);
    assert_eq!(r.status, 404);
    let r = http_request("GET", &format!("{}/metrics", server.url), &[], Body::None);
    assert_eq!(r.status, 401);
}
