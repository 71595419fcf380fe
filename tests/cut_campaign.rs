//! Cut-connection campaign (issue 7): many `ferry push`es through a proxy
//! that drops 20 % of the body-carrying connections in the middle of the
//! request body; every push must finish on its own, with verified content.
//!
//! The real `ferry serve` runs behind the flaky proxy of
//! [`common::flaky`]: of the connections that forward 64 KiB of client
//! bytes (so: ones that carry a part body), every fifth is shut, both
//! ways, at a seeded offset between 64 KiB and 3 MiB of its request bytes:
//! almost always inside the body of one of its 1 MiB parts, now and then
//! in a request head, or right after a body the server has whole but not
//! yet answered. The client (`ferry push` with its own home, logged in
//! through the proxy) has to notice the cut, retry and resume by itself:
//! one invocation per push, exit 0, no help.
//!
//! Each push builds a fresh closure with real Nix (~0.2 s): two leaves of
//! 1–8 MiB of new random bytes (so the server can link nothing by NarHash
//! and every part really travels) and a top path referencing both, pushed
//! with 1 MiB parts, two in flight. For every push:
//! - `ferry push` exits 0 within its deadline, reports every path as
//!   pushed (none deduplicated), and removes its resume state;
//! - while the push runs, a watcher polls the server directly (not through
//!   the proxy) for the closure's narinfos; the moment one appears, the
//!   narinfo must carry the local NarHash/NarSize/References and its NAR
//!   must decompress to exactly those bytes ([`common::served`]), and the
//!   path's references must already be served: nothing is ever visible
//!   half-published, nor before what it refers to;
//! - a push that fails anyway is a finding: its unpublished paths must not
//!   be served, a second `ferry push` is tried only to tell whether a
//!   re-run would have rescued it, and the test fails at the end.
//!
//! At the end: cuts landed inside a request body (as the proxy's own
//! HTTP/1.1 framing saw them) in at least a tenth of the pushes, the
//! client retried at least once per cut (each cut breaks a request in
//! flight), no upload is left uncommitted on the server nor any file
//! under its `uploads/` dir (a cut part must not leave its temp file), and
//! every pushed path is still served with the narinfo first seen.
//!
//! `FERRY_CUT_PUSHES` sets the number of pushes (default and CI: 100),
//! `FERRY_CUT_SEED` the seed of the leaf sizes and the cut offsets
//! (printed; default: from the clock). One line per push and a summary go
//! to stdout (`--nocapture`).

mod common;

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::client::FerryClient;
use common::flaky::{FlakyOptions, FlakyProxy, start_flaky_proxy};
use common::served::{check_served_path, parse_narinfo};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MIB: u64 = 1 << 20;
/// Pushes in CI (and by default).
const CI_PUSHES: usize = 100;
/// Share of body-carrying connections the proxy cuts, in percent.
const DROP_PERCENT: u64 = 20;
/// A connection counts as body-carrying once it forwarded this many client
/// bytes; a cut one is shut somewhere before the second number.
const CUT_AFTER: (u64, u64) = (64 * 1024, 3 * MIB);
const PART_SIZE: &str = "1MiB";
const JOBS: &str = "2";
/// Each leaf holds this many random bytes (inclusive range).
const LEAF_BYTES: (u64, u64) = (MIB, 8 * MIB);
/// Longest one push may take, retries included.
const PUSH_DEADLINE: Duration = Duration::from_secs(150);
/// How often the watcher asks for the closure's narinfos.
const POLL: Duration = Duration::from_millis(20);

const SERVER: &str = "cut";
const CACHE: &str = "camp";
const TARGET: &str = "cut:camp";

/// The server, the proxy in front of it and the client that pushes through.
struct Bench {
    data: tempfile::TempDir,
    server: ServerProcess,
    /// The server itself, for the watcher (never through the proxy).
    direct: SocketAddr,
    proxy: FlakyProxy,
    token: String,
    client: FerryClient,
}

impl Bench {
    fn start(seed: u64) -> Bench {
        let data = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(data.path(), free_port());
        let token = server.admin_token.clone().expect("admin token");
        let direct: SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
        let proxy = start_flaky_proxy(
            direct,
            FlakyOptions {
                drop_percent: DROP_PERCENT,
                cut_after: CUT_AFTER,
                bytes_per_sec: None,
                max_connections: u64::MAX,
                seed,
            },
        );
        let client = FerryClient::new();
        client.ok(&["login", SERVER, &proxy.url(), &token]);
        client.ok(&["cache", "create", TARGET]);
        Bench {
            data,
            server,
            direct,
            proxy,
            token,
            client,
        }
    }

    fn push_args<'a>(&self, top: &'a str) -> Vec<&'a str> {
        vec!["push", TARGET, "--part-size", PART_SIZE, "-j", JOBS, top]
    }

    /// `GET path` straight to the server: (status, body).
    fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        raw_get(self.direct, path, &self.token)
    }

    fn narinfo(&self, info: &PathInfo) -> std::io::Result<(u16, String)> {
        self.get(&format!("/{CACHE}/{}.narinfo", info.hash_part()))
    }
}

/// A minimal HTTP/1.1 GET (one connection, `Connection: close`): cheap
/// enough to poll with, unlike a curl process per request.
fn raw_get(addr: SocketAddr, path: &str, token: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Connection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {head:?}")))?;
    Ok((status, body.to_owned()))
}

/// What the watcher saw of one path.
#[derive(Clone, Debug)]
enum Seen {
    /// Never served (with the last polling error, if any).
    Never(Option<String>),
    /// Served, and right from the first sight: the narinfo fields that
    /// were checked, and when it appeared (from the push's start).
    Ok {
        fields: HashMap<String, String>,
        after: Duration,
    },
    /// Served, but wrong at first sight.
    Bad(String),
}

/// Polls the narinfos of `infos` until `finished` is set, then once more;
/// checks each path the moment it first shows up.
fn watch(bench: &Bench, infos: &[PathInfo], finished: &AtomicBool, started: Instant) -> Vec<Seen> {
    let mut seen: Vec<Seen> = vec![Seen::Never(None); infos.len()];
    loop {
        // Read before the pass: after the push ended, one full pass follows.
        let last = finished.load(Ordering::SeqCst);
        for (i, info) in infos.iter().enumerate() {
            if !matches!(seen[i], Seen::Never(_)) {
                continue;
            }
            match bench.narinfo(info) {
                Ok((200, text)) => seen[i] = first_sight(bench, infos, info, &text, started),
                Ok((404, _)) => {}
                Ok((status, body)) => {
                    seen[i] = Seen::Never(Some(format!("narinfo status {status}: {body}")))
                }
                Err(e) => seen[i] = Seen::Never(Some(format!("narinfo request: {e}"))),
            }
        }
        if last {
            return seen;
        }
        std::thread::sleep(POLL);
    }
}

/// A path was just published: its references must already be served, and
/// what is served must be the local path, byte for byte.
fn first_sight(
    bench: &Bench,
    infos: &[PathInfo],
    info: &PathInfo,
    text: &str,
    started: Instant,
) -> Seen {
    let after = started.elapsed();
    for r in info.references.iter().filter(|r| **r != info.path) {
        let Some(ri) = infos.iter().find(|i| i.path == *r) else {
            continue;
        };
        match bench.narinfo(ri) {
            Ok((200, _)) => {}
            other => {
                return Seen::Bad(format!(
                    "{} was served while its reference {r} was not ({other:?})",
                    info.path
                ));
            }
        }
    }
    let fields = parse_narinfo(text);
    if fields.get("StorePath") != Some(&info.path) {
        return Seen::Bad(format!(
            "the narinfo of {} names another path:\n{text}",
            info.path
        ));
    }
    let base = format!("http://{}", bench.direct);
    match check_served_path(&base, CACHE, &bench.token, info) {
        Ok(_) => Seen::Ok { fields, after },
        Err(e) => Seen::Bad(format!("at first sight ({after:?} into the push): {e}")),
    }
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
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `pushed N` and `deduplicated M` from the client's closing summary line.
fn summary_counts(stderr: &str) -> Option<(u64, u64)> {
    let line = stderr.lines().rev().find(|l| l.starts_with("pushed "))?;
    let num_after = |key: &str| -> Option<u64> {
        line.split(key)
            .nth(1)?
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some((num_after("pushed ")?, num_after("deduplicated ")?))
}

/// A client retry warning, boiled down to what was retried and why:
/// `PUT part: connection reset by peer (os error 104)`,
/// `PUT part: 400 part_truncated`.
fn retry_kind(line: &str) -> String {
    let line = line.split("; retrying in").next().unwrap_or(line);
    let Some((at, method)) = ["PUT ", "POST ", "GET ", "DELETE ", "PATCH "]
        .iter()
        .find_map(|m| line.find(m).map(|at| (at, m.trim())))
    else {
        return line.trim().to_owned();
    };
    let rest = &line[at + method.len() + 1..];
    let url = rest.split_whitespace().next().unwrap_or("");
    let route = if url.contains("/parts/") {
        "part"
    } else if url.ends_with("/complete") {
        "complete"
    } else if url.ends_with("/missing") {
        "missing"
    } else if url.ends_with("/uploads") {
        "create upload"
    } else if url.contains("/uploads/") {
        "upload status"
    } else {
        "other"
    };
    let why = match rest.split_once("server answered ") {
        Some((_, a)) => a.split(':').next().unwrap_or(a).to_owned(),
        None => rest.rsplit(": ").next().unwrap_or(rest).to_owned(),
    };
    format!("{method} {route}: {why}")
}

/// One push that did not end as it should.
struct Failure {
    push: usize,
    what: String,
}

/// What one push did.
struct Pushed {
    infos: Vec<PathInfo>,
    seen: Vec<Seen>,
    nar_bytes: u64,
    /// The client's retry warnings, boiled down ([`retry_kind`]).
    retries: Vec<String>,
    took: Duration,
}

fn one_push(bench: &Bench, rng: &mut StdRng, k: usize, failures: &mut Vec<Failure>) -> Pushed {
    let (a, b) = (
        rng.gen_range(LEAF_BYTES.0..=LEAF_BYTES.1),
        rng.gen_range(LEAF_BYTES.0..=LEAF_BYTES.1),
    );
    let closure = build_closure(
        &ClosureSpec::new("cut-push")
            .random("cut-a", a)
            .random("cut-b", b),
    );
    let refs: Vec<&str> = closure.paths.iter().map(String::as_str).collect();
    let infos = path_info(&refs, false);
    let nar_bytes = infos.iter().map(|i| i.nar_size).sum();

    let logs = tempfile::tempdir().unwrap();
    let (out_log, err_log) = (logs.path().join("stdout"), logs.path().join("stderr"));
    let args = bench.push_args(&closure.top);
    let finished = AtomicBool::new(false);
    let started = Instant::now();
    let mut child = bench
        .client
        .cmd(&args)
        .stdout(File::create(&out_log).unwrap())
        .stderr(File::create(&err_log).unwrap())
        .spawn()
        .unwrap();
    let (status, seen) = std::thread::scope(|s| {
        let watcher = s.spawn(|| watch(bench, &infos, &finished, started));
        let status = wait_until(&mut child, started + PUSH_DEADLINE);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        finished.store(true, Ordering::SeqCst);
        (status, watcher.join().expect("the watcher panicked"))
    });
    let took = started.elapsed();
    let stderr = std::fs::read_to_string(&err_log).unwrap_or_default();
    let retries: Vec<String> = stderr
        .lines()
        .filter(|l| l.contains("retrying in"))
        .map(retry_kind)
        .collect();
    let mut fail = |what: String| failures.push(Failure { push: k, what });

    // Whatever the push's fate, nothing served may be wrong.
    for s in &seen {
        if let Seen::Bad(e) = s {
            fail(e.clone());
        }
    }
    match status {
        Some(st) if st.success() => {
            for (info, s) in infos.iter().zip(&seen) {
                if let Seen::Never(err) = s {
                    fail(format!(
                        "the push exited 0 but {} is not served ({err:?})",
                        info.path
                    ));
                }
            }
            match summary_counts(&stderr) {
                Some((pushed, 0)) if pushed == infos.len() as u64 => {}
                other => fail(format!(
                    "expected all {} paths pushed and none deduplicated, the summary says \
                     {other:?}:\n{}",
                    infos.len(),
                    tail(&stderr, 5)
                )),
            }
            if bench.client.push_state_left(SERVER, CACHE) {
                fail("push state is left after a complete push".into());
            }
        }
        _ => {
            let how = match status {
                Some(st) => format!("`ferry push` failed ({st})"),
                None => format!("`ferry push` did not end within {PUSH_DEADLINE:?}"),
            };
            let published: Vec<&str> = infos
                .iter()
                .zip(&seen)
                .filter(|(_, s)| !matches!(s, Seen::Never(_)))
                .map(|(i, _)| i.base())
                .collect();
            // A second invocation, only to say whether a re-run rescues it.
            let rerun = bench.client.cmd(&args).output().unwrap();
            fail(format!(
                "{how} after {} retries ({} of {} paths published: {published:?}); \
                 a second `ferry push` {}. stderr of the first:\n{}",
                retries.len(),
                published.len(),
                infos.len(),
                if rerun.status.success() {
                    "then finished".to_owned()
                } else {
                    format!(
                        "failed too:\n{}",
                        tail(&String::from_utf8_lossy(&rerun.stderr), 10)
                    )
                },
                tail(&stderr, 20)
            ));
        }
    }
    Pushed {
        infos,
        seen,
        nar_bytes,
        retries,
        took,
    }
}

#[test]
fn pushes_complete_with_verified_content_when_a_fifth_of_connections_are_cut() {
    let t = Instant::now();
    let pushes: usize = env_num("FERRY_CUT_PUSHES").unwrap_or(CI_PUSHES);
    let seed = seed_from_env("FERRY_CUT_SEED");
    println!(
        "cut campaign: {pushes} pushes, {DROP_PERCENT}% of body-carrying connections cut, \
         seed {seed} (FERRY_CUT_SEED={seed} replays the sizes and cut offsets)"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let bench = Bench::start(seed);

    let mut failures = vec![];
    let mut all: Vec<(PathInfo, Seen)> = vec![];
    let mut nar_bytes = 0u64;
    let mut retries: HashMap<String, usize> = HashMap::new();
    let mut pushes_cut_mid_body = 0;
    for k in 0..pushes {
        let (conns, cut) = (bench.proxy.connections(), bench.proxy.cut());
        let mid = bench.proxy.cut_mid_body();
        let before = failures.len();
        let p = one_push(&bench, &mut rng, k, &mut failures);
        let mut first: Vec<String> = p
            .infos
            .iter()
            .zip(&p.seen)
            .map(|(i, s)| {
                let name = &i.base()[33..];
                match s {
                    Seen::Ok { after, .. } => format!("{name} {:.2}s", after.as_secs_f64()),
                    _ => format!("{name} never"),
                }
            })
            .collect();
        first.sort();
        println!(
            "push {}/{pushes}: {} paths, {:.1} MiB NAR, {} connections, {} cut, {} retries, \
             {:.2}s; first served: {}{}",
            k + 1,
            p.infos.len(),
            p.nar_bytes as f64 / MIB as f64,
            bench.proxy.connections() - conns,
            bench.proxy.cut() - cut,
            p.retries.len(),
            p.took.as_secs_f64(),
            first.join(", "),
            if failures.len() > before {
                " FAILED"
            } else {
                ""
            }
        );
        nar_bytes += p.nar_bytes;
        if bench.proxy.cut_mid_body() > mid {
            pushes_cut_mid_body += 1;
        }
        for r in p.retries {
            *retries.entry(r).or_default() += 1;
        }
        all.extend(p.infos.into_iter().zip(p.seen));
    }

    // No upload is left behind, open or failed.
    let r = http_request(
        "GET",
        &format!("{}/_api/v1/caches/{CACHE}/uploads", bench.server.url),
        &[&format!("Authorization: Bearer {}", bench.token)],
        Body::None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let left = r.json()["uploads"].as_array().cloned().unwrap_or_default();
    if !left.is_empty() {
        failures.push(Failure {
            push: pushes,
            what: format!("uploads left uncommitted on the server: {left:?}"),
        });
    }

    // Nothing is left in the upload area: every upload committed (its dir
    // removed with it), and no cut part left a temp file behind.
    let left_files = files_under(&bench.data.path().join("uploads"));
    if !left_files.is_empty() {
        failures.push(Failure {
            push: pushes,
            what: format!("files left under the server's uploads/: {left_files:?}"),
        });
    }

    // Every path published is still served as first seen.
    let mut served = 0;
    for (info, s) in &all {
        let Seen::Ok { fields, .. } = s else { continue };
        served += 1;
        let now = bench
            .narinfo(info)
            .map(|(st, text)| (st, parse_narinfo(&text)));
        let same = matches!(&now, Ok((200, f)) if ["StorePath", "URL", "NarHash", "NarSize", "FileHash"]
            .iter()
            .all(|k| f.get(*k) == fields.get(*k)));
        if !same {
            failures.push(Failure {
                push: pushes,
                what: format!("{} was served as {fields:?}, now {now:?}", info.path),
            });
        }
    }

    let (conns, cut) = (bench.proxy.connections(), bench.proxy.cut());
    let mut kinds: Vec<(String, usize)> = retries.into_iter().collect();
    kinds.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let retried: usize = kinds.iter().map(|k| k.1).sum();
    for (kind, n) in &kinds {
        println!("  retried {n}x: {kind}");
    }
    println!(
        "cut campaign: {pushes} pushes ({} paths, {:.0} MiB of NAR) in {:.1}s; proxy: {conns} \
         connections, {cut} cut; {retried} client retries; {} failures; seed {seed}",
        all.len(),
        nar_bytes as f64 / MIB as f64,
        t.elapsed().as_secs_f64(),
        failures.len(),
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures
            .iter()
            .map(|f| format!("push {}: {}", f.push + 1, f.what))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(served, all.len());
    let mid = bench.proxy.cut_mid_body();
    println!(
        "cut campaign: {mid} of {cut} cuts inside a body, in {pushes_cut_mid_body} of {pushes} pushes"
    );
    assert!(
        pushes_cut_mid_body * 10 >= pushes,
        "cuts landed inside a body in only {pushes_cut_mid_body} of {pushes} pushes"
    );
    assert!(
        retried as u64 >= cut,
        "the client retried {retried} times for {cut} cut connections: some cut went unnoticed"
    );
}
