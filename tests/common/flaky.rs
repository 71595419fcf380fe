//! A small, bounded TCP proxy on loopback that misbehaves on purpose: it
//! cuts a share of connections in the middle of the request body, and can
//! throttle the client-to-server direction (so a test can stop a client
//! half-way through an upload).
//!
//! std threads only; at most `max_connections` connections are served,
//! then the proxy stops accepting. Dropping the proxy stops it.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How the proxy misbehaves.
#[derive(Clone, Debug)]
pub struct FlakyOptions {
    /// Share of body-carrying connections cut, in percent (see [`Dice`]).
    pub drop_percent: u64,
    /// A connection counts once it forwarded `cut_after.0` client bytes;
    /// a cut one forwards up to `cut_after.1`, then both sides are shut.
    pub cut_after: (u64, u64),
    /// Client-to-server bytes per second (`None`: as fast as possible).
    pub bytes_per_sec: Option<u64>,
    /// Connections served before the proxy stops accepting.
    pub max_connections: u64,
    /// Seed of where each cut connection is cut.
    pub seed: u64,
}

impl Default for FlakyOptions {
    fn default() -> Self {
        FlakyOptions {
            drop_percent: 30,
            cut_after: (200_000, 3_000_000),
            bytes_per_sec: None,
            max_connections: 2_000,
            seed: 0x5eed,
        }
    }
}

/// A running proxy.
pub struct FlakyProxy {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    connections: Arc<AtomicU64>,
    cut: Arc<AtomicU64>,
    cut_mid_body: Arc<AtomicU64>,
}

impl FlakyProxy {
    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
    /// Connections cut so far.
    pub fn cut(&self) -> u64 {
        self.cut.load(Ordering::SeqCst)
    }
    /// Of those, the ones cut inside a request body (after its head, before
    /// its last byte), as the proxy's own HTTP/1.1 framing saw it.
    pub fn cut_mid_body(&self) -> u64 {
        self.cut_mid_body.load(Ordering::SeqCst)
    }
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wake the accept loop
    }
}

/// splitmix64: a tiny deterministic generator for the per-connection dice.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

/// Starts a proxy to `upstream` (must be on loopback).
pub fn start_flaky_proxy(upstream: SocketAddr, opts: FlakyOptions) -> FlakyProxy {
    assert!(
        upstream.ip().is_loopback(),
        "the flaky proxy only forwards to loopback"
    );
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind flaky proxy");
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let connections = Arc::new(AtomicU64::new(0));
    let cut = Arc::new(AtomicU64::new(0));
    let cut_mid_body = Arc::new(AtomicU64::new(0));
    let (stop2, conns2, cut2) = (stop.clone(), connections.clone(), cut.clone());
    let mid2 = cut_mid_body.clone();
    let carriers = Arc::new(AtomicU64::new(0));
    std::thread::spawn(move || {
        for (i, client) in listener.incoming().enumerate() {
            if stop2.load(Ordering::SeqCst) || i as u64 >= opts.max_connections {
                break;
            }
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(upstream) else {
                continue;
            };
            conns2.fetch_add(1, Ordering::SeqCst);
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let dice = Dice {
                opts: opts.clone(),
                carriers: carriers.clone(),
                cut: cut2.clone(),
                cut_mid_body: mid2.clone(),
            };
            let rate = opts.bytes_per_sec;
            std::thread::spawn(move || pipe(c2, s2, Some(dice), rate));
            std::thread::spawn(move || pipe(server, client, None, None));
        }
    });
    FlakyProxy {
        addr,
        stop,
        connections,
        cut,
        cut_mid_body,
    }
}

/// Decides which connections are cut, once they carry a body.
struct Dice {
    opts: FlakyOptions,
    /// Connections that have forwarded `cut_after.0` bytes so far.
    carriers: Arc<AtomicU64>,
    cut: Arc<AtomicU64>,
    cut_mid_body: Arc<AtomicU64>,
}

/// Where a client-to-server byte stream is in its HTTP/1.1 framing
/// (requests with `Content-Length` bodies, one after another).
#[derive(Default)]
struct Framing {
    /// The head being read, until its blank line.
    head: Vec<u8>,
    /// Body bytes still to come of the current request.
    body_left: u64,
}

impl Framing {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.body_left > 0 {
                let take = (self.body_left as usize).min(data.len());
                self.body_left -= take as u64;
                data = &data[take..];
                continue;
            }
            self.head.push(data[0]);
            data = &data[1..];
            if self.head.ends_with(b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.head).to_ascii_lowercase();
                self.body_left = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                self.head.clear();
            }
        }
    }

    /// Inside a body: its head has passed, its last byte has not.
    fn mid_body(&self) -> bool {
        self.body_left > 0
    }
}

impl Dice {
    /// Called when a connection has forwarded `cut_after.0` client bytes:
    /// the k-th such connection is cut when `(k · p) mod 100 < p` (so the
    /// first one always is, then evenly p % of them), after a seeded
    /// number of bytes in `cut_after`. Connections that only carry small
    /// requests are never counted, whatever the client's pooling does.
    fn limit(&self) -> Option<u64> {
        let k = self.carriers.fetch_add(1, Ordering::SeqCst);
        let p = self.opts.drop_percent;
        if (k * p) % 100 >= p {
            return None;
        }
        let (lo, hi) = self.opts.cut_after;
        Some(lo + mix(self.opts.seed ^ k) % (hi - lo).max(1))
    }
}

/// Copies `from` → `to`, throttled to `rate` bytes/s; with `dice`, may
/// shut both down in the middle of the stream (a cut).
fn pipe(mut from: TcpStream, mut to: TcpStream, dice: Option<Dice>, rate: Option<u64>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    let mut decided = dice.is_none();
    let mut limit: Option<u64> = None;
    let mut framing = Framing::default();
    let start = Instant::now();
    loop {
        let mut want = buf.len() as u64;
        if let Some(d) = dice.as_ref().filter(|_| !decided) {
            if sent >= d.opts.cut_after.0 {
                decided = true;
                limit = d.limit();
            } else {
                want = want.min(d.opts.cut_after.0 - sent);
            }
        }
        if let Some(l) = limit {
            want = want.min(l - sent);
            if want == 0 {
                if let Some(d) = &dice {
                    d.cut.fetch_add(1, Ordering::SeqCst);
                    if framing.mid_body() {
                        d.cut_mid_body.fetch_add(1, Ordering::SeqCst);
                    }
                }
                break;
            }
        }
        let n = match from.read(&mut buf[..want as usize]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if dice.is_some() {
            framing.feed(&buf[..n]);
        }
        sent += n as u64;
        if let Some(r) = rate {
            let due = Duration::from_secs_f64(sent as f64 / r as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
