//! Load test (issue 7): 16 pushers and 64 readers against one real
//! `ferry serve` on loopback, for a bounded time.
//!
//! Pushers loop: make a NAR of 0.25–3 MiB, send it as one to three parts
//! (plain or zstd), complete, wait until committed, and record the NarHash
//! and NarSize they pushed. Readers loop over what has been published:
//! every narinfo read must name the store path, NarHash and NarSize its
//! pusher recorded (not only parse), and one read in eight fetches the
//! whole NAR, whose SHA-256 and size once decompressed must be the
//! pusher's, not merely the narinfo's. Meanwhile `ferry gc`, a second
//! process, runs every two seconds against the same data dir and takes
//! SQLite's write lock beside the server. Every request must succeed: no
//! retries, no error answers, no timeouts. The server's resident memory
//! is sampled every second; after a warm-up third, it must stay flat (the
//! last third's peak no more than 16 MiB and 25 % above the middle
//! third's). The server's SQLite lock waits (`ferry_db_busy_total`) are
//! reported; with `ferry gc` writing beside it they need not be 0, and
//! `tests/metrics.rs` checks that the counter counts such waits.
//!
//! `FERRY_LOAD_SECS` sets the duration (CI: 20 s; the documented full run
//! is 300 s, see README "Performance").

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::ServerProcess;
use ferry::nar::{NarInfo, Sha256Hash, Tree, nix32, write_nar};
use serde_json::{Value, json};
use sha2::Digest as _;

const PUSHERS: usize = 16;
const READERS: usize = 64;

/// What the run saw.
#[derive(Default)]
struct Tally {
    pushes: AtomicU64,
    pushed_bytes: AtomicU64,
    narinfo_reads: AtomicU64,
    nar_reads: AtomicU64,
    nar_read_bytes: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Tally {
    fn error(&self, what: String) {
        let mut e = self.errors.lock().unwrap();
        if e.len() < 50 {
            e.push(what);
        }
    }
}

/// What a pusher published: store path, NarHash, NarSize.
#[derive(Clone)]
struct Pushed {
    path: String,
    nar_hash: Sha256Hash,
    nar_size: u64,
}

/// The store paths published so far, for readers to pick from.
type Published = Arc<Mutex<Vec<Pushed>>>;

struct Ctx {
    http: reqwest::Client,
    url: String,
    token: String,
    tally: Tally,
    published: Published,
    deadline: Instant,
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn store_path(name: &str) -> String {
    let h = Sha256Hash::digest(name.as_bytes());
    format!("/nix/store/{}-{name}", nix32::encode(&h.0[..20]))
}

/// A NAR of about `size` bytes: half noise, half text, so zstd has work.
fn make_nar(name: &str, size: usize) -> Vec<u8> {
    let mut noise = vec![0u8; size / 2];
    blake3::Hasher::new()
        .update(name.as_bytes())
        .finalize_xof()
        .fill(&mut noise);
    let text: Vec<u8> = format!("{name} line of text\n")
        .bytes()
        .cycle()
        .take(size - size / 2)
        .collect();
    let mut entries = BTreeMap::new();
    entries.insert(
        "bin".to_owned(),
        Tree::Regular {
            executable: true,
            contents: noise,
        },
    );
    entries.insert(
        "share".to_owned(),
        Tree::Regular {
            executable: false,
            contents: text,
        },
    );
    write_nar(&Tree::Directory(entries))
}

/// An error with its causes, outermost first.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(&format!(": {c}"));
        cause = c.source();
    }
    out
}

async fn send(ctx: &Ctx, req: reqwest::RequestBuilder, what: &str) -> Option<(u16, Vec<u8>)> {
    let res = match req.bearer_auth(&ctx.token).send().await {
        Ok(r) => r,
        Err(e) => {
            ctx.tally.error(format!("{what}: {}", chain(&e)));
            return None;
        }
    };
    let status = res.status().as_u16();
    match res.bytes().await {
        Ok(b) if status < 300 => Some((status, b.to_vec())),
        Ok(b) => {
            ctx.tally.error(format!(
                "{what}: {status} {}",
                String::from_utf8_lossy(&b[..b.len().min(300)])
            ));
            None
        }
        Err(e) => {
            ctx.tally.error(format!("{what}: body: {}", chain(&e)));
            None
        }
    }
}

/// One push through the parts API; true when committed.
async fn push_one(ctx: &Ctx, pusher: usize, round: u64) -> bool {
    let name = format!("load-{pusher}-{round}");
    let size = 256 * 1024 + ((pusher * 7919 + round as usize * 104_729) % (3 << 20));
    let nar = make_nar(&name, size);
    let zstd = round.is_multiple_of(2);
    let body = if zstd {
        zstd::encode_all(&nar[..], 1).unwrap()
    } else {
        nar.clone()
    };
    let path = store_path(&name);
    let create = json!({
        "store_path": path,
        "nar_hash": Sha256Hash::digest(&nar).to_string(),
        "nar_size": nar.len(),
        "compression": if zstd { "zstd" } else { "none" },
    });
    let url = format!("{}/_api/v1/caches/load/uploads", ctx.url);
    let Some((_, created)) = send(ctx, ctx.http.post(url).json(&create), "create").await else {
        return false;
    };
    let created: Value = serde_json::from_slice(&created).unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let n_parts = 1 + (round as usize % 3);
    let chunk = body.len().div_ceil(n_parts);
    let mut n = 0u32;
    for part in body.chunks(chunk) {
        n += 1;
        let digest = format!(
            "sha-256=:{}:",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                sha2::Sha256::digest(part)
            )
        );
        let url = format!("{}/_api/v1/uploads/{id}/parts/{n}", ctx.url);
        let req = ctx
            .http
            .put(url)
            .header("content-digest", digest)
            .body(part.to_vec());
        if send(ctx, req, "part").await.is_none() {
            return false;
        }
    }
    let url = format!("{}/_api/v1/uploads/{id}/complete", ctx.url);
    let Some((status, _)) = send(
        ctx,
        ctx.http.post(url).json(&json!({"parts": n})),
        "complete",
    )
    .await
    else {
        return false;
    };
    if status == 202 {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let url = format!("{}/_api/v1/uploads/{id}", ctx.url);
            let Some((_, s)) = send(ctx, ctx.http.get(url), "status").await else {
                return false;
            };
            let s: Value = serde_json::from_slice(&s).unwrap();
            match s["state"].as_str() {
                Some("committed") => break,
                Some("verifying") => continue,
                other => {
                    ctx.tally.error(format!("upload {id} ended {other:?}: {s}"));
                    return false;
                }
            }
        }
    }
    ctx.tally.pushes.fetch_add(1, Ordering::Relaxed);
    ctx.tally
        .pushed_bytes
        .fetch_add(nar.len() as u64, Ordering::Relaxed);
    ctx.published.lock().unwrap().push(Pushed {
        path,
        nar_hash: Sha256Hash::digest(&nar),
        nar_size: nar.len() as u64,
    });
    true
}

async fn pusher(ctx: Arc<Ctx>, i: usize) {
    let mut round = 0;
    while Instant::now() < ctx.deadline {
        push_one(&ctx, i, round).await;
        round += 1;
    }
}

async fn reader(ctx: Arc<Ctx>, i: usize) {
    let mut k = i as u64;
    while Instant::now() < ctx.deadline {
        k = k.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let path = {
            let p = ctx.published.lock().unwrap();
            if p.is_empty() {
                None
            } else {
                Some(p[(k >> 33) as usize % p.len()].clone())
            }
        };
        let Some(pushed) = path else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let path = &pushed.path;
        let hash = &path["/nix/store/".len().."/nix/store/".len() + 32];
        let url = format!("{}/load/{hash}.narinfo", ctx.url);
        let Some((_, text)) = send(&ctx, ctx.http.get(url), "narinfo").await else {
            continue;
        };
        ctx.tally.narinfo_reads.fetch_add(1, Ordering::Relaxed);
        let info = match std::str::from_utf8(&text)
            .ok()
            .and_then(|t| NarInfo::parse(t, "/nix/store").ok())
        {
            Some(i) => i,
            None => {
                ctx.tally.error(format!("{path}: unparsable narinfo"));
                continue;
            }
        };
        if info.store_path.to_absolute() != *path
            || info.nar_hash != pushed.nar_hash
            || info.nar_size != pushed.nar_size
        {
            ctx.tally
                .error(format!("{path}: narinfo is not what was pushed"));
            continue;
        }
        if !k.is_multiple_of(8) {
            continue;
        }
        let url = format!("{}/load/{}", ctx.url, info.url);
        let Some((_, nar)) = send(&ctx, ctx.http.get(url), "nar").await else {
            continue;
        };
        ctx.tally.nar_reads.fetch_add(1, Ordering::Relaxed);
        ctx.tally
            .nar_read_bytes
            .fetch_add(nar.len() as u64, Ordering::Relaxed);
        let plain = if info.url.ends_with(".zst") {
            zstd::decode_all(&nar[..]).unwrap()
        } else {
            nar
        };
        if Sha256Hash::digest(&plain) != pushed.nar_hash || plain.len() as u64 != pushed.nar_size {
            ctx.tally
                .error(format!("{path}: NAR is not the one pushed"));
        }
    }
}

#[test]
fn sixteen_pushers_and_sixty_four_readers() {
    let secs: u64 = std::env::var("FERRY_LOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), common::free_port());
    let token = server.admin_token.clone().expect("admin token");
    let pid = server.pid();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    ferry::client::install_tls_provider();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let ctx = Arc::new(Ctx {
        http,
        url: server.url.clone(),
        token,
        tally: Tally::default(),
        published: Arc::default(),
        deadline: Instant::now() + Duration::from_secs(secs),
    });
    let started = Instant::now();
    let (samples, metrics) = rt.block_on(async {
        let r = send(
            &ctx,
            ctx.http
                .post(format!("{}/_api/v1/caches", ctx.url))
                .json(&json!({"name": "load", "public": false})),
            "create cache",
        )
        .await;
        assert!(r.is_some(), "{:?}", ctx.tally.errors.lock().unwrap());
        let mut tasks = Vec::new();
        for i in 0..PUSHERS {
            tasks.push(tokio::spawn(pusher(ctx.clone(), i)));
        }
        for i in 0..READERS {
            tasks.push(tokio::spawn(reader(ctx.clone(), i)));
        }
        let mut samples = Vec::new();
        let mut gc_runs = 0u32;
        while Instant::now() < ctx.deadline {
            samples.push(rss_kib(pid));
            if samples.len() % 2 == 0 {
                // `ferry gc` beside the server: a second process writing.
                let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
                    .args(["gc", "--data-dir"])
                    .arg(dir.path())
                    .env("FERRY_LOG", "warn")
                    .stdout(std::process::Stdio::null())
                    .status()
                    .await
                    .expect("run ferry gc");
                assert!(status.success(), "ferry gc failed beside the server");
                gc_runs += 1;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert!(gc_runs > 0, "ferry gc never ran beside the load");
        for t in tasks {
            t.await.unwrap();
        }
        samples.push(rss_kib(pid));
        let metrics = ctx
            .http
            .get(format!("{}/metrics", ctx.url))
            .bearer_auth(&ctx.token)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .expect("GET /metrics")
            .text()
            .await
            .expect("the /metrics text");
        (samples, metrics)
    });
    let elapsed = started.elapsed().as_secs_f64();
    let busy: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ferry_db_busy_total "))
        .expect("ferry_db_busy_total in /metrics")
        .trim()
        .parse()
        .expect("a count");
    let t = &ctx.tally;
    let third = samples.len() / 3;
    let peak = |s: &[u64]| s.iter().copied().max().unwrap_or(0);
    let (middle, last) = (
        peak(&samples[third..2 * third]),
        peak(&samples[2 * third..]),
    );
    println!(
        "load: {secs} s, {PUSHERS} pushers, {READERS} readers: {} pushes ({:.1} MB/s in), \
         {} narinfo reads ({:.0}/s), {} NAR reads ({:.1} MB/s out); \
         RSS MiB first/middle/last third peak {:.1}/{:.1}/{:.1}; SQLITE_BUSY waits {busy}",
        t.pushes.load(Ordering::Relaxed),
        t.pushed_bytes.load(Ordering::Relaxed) as f64 / elapsed / 1e6,
        t.narinfo_reads.load(Ordering::Relaxed),
        t.narinfo_reads.load(Ordering::Relaxed) as f64 / elapsed,
        t.nar_reads.load(Ordering::Relaxed),
        t.nar_read_bytes.load(Ordering::Relaxed) as f64 / elapsed / 1e6,
        peak(&samples[..third]) as f64 / 1024.0,
        middle as f64 / 1024.0,
        last as f64 / 1024.0,
    );
    let errors = t.errors.lock().unwrap();
    assert!(errors.is_empty(), "errors under load: {errors:#?}");
    assert!(
        t.pushes.load(Ordering::Relaxed) >= PUSHERS as u64,
        "too few pushes"
    );
    assert!(t.nar_reads.load(Ordering::Relaxed) > 0, "no NAR was read");
    assert!(
        last <= middle + 16 * 1024 && last * 4 <= middle * 5,
        "server memory grew: middle-third peak {middle} KiB, last-third {last} KiB ({samples:?})"
    );
    drop(server);
}
