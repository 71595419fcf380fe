//! Crash campaign (issue 7): `ferry push` of a multi-part closure while the
//! real `ferry serve` is SIGKILLed at a random moment, then restarted on
//! the same data dir and port; the push must finish (the client resumes by
//! itself, or a second `ferry push` picks up its saved state).
//!
//! Each trial builds a fresh closure (a unique salt, so new store paths): a
//! 64 MiB random leaf (new bytes: 17 parts of 4 MiB to upload), a
//! compressible 2 MiB leaf (the same NAR every time, so the server links it
//! by NarHash instead) and a top path referencing both. Trials take turns
//! at three kinds of kill: early (10–60 % into the push's measured
//! duration), at random within it, and the moment the database shows the
//! big upload `verifying` (the server verifying or publishing it). Each
//! trial is then classified by what the database held at the kill, not by
//! the kill that was drawn: mid-upload (k of n parts), finishing (an upload
//! `verifying`), between (one path done, the next not started), or done
//! (the push had already ended). The campaign needs at least one trial
//! mid-upload and one finishing (drawing up to three extra trials for a
//! class that is short), and a push may be re-run at most once. After
//! each trial:
//! - every narinfo served for the closure has the local NarHash/NarSize,
//!   and its NAR (zstd-decompressed) hashes to them ([`common::served`]);
//! - `ferry gc` with `orphan-grace-secs = 0` runs, and then every file
//!   under `blobs/` is referenced by `nar_chunks` (and every reference has
//!   its file, of the recorded size), no NAR row lacks a path, no upload
//!   dir is left for a committed or unknown upload, and acknowledged parts
//!   of open uploads are on disk;
//! - Nix substitutes the closure from the cache (signatures required).
//!
//! At the end every path pushed by every trial is checked again.
//!
//! `FERRY_CRASH_TRIALS` sets the number of trials (CI: 3; the documented
//! full run is 50), `FERRY_CRASH_SEED` the seed (printed; default: from the
//! clock). One summary line per trial goes to stdout (`--nocapture`).

mod common;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::client::{FerryClient, public_key_of};
use common::served::check_served_path;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

const MIB: u64 = 1 << 20;
/// Trials in CI; the documented full run is 50.
const CI_TRIALS: usize = 3;
const BIG: u64 = 64 * MIB;
const TEXT: u64 = 2 * MIB;
const PART_SIZE: &str = "4MiB";
const PART_BYTES: u64 = 4 * MIB;
/// Longest a push may take to finish after the restart.
const PUSH_DEADLINE: Duration = Duration::from_secs(240);

/// The server, its client and the cache the campaign pushes to.
struct Bench {
    data: tempfile::TempDir,
    port: u16,
    server: Option<ServerProcess>,
    token: String,
    pubkey: String,
    client: FerryClient,
    gc_config: PathBuf,
    _netrc_dir: tempfile::TempDir,
    netrc: PathBuf,
}

const TARGET: &str = "crash:camp";
const CACHE: &str = "camp";

impl Bench {
    fn start() -> Bench {
        let data = tempfile::tempdir().unwrap();
        let port = free_port();
        let server = ServerProcess::start(data.path(), port);
        let token = server.admin_token.clone().expect("admin token");
        let client = FerryClient::new();
        client.ok(&["login", "crash", &server.url, &token]);
        let pubkey = public_key_of(&client.ok(&["cache", "create", TARGET]));
        let gc_config = data.path().join("gc-campaign.toml");
        std::fs::write(
            &gc_config,
            format!(
                "data-dir = {:?}\norphan-grace-secs = 0\nupload-expiry-secs = 1\n",
                data.path().to_str().unwrap()
            ),
        )
        .unwrap();
        let netrc_dir = tempfile::tempdir().unwrap();
        let netrc = write_netrc(netrc_dir.path(), "127.0.0.1", &token);
        Bench {
            data,
            port,
            server: Some(server),
            token,
            pubkey,
            client,
            gc_config,
            _netrc_dir: netrc_dir,
            netrc,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn data_dir(&self) -> &Path {
        self.data.path()
    }

    fn push_args<'a>(&self, top: &'a str) -> Vec<&'a str> {
        vec!["push", TARGET, "--part-size", PART_SIZE, "-j", "2", top]
    }

    fn kill9(&mut self) {
        self.server.take().expect("a running server").kill9();
    }

    fn restart(&mut self) {
        assert!(self.server.is_none());
        self.server = Some(ServerProcess::start(self.data.path(), self.port));
    }

    /// `ferry gc` against the data dir with grace 0; its JSON report.
    fn gc(&self) -> serde_json::Value {
        let out = run_ok(
            std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
                .args(["gc", "--config"])
                .arg(&self.gc_config)
                .env("FERRY_LOG", "warn"),
        );
        serde_json::from_slice(&out).unwrap_or_else(|e| {
            panic!(
                "ferry gc printed no JSON report ({e}): {}",
                String::from_utf8_lossy(&out)
            )
        })
    }

    /// Narinfo and NAR of every path in `infos`, as served.
    fn check_served(&self, infos: &[PathInfo]) -> Result<(), String> {
        for i in infos {
            check_served_path(&self.url(), CACHE, &self.token, i)?;
        }
        Ok(())
    }

    /// Nix copies `top` (and its closure) from the cache into a fresh
    /// store; the trees must be the local ones.
    fn substitute(&self, top: &str, paths: &[String]) {
        let store = nix_copy_from(
            &format!("{}/{CACHE}", self.url()),
            &self.pubkey,
            Some(&self.netrc),
            top,
        );
        for p in paths {
            compare_trees(Path::new(p), &store.real_path(p));
        }
    }
}

/// A read-only look at the server's database.
fn open_db(data: &Path) -> Connection {
    let c = Connection::open_with_flags(
        data.join("ferry.db"),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .expect("open ferry.db read-only");
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c
}

/// The latest upload of `store_path`: (state, parts recorded).
fn upload_of(c: &Connection, store_path: &str) -> Option<(String, u64)> {
    c.query_row(
        "SELECT u.state, (SELECT count(*) FROM upload_parts p WHERE p.upload_id = u.id)
         FROM uploads u WHERE u.store_path = ?1 ORDER BY u.created_at DESC, u.id DESC LIMIT 1",
        [store_path],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)),
    )
    .optional()
    .unwrap_or(None)
}

/// What the data dir held for `store_path` (the database as SIGKILL left it).
fn describe_upload(data: &Path, store_path: &str, total: u64) -> String {
    let c = open_db(data);
    match upload_of(&c, store_path) {
        None => "no upload".into(),
        Some((state, n)) if state == "open" => format!("open {n}/{total} parts"),
        Some((state, _)) => state,
    }
}

/// What the data dir holds after a GC run, and anything wrong with it.
struct DiskCheck {
    blobs: usize,
    open_uploads: usize,
    problems: Vec<String>,
}

/// After `ferry gc` with grace 0: blobs, NAR rows and upload dirs all
/// accounted for.
fn check_data_dir(data: &Path) -> DiskCheck {
    let c = open_db(data);
    let mut problems = vec![];
    let integrity: String = c.query_row("PRAGMA quick_check", [], |r| r.get(0)).unwrap();
    if integrity != "ok" {
        problems.push(format!("database quick_check: {integrity}"));
    }
    let mut referenced: HashMap<String, u64> = HashMap::new();
    {
        let mut st = c.prepare("SELECT blob, size FROM nar_chunks").unwrap();
        let rows = st
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .unwrap();
        for row in rows {
            let (blob, size) = row.unwrap();
            referenced.insert(blob, size);
        }
    }
    let blob_dir = data.join("blobs");
    let files = files_under(&blob_dir);
    for (p, size) in &files {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        match referenced.get(&name) {
            None => problems.push(format!("orphan blob {} ({size} bytes)", p.display())),
            Some(want) if want != size => problems.push(format!(
                "blob {name} has {size} bytes, nar_chunks says {want}"
            )),
            Some(_) => {}
        }
    }
    for blob in referenced.keys() {
        let p = blob_dir.join(&blob[..2]).join(&blob[2..4]).join(blob);
        if !p.is_file() {
            problems.push(format!("blob {blob} is referenced but missing"));
        }
    }
    let pathless: i64 = c
        .query_row(
            "SELECT count(*) FROM nars n WHERE NOT EXISTS (SELECT 1 FROM paths p WHERE p.nar_id = n.id)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    if pathless > 0 {
        problems.push(format!("{pathless} NAR rows without a path survived GC"));
    }
    let closed_parts: i64 = c
        .query_row(
            "SELECT count(*) FROM upload_parts p JOIN uploads u ON u.id = p.upload_id
             WHERE u.state IN ('committed', 'failed')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    if closed_parts > 0 {
        problems.push(format!(
            "{closed_parts} part rows kept for finished uploads"
        ));
    }
    let mut states: HashMap<String, String> = HashMap::new();
    {
        let mut st = c.prepare("SELECT id, state FROM uploads").unwrap();
        let rows = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .unwrap();
        for row in rows {
            let (id, state) = row.unwrap();
            states.insert(id, state);
        }
    }
    let mut open_uploads = 0;
    let uploads_dir = data.join("uploads");
    for e in std::fs::read_dir(&uploads_dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let p = e.path();
        if name == "staged" {
            if !files_under(&p).is_empty() {
                problems.push(format!("files left in {}", p.display()));
            }
            continue;
        }
        match states.get(&name).map(String::as_str) {
            Some("open") => open_uploads += 1,
            Some(state) => problems.push(format!(
                "upload dir {} left for a {state} upload: {:?}",
                p.display(),
                files_under(&p)
            )),
            None => problems.push(format!(
                "upload dir {} belongs to no upload: {:?}",
                p.display(),
                files_under(&p)
            )),
        }
    }
    // Acknowledged parts of uploads still open must be on disk.
    let mut st = c
        .prepare(
            "SELECT p.upload_id, p.n, p.size FROM upload_parts p JOIN uploads u ON u.id = p.upload_id
             WHERE u.state = 'open'",
        )
        .unwrap();
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)? as u64,
            ))
        })
        .unwrap();
    for row in rows {
        let (id, n, size) = row.unwrap();
        let p = uploads_dir.join(&id).join(format!("{n}.part"));
        match std::fs::metadata(&p) {
            Ok(m) if m.len() == size => {}
            Ok(m) => problems.push(format!(
                "{}: {} bytes, recorded {size}",
                p.display(),
                m.len()
            )),
            Err(e) => problems.push(format!("acknowledged part {}: {e}", p.display())),
        }
    }
    DiskCheck {
        blobs: files.len(),
        open_uploads,
        problems,
    }
}

/// Compressed size of `path`'s NAR at the client's zstd level (3), in parts.
fn parts_of(path: &str) -> u64 {
    let mut child = nix_cmd("nix-store")
        .arg("--dump")
        .arg(path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut enc = zstd::stream::read::Encoder::new(stdout, 3).unwrap();
    let n = std::io::copy(&mut enc, &mut std::io::sink()).unwrap();
    assert!(child.wait().unwrap().success());
    n.div_ceil(PART_BYTES)
}

fn spec(name: &str) -> ClosureSpec {
    ClosureSpec::new(name)
        .random("crash-big", BIG)
        .compressible("crash-text", TEXT)
}

/// Waits for `child` until `deadline`; `None` if it is still running.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// How a trial's kill is timed.
#[derive(Debug)]
enum Kill {
    /// After this long from the push's start.
    Timed(Duration),
    /// The moment the big upload is `verifying`, then after this extra
    /// delay.
    AtVerifying(Duration),
}

/// Where a kill landed, from the database at the kill.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Landed {
    /// The big path's upload open with some of its parts (or not begun).
    MidUpload,
    /// An upload of the closure `verifying`: the server verifying or
    /// publishing it.
    Finishing,
    /// The big path done, the top one not yet (or the reverse).
    Between,
    /// The push had ended before the kill.
    Done,
}

/// Classifies a kill by the database as it left it.
fn landed(data: &Path, big: &str, top: &str, parts: u64, finished: bool) -> Landed {
    if finished {
        return Landed::Done;
    }
    let c = open_db(data);
    let (b, t) = (upload_of(&c, big), upload_of(&c, top));
    let verifying = |u: &Option<(String, u64)>| u.as_ref().is_some_and(|(s, _)| s == "verifying");
    if verifying(&b) || verifying(&t) {
        Landed::Finishing
    } else {
        match b {
            None => Landed::MidUpload,
            Some((s, n)) if s == "open" && n < parts => Landed::MidUpload,
            _ => Landed::Between,
        }
    }
}

/// What one trial did.
struct Trial {
    pushed: Vec<PathInfo>,
    line: String,
    landed: Landed,
}

/// The kill a trial aims at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Aim {
    Early,
    Anywhere,
    Verifying,
}

fn trial(
    bench: &mut Bench,
    rng: &mut StdRng,
    (k, of): (usize, usize),
    aim: Aim,
    calib: Duration,
    parts: u64,
) -> Trial {
    let t0 = Instant::now();
    let closure = build_closure(&spec("crash-trial"));
    let big = closure.blobs[0].clone();
    let ms = calib.as_millis() as u64;
    let kill = match aim {
        Aim::Early => Kill::Timed(Duration::from_millis(rng.gen_range(ms / 10..=ms * 6 / 10))),
        Aim::Anywhere => Kill::Timed(Duration::from_millis(rng.gen_range(0..=ms * 9 / 10))),
        Aim::Verifying => Kill::AtVerifying(Duration::from_millis(rng.gen_range(0..=3))),
    };
    let down = Duration::from_millis(rng.gen_range(0..=700));
    let logs = tempfile::tempdir().unwrap();
    let (out_log, err_log) = (logs.path().join("stdout"), logs.path().join("stderr"));
    let args = bench.push_args(&closure.top);
    let started = Instant::now();
    let mut child = bench
        .client
        .cmd(&args)
        .stdout(File::create(&out_log).unwrap())
        .stderr(File::create(&err_log).unwrap())
        .spawn()
        .unwrap();

    let mut seen = String::new();
    match &kill {
        Kill::Timed(d) => std::thread::sleep(*d),
        Kill::AtVerifying(extra) => {
            let db = open_db(bench.data_dir());
            let deadline = Instant::now() + PUSH_DEADLINE;
            loop {
                if let Some((state, n)) = upload_of(&db, &big)
                    && state != "open"
                {
                    seen = format!("saw {state} {n}/{parts}, ");
                    break;
                }
                if child.try_wait().unwrap().is_some() {
                    seen = "push ended first, ".into();
                    break;
                }
                assert!(Instant::now() < deadline, "the push never reached complete");
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(db);
            std::thread::sleep(*extra);
        }
    }
    let killed_at = started.elapsed();
    let finished_before = child.try_wait().unwrap().is_some();
    bench.kill9();
    let landed = landed(bench.data_dir(), &big, &closure.top, parts, finished_before);
    let at_kill = format!(
        "big {}, top {}",
        describe_upload(bench.data_dir(), &big, parts),
        describe_upload(bench.data_dir(), &closure.top, 1)
    );
    std::thread::sleep(down);
    bench.restart();

    let mut reruns = 0;
    let status = wait_until(&mut child, started + PUSH_DEADLINE).unwrap_or_else(|| {
        let _ = child.kill();
        panic!(
            "trial {k}: the push did not finish within {PUSH_DEADLINE:?} of the restart; stderr:\n{}",
            tail(&err_log)
        )
    });
    if !status.success() {
        eprintln!(
            "trial {k}: the push gave up ({status}); running it again. Its stderr:\n{}",
            tail(&err_log)
        );
        // One re-run, as the module doc promises: no more.
        reruns += 1;
        let out = bench.client.cmd(&args).output().unwrap();
        assert!(
            out.status.success(),
            "trial {k}: the re-run of `ferry push` after the restart failed too:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let push_time = started.elapsed();
    assert!(
        !bench.client.push_state_left("crash", CACHE),
        "trial {k}: the push state is removed after a complete push"
    );

    let refs: Vec<&str> = closure.paths.iter().map(String::as_str).collect();
    let infos = path_info(&refs, false);
    if let Err(e) = bench.check_served(&infos) {
        panic!("trial {k} (kill {kill:?}, at kill: {at_kill}): {e}");
    }
    let report = bench.gc();
    let disk = check_data_dir(bench.data_dir());
    assert!(
        disk.problems.is_empty(),
        "trial {k} (kill {kill:?}, at kill: {at_kill}), after GC {report}:\n{}",
        disk.problems.join("\n")
    );
    bench.substitute(&closure.top, &closure.paths);

    let how = if finished_before {
        "push had finished".to_owned()
    } else if reruns == 0 {
        "client resumed by itself".to_owned()
    } else {
        format!("push re-run {reruns}x")
    };
    let line = format!(
        "trial {}/{of}: kill {} at {:.2}s ({seen}db: {at_kill}: {landed:?}), down {}ms; {how}; push {:.1}s; \
         gc removed {} blobs, {} uploads; {} blobs, {} open uploads left; ok in {:.1}s",
        k + 1,
        match aim {
            Aim::Early => "early",
            Aim::Anywhere => "timed",
            Aim::Verifying => "at-verifying",
        },
        killed_at.as_secs_f64(),
        down.as_millis(),
        push_time.as_secs_f64(),
        report["blobs_removed"],
        report["uploads_removed"],
        disk.blobs,
        disk.open_uploads,
        t0.elapsed().as_secs_f64(),
    );
    Trial {
        pushed: infos,
        line,
        landed,
    }
}

#[test]
fn pushes_finish_and_stay_consistent_when_the_server_is_sigkilled() {
    let t = Instant::now();
    let trials: usize = env_num("FERRY_CRASH_TRIALS").unwrap_or(CI_TRIALS);
    let seed = seed_from_env("FERRY_CRASH_SEED");
    println!(
        "crash campaign: {trials} trials, seed {seed} (FERRY_CRASH_SEED={seed} replays the draws)"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let mut bench = Bench::start();

    // Calibration: one push with no kill, to know how long a push takes.
    let calib_closure = build_closure(&spec("crash-calib"));
    let parts = parts_of(&calib_closure.blobs[0]);
    let started = Instant::now();
    bench.client.ok(&bench.push_args(&calib_closure.top));
    let calib = started.elapsed();
    let refs: Vec<&str> = calib_closure.paths.iter().map(String::as_str).collect();
    let mut pushed = path_info(&refs, false);
    bench.check_served(&pushed).unwrap();
    println!(
        "calibration: an uninterrupted push of {} MiB ({parts} parts of {PART_SIZE}) takes {:.2}s",
        (BIG + TEXT) / MIB,
        calib.as_secs_f64()
    );

    let mut lines = vec![];
    let mut landed: HashMap<Landed, usize> = HashMap::new();
    let count = |l: &HashMap<Landed, usize>, c: Landed| l.get(&c).copied().unwrap_or(0);
    // Each class must be seen at least once (when there are trials
    // enough to aim at each); up to three extra trials aim at a short one.
    let needs = |l: &HashMap<Landed, usize>| -> Option<Aim> {
        if trials < 3 {
            None
        } else if count(l, Landed::MidUpload) == 0 {
            Some(Aim::Early)
        } else if count(l, Landed::Finishing) == 0 {
            Some(Aim::Verifying)
        } else {
            None
        }
    };
    let mut k = 0;
    while k < trials || (k < trials + 3 && needs(&landed).is_some()) {
        let aim = match (k >= trials, k % 3) {
            (true, _) => needs(&landed).unwrap_or(Aim::Anywhere),
            (false, 0) => Aim::Early,
            (false, 1) => Aim::Verifying,
            (false, _) => Aim::Anywhere,
        };
        let tr = trial(&mut bench, &mut rng, (k, trials), aim, calib, parts);
        println!("{}", tr.line);
        *landed.entry(tr.landed).or_default() += 1;
        lines.push(tr.line);
        pushed.extend(tr.pushed);
        k += 1;
    }
    let mut classes: Vec<_> = landed.iter().collect();
    classes.sort();
    println!("crash campaign: kills landed {classes:?}");
    assert_eq!(
        needs(&landed),
        None,
        "kills never landed mid-upload or while finishing: {classes:?}"
    );

    // Nothing an earlier trial published was lost to a later kill or GC.
    let t_all = Instant::now();
    bench.check_served(&pushed).unwrap();
    let resumed = lines
        .iter()
        .filter(|l| l.contains("resumed by itself"))
        .count();
    let rerun = lines.iter().filter(|l| l.contains("re-run")).count();
    let at_complete = count(&landed, Landed::Finishing);
    println!(
        "crash campaign: {k} trials (seed {seed}; {at_complete} killed while finishing), \
         {resumed} resumed by the client, {rerun} needed a re-run, all {} paths re-checked in {:.1}s; total {:.1}s",
        pushed.len(),
        t_all.elapsed().as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
}
