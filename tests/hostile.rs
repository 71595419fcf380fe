//! Hostile clients against the real `ferry serve`, on loopback, bounded in
//! count and time, all at once:
//! - one push token opening 200 uploads, each fed a part whose zstd frame
//!   asks for a 128 MiB window;
//! - anonymous floods of 15 MB JSON bodies at a private cache;
//! - a zstd bomb (a few KiB on the wire, 1 GiB decoded) declared as a
//!   1 MiB NAR;
//! - slow-body clients trickling parts and giving up.
//!
//! Meanwhile an honest upload publishes and its NAR reads back whole, and
//! the server's resident memory, sampled every 50 ms, stays under 512 MiB
//! (the most a home server can spare; the README states the bound and the
//! peak seen).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Body, Nar, ServerProcess, free_port, http_request};
use serde_json::json;

const RSS_BOUND_MIB: u64 = 512;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

struct Target {
    url: String,
    addr: String,
}

impl Target {
    fn call(&self, method: &str, path: &str, token: &str, body: Body) -> common::HttpResponse {
        let auth = format!("Authorization: Bearer {token}");
        http_request(method, &format!("{}{path}", self.url), &[&auth], body)
    }

    /// Creates an upload of `nar` (declared `nar_size`) and returns its id.
    fn create(&self, token: &str, nar: &Nar, nar_size: usize) -> Option<String> {
        let body = json!({"store_path": nar.path, "nar_hash": nar.hash.to_string(),
            "nar_size": nar_size, "compression": "zstd"});
        let r = self.call(
            "POST",
            "/_api/v1/caches/c/uploads",
            token,
            Body::Bytes(body.to_string().into_bytes()),
        );
        (r.status == 201).then(|| r.json()["id"].as_str().unwrap().to_owned())
    }

    /// A raw request: its head, then up to `send` body bytes at `rate`
    /// bytes per second (as fast as possible when `None`), then whatever
    /// the server answered (empty if it answered nothing).
    fn raw(&self, head: &str, send: usize, rate: Option<u64>) -> String {
        let Ok(mut conn) = TcpStream::connect(&self.addr) else {
            return String::new();
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        if conn.write_all(head.as_bytes()).is_err() {
            return String::new();
        }
        let chunk = vec![b'x'; 64 << 10];
        let mut sent = 0;
        while sent < send {
            let n = chunk.len().min(send - sent);
            if conn.write_all(&chunk[..n]).is_err() {
                break;
            }
            sent += n;
            if let Some(r) = rate {
                std::thread::sleep(Duration::from_secs_f64(n as f64 / r as f64));
            }
        }
        let mut buf = [0u8; 512];
        let n = conn.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

/// zstd of `len` zero bytes, in a frame declaring a 2^`window_log` window.
fn zstd_zeros(len: usize, window_log: u32) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(vec![], 19).unwrap();
    enc.window_log(window_log).unwrap();
    enc.long_distance_matching(window_log > 23).unwrap();
    let block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len());
        enc.write_all(&block[..n]).unwrap();
        left -= n;
    }
    enc.finish().unwrap()
}

#[test]
fn hostile_clients_stay_bounded_while_an_honest_push_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = ServerProcess::start(dir.path(), port);
    let admin = server.admin_token.clone().expect("admin token");
    let pid = server.pid();
    let target = Arc::new(Target {
        url: server.url.clone(),
        addr: format!("127.0.0.1:{port}"),
    });
    let r = target.call(
        "POST",
        "/_api/v1/caches",
        &admin,
        Body::Bytes(br#"{"name":"c"}"#.to_vec()),
    );
    assert_eq!(r.status, 201);
    let attacker = common::mint_in(
        dir.path(),
        &[(ferry::auth::Operation::Push, "c")],
        std::time::SystemTime::now() + Duration::from_secs(3600),
    );

    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(rss_kib(pid), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let started = Instant::now();
    let mut attacks = vec![];

    // 200 uploads, each fed a frame asking for a 128 MiB window.
    let wide = Arc::new(zstd_zeros(4 << 20, 27));
    for t in 0..4 {
        let (target, token, wide) = (target.clone(), attacker.clone(), wide.clone());
        attacks.push(std::thread::spawn(move || {
            let mut refused = 0;
            for i in 0..50 {
                let nar = Nar::new(&format!("wide-{t}-{i}"), 1000);
                let Some(id) = target.create(&token, &nar, 8 << 20) else {
                    continue;
                };
                let part = format!("/_api/v1/uploads/{id}/parts/1");
                target.call("PUT", &part, &token, Body::Bytes(wide.to_vec()));
                let done = format!("/_api/v1/uploads/{id}/complete");
                let r = target.call(
                    "POST",
                    &done,
                    &token,
                    Body::Bytes(br#"{"parts":1}"#.to_vec()),
                );
                if r.status == 422 {
                    refused += 1;
                }
            }
            format!("wide windows: {refused} of 50 refused at complete")
        }));
    }
    // Anonymous 15 MB JSON bodies at a private cache.
    for _ in 0..4 {
        let target = target.clone();
        attacks.push(std::thread::spawn(move || {
            let mut unauthorized = 0;
            for _ in 0..10 {
                let head = format!(
                    "POST /_api/v1/caches/c/missing HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 15000000\r\n\r\n",
                    target.addr
                );
                if target.raw(&head, 15_000_000, None).starts_with("HTTP/1.1 401") {
                    unauthorized += 1;
                }
            }
            format!("15 MB anonymous bodies: {unauthorized} of 10 answered 401")
        }));
    }
    // A zstd bomb declared as a 1 MiB NAR.
    {
        let (target, token) = (target.clone(), attacker.clone());
        attacks.push(std::thread::spawn(move || {
            let bomb = zstd_zeros(1 << 30, 20);
            let nar = Nar::new("bomb", 1000);
            let id = target.create(&token, &nar, 1 << 20).expect("bomb upload");
            let part = format!("/_api/v1/uploads/{id}/parts/1");
            let r = target.call("PUT", &part, &token, Body::Bytes(bomb.clone()));
            let done = format!("/_api/v1/uploads/{id}/complete");
            let c = target.call(
                "POST",
                &done,
                &token,
                Body::Bytes(br#"{"parts":1}"#.to_vec()),
            );
            format!(
                "zstd bomb ({} bytes, 1 GiB decoded): part {}, complete {} {}",
                bomb.len(),
                r.status,
                c.status,
                c.json()["error"]
            )
        }));
    }
    // Slow bodies: 4 MiB parts trickled at 64 KiB/s, abandoned after ~3 s.
    for t in 0..16 {
        let (target, token) = (target.clone(), attacker.clone());
        attacks.push(std::thread::spawn(move || {
            let nar = Nar::new(&format!("slow-{t}"), 1000);
            let Some(id) = target.create(&token, &nar, 4 << 20) else {
                return "slow body: no upload".to_owned();
            };
            let head = format!(
                "PUT /_api/v1/uploads/{id}/parts/1 HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Length: 4194304\r\n\r\n",
                target.addr
            );
            let _ = target.raw(&head, 192 << 10, Some(64 << 10));
            "slow body: gave up".to_owned()
        }));
    }

    // The honest push, during all of it.
    std::thread::sleep(Duration::from_millis(500));
    let honest = Nar::new("honest", 12 << 20);
    let wire = zstd::encode_all(&honest.bytes[..], 3).unwrap();
    let id = target
        .create(&admin, &honest, honest.bytes.len())
        .expect("the honest upload starts");
    let pieces: Vec<&[u8]> = wire.chunks(4 << 20).collect();
    for (i, p) in pieces.iter().enumerate() {
        let r = target.call(
            "PUT",
            &format!("/_api/v1/uploads/{id}/parts/{}", i + 1),
            &admin,
            Body::Bytes(p.to_vec()),
        );
        assert_eq!(r.status, 200, "honest part {}: {}", i + 1, r.text());
    }
    let r = target.call(
        "POST",
        &format!("/_api/v1/uploads/{id}/complete"),
        &admin,
        Body::Bytes(json!({"parts": pieces.len()}).to_string().into_bytes()),
    );
    let honest_done = started.elapsed();
    assert_eq!(r.status, 200, "the honest push: {}", r.text());
    let ni = target.call(
        "GET",
        &format!("/c/{}.narinfo", honest.hash_part()),
        &admin,
        Body::None,
    );
    assert_eq!(ni.status, 200);
    let url = ni
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .to_owned();
    let nar = target.call("GET", &format!("/c/{url}"), &admin, Body::None);
    assert_eq!(zstd::decode_all(&nar.body[..]).unwrap(), honest.bytes);

    let reports: Vec<String> = attacks.into_iter().map(|a| a.join().unwrap()).collect();
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let peak_mib = peak.load(Ordering::SeqCst) / 1024;
    for r in &reports {
        println!("hostile: {r}");
    }
    println!(
        "hostile: honest push published after {:.1}s; server peak RSS {peak_mib} MiB (bound {RSS_BOUND_MIB} MiB); total {:.1}s",
        honest_done.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        reports
            .iter()
            .filter(|r| r.starts_with("15 MB"))
            .all(|r| r.contains("10 of 10")),
        "{reports:?}"
    );
    assert!(
        reports.iter().any(|r| r.contains("complete 422")),
        "the bomb was not refused: {reports:?}"
    );
    assert!(
        reports
            .iter()
            .filter(|r| r.starts_with("wide windows"))
            .all(|r| r.contains("50 of 50")),
        "a wide-window upload was not refused: {reports:?}"
    );
    assert!(
        peak_mib < RSS_BOUND_MIB,
        "server peak RSS {peak_mib} MiB is over {RSS_BOUND_MIB} MiB"
    );
    assert_eq!(
        http_request("GET", &format!("{}/healthz", server.url), &[], Body::None).status,
        200
    );
}

/// Threads of process `pid` named `name` (a verifier's second stage is a
/// thread called `ferry-verify`).
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|t| t.ok())
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name)
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn idle_uploads_give_their_verifiers_back_and_still_complete() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), free_port());
    let admin = server.admin_token.clone().expect("admin token");
    let target = Target {
        url: server.url.clone(),
        addr: String::new(),
    };
    let r = target.call(
        "POST",
        "/_api/v1/caches",
        &admin,
        Body::Bytes(br#"{"name":"c"}"#.to_vec()),
    );
    assert_eq!(r.status, 201);
    let mut open = vec![];
    for i in 0..10 {
        // Over 2 MiB: a smaller NAR is checked without a thread of its own.
        let nar = Nar::new(&format!("idle-{i}"), 3_000_000);
        let wire = zstd::encode_all(&nar.bytes[..], 3).unwrap();
        let (a, b) = wire.split_at(wire.len() / 2);
        let id = target.create(&admin, &nar, nar.bytes.len()).unwrap();
        let r = target.call(
            "PUT",
            &format!("/_api/v1/uploads/{id}/parts/1"),
            &admin,
            Body::Bytes(a.to_vec()),
        );
        assert_eq!(r.status, 200);
        open.push((nar, id, b.to_vec()));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while threads_named(server.pid(), "ferry-verify") < 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        threads_named(server.pid(), "ferry-verify"),
        10,
        "a verifier per upload"
    );
    // Idle past the limit (30 s): the verifiers go.
    let deadline = Instant::now() + Duration::from_secs(45);
    while threads_named(server.pid(), "ferry-verify") > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        threads_named(server.pid(), "ferry-verify"),
        0,
        "idle verifiers stayed"
    );
    // And the uploads still complete, rebuilt from their parts on disk.
    for (nar, id, rest) in open {
        let r = target.call(
            "PUT",
            &format!("/_api/v1/uploads/{id}/parts/2"),
            &admin,
            Body::Bytes(rest),
        );
        assert_eq!(r.status, 200);
        let r = target.call(
            "POST",
            &format!("/_api/v1/uploads/{id}/complete"),
            &admin,
            Body::Bytes(br#"{"parts":2}"#.to_vec()),
        );
        assert_eq!(r.status, 200, "{}: {}", nar.path, r.text());
    }
}
