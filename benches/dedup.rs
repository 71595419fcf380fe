//! Chunked pushes: what crosses the wire, and what chunking costs.
//!
//! `ferry push` as a user runs it (real store paths built with Nix, a real
//! `ferry serve`, nginx with `client_max_body_size 100m` in front, the
//! tunnel stand-in), the bytes on the wire counted at the proxy
//! (`$request_length`: request line, headers and body). In one run:
//!
//! 1. a 1 GiB text-like path, then a version with about 1 % changed: 100
//!    edited regions of 0.01 % each spread over it, plus a 4 KiB insertion
//!    that shifts every later offset. The second push's bytes beside the
//!    first's (goal ≤ 5 %);
//! 2. two builds of a "package" (64 files of 2 MiB) that differ only in an
//!    embedded version string: a store path reference to a dependency,
//!    whose hash and version change, twice in every file (as an RPATH
//!    and a string do). The second push's bytes (no goal: every
//!    chunk holding a reference must go);
//! 3. the first push of a fresh 1 GiB text-like path, chunked vs
//!    `--no-chunking` (today's whole-NAR push), each into a fresh server,
//!    best of two alternating runs (goal: chunked no more than 5 % slower);
//!    Beside it, the local limit of producing the same bytes: `nix-store
//!    --dump | zstd -3 -T0 > file` with fsync (goal: the push ≥ 0.8× of
//!    it, the end-to-end figure);
//! 4. ingest of a fresh 1 GiB text-like NAR, chunked beforehand as
//!    `ferry push` does (so the client's work is not timed): create,
//!    manifest, parts of 64 MiB with 4 in flight, complete, through nginx
//!    and straight to ferry (nginx's copy costs CPU on the same cores).
//!    Beside it, from the same run: `dd conv=fsync` of the wire bytes (the
//!    median of three: it moves a lot on this VM), and SHA-256 of the NAR
//!    bytes with the server's hashing code (sha2); the goal is ingest
//!    time ≤ max of the two / 0.8. Also the floor: the verdict's own work
//!    (frames decoded, chunks hashed, both SHA-256s) timed on one core and
//!    spread over every core, as if nothing else ran.
//!
//! Run: `cargo bench --bench dedup`. Knobs: `FERRY_BENCH_DEDUP_MIB`
//! (default 1024), `FERRY_BENCH_DEDUP_STEPS` (default `1,2,3,4`),
//! `FERRY_BENCH_PART_MIB` (step 4's part size, default 64). Needs Nix (single-user, as root here; the bench sets
//! its own `NIX_CONFIG`) and nginx. The store paths it builds are deleted
//! at the end.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest as _;
use support::nginx::Nginx;
use support::push::{NIX_CONFIG, Site, build_copy};
use support::{Server, at_least, at_most, dd_fsync, env_num, mbps, work_dir};

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// `len` bytes of text-like lines (words from a 1024-word vocabulary):
/// zstd -3 shrinks it about 3×.
fn text_like(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let words: Vec<Vec<u8>> = (0..1024)
        .map(|_| {
            let n = 3 + (rng.next() % 8) as usize;
            (0..n).map(|_| b'a' + (rng.next() % 26) as u8).collect()
        })
        .collect();
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        let r = rng.next();
        out.extend_from_slice(&words[(r % 1024) as usize]);
        out.push(if r >> 60 == 0 { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

/// About 1 % of `base` changed: 100 regions spread over it, each
/// overwritten with other text, and a 4 KiB insertion at a third.
fn one_percent_changed(base: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    let region = base.len() / 10_000; // 0.01 % each, 100 of them
    let other = text_like(region, 99);
    for k in 0..100 {
        let at = base.len() / 101 * (k + 1);
        out[at..at + region].copy_from_slice(&other);
    }
    let third = out.len() / 3;
    out.splice(third..third, text_like(4096, 98));
    out
}

fn write(path: &Path, bytes: &[u8]) -> PathBuf {
    std::fs::write(path, bytes).expect("write");
    path.to_owned()
}

/// A package directory: 64 files of 2 MiB, each with 2 references to
/// `/nix/store/<hash>-libdep-<version>/lib` (as an ELF file has its RPATH
/// near the start and a string in its data; a script, its shebang).
fn package(dir: &Path, hash: &str, version: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir");
    let reference = format!("/nix/store/{hash}-libdep-{version}/lib");
    for f in 0..64u64 {
        let mut bytes = text_like(2 << 20, 1000 + f);
        for at in [bytes.len() / 10, bytes.len() / 10 * 6] {
            bytes[at..at + reference.len()].copy_from_slice(reference.as_bytes());
        }
        std::fs::write(dir.join(format!("file-{f}")), bytes).expect("write");
    }
    dir.to_owned()
}

fn main() {
    let mib: usize = env_num("FERRY_BENCH_DEDUP_MIB", 1024);
    let size = mib << 20;
    let work = work_dir();
    let w = work.path();
    let salt = format!("{}", std::process::id());
    let mut built = vec![];
    let steps = std::env::var("FERRY_BENCH_DEDUP_STEPS").unwrap_or_else(|_| "1,2,3,4".into());
    let step = |n: &str| steps.split(',').any(|s| s.trim() == n);
    println!("Chunked pushes through nginx, {mib} MiB text-like paths (2-core VM, one run):");

    // 1. A 1 % change.
    if step("1") {
        let v1 = text_like(size, 1);
        let v2 = one_percent_changed(&v1);
        let p1 = build_copy("dedup-v1", &write(&w.join("v1"), &v1), &salt);
        let p2 = build_copy("dedup-v2", &write(&w.join("v2"), &v2), &salt);
        built.extend([p1.clone(), p2.clone()]);
        drop((v1, v2));
        let site = Site::new(w);
        let (_, first) = site.push(&p1, &[]);
        let (_, second) = site.push(&p2, &[]);
        let share = second as f64 / first as f64;
        println!(
            "  1 % changed, second push      {:>5.1} % of the first   {}  ({second} bytes at the proxy; first {first}; NAR {size})",
            100.0 * share,
            at_most(share, 0.05, "5 %"),
        );
    }

    // 2. A version string inside every file.
    if step("2") {
        let site = Site::new(w);
        let a = package(&w.join("pkg-a"), "0a7dzn2m7m3p5gn5f1x1ysvl2lm7c4ii", "1.0");
        let b = package(&w.join("pkg-b"), "9kqv2lgm0bbj0sdd1l5ghzc4j4pbjyhm", "1.1");
        let pa = build_copy("dedup-pkg", &a, &salt);
        let pb = build_copy("dedup-pkg", &b, &format!("{salt}-b"));
        built.extend([pa.clone(), pb.clone()]);
        let (_, pkg_first) = site.push(&pa, &[]);
        let (_, pkg_second) = site.push(&pb, &[]);
        println!(
            "  version string in 64 files    {:>5.1} % of the first   ({pkg_second} bytes; first {pkg_first}; 2 references per 2 MiB file)",
            100.0 * pkg_second as f64 / pkg_first as f64,
        );
    }

    // 3. First push: chunked vs whole, fresh servers, alternating.
    let fresh = text_like(size, 2);
    if step("3") {
        let p3 = build_copy("dedup-fresh", &write(&w.join("fresh"), &fresh), &salt);
        built.push(p3.clone());
        let (mut chunked, mut whole) = (Duration::MAX, Duration::MAX);
        for round in 0..2 {
            for mode in if round == 0 {
                [true, false]
            } else {
                [false, true]
            } {
                let site = Site::new(w);
                let (t, _) = site.push(&p3, if mode { &[] } else { &["--no-chunking"] });
                if mode {
                    chunked = chunked.min(t);
                } else {
                    whole = whole.min(t);
                }
            }
        }
        let slower = chunked.as_secs_f64() / whole.as_secs_f64();
        println!(
            "  first push, chunked/whole     {slower:>5.2}×                 {}  (chunked {:.2} s, --no-chunking {:.2} s; best of 2 each)",
            at_most(slower, 1.05, "1.05×"),
            chunked.as_secs_f64(),
            whole.as_secs_f64(),
        );
        // The local limit of producing the same bytes: dump, compress on
        // every core, write and fsync (best of 2).
        let out = w.join("dump.nar.zst");
        let mut local = Duration::MAX;
        for _ in 0..2 {
            let t = Instant::now();
            let status = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "nix-store --dump '{p3}' | zstd -3 -T0 -q -f -o '{0}' && sync '{0}'",
                    out.display()
                ))
                .env("NIX_CONFIG", NIX_CONFIG)
                .status()
                .expect("sh");
            assert!(status.success(), "nix-store --dump | zstd");
            local = local.min(t.elapsed());
        }
        let _ = std::fs::remove_file(&out);
        let ratio = local.as_secs_f64() / chunked.as_secs_f64();
        println!(
            "  ferry push end to end        {ratio:>5.2}× the local limit {}  (ferry push through nginx {:.2} s; nix-store --dump | zstd -3 -T0 > file, fsync {:.2} s)",
            at_least(ratio, 0.8, "0.8×"),
            chunked.as_secs_f64(),
            local.as_secs_f64(),
        );
    }

    // 4. Server ingest of a chunked NAR, against dd and SHA-256.
    if step("4") {
        let nar = ferry::nar::write_nar(&ferry::nar::Tree::Regular {
            executable: false,
            contents: fresh,
        });
        let sha_start = Instant::now();
        let mut sha = sha2::Sha256::new();
        sha.update(&nar);
        let _ = sha.finalize();
        let sha_time = sha_start.elapsed();
        let chunks: Vec<ferry::client::chunk::Chunk> = ferry::client::chunk::chunks(
            std::io::Cursor::new(nar.clone()),
            ferry::client::chunk::DEFAULT_SIZES,
            3,
            2,
        )
        .collect::<std::io::Result<_>>()
        .expect("chunking");
        let wire: Vec<u8> = chunks
            .iter()
            .flat_map(|c| c.frame.iter().copied())
            .collect();
        let floor = Floor::measure(&chunks, &wire, sha_time);
        println!(
            "  the verdict's own work, one core: {:.2} s (frames decoded and chunks hashed with blake3 {:.2} s, SHA-256 of the frames {:.2} s, of the NAR {:.2} s); on {} cores at best {:.2} s",
            floor.cpu().as_secs_f64(),
            floor.decode.as_secs_f64(),
            floor.file_sha.as_secs_f64(),
            floor.nar_sha.as_secs_f64(),
            floor.cores,
            floor.wall().as_secs_f64(),
        );
        for (via, proxied) in [("through nginx", true), ("straight to ferry", false)] {
            let ingest = ingest(w, &nar, &chunks, &wire, proxied);
            // dd on this VM's disk moves between runs (0.24 to 1.7 s for
            // the same 342 MB within an hour): the median of three.
            let mut dd: Vec<f64> = (0..3).map(|_| dd_fsync(&ingest.wire_file, w)).collect();
            dd.sort_by(f64::total_cmp);
            let dd_times: Vec<String> = dd
                .iter()
                .rev()
                .map(|r| format!("{:.2}", ingest.wire_bytes as f64 / 1e6 / r))
                .collect();
            let dd_time = Duration::from_secs_f64(ingest.wire_bytes as f64 / 1e6 / dd[1]);
            let bound = sha_time.max(dd_time);
            let ratio = bound.as_secs_f64() / ingest.time.as_secs_f64();
            let best = bound.as_secs_f64() / floor.wall().as_secs_f64();
            println!(
                "  ingest, fresh chunked NAR, {via:<17} {ratio:>5.2}× the bound  {}  (ferry {:.2} s = {:.0} MB/s of NAR, chunk list answered at {:.2} s, last part at {:.2} s, server CPU {:.2} s; dd conv=fsync of the {} wire bytes {:.2} s, the median of {} s; SHA-256 of the NAR {:.2} s = {:.0} MB/s)",
                at_least(ratio, 0.8, "0.8×"),
                ingest.time.as_secs_f64(),
                mbps(nar.len() as u64, ingest.time),
                ingest.declared.as_secs_f64(),
                ingest.last_part.as_secs_f64(),
                ingest.server_cpu,
                ingest.wire_bytes,
                dd_time.as_secs_f64(),
                dd_times.join(", "),
                sha_time.as_secs_f64(),
                mbps(nar.len() as u64, sha_time),
            );
            println!(
                "    the verdict's work alone, on every core of this machine, would be {best:.2}× the bound (before receiving a byte, and with nothing else running)"
            );
        }
    }

    let _ = Command::new("nix-store")
        .arg("--delete")
        .args(&built)
        .env("NIX_CONFIG", NIX_CONFIG)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// What [`ingest`] measured.
struct Ingested {
    time: Duration,
    /// When the server had answered the whole chunk list.
    declared: Duration,
    /// When the last part was acknowledged.
    last_part: Duration,
    /// CPU seconds the server used meanwhile (user + system).
    server_cpu: f64,
    wire_file: PathBuf,
    wire_bytes: u64,
}

/// Chunks `nar` as `ferry push` does, then times its upload through nginx
/// to a fresh server: create, manifest in batches, parts of 64 MiB with 4
/// in flight, complete.
fn ingest(
    w: &Path,
    nar: &[u8],
    chunks: &[ferry::client::chunk::Chunk],
    wire: &[u8],
    proxied: bool,
) -> Ingested {
    let wire_file = write(&w.join("wire.bin"), wire);
    let dir = tempfile::tempdir_in(w).expect("tempdir");
    let server = Server::start(&dir.path().join("data"));
    let nginx = proxied.then(|| Nginx::proxy(server.port));
    let pid = server.child.id();
    ferry::client::install_tls_provider();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let http = reqwest::Client::new();
    let base = nginx.as_ref().map_or_else(|| server.url(), Nginx::url);
    let auth = format!("Bearer {}", server.token);
    let nar_hash = format!("sha256:{}", hex_sha256(nar));
    let time = rt.block_on(async {
        let post = |path: String, body: serde_json::Value| {
            let (http, auth, base) = (http.clone(), auth.clone(), base.clone());
            async move {
                let r = http
                    .post(format!("{base}{path}"))
                    .header("authorization", auth)
                    .json(&body)
                    .send()
                    .await
                    .expect("request");
                let status = r.status();
                let v: serde_json::Value = r.json().await.unwrap_or_default();
                assert!(status.is_success(), "{path}: {status} {v}");
                v
            }
        };
        post(
            "/_api/v1/caches".into(),
            serde_json::json!({"name": "main", "public": false}),
        )
        .await;
        let start = Instant::now();
        let cpu_start = cpu_secs(pid);
        let created = post(
            "/_api/v1/caches/main/uploads".into(),
            serde_json::json!({
                "store_path": "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-dedup-ingest",
                "nar_hash": nar_hash, "nar_size": nar.len(), "compression": "chunked",
            }),
        )
        .await;
        let id = created["id"].as_str().expect("upload id").to_owned();
        let mut send = 0usize;
        for (b, batch) in chunks.chunks(2048).enumerate() {
            let decls: Vec<_> = batch
                .iter()
                .map(|c| serde_json::json!({"blake3": c.entry.blake3, "size": c.entry.size, "csize": c.entry.csize}))
                .collect();
            let v = post(
                format!("/_api/v1/uploads/{id}/chunks"),
                serde_json::json!({"from": b * 2048, "chunks": decls}),
            )
            .await;
            send += v["send"].as_array().map_or(0, |a| a.len());
        }
        assert_eq!(send, chunks.len(), "a fresh server holds nothing");
        let declared = start.elapsed();
        let part = env_num("FERRY_BENCH_PART_MIB", 64) << 20;
        let parts = wire.len().div_ceil(part);
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(4));
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..parts {
            let permit = permits.clone().acquire_owned().await.expect("permit");
            let body = wire[n * part..((n + 1) * part).min(wire.len())].to_vec();
            let (http, auth, url) = (
                http.clone(),
                auth.clone(),
                format!("{base}/_api/v1/uploads/{id}/parts/{}", n + 1),
            );
            tasks.spawn(async move {
                let r = http
                    .put(url)
                    .header("authorization", auth)
                    .body(body)
                    .send()
                    .await
                    .expect("part");
                assert!(r.status().is_success(), "part: {}", r.status());
                drop(permit);
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("part task");
        }
        let last_part = start.elapsed();
        let mut v = post(
            format!("/_api/v1/uploads/{id}/complete"),
            serde_json::json!({"parts": parts}),
        )
        .await;
        while v["state"] == "verifying" {
            tokio::time::sleep(Duration::from_millis(20)).await;
            v = http
                .get(format!("{base}/_api/v1/uploads/{id}"))
                .header("authorization", auth.clone())
                .send()
                .await
                .expect("state")
                .json()
                .await
                .expect("json");
        }
        assert_eq!(v["state"], "committed", "{v}");
        (start.elapsed(), declared, last_part, cpu_secs(pid) - cpu_start)
    });
    let (time, declared, last_part, server_cpu) = time;
    drop(server);
    Ingested {
        time,
        declared,
        last_part,
        server_cpu,
        wire_bytes: wire.len() as u64,
        wire_file,
    }
}

/// The work any verdict on a chunked NAR needs, timed on one core of this
/// machine with the server's own code paths (zstd's bulk decoder with one
/// context, blake3, sha2): the floor under the ingest figure.
struct Floor {
    /// Every frame decoded and its chunk hashed with blake3.
    decode: Duration,
    /// SHA-256 of the frames (the narinfo's FileHash).
    file_sha: Duration,
    /// SHA-256 of the NAR (its NarHash).
    nar_sha: Duration,
    cores: usize,
}

impl Floor {
    fn measure(chunks: &[ferry::client::chunk::Chunk], wire: &[u8], nar_sha: Duration) -> Floor {
        let start = Instant::now();
        let mut dctx = zstd::bulk::Decompressor::new().expect("zstd");
        for c in chunks {
            let data = dctx
                .decompress(&c.frame, c.entry.size as usize)
                .expect("frame");
            assert_eq!(blake3::hash(&data).to_hex().as_str(), c.entry.blake3);
        }
        let decode = start.elapsed();
        let start = Instant::now();
        std::hint::black_box(sha2::Sha256::digest(std::hint::black_box(wire)));
        let file_sha = start.elapsed();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Floor {
            decode,
            file_sha,
            nar_sha,
            cores,
        }
    }

    fn cpu(&self) -> Duration {
        self.decode + self.file_sha + self.nar_sha
    }

    /// Spread over every core, but never under the one SHA-256 of the NAR.
    fn wall(&self) -> Duration {
        (self.cpu() / self.cores as u32).max(self.nar_sha)
    }
}

/// User + system CPU seconds of process `pid` so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of stat(5), counted from after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

fn hex_sha256(bytes: &[u8]) -> String {
    let d = sha2::Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}
