//! Garbage collection: retention by last access (closure-aware), bytes
//! freed in the run that unpublishes them, abandoned uploads, leftover
//! files after the grace period, and a large backlog in one run.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Body, InProcess, ServerProcess, files_under, http_request};
use ferry::config::Config;
use ferry::db::caches::{self, NewCache};
use ferry::db::nars::{self, Chunk, NewNar};
use ferry::nar::{Sha256Hash, SigningKey, Tree, write_nar};

fn post(s: &InProcess, path: &str, body: serde_json::Value) -> serde_json::Value {
    let auth = format!("Authorization: Bearer {}", s.admin_token);
    let r = http_request(
        "POST",
        &format!("{}{path}", s.url),
        &[&auth],
        Body::Bytes(body.to_string().into_bytes()),
    );
    assert!(r.status < 300, "{path}: {} {}", r.status, r.text());
    r.json()
}

fn put_part(s: &InProcess, url: &str, n: u32, bytes: &[u8]) {
    let auth = format!("Authorization: Bearer {}", s.admin_token);
    let r = http_request(
        "PUT",
        &format!("{}{url}/parts/{n}", s.url),
        &[&auth],
        Body::Bytes(bytes.to_vec()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Runs `ferry gc` (the real binary) against a data dir with a config.
fn ferry_gc(data_dir: &Path, config: &str) -> serde_json::Value {
    let out = ferry_gc_output(data_dir, config);
    assert!(
        out.status.success(),
        "ferry gc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ferry gc prints a JSON report")
}

/// `ferry gc`'s exit status and output, whatever they are.
fn ferry_gc_output(data_dir: &Path, config: &str) -> std::process::Output {
    let cfg = data_dir.join("gc-test.toml");
    std::fs::write(&cfg, config).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["gc", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(data_dir)
        .env("FERRY_LOG", "warn")
        .output()
        .unwrap()
}

fn nar(seed: &str) -> Vec<u8> {
    write_nar(&Tree::Regular {
        executable: false,
        contents: seed.repeat(1000).into_bytes(),
    })
}

#[test]
fn retention_expires_paths_and_frees_their_blobs() {
    let s = InProcess::start();
    post(
        &s,
        "/_api/v1/caches",
        serde_json::json!({"name": "short", "retention": "1s"}),
    );
    post(&s, "/_api/v1/caches", serde_json::json!({"name": "keep"}));
    let mut narinfos = vec![];
    for (cache, seed, hash) in [
        ("short", "a", "0000000000000000000000000000000a"),
        ("keep", "b", "0000000000000000000000000000000b"),
    ] {
        let bytes = nar(seed);
        let up = post(
            &s,
            &format!("/_api/v1/caches/{cache}/uploads"),
            serde_json::json!({"store_path": format!("/nix/store/{hash}-x"), "nar_hash": Sha256Hash::digest(&bytes).to_string(), "nar_size": bytes.len()}),
        );
        let url = up["upload_url"].as_str().unwrap().to_owned();
        put_part(&s, &url, 1, &bytes);
        assert_eq!(
            post(
                &s,
                &format!("{url}/complete"),
                serde_json::json!({"parts": 1})
            )["state"],
            "committed"
        );
        narinfos.push(format!("{}/{cache}/{hash}.narinfo", s.url));
    }
    let auth = format!("Authorization: Bearer {}", s.admin_token);
    let blobs = s.data_dir.path().join("blobs");
    assert_eq!(files_under(&blobs).len(), 2);
    std::thread::sleep(Duration::from_millis(2100));
    // The default grace (an hour) protects only files no row knows: the
    // expired path's bytes are freed in this same run.
    let report = ferry_gc(s.data_dir.path(), "");
    assert_eq!(report["paths_expired"], 1, "{report}");
    assert_eq!(report["nars_removed"], 1, "{report}");
    assert_eq!(report["blobs_removed"], 1, "{report}");
    assert!(report["bytes_freed"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(
        http_request("GET", &narinfos[0], &[&auth], Body::None).status,
        404
    );
    assert_eq!(
        http_request("GET", &narinfos[1], &[&auth], Body::None).status,
        200
    );
    assert_eq!(
        files_under(&blobs).len(),
        1,
        "only the kept cache's blob remains"
    );
}

/// A blob whose file cannot be deleted (here a directory stands where the
/// file was: unlink fails for root too) does not stop the collection:
/// the other blobs of the run are freed, the failure is named on stderr
/// and counted in the report and on the status page, `ferry gc` exits 2
/// (ran, some deletions failed), and once the obstacle is gone the next
/// run frees it.
#[test]
fn a_blob_that_cannot_be_deleted_does_not_stop_the_collection() {
    let s = InProcess::start();
    post(
        &s,
        "/_api/v1/caches",
        serde_json::json!({"name": "short", "retention": "1s"}),
    );
    for seed in ["p", "q", "r"] {
        publish(&s, "short", &format!("{seed:0>32}"), seed, &[]);
    }
    let blobs = s.data_dir.path().join("blobs");
    let files = files_under(&blobs);
    assert_eq!(files.len(), 3);
    // The middle one (in name order) becomes a directory with a file in it.
    let mut paths: Vec<_> = files.into_iter().map(|(p, _)| p).collect();
    paths.sort();
    let stuck = paths[1].clone();
    std::fs::remove_file(&stuck).unwrap();
    std::fs::create_dir(&stuck).unwrap();
    std::fs::write(stuck.join("in-the-way"), b"x").unwrap();
    std::thread::sleep(Duration::from_millis(2100));

    let out = ferry_gc_output(s.data_dir.path(), "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "ran, some failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(report["paths_expired"], 3, "{report}");
    assert_eq!(report["blobs_removed"], 2, "{report}");
    assert_eq!(report["failed"], 1, "{report}");
    let name = stuck.file_name().unwrap().to_str().unwrap();
    assert!(stderr.contains(name), "the blob is named: {stderr}");
    assert!(stderr.contains("1 deletion(s) failed"), "{stderr}");
    assert!(
        !paths[0].exists() && !paths[2].exists(),
        "the others are freed"
    );
    let status = http_request(
        "GET",
        &format!("{}/_api/v1/status", s.url),
        &[&format!("Authorization: Bearer {}", s.admin_token)],
        Body::None,
    )
    .json();
    assert_eq!(status["last_gc"]["failed"], 1, "{status}");

    std::fs::remove_dir_all(&stuck).unwrap();
    let report = ferry_gc(s.data_dir.path(), "");
    assert_eq!(report["blobs_removed"], 1, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert!(files_under(&blobs).is_empty());
}

/// The recorded last read of `hash_part` in the data dir's database.
fn last_access(data: &Path, hash_part: &str) -> i64 {
    let db = rusqlite::Connection::open(data.join("ferry.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.query_row(
        "SELECT last_access FROM paths WHERE hash_part = ?1",
        [hash_part],
        |r| r.get(0),
    )
    .unwrap()
}

/// Waits until the server has written a read of `hash_part` later than
/// `before` (its flush runs every second; under load, later).
fn wait_recorded(data: &Path, hash_part: &str, before: i64) -> i64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let t = last_access(data, hash_part);
        if t > before {
            return t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the read was never recorded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sleeps until the wall clock (whole seconds, as the database keeps
/// them) is at least `t`.
fn sleep_until(t: i64) {
    while ferry::db::now() < t {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `ferry gc` until it expires a path (at most 20 s); its report.
fn gc_until_expired(data: &Path) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let report = ferry_gc(data, "");
        if report["paths_expired"] != 0 || std::time::Instant::now() > deadline {
            return report;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A real server, on a data dir of its own, whose batched read times are
/// written every second.
fn flushing_server() -> (tempfile::TempDir, ServerProcess) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ferry.toml");
    std::fs::write(&cfg, "access-flush-secs = 1\n").unwrap();
    let server = ServerProcess::start_with(
        dir.path(),
        common::free_port(),
        &[],
        &["--config", cfg.to_str().unwrap()],
    );
    (dir, server)
}

#[test]
fn a_read_over_http_keeps_a_path_past_its_retention() {
    let (dir, server) = flushing_server();
    let token = server.admin_token.clone().expect("admin token");
    let call = |method: &str, path: &str, body: Body| {
        let auth = format!("Authorization: Bearer {token}");
        http_request(method, &format!("{}{path}", server.url), &[&auth], body)
    };
    let json = |v: serde_json::Value| Body::Bytes(v.to_string().into_bytes());
    let r = call(
        "POST",
        "/_api/v1/caches",
        json(serde_json::json!({"name": "c", "retention": "5s"})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let bytes = nar("read");
    let hash = "0000000000000000000000000000000c";
    let r = call(
        "POST",
        "/_api/v1/caches/c/uploads",
        json(
            serde_json::json!({"store_path": format!("/nix/store/{hash}-x"), "nar_hash": Sha256Hash::digest(&bytes).to_string(), "nar_size": bytes.len()}),
        ),
    );
    let url = r.json()["upload_url"].as_str().unwrap().to_owned();
    assert_eq!(
        call("PUT", &format!("{url}/parts/1"), Body::Bytes(bytes)).status,
        200
    );
    let done = call(
        "POST",
        &format!("{url}/complete"),
        json(serde_json::json!({"parts": 1})),
    );
    assert_eq!(done.status, 200, "{}", done.text());
    let narinfo = format!("/c/{hash}.narinfo");
    let published = last_access(dir.path(), hash);
    // A read 4 s after publishing, written by the server's own flush.
    sleep_until(published + 4);
    assert_eq!(call("GET", &narinfo, Body::None).status, 200);
    let read = wait_recorded(dir.path(), hash, published);
    // Past the 5 s retention counted from the publish, within it counted
    // from the read: `ferry gc` keeps the path.
    sleep_until(published + 6);
    assert!(
        ferry::db::now() < read + 5,
        "the machine is too slow for this test"
    );
    let report = ferry_gc(dir.path(), "");
    assert_eq!(report["paths_expired"], 0, "{report}");
    // With no read since, it goes once the retention has passed.
    let report = gc_until_expired(dir.path());
    assert_eq!(report["paths_expired"], 1, "{report}");
    assert!(ferry::db::now() >= read + 5, "expired before its retention");
    assert_eq!(call("GET", &narinfo, Body::None).status, 404);
}

#[test]
fn abandoned_uploads_and_orphan_blobs_are_removed() {
    // 2 s: expiry is counted in whole seconds, so 1 s could pass before
    // the first part on a busy machine.
    let s = InProcess::start_with(|c| c.upload_expiry_secs = 2);
    post(&s, "/_api/v1/caches", serde_json::json!({"name": "c"}));
    let bytes = nar("abandoned");
    let up = post(
        &s,
        "/_api/v1/caches/c/uploads",
        serde_json::json!({"store_path": "/nix/store/0000000000000000000000000000000d-x", "nar_hash": Sha256Hash::digest(&bytes).to_string(), "nar_size": bytes.len()}),
    );
    put_part(&s, up["upload_url"].as_str().unwrap(), 1, &bytes[..100]);
    let uploads = s.data_dir.path().join("uploads");
    assert!(
        files_under(&uploads)
            .iter()
            .any(|(p, _)| p.extension().is_some_and(|e| e == "part"))
    );
    // A blob with no row, as a crash between storing and recording leaves.
    let orphan = "ab".repeat(32);
    let orphan_path = s.data_dir.path().join("blobs/ab/ab").join(&orphan);
    std::fs::create_dir_all(orphan_path.parent().unwrap()).unwrap();
    std::fs::write(&orphan_path, b"left behind").unwrap();
    std::thread::sleep(Duration::from_millis(3100));
    // Within the grace period the orphan stays.
    let report = ferry_gc(s.data_dir.path(), "orphan-grace-secs = 3600\n");
    assert_eq!(report["uploads_removed"], 1, "{report}");
    assert!(
        orphan_path.exists(),
        "a blob younger than the grace period is kept"
    );
    assert!(
        !files_under(&uploads)
            .iter()
            .any(|(p, _)| p.extension().is_some_and(|e| e == "part")),
        "no part file remains"
    );
    let report = ferry_gc(s.data_dir.path(), "orphan-grace-secs = 1\n");
    assert_eq!(report["leftovers_removed"], 1, "{report}");
    assert_eq!(report["blobs_removed"], 0, "{report}");
    assert!(!orphan_path.exists());
}

#[test]
fn ten_thousand_expired_paths_go_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        data_dir: dir.path().to_owned(),
        orphan_grace_secs: 0,
        ..Config::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let opened = ferry::service::open(&cfg).unwrap();
        let db = opened.state.db.clone();
        db.write(|tx| {
            let key = SigningKey::generate("big-1").unwrap().to_nix_string();
            let cache = caches::insert(
                tx,
                &NewCache {
                    name: "big".into(),
                    public: false,
                    priority: 41,
                    store_dir: "/nix/store".into(),
                    retention_secs: Some(1),
                    signing_key: key,
                    upstream_keys: vec![],
                },
            )?;
            let (row, _) = nars::insert(
                tx,
                &NewNar {
                    nar_hash: Sha256Hash::digest(b"x").to_string(),
                    nar_size: 1,
                    compression: "zstd".into(),
                    file_hash: Sha256Hash::digest(b"y").to_string(),
                    file_size: 1,
                    chunks: vec![Chunk {
                        blob: "cd".repeat(32),
                        offset: 0,
                        size: 1,
                    }],
                },
            )?;
            for i in 0..10_000u32 {
                let hash = format!("{i:032}");
                nars::insert_path(
                    tx,
                    cache.id,
                    &hash,
                    &format!("/nix/store/{hash}-p"),
                    row.id,
                    "text",
                )?;
            }
            tx.execute("UPDATE paths SET last_access = last_access - 100", &[])?;
            Ok(())
        })
        .await
        .unwrap();
        let report = ferry::service::collector(&opened.state, &cfg)
            .run()
            .await
            .unwrap();
        assert_eq!(report.paths_expired, 10_000, "{report:?}");
        assert_eq!(report.nars_removed, 1, "{report:?}");
        let left: i64 = db
            .call(|c| c.query_one("SELECT COUNT(*) FROM paths", &[], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(left, 0);
    });
}

/// Publishes a one-part NAR of `seed` as `/nix/store/<hash>-x` with
/// `references` (full paths).
fn publish(s: &InProcess, cache: &str, hash: &str, seed: &str, references: &[String]) {
    let bytes = nar(seed);
    let up = post(
        s,
        &format!("/_api/v1/caches/{cache}/uploads"),
        serde_json::json!({"store_path": format!("/nix/store/{hash}-x"), "nar_hash": Sha256Hash::digest(&bytes).to_string(), "nar_size": bytes.len(), "references": references}),
    );
    let url = up["upload_url"].as_str().unwrap().to_owned();
    put_part(s, &url, 1, &bytes);
    let done = post(
        s,
        &format!("{url}/complete"),
        serde_json::json!({"parts": 1}),
    );
    assert_eq!(done["state"], "committed", "{done}");
}

#[test]
fn a_kept_path_keeps_its_whole_closure() {
    let s = InProcess::start();
    post(
        &s,
        "/_api/v1/caches",
        serde_json::json!({"name": "c", "retention": "2s"}),
    );
    let hash = |c: char| c.to_string().repeat(32);
    let path = |c: char| format!("/nix/store/{}-x", hash(c));
    // kept → mid → leaf; lone is referenced by nothing.
    publish(&s, "c", &hash('l'), "leaf", &[]);
    publish(&s, "c", &hash('m'), "mid", &[path('l')]);
    publish(&s, "c", &hash('k'), "kept", &[path('m'), path('k')]);
    publish(&s, "c", &hash('z'), "lone", &[]);
    // Read times are whole seconds: past the 2 s retention for certain.
    std::thread::sleep(Duration::from_millis(3100));
    let cfg = Config {
        data_dir: s.data_dir.path().to_owned(),
        ..Config::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let report = rt.block_on(async {
        let opened = ferry::service::open(&cfg).unwrap();
        // Only the top of the closure was read within the retention.
        opened.state.access.narinfo(1, &hash('k'));
        ferry::service::collector(&opened.state, &cfg)
            .run()
            .await
            .unwrap()
    });
    assert_eq!(
        report.paths_expired, 1,
        "only the lone path goes: {report:?}"
    );
    let auth = format!("Authorization: Bearer {}", s.admin_token);
    for (c, want) in [('k', 200), ('m', 200), ('l', 200), ('z', 404)] {
        let url = format!("{}/c/{}.narinfo", s.url, hash(c));
        assert_eq!(
            http_request("GET", &url, &[&auth], Body::None).status,
            want,
            "{c}"
        );
    }
}

#[test]
fn after_gc_nix_substitutes_a_kept_path_with_its_whole_closure() {
    use common::client::{FerryClient, public_key_of};
    let (dir, server) = flushing_server();
    let token = server.admin_token.clone().expect("admin token");
    let client = FerryClient::new();
    client.ok(&["login", "home", &server.url, &token]);
    let pubkey = public_key_of(&client.ok(&["cache", "create", "home:r", "--retention", "5s"]));
    let closure = common::build_closure(
        &common::ClosureSpec::new("retained")
            .salt(&common::unique_salt())
            .random("leaf-a", 300_000)
            .compressible("leaf-b", 200_000),
    );
    client.ok(&["push", "home:r", &closure.top]);
    let top_hash = &closure.top["/nix/store/".len().."/nix/store/".len() + 32];
    let published = closure
        .paths
        .iter()
        .map(|p| {
            last_access(
                dir.path(),
                &p["/nix/store/".len().."/nix/store/".len() + 32],
            )
        })
        .max()
        .unwrap();
    sleep_until(published + 4);
    // Only the top path is read within the retention (as a substituter
    // that has the leaves would).
    let auth = format!("Authorization: Bearer {token}");
    let r = http_request(
        "GET",
        &format!("{}/r/{top_hash}.narinfo", server.url),
        &[&auth],
        Body::None,
    );
    assert_eq!(r.status, 200);
    let read = wait_recorded(dir.path(), top_hash, published);
    // The leaves are past their retention; the top, read, is not.
    sleep_until(published + 6);
    assert!(
        ferry::db::now() < read + 5,
        "the machine is too slow for this test"
    );
    let report = ferry_gc(dir.path(), "");
    assert_eq!(report["paths_expired"], 0, "the closure stays: {report}");
    let netrc_dir = tempfile::tempdir().unwrap();
    let netrc = common::write_netrc(netrc_dir.path(), "127.0.0.1", &token);
    let store = common::nix_copy_from(
        &format!("{}/r", server.url),
        &pubkey,
        Some(&netrc),
        &closure.top,
    );
    for p in &closure.paths {
        assert!(store.has(p), "{p} was not substituted");
    }
}
