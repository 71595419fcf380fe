//! Every named crash point (src/crash.rs), crashed at deterministically.
//!
//! For each point the real `ferry serve` (built with `--features
//! failpoints`) runs with `FERRY_CRASH_AT=<point>` and aborts there. While
//! it is down, `ferry gc` runs with a zero grace period (the worst case: it
//! may delete anything the database does not protect). The server then
//! starts again without the crash point and a plain client resumes: it
//! asks which parts the server holds, sends the others, and completes.
//! Each time, the path ends published with the NAR it was sent (its hash
//! checked as served), and afterwards the blob store holds exactly the
//! blobs the database lists (nothing lost, nothing leaked).
//!
//! GC's own points crash `ferry gc` between choosing a blob and deleting
//! it, while a server keeps serving another path.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::{Body, HttpResponse, Nar, ServerProcess, free_port, try_http_request};
use ferry::nar::Sha256Hash;

const PART: usize = 1 << 20;

/// A server on a data dir that outlives it, and its admin token.
struct Harness {
    dir: tempfile::TempDir,
    port: u16,
    token: String,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let s = ServerProcess::start(dir.path(), port);
        let token = s.admin_token.clone().expect("first start prints a token");
        let h = Harness { dir, port, token };
        let r = h.call(
            "POST",
            "/_api/v1/caches",
            Body::Bytes(br#"{"name":"c"}"#.to_vec()),
        );
        assert_eq!(r.map(|r| r.status), Ok(201));
        s.kill9();
        h
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn call(&self, method: &str, path: &str, body: Body) -> Result<HttpResponse, String> {
        let auth = format!("Authorization: Bearer {}", self.token);
        try_http_request(method, &self.url(path), &[&auth], body)
    }

    fn serve(&self, crash_at: Option<&str>) -> ServerProcess {
        let env: Vec<(&str, &str)> = crash_at
            .map(|p| ("FERRY_CRASH_AT", p))
            .into_iter()
            .collect();
        ServerProcess::start_with_env(self.dir.path(), self.port, &env)
    }

    /// `ferry gc` with no grace at all, optionally crashing at `crash_at`.
    fn gc(&self, crash_at: Option<&str>) -> std::process::Output {
        let cfg = self.dir.path().join("gc.toml");
        std::fs::write(&cfg, "orphan-grace-secs = 0\n").unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
        cmd.args(["gc", "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(self.dir.path())
            .env("FERRY_LOG", "warn");
        if let Some(p) = crash_at {
            cmd.env("FERRY_CRASH_AT", p);
        }
        cmd.output().unwrap()
    }

    fn gc_ok(&self) {
        let out = self.gc(None);
        assert!(
            out.status.success(),
            "ferry gc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The blobs the database lists, and the files the store holds.
    fn blobs(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        let db = rusqlite::Connection::open(self.dir.path().join("ferry.db")).unwrap();
        let mut stmt = db.prepare("SELECT blob FROM nar_chunks").unwrap();
        let listed = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let files = common::files_under(&self.dir.path().join("blobs"))
            .into_iter()
            .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        (listed, files)
    }
}

/// What one upload sends: the NAR, and the bytes on the wire in parts.
struct Upload {
    nar: Nar,
    compression: &'static str,
    parts: Vec<Vec<u8>>,
}

impl Upload {
    fn new(name: &str, compression: &'static str) -> Upload {
        let nar = Nar::new(name, 3 * PART);
        let wire = match compression {
            "zstd" => zstd::encode_all(&nar.bytes[..], 1).unwrap(),
            _ => nar.bytes.clone(),
        };
        let parts = wire.chunks(PART).map(<[u8]>::to_vec).collect();
        Upload {
            nar,
            compression,
            parts,
        }
    }

    fn create(&self, h: &Harness) -> String {
        let body = serde_json::json!({
            "store_path": self.nar.path, "nar_hash": self.nar.hash.to_string(),
            "nar_size": self.nar.bytes.len(), "compression": self.compression,
        });
        let r = h
            .call(
                "POST",
                "/_api/v1/caches/c/uploads",
                Body::Bytes(body.to_string().into_bytes()),
            )
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["id"].as_str().unwrap().to_owned()
    }

    /// Sends every part the server lacks and completes: `Ok(true)` once
    /// committed, `Ok(false)` when the server asked for parts again, `Err`
    /// when the connection broke (the server died).
    fn resume(&self, h: &Harness, id: &str) -> Result<bool, String> {
        let st = h.call("GET", &format!("/_api/v1/uploads/{id}"), Body::None)?;
        assert_eq!(st.status, 200, "{}", st.text());
        let st = st.json();
        if st["state"] == "committed" {
            return Ok(true);
        }
        let have: BTreeSet<u64> = st["parts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["n"].as_u64().unwrap())
            .collect();
        for (i, bytes) in self.parts.iter().enumerate() {
            let n = i as u64 + 1;
            if !have.contains(&n) {
                let r = h.call(
                    "PUT",
                    &format!("/_api/v1/uploads/{id}/parts/{n}"),
                    Body::Bytes(bytes.clone()),
                )?;
                assert_eq!(r.status, 200, "part {n}: {}", r.text());
            }
        }
        let body = format!("{{\"parts\":{}}}", self.parts.len());
        let r = h.call(
            "POST",
            &format!("/_api/v1/uploads/{id}/complete"),
            Body::Bytes(body.into_bytes()),
        )?;
        match r.status {
            200 => Ok(true),
            422 if r.json()["error"] == "missing_parts" => Ok(false),
            // A restarted server may still be finishing the resumed
            // verification.
            202 | 409 | 503 => Ok(false),
            _ => panic!("complete: {} {}", r.status, r.text()),
        }
    }

    /// The path is served with this NAR, and the NAR hashes right.
    fn check_served(&self, h: &Harness) {
        check_served(h, &self.nar);
    }
}

/// `nar`'s path is served with this NAR, and the NAR hashes right.
fn check_served(h: &Harness, nar: &Nar) {
    let hash = nar.hash_part();
    let ni = h
        .call("GET", &format!("/c/{hash}.narinfo"), Body::None)
        .unwrap();
    assert_eq!(ni.status, 200, "{}", ni.text());
    let text = ni.text();
    let want = format!("NarHash: {}", nar.hash);
    assert!(text.contains(&want), "{text}");
    let url = text
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .to_owned();
    let served = h.call("GET", &format!("/c/{url}"), Body::None).unwrap();
    assert_eq!(served.status, 200);
    let bytes = zstd::decode_all(&served.body[..]).unwrap();
    assert_eq!(Sha256Hash::digest(&bytes), nar.hash);
}

/// With the server down: `ferry gc` at zero grace, restart, then resume
/// upload `id` until it commits, and check what is served. The running
/// server and the extra rounds the resume took.
fn restart_and_resume(h: &Harness, up: &Upload, id: &str, what: &str) -> (ServerProcess, u32) {
    h.gc_ok();
    let s = h.serve(None);
    let mut rounds = 0;
    while !up.resume(h, id).unwrap() {
        rounds += 1;
        assert!(rounds < 50, "{what}: the upload never committed");
        std::thread::sleep(Duration::from_millis(100));
    }
    up.check_served(h);
    (s, rounds)
}

/// Crashes the server at `point` during an upload, runs GC with no grace
/// while it is down, restarts, resumes, and checks the outcome.
fn crash_during_upload(point: &str, compression: &'static str, replaced_part: bool) {
    let h = Harness::new();
    let up = Upload::new(&format!("crash-{point}-{compression}"), compression);
    let id = {
        let _s = h.serve(None);
        let id = up.create(&h);
        if replaced_part {
            // Part 1 first holds other bytes; the crash comes while the
            // right ones replace them (file renamed, row not yet).
            let r = h
                .call(
                    "PUT",
                    &format!("/_api/v1/uploads/{id}/parts/1"),
                    Body::Bytes(vec![7u8; PART]),
                )
                .unwrap();
            assert_eq!(r.status, 200);
        }
        id
    };
    let mut s = h.serve(Some(point));
    let crashed = if replaced_part {
        h.call(
            "PUT",
            &format!("/_api/v1/uploads/{id}/parts/1"),
            Body::Bytes(up.parts[0].clone()),
        )
        .is_err()
    } else {
        up.resume(&h, &id).is_err()
    };
    let status = s.wait_exit(Duration::from_secs(20));
    assert!(
        crashed && status.is_some_and(|st| !st.success()),
        "{point}: the server did not crash there ({status:?})"
    );
    drop(s);
    let _s = restart_and_resume(&h, &up, &id, point);
    h.gc_ok();
    up.check_served(&h);
    let (listed, files) = h.blobs();
    assert_eq!(listed, files, "{point}: blob store and database disagree");
    let leftovers = std::fs::read_dir(h.dir.path().join("uploads"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != "staged")
        .count();
    assert_eq!(leftovers, 0, "{point}: upload directories left behind");
}

#[test]
fn a_crash_between_a_parts_write_and_its_rename_loses_nothing() {
    crash_during_upload("part.after_write", "zstd", false);
}

#[test]
fn a_crash_between_a_parts_rename_and_its_row_loses_nothing() {
    crash_during_upload("part.after_rename", "zstd", false);
}

#[test]
fn a_replaced_part_renamed_before_its_row_is_sent_again_not_adopted() {
    crash_during_upload("part.after_rename", "zstd", true);
}

#[test]
fn crashes_at_each_publish_step_lose_nothing() {
    for point in [
        "publish.after_verdict",
        "publish.after_claim",
        "publish.after_adopt",
        "publish.after_commit",
    ] {
        for compression in ["zstd", "none"] {
            crash_during_upload(point, compression, false);
        }
    }
}

/// A batch body of `nars` (the first sent as zstd, the others plain),
/// each record a header line and its bytes.
fn batch_body(nars: &[Nar]) -> Vec<u8> {
    let mut body = vec![];
    for (i, nar) in nars.iter().enumerate() {
        let (compression, bytes) = match i {
            0 => ("zstd", zstd::encode_all(&nar.bytes[..], 3).unwrap()),
            _ => ("none", nar.bytes.clone()),
        };
        let header = serde_json::json!({
            "store_path": nar.path, "nar_hash": nar.hash.to_string(),
            "nar_size": nar.bytes.len(), "compression": compression, "size": bytes.len(),
        });
        body.extend_from_slice(header.to_string().as_bytes());
        body.push(b'\n');
        body.extend_from_slice(&bytes);
    }
    body
}

/// A batch door request crashed at each step of its records' one-request
/// uploads (whose steps before the publish commit are deferred): after
/// `ferry gc` at zero grace and a restart, the same batch sent again
/// publishes every path with its NAR, and the blob store holds exactly
/// the blobs the database lists. What the crash left open expires within
/// the one-request expiry, not the usual day.
#[test]
fn a_batch_crashed_at_each_step_publishes_when_sent_again() {
    // Every point of an upload's path (GC's own are not on it).
    for &point in ferry::crash::POINTS
        .iter()
        .filter(|p| !p.starts_with("gc."))
    {
        let h = Harness::new();
        let nars: Vec<Nar> = (0..2)
            .map(|i| Nar::new(&format!("batch-{i}-{}", point.replace('.', "-")), 64 << 10))
            .collect();
        let body = batch_body(&nars);
        let mut s = h.serve(Some(point));
        let crashed = h
            .call("POST", "/_api/v1/caches/c/batch", Body::Bytes(body.clone()))
            .is_err();
        let status = s.wait_exit(Duration::from_secs(20));
        assert!(
            crashed && status.is_some_and(|st| !st.success()),
            "{point}: the server did not crash there ({status:?})"
        );
        drop(s);
        // What the crash left open expires soon: nobody resumes it.
        let db = rusqlite::Connection::open(h.dir.path().join("ferry.db")).unwrap();
        let lives: Vec<i64> = db
            .prepare("SELECT expires_at - created_at FROM uploads WHERE state != 'committed'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let short = ferry::upload::ONE_REQUEST_EXPIRY.as_secs() as i64;
        assert!(
            lives.iter().all(|l| *l <= short),
            "{point}: uploads left open live {lives:?} s, more than {short} s"
        );
        drop(db);
        h.gc_ok();
        let _s = h.serve(None);
        let r = h
            .call("POST", "/_api/v1/caches/c/batch", Body::Bytes(body))
            .unwrap();
        assert_eq!(r.status, 200, "{point}: {}", r.text());
        for (result, nar) in r.json()["results"].as_array().unwrap().iter().zip(&nars) {
            assert_eq!(result["state"], "committed", "{point}: {result}");
            check_served(&h, nar);
        }
        h.gc_ok();
        let (listed, files) = h.blobs();
        assert_eq!(listed, files, "{point}: blob store and database disagree");
    }
}

/// Plain uploads whose parts an earlier version kept as sent (rewritten
/// so here, with the server down: the raw bytes, and a row without a
/// stored blob) still publish. Part 1 kept as sent: later parts, kept as
/// frames, are decoded and the NAR is compressed at `complete`, as before.
/// Part 1 kept as frames and a later part as sent: that part is asked for
/// again, and kept as frames this time.
#[test]
fn plain_parts_kept_as_sent_by_an_earlier_version_still_publish() {
    let h = Harness::new();
    let first = Upload::new("older-first", "none");
    let later = Upload::new("older-later", "none");
    let (a, b) = {
        let _s = h.serve(None);
        let a = first.create(&h);
        let b = later.create(&h);
        for (id, up, n) in [(&a, &first, 1), (&b, &later, 1), (&b, &later, 3)] {
            let r = h
                .call(
                    "PUT",
                    &format!("/_api/v1/uploads/{id}/parts/{n}"),
                    Body::Bytes(up.parts[n - 1].clone()),
                )
                .unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
        }
        (a, b)
    };
    let db = rusqlite::Connection::open(h.dir.path().join("ferry.db")).unwrap();
    for (id, up, n) in [(&a, &first, 1), (&b, &later, 3)] {
        let file = h.dir.path().join(format!("uploads/{id}/{n}.part"));
        let kept = std::fs::read(&file).unwrap();
        assert_ne!(kept, up.parts[n - 1], "a plain part is kept as frames");
        assert_eq!(zstd::decode_all(&kept[..]).unwrap(), up.parts[n - 1]);
        std::fs::write(&file, &up.parts[n - 1]).unwrap();
        let changed = db
            .execute(
                "UPDATE upload_parts SET blob = NULL, blob_size = NULL
                 WHERE upload_id = ?1 AND n = ?2 AND blob IS NOT NULL",
                rusqlite::params![id, n as i64],
            )
            .unwrap();
        assert_eq!(changed, 1);
    }
    drop(db);
    let _s = h.serve(None);
    for (id, up) in [(&a, &first), (&b, &later)] {
        let mut rounds = 0;
        while !up.resume(&h, id).unwrap() {
            rounds += 1;
            assert!(rounds < 50, "{id}: the upload never committed");
            std::thread::sleep(Duration::from_millis(100));
        }
        up.check_served(&h);
    }
    h.gc_ok();
    let (listed, files) = h.blobs();
    assert_eq!(listed, files, "blob store and database disagree");
}

/// Publishes `up` through a running server.
fn publish(h: &Harness, up: &Upload) {
    let id = up.create(h);
    assert!(up.resume(h, &id).unwrap(), "committed");
}

#[test]
fn a_gc_crash_between_choosing_and_deleting_a_blob_loses_nothing() {
    for point in ["gc.before_delete", "gc.after_delete"] {
        let h = Harness::new();
        let _s = h.serve(None);
        let (gone, kept) = (
            Upload::new(&format!("gone-{point}"), "zstd"),
            Upload::new(&format!("kept-{point}"), "none"),
        );
        publish(&h, &kept);
        let kept_blobs = h.blobs().1;
        publish(&h, &gone);
        let del = h
            .call(
                "DELETE",
                &format!("/_api/v1/caches/c/paths/{}", gone.nar.hash_part()),
                Body::None,
            )
            .unwrap();
        assert_eq!(del.status, 200, "{}", del.text());
        let out = h.gc(Some(point));
        assert!(
            !out.status.success(),
            "{point}: ferry gc did not crash there"
        );
        kept.check_served(&h);
        h.gc_ok();
        kept.check_served(&h);
        let (listed, files) = h.blobs();
        assert_eq!(listed, files, "{point}: blob store and database disagree");
        assert_eq!(
            files, kept_blobs,
            "{point}: only the kept path's blobs are left"
        );
        // The deleted path can be pushed again.
        publish(&h, &gone);
        gone.check_served(&h);
    }
}

#[test]
fn every_crash_point_is_covered_here() {
    let src = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file!())).unwrap();
    for point in ferry::crash::POINTS {
        assert!(src.contains(&format!("\"{point}\"")), "{point} has no test");
    }
}

/// Delayed restart: SIGKILL 0–100 ms after a `complete` request went out,
/// `ferry gc` with zero grace while the server is down, restart, resume.
/// The delay is drawn from the later 60 % of the time an undisturbed
/// part request takes (measured first, at most 100 ms), so kills land
/// before, while and after the server verifies and publishes; each trial is classified by
/// the upload's state in the database at the kill, and some must land
/// while it was `verifying` (up to three times the trials are run until
/// they do). `FERRY_RESTART_TRIALS` trials (CI: 8; the documented full
/// run is 50), `FERRY_RESTART_SEED` replays the draws.
#[test]
fn delayed_restart_campaign() {
    use rand::{Rng, SeedableRng};
    let trials: usize = common::env_num("FERRY_RESTART_TRIALS").unwrap_or(8);
    let seed = common::seed_from_env("FERRY_RESTART_SEED");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let h = Harness::new();
    let window = {
        let _s = h.serve(None);
        let up = Upload::new(&format!("delayed-calibration-{seed}"), "zstd");
        let id = up.create(&h);
        let t = std::time::Instant::now();
        assert!(up.resume(&h, &id).unwrap());
        // `resume` sent the parts too: time a second, no-op complete to
        // subtract the request's own cost.
        let parts_and_complete = t.elapsed();
        let per_part = parts_and_complete / (up.parts.len() as u32 + 1);
        per_part.min(Duration::from_millis(100))
    };
    println!(
        "delayed restart: {trials} trials, seed {seed}, kills within {}ms of complete",
        window.as_millis()
    );
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    // More trials (up to three times as many) while too few kills landed
    // while verifying: on a loaded machine the calibration can be off.
    let enough = |o: &std::collections::BTreeMap<String, usize>| {
        o.get("verifying").is_some_and(|n| *n * 8 >= trials)
    };
    let mut k = 0;
    while k < trials || (!enough(&outcomes) && k < 3 * trials) {
        let compression = if k % 2 == 0 { "zstd" } else { "none" };
        let up = Upload::new(&format!("delayed-{seed}-{k}"), compression);
        let mut s = h.serve(None);
        let id = up.create(&h);
        for (i, bytes) in up.parts.iter().enumerate() {
            let r = h
                .call(
                    "PUT",
                    &format!("/_api/v1/uploads/{id}/parts/{}", i + 1),
                    Body::Bytes(bytes.clone()),
                )
                .unwrap();
            assert_eq!(r.status, 200);
        }
        let w = window.as_micros() as u64;
        let delay = Duration::from_micros(rng.gen_range(w * 2 / 5..=w));
        let body = format!("{{\"parts\":{}}}", up.parts.len());
        let path = format!("/_api/v1/uploads/{id}/complete");
        let (at_kill, answered) = std::thread::scope(|t| {
            let req = t.spawn(|| h.call("POST", &path, Body::Bytes(body.into_bytes())));
            std::thread::sleep(delay);
            s.kill_now();
            let state = db_state(&h, &id);
            (state, req.join().unwrap().map(|r| r.status).ok())
        });
        drop(s);
        let (_s, rounds) = restart_and_resume(&h, &up, &id, &format!("trial {k}"));
        let (listed, files) = h.blobs();
        assert!(
            listed.iter().all(|b| files.contains(b)),
            "trial {k}: a listed blob is missing"
        );
        println!(
            "trial {}/{trials}: {compression}, kill {}µs after complete, state at kill {at_kill}, \
             complete answered {answered:?}; resumed in {rounds} extra round(s)",
            k + 1,
            delay.as_micros()
        );
        *outcomes.entry(at_kill).or_default() += 1;
        k += 1;
    }
    h.gc_ok();
    let (listed, files) = h.blobs();
    assert_eq!(listed, files, "blob store and database disagree");
    println!("delayed restart: states at kill {outcomes:?}");
    assert!(
        enough(&outcomes),
        "fewer than one kill in eight landed while the server verified, in {k} trials: {outcomes:?}"
    );
}

/// An upload's state in the database, read the moment after a kill.
fn db_state(h: &Harness, id: &str) -> String {
    let db = rusqlite::Connection::open(h.dir.path().join("ferry.db")).unwrap();
    db.query_row("SELECT state FROM uploads WHERE id = ?1", [id], |r| {
        r.get::<_, String>(0)
    })
    .unwrap_or_else(|_| "gone".into())
}

#[test]
fn a_blob_lost_from_disk_unpublishes_its_path_at_start_instead_of_serving_it_broken() {
    let h = Harness::new();
    let (lost, kept) = (
        Upload::new("lost-blob", "zstd"),
        Upload::new("kept-blob", "none"),
    );
    {
        let _s = h.serve(None);
        publish(&h, &lost);
        publish(&h, &kept);
    }
    // The disk loses one of `lost`'s blobs while the server is down.
    let db = rusqlite::Connection::open(h.dir.path().join("ferry.db")).unwrap();
    let blob: String = db
        .query_row(
            "SELECT c.blob FROM nar_chunks c JOIN nars n ON n.id = c.nar_id WHERE n.nar_hash = ?1",
            [lost.nar.hash.to_string()],
            |r| r.get(0),
        )
        .unwrap();
    drop(db);
    let file = h
        .dir
        .path()
        .join("blobs")
        .join(&blob[..2])
        .join(&blob[2..4])
        .join(&blob);
    std::fs::remove_file(&file).unwrap();
    let _s = h.serve(None);
    let hash = lost.nar.hash_part();
    let r = h
        .call("GET", &format!("/c/{hash}.narinfo"), Body::None)
        .unwrap();
    assert_eq!(r.status, 404, "a path whose blob is gone is still served");
    kept.check_served(&h);
    // It can be pushed again, and then is whole.
    publish(&h, &lost);
    lost.check_served(&h);
}
