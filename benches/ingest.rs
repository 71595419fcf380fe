//! Ingest benchmark: push one NAR (default 1 GiB of incompressible data)
//! to a real `ferry serve` over loopback in 64 MiB zstd parts, and print
//! beside it, from the same run and the same bytes: `dd conv=fsync` (the
//! machine's durable-write limit, since every acknowledged part must be on
//! disk), `openssl dgst -sha256` (the irreducible hashing work) and the
//! server's peak RSS.
//!
//! Run: `cargo bench --bench ingest` (size: `FERRY_BENCH_MIB=1024`,
//! parallel parts: `FERRY_BENCH_JOBS=2`).

mod support;

use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PART: usize = 64 * 1024 * 1024;

fn nar_string(w: &mut impl Write, s: &[u8]) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s)?;
    w.write_all(&[0u8; 8][..(8 - s.len() % 8) % 8])
}

/// Writes a NAR of one regular file of `size` random bytes; returns its
/// SHA-256 (nix32 form) and size.
fn make_nar(path: &Path, size: u64) -> (String, u64) {
    use sha2::Digest;
    let mut out = BufWriter::new(std::fs::File::create(path).expect("create nar"));
    let mut sha = sha2::Sha256::new();
    let mut header = vec![];
    for s in ["nix-archive-1", "(", "type", "regular", "contents"] {
        nar_string(&mut header, s.as_bytes()).expect("header");
    }
    header.extend_from_slice(&size.to_le_bytes());
    let mut total = header.len() as u64;
    sha.update(&header);
    out.write_all(&header).expect("write");
    let mut urandom = std::fs::File::open("/dev/urandom").expect("urandom");
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        urandom.read_exact(&mut buf[..n]).expect("urandom");
        sha.update(&buf[..n]);
        out.write_all(&buf[..n]).expect("write");
        left -= n as u64;
    }
    let mut tail = vec![0u8; ((8 - size % 8) % 8) as usize];
    nar_string(&mut tail, b")").expect("tail");
    sha.update(&tail);
    out.write_all(&tail).expect("write");
    total += size + tail.len() as u64;
    out.flush().expect("flush");
    let digest: [u8; 32] = sha.finalize().into();
    (ferry::nar::Sha256Hash(digest).to_string(), total)
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn timed(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    let st = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run");
    assert!(st.success(), "{cmd:?} failed");
    t.elapsed()
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let mib: u64 = std::env::var("FERRY_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let jobs: usize = std::env::var("FERRY_BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let work =
        tempfile::tempdir_in(std::env::var("FERRY_BENCH_DIR").unwrap_or_else(|_| ".".into()))
            .expect("tempdir");
    let nar = work.path().join("bench.nar");
    let zst = work.path().join("bench.nar.zst");
    eprintln!("preparing a {mib} MiB NAR …");
    let (nar_hash, nar_size) = make_nar(&nar, mib << 20);
    assert!(
        Command::new("zstd")
            .args(["-q", "-1", "-T0", "-f"])
            .arg(&nar)
            .arg("-o")
            .arg(&zst)
            .status()
            .expect("zstd")
            .success()
    );
    let zst_size = std::fs::metadata(&zst).expect("zst").len();

    // References measured on the same bytes.
    let dd = timed(
        Command::new("dd")
            .arg(format!("if={}", zst.display()))
            .arg(format!("of={}", work.path().join("dd.out").display()))
            .args(["bs=64M", "conv=fsync"]),
    );
    std::fs::remove_file(work.path().join("dd.out")).ok();
    let sha = timed(Command::new("openssl").args(["dgst", "-sha256"]).arg(&nar));

    // The server, as a separate process so its RSS is its own.
    let server = support::Server::start(&work.path().join("data"));
    let token = server.token.clone();
    let base = server.url();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    ferry::client::install_tls_provider();
    let (elapsed, commit_latency) = rt.block_on(async {
        let client = reqwest::Client::new();
        let auth = format!("Bearer {token}");
        for _ in 0..100 {
            if client.get(format!("{base}/healthz")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r = client
            .post(format!("{base}/_api/v1/caches"))
            .header("authorization", &auth)
            .json(&serde_json::json!({"name": "bench"}))
            .send()
            .await
            .expect("create cache");
        assert!(r.status().is_success(), "create cache: {}", r.status());
        let r: serde_json::Value = client
            .post(format!("{base}/_api/v1/caches/bench/uploads"))
            .header("authorization", &auth)
            .json(&serde_json::json!({
                "store_path": "/nix/store/00000000000000000000000000000000-bench",
                "nar_hash": nar_hash, "nar_size": nar_size, "compression": "zstd"
            }))
            .send()
            .await
            .expect("create upload")
            .json()
            .await
            .expect("json");
        let url = format!("{base}{}", r["upload_url"].as_str().expect("upload_url"));
        let parts = zst_size.div_ceil(PART as u64) as usize;
        let start = Instant::now();
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(jobs));
        let mut tasks = vec![];
        for n in 0..parts {
            let permit = sem.clone().acquire_owned().await.expect("sem");
            let mut f = std::fs::File::open(&zst).expect("open");
            let mut buf = vec![0u8; PART];
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start((n * PART) as u64)).expect("seek");
            let mut got = 0;
            while got < PART {
                let k = f.read(&mut buf[got..]).expect("read");
                if k == 0 {
                    break;
                }
                got += k;
            }
            buf.truncate(got);
            let (client, url, auth) = (client.clone(), url.clone(), auth.clone());
            tasks.push(tokio::spawn(async move {
                let r = client
                    .put(format!("{url}/parts/{}", n + 1))
                    .header("authorization", auth)
                    .body(buf)
                    .send()
                    .await
                    .expect("part");
                assert!(r.status().is_success(), "part {}: {}", n + 1, r.status());
                drop(permit);
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        let last_part = Instant::now();
        let r = client
            .post(format!("{url}/complete"))
            .header("authorization", &auth)
            .json(&serde_json::json!({"parts": parts}))
            .send()
            .await
            .expect("complete");
        assert_eq!(
            r.status().as_u16(),
            200,
            "complete: {}",
            r.text().await.unwrap_or_default()
        );
        (start.elapsed(), last_part.elapsed())
    });
    let rss = peak_rss_kib(server.child.id());
    drop(server);

    let ferry = mbps(zst_size, elapsed);
    let dd_rate = mbps(zst_size, dd);
    println!(
        "ingest of a {mib} MiB NAR ({zst_size} bytes as zstd) in 64 MiB parts, {jobs} in flight, loopback"
    );
    println!(
        "  ferry, first byte to committed : {ferry:8.1} MB/s  ({:.2} s)",
        elapsed.as_secs_f64()
    );
    println!(
        "  dd conv=fsync, same bytes      : {dd_rate:8.1} MB/s  -> ferry/dd = {:.2}",
        ferry / dd_rate
    );
    println!(
        "  openssl dgst -sha256 of the NAR: {:8.1} MB/s",
        mbps(nar_size, sha)
    );
    println!(
        "  commit latency after last part : {:8.0} ms",
        commit_latency.as_secs_f64() * 1e3
    );
    println!(
        "  server peak RSS                : {:8.1} MiB",
        rss as f64 / 1024.0
    );
}
