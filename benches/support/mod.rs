//! What the benchmarks share: a real `ferry serve` in its own process (so
//! its RSS is its own), killed when dropped; nginx in front of it or
//! serving files ([`nginx`]); NAR makers ([`nar`]); the push API over HTTP
//! ([`api`]); keep-alive load generators ([`load`]); knobs read from the
//! environment and the goal verdicts printed beside each figure.
//!
//! Each bench target compiles this module and uses part of it.
#![allow(dead_code)]

pub mod api;
pub mod delay;
pub mod load;
pub mod nar;
pub mod nginx;
pub mod push;

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `ferry serve` on a fresh data dir.
pub struct Server {
    pub port: u16,
    /// The admin token printed at first start.
    pub token: String,
    pub child: Child,
    pub data_dir: PathBuf,
}

impl Server {
    /// Starts the server, reads its first-start admin token and waits
    /// until it accepts connections.
    pub fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, &[])
    }

    /// [`Server::start`] with more `ferry serve` arguments (`--config F`).
    pub fn start_with(data_dir: &Path, args: &[&str]) -> Server {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data_dir)
            .args(args)
            .env("FERRY_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("ferry serve");
        let mut stdout = child.stdout.take().expect("stdout");
        let mut out = String::new();
        let token = loop {
            let mut buf = [0u8; 4096];
            let n = stdout.read(&mut buf).expect("read");
            assert!(n > 0, "ferry serve printed no admin token");
            out.push_str(&String::from_utf8_lossy(&buf[..n]));
            if let Some(t) = out
                .lines()
                .skip_while(|l| !l.starts_with("Admin token"))
                .nth(2)
            {
                break t.trim().to_owned();
            }
        };
        // Keep reading: the server prints more after the token, and a
        // closed pipe would make it panic.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        wait_listening(port);
        Server {
            port,
            token,
            child,
            data_dir: data_dir.to_owned(),
        }
    }

    /// The server's base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's peak resident set so far (`VmHWM`), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .unwrap_or(0.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port()
}

/// Waits (10 s at most) until `port` accepts connections.
pub fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A number from the environment, or `default`.
pub fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// A comma-separated list of numbers from the environment, or `default`.
pub fn env_list(name: &str, default: &[f64]) -> Vec<f64> {
    match std::env::var(name) {
        Ok(v) => v.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
        Err(_) => default.to_vec(),
    }
}

/// A scratch directory on the disk the benchmark measures: under
/// `FERRY_BENCH_DIR` when set, else cargo's `target/tmp` (not `/tmp`,
/// which may be memory).
pub fn work_dir() -> tempfile::TempDir {
    let base = std::env::var("FERRY_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).expect("bench dir");
    tempfile::tempdir_in(base).expect("tempdir")
}

/// Megabytes (10^6) per second.
pub fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// `goal ≥ 0.8: met` or `goal ≥ 0.8: MISSED`.
pub fn at_least(value: f64, goal: f64, shown: &str) -> String {
    verdict(value >= goal, &format!("≥ {shown}"))
}

/// `goal ≤ 1 s: met` or `goal ≤ 1 s: MISSED`.
pub fn at_most(value: f64, goal: f64, shown: &str) -> String {
    verdict(value <= goal, &format!("≤ {shown}"))
}

/// `goal <goal>: met` or `goal <goal>: MISSED`.
pub fn verdict(met: bool, goal: &str) -> String {
    format!("goal {goal}: {}", if met { "met" } else { "MISSED" })
}

/// Median and nearest-rank 99th percentile of `samples` (sorted here).
pub fn median_p99(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    let n = samples.len();
    let rank = ((n as f64 * 0.99).ceil() as usize).clamp(1, n);
    (samples[n / 2], samples[rank - 1])
}

/// Runs `cmd` (output discarded) and returns how long it took.
pub fn timed(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    let st = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run");
    assert!(st.success(), "{cmd:?} failed");
    t.elapsed()
}

/// `dd if=src of=<dir>/dd.out bs=64M conv=fsync`: the machine's durable
/// write speed for these bytes, in MB/s. The copy is removed.
pub fn dd_fsync(src: &Path, dir: &Path) -> f64 {
    let out = dir.join("dd.out");
    let d = timed(
        Command::new("dd")
            .arg(format!("if={}", src.display()))
            .arg(format!("of={}", out.display()))
            .args(["bs=64M", "conv=fsync"]),
    );
    std::fs::remove_file(&out).ok();
    mbps(std::fs::metadata(src).expect("dd source").len(), d)
}
