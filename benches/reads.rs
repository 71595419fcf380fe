//! Read-path benchmark: what a token check costs and what narinfo reads
//! sustain.
//!
//! Prints, from one run: the verify+authorize cost per request, cold (token
//! never seen) and cached; narinfo requests/s against a real `ferry serve`
//! with 64 keep-alive connections for a private cache with a token and for
//! a public cache without one (goal: within 10 %); and, when nginx is
//! installed, nginx serving the same narinfo text as a static file
//! (sendfile off) as the reference.
//!
//! Run: `cargo bench --bench reads` (`FERRY_BENCH_SECS=5` per load run).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ferry::auth::{self, Authorizer, Operation, RootKey, TokenSpec};

const CONNECTIONS: usize = 64;

fn token_costs() -> (f64, f64) {
    let root = RootKey::generate();
    let spec = TokenSpec {
        subject: "bench".into(),
        rights: vec![
            (Operation::Pull, "main".into()),
            (Operation::Push, "main".into()),
        ],
        expires_at: SystemTime::now() + Duration::from_secs(3600),
    };
    let token = auth::mint(&root, &spec).expect("mint");
    let n = 300;
    let t = Instant::now();
    for _ in 0..n {
        let az = Authorizer::new(root.public());
        az.check(&token, Operation::Pull, "main").expect("allowed");
    }
    let cold = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let az = Authorizer::new(root.public());
    az.check(&token, Operation::Pull, "main").expect("allowed");
    let n = 100_000;
    let t = Instant::now();
    for _ in 0..n {
        az.check(&token, Operation::Pull, "main").expect("allowed");
    }
    let cached = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    (cold, cached)
}

/// Sends keep-alive GETs on `CONNECTIONS` connections for `secs`; returns
/// requests per second. Every answer must be 200.
fn load(port: u16, path: &str, auth: Option<&str>, secs: u64) -> f64 {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    if let Some(t) = auth {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    let req = Arc::new(req.into_bytes());
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (req, stop, count) = (req.clone(), stop.clone(), count.clone());
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                s.set_nodelay(true).ok();
                let mut buf = vec![0u8; 64 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    s.write_all(&req).expect("write");
                    let mut have = 0;
                    loop {
                        let n = s.read(&mut buf[have..]).expect("read");
                        assert!(n > 0, "connection closed");
                        have += n;
                        let text = &buf[..have];
                        if let Some(end) = text.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&text[..end]).to_ascii_lowercase();
                            assert!(head.starts_with("http/1.1 200"), "{head}");
                            let len: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                            if have >= end + 4 + len {
                                break;
                            }
                        }
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("load thread");
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn curl_json(method: &str, url: &str, token: &str, body: &str) -> serde_json::Value {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-X",
            method,
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-d",
            body,
            url,
        ])
        .output()
        .expect("curl");
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn main() {
    let secs: u64 = std::env::var("FERRY_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let (cold, cached) = token_costs();

    let work = tempfile::tempdir().expect("tempdir");
    let server = support::Server::start(&work.path().join("data"));
    let (port, token) = (server.port, server.token.clone());
    let base = server.url();
    std::thread::sleep(Duration::from_millis(300));
    // One small NAR, published in a private and a public cache.
    let nar = ferry::nar::write_nar(&ferry::nar::Tree::Regular {
        executable: false,
        contents: b"bench".to_vec(),
    });
    let hash = ferry::nar::Sha256Hash::digest(&nar).to_string();
    let store_path = "/nix/store/0000000000000000000000000000000b-bench";
    let mut narinfo_text = String::new();
    for (cache, public) in [("private", false), ("public", true)] {
        curl_json(
            "POST",
            &format!("{base}/_api/v1/caches"),
            &token,
            &format!(r#"{{"name":"{cache}","public":{public}}}"#),
        );
        let up = curl_json(
            "POST",
            &format!("{base}/_api/v1/caches/{cache}/uploads"),
            &token,
            &serde_json::json!({"store_path": store_path, "nar_hash": hash, "nar_size": nar.len()})
                .to_string(),
        );
        if let Some(url) = up["upload_url"].as_str() {
            let file = work.path().join("nar");
            std::fs::write(&file, &nar).expect("write nar");
            let st = Command::new("curl")
                .args([
                    "-sS",
                    "-o",
                    "/dev/null",
                    "-H",
                    &format!("Authorization: Bearer {token}"),
                    "-T",
                ])
                .arg(&file)
                .arg(format!("{base}{url}/parts/1"))
                .status()
                .expect("curl");
            assert!(st.success());
            let done = curl_json(
                "POST",
                &format!("{base}{url}/complete"),
                &token,
                r#"{"parts":1}"#,
            );
            assert_eq!(done["state"], "committed", "{done}");
        }
        narinfo_text = String::from_utf8(
            Command::new("curl")
                .args(["-sS", "-H", &format!("Authorization: Bearer {token}")])
                .arg(format!(
                    "{base}/{cache}/0000000000000000000000000000000b.narinfo"
                ))
                .output()
                .expect("curl")
                .stdout,
        )
        .expect("utf8");
    }
    let path = |c: &str| format!("/{c}/0000000000000000000000000000000b.narinfo");
    let private = load(port, &path("private"), Some(&token), secs);
    let public = load(port, &path("public"), None, secs);
    drop(server);

    println!("token check (biscuit verify + authorize), per request:");
    println!("  cold (never seen)   : {cold:9.1} µs");
    println!("  cached              : {cached:9.2} µs");
    println!("narinfo GETs, {CONNECTIONS} keep-alive connections, {secs} s each:");
    println!(
        "  public, no token    : {public:9.0} req/s  ({:.1} µs/request of server time)",
        1e6 / public
    );
    println!(
        "  private, with token : {private:9.0} req/s  -> private/public = {:.2}",
        private / public
    );
    match nginx_reference(&narinfo_text, secs) {
        Some(n) => println!(
            "  nginx static file   : {n:9.0} req/s  -> ferry public/nginx = {:.2}",
            public / n
        ),
        None => println!("  nginx static file   : nginx not installed (run .ci/run)"),
    }
}

/// nginx serving the narinfo text as a static file, sendfile off.
fn nginx_reference(text: &str, secs: u64) -> Option<f64> {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let dir = tempfile::tempdir().ok()?;
    let root = dir.path().join("root/c");
    std::fs::create_dir_all(&root).ok()?;
    std::fs::write(root.join("x.narinfo"), text).ok()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let conf = format!(
        "daemon off; worker_processes 2; pid {d}/nginx.pid; error_log {d}/error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{ access_log off; sendfile off; keepalive_requests 1000000;\n\
           client_body_temp_path {d}/cb; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n\
           server {{ listen 127.0.0.1:{port}; root {d}/root; }} }}\n",
        d = dir.path().display()
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).ok()?;
    let mut child = Command::new(nginx)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(300));
    let rate = load(port, "/c/x.narinfo", None, secs);
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    Some(rate)
}
