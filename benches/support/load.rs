//! Keep-alive HTTP/1.1 load over plain TCP: many small GETs (requests
//! per second) or large downloads (body bytes per second), one thread per
//! connection, for a fixed time. Every answer must be 200.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn request(path: &str, auth: Option<&str>) -> Vec<u8> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    if let Some(t) = auth {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// Reads a response head into `buf`; returns the body length and how many
/// body bytes already sit in `buf` after the head.
fn read_head(s: &mut TcpStream, buf: &mut [u8]) -> (u64, usize) {
    let mut have = 0;
    loop {
        let n = s.read(&mut buf[have..]).expect("read");
        assert!(n > 0, "connection closed");
        have += n;
        if let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            return (len, have - end - 4);
        }
        assert!(have < buf.len(), "response head too long");
    }
}

/// Runs `conns` threads, each calling `work(stream, stop)` until `stop`;
/// returns the sum of what they return (a count) per second.
fn run<F>(port: u16, conns: usize, secs: f64, work: F) -> f64
where
    F: Fn(&mut TcpStream, &AtomicBool) -> u64 + Send + Sync + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let work = Arc::new(work);
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            let (stop, total, work) = (stop.clone(), total.clone(), work.clone());
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                s.set_nodelay(true).ok();
                total.fetch_add(work(&mut s, &stop), Ordering::Relaxed);
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed();
    for t in threads {
        t.join().expect("load thread");
    }
    total.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64()
}

/// Small GETs of `path` on `conns` keep-alive connections for `secs`:
/// requests per second.
pub fn requests(port: u16, path: &str, auth: Option<&str>, conns: usize, secs: f64) -> f64 {
    let req = request(path, auth);
    run(port, conns, secs, move |s, stop| {
        let mut buf = vec![0u8; 64 * 1024];
        let mut count = 0;
        while !stop.load(Ordering::Relaxed) {
            s.write_all(&req).expect("write");
            let (len, mut body) = read_head(s, &mut buf);
            while (body as u64) < len {
                let n = s.read(&mut buf).expect("read");
                assert!(n > 0, "connection closed");
                body += n;
            }
            count += 1;
        }
        count
    })
}

/// Downloads `path` again and again on `conns` keep-alive connections for
/// `secs`: body bytes per second (a download cut by the end counts what
/// arrived).
pub fn download(port: u16, path: &str, conns: usize, secs: f64) -> f64 {
    let req = request(path, None);
    run(port, conns, secs, move |s, stop| {
        let mut buf = vec![0u8; 1 << 20];
        let mut bytes = 0u64;
        while !stop.load(Ordering::Relaxed) {
            s.write_all(&req).expect("write");
            let (len, body) = read_head(s, &mut buf);
            let mut left = len - body as u64;
            bytes += body as u64;
            while left > 0 {
                if stop.load(Ordering::Relaxed) {
                    return bytes;
                }
                let n = s.read(&mut buf).expect("read");
                assert!(n > 0, "connection closed");
                left -= n as u64;
                bytes += n as u64;
            }
        }
        bytes
    })
}
