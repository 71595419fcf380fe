//! nginx as a stand-in for the Cloudflare Tunnel (a reverse proxy that
//! refuses request bodies over 100 MB and streams bodies through unbuffered),
//! or as a static file server for a `file://` binary cache.
//!
//! Runs `nginx -p <tmp> -c <tmp>/nginx.conf -e <tmp>/logs/error.log` with
//! `daemon off; master_process off;`, pid and every temp path inside the
//! temp dir (no `/var/lib/nginx`, no `/var/log/nginx` needed), listening on
//! `127.0.0.1:<free port>`. The access log records, per line:
//! `$status $request_length $bytes_sent $request_time "$request"`.

use super::tools::{free_port, require_tool};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nginx; killed (and waited for) on drop.
pub struct Nginx {
    pub port: u16,
    pub access_log: PathBuf,
    pub error_log: PathBuf,
    pub child: Child,
    pub dir: tempfile::TempDir,
}

impl Nginx {
    /// `http://127.0.0.1:<port>` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    /// Parsed access log lines so far.
    pub fn log_entries(&self) -> Vec<LogEntry> {
        let text = std::fs::read_to_string(&self.access_log).unwrap_or_default();
        text.lines().filter_map(LogEntry::parse).collect()
    }
    /// The error log so far (for failure messages).
    pub fn error_log_text(&self) -> String {
        std::fs::read_to_string(&self.error_log).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One access log line.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub status: u16,
    /// Request line + headers + body bytes as nginx read them (a refused
    /// body is not counted).
    pub request_length: u64,
    pub bytes_sent: u64,
    pub request_time: f64,
    pub method: String,
    pub uri: String,
}

impl LogEntry {
    fn parse(line: &str) -> Option<LogEntry> {
        let mut it = line.splitn(5, ' ');
        let status = it.next()?.parse().ok()?;
        let request_length = it.next()?.parse().ok()?;
        let bytes_sent = it.next()?.parse().ok()?;
        let request_time = it.next()?.parse().ok()?;
        let req = it.next()?.trim().trim_matches('"');
        let mut r = req.split(' ');
        let method = r.next().unwrap_or("").to_string();
        let uri = r.next().unwrap_or("").to_string();
        Some(LogEntry {
            status,
            request_length,
            bytes_sent,
            request_time,
            method,
            uri,
        })
    }
}

/// The largest `$request_length` in the access log so far (0 when empty).
pub fn nginx_max_request_length(n: &Nginx) -> u64 {
    n.log_entries()
        .iter()
        .map(|e| e.request_length)
        .max()
        .unwrap_or(0)
}

/// Options for the reverse-proxy mode.
#[derive(Clone, Debug)]
pub struct NginxOptions {
    /// `client_max_body_size` in bytes. Default 100_000_000 (Cloudflare's
    /// 100 MB, taken as decimal: the stricter reading).
    pub max_body: u64,
    /// `proxy_read_timeout` / `proxy_send_timeout` in seconds. Default 300.
    /// Set 100 to mimic Cloudflare's 524.
    pub read_timeout_secs: u64,
}

impl Default for NginxOptions {
    fn default() -> Self {
        NginxOptions {
            max_body: 100_000_000,
            read_timeout_secs: 300,
        }
    }
}

/// A reverse proxy to `upstream` with [`NginxOptions::default`]:
/// `client_max_body_size 100000000`, `proxy_request_buffering off`,
/// `proxy_buffering off`, `proxy_http_version 1.1`, Host passed through.
/// Returns once the port accepts connections.
pub fn start_nginx(upstream: SocketAddr) -> Nginx {
    start_nginx_with(upstream, &NginxOptions::default())
}

/// [`start_nginx`] with explicit options.
pub fn start_nginx_with(upstream: SocketAddr, opts: &NginxOptions) -> Nginx {
    let server = format!(
        "    client_max_body_size {max};\n\
         \x20   location / {{\n\
         \x20     proxy_pass http://{upstream};\n\
         \x20     proxy_http_version 1.1;\n\
         \x20     proxy_set_header Connection \"\";\n\
         \x20     proxy_set_header Host $http_host;\n\
         \x20     proxy_request_buffering off;\n\
         \x20     proxy_buffering off;\n\
         \x20     proxy_read_timeout {t}s;\n\
         \x20     proxy_send_timeout {t}s;\n\
         \x20   }}\n",
        max = opts.max_body,
        t = opts.read_timeout_secs
    );
    launch(&server)
}

/// A reverse proxy (as [`start_nginx`]) over several `upstreams`, round
/// robin; an upstream that refuses a connection is skipped for a second
/// (`max_fails=1 fail_timeout=1s`), and a request it never received goes
/// to the next one. `DIR/logs/upstream.log` records, per line:
/// `$upstream_addr $status "$request"` (see [`Nginx::upstream_log`]).
pub fn start_nginx_balancing(upstreams: &[SocketAddr]) -> Nginx {
    let servers: String = upstreams
        .iter()
        .map(|u| format!("    server {u} max_fails=1 fail_timeout=1s;\n"))
        .collect();
    let http = format!(
        "  upstream ferry {{\n{servers}  }}\n\
         \x20 log_format upstreams '$upstream_addr $status \"$request\"';\n"
    );
    let server = "    client_max_body_size 100000000;\n\
         \x20   access_log logs/upstream.log upstreams;\n\
         \x20   location / {\n\
         \x20     proxy_pass http://ferry;\n\
         \x20     proxy_http_version 1.1;\n\
         \x20     proxy_set_header Connection \"\";\n\
         \x20     proxy_set_header Host $http_host;\n\
         \x20     proxy_request_buffering off;\n\
         \x20     proxy_buffering off;\n\
         \x20     proxy_connect_timeout 2s;\n\
         \x20   }\n";
    launch_in(&http, server)
}

impl Nginx {
    /// Lines of `logs/upstream.log` (see [`start_nginx_balancing`]), as
    /// (upstream address, status, request line). A request retried on a
    /// second upstream names both (`a, b`); the address is the last.
    pub fn upstream_log(&self) -> Vec<(String, u16, String)> {
        let text =
            std::fs::read_to_string(self.dir.path().join("logs/upstream.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let quote = l.find('"')?;
                let (head, request) = (l[..quote].trim(), l[quote..].trim_matches('"'));
                let (addrs, status) = head.rsplit_once(' ')?;
                let addr = addrs.rsplit(',').next()?.trim().to_owned();
                Some((addr, status.parse().ok()?, request.to_owned()))
            })
            .collect()
    }
}

/// A static file server for `root` (e.g. a `nix copy --to file://...`
/// directory): `.narinfo` as `text/x-nix-narinfo`, the rest
/// `application/octet-stream`.
pub fn start_nginx_static(root: &Path) -> Nginx {
    launch(&format!("    root {};\n", root.display()))
}

/// [`start_nginx_static`] answering 401 unless the request carries HTTP
/// Basic auth with user `token` and password `token` (what a netrc written
/// by `write_netrc` makes Nix send).
pub fn start_nginx_static_auth(root: &Path, token: &str) -> Nginx {
    let b64 = base64_encode(format!("token:{token}").as_bytes());
    launch(&format!(
        "    root {};\n    if ($http_authorization != \"Basic {b64}\") {{ return 401; }}\n",
        root.display()
    ))
}

fn launch(server_body: &str) -> Nginx {
    launch_in("", server_body)
}

/// [`launch`] with lines for the `http` block (upstreams, log formats).
fn launch_in(http_body: &str, server_body: &str) -> Nginx {
    let nginx = require_tool("nginx");
    let mut last_err = String::new();
    for _attempt in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("logs")).unwrap();
        let port = free_port();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/logs/error.log info;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
             \x20 types {{ text/x-nix-narinfo narinfo; }}\n\
             \x20 default_type application/octet-stream;\n\
             \x20 client_body_temp_path {d}/client_body;\n\
             \x20 proxy_temp_path {d}/proxy;\n\
             \x20 fastcgi_temp_path {d}/fastcgi;\n\
             \x20 uwsgi_temp_path {d}/uwsgi;\n\
             \x20 scgi_temp_path {d}/scgi;\n\
             \x20 log_format ferry '$status $request_length $bytes_sent $request_time \"$request\"';\n\
             \x20 access_log {d}/logs/access.log ferry;\n\
             {http_body}\
             \x20 server {{\n\
             \x20   listen 127.0.0.1:{port};\n\
             {server_body}\
             \x20 }}\n\
             }}\n",
            d = d.display()
        );
        std::fs::write(d.join("nginx.conf"), conf).unwrap();
        let child = Command::new(&nginx)
            .arg("-p")
            .arg(d)
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .arg("-e")
            .arg(d.join("logs/error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let mut n = Nginx {
            port,
            access_log: d.join("logs/access.log"),
            error_log: d.join("logs/error.log"),
            child,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = n.child.try_wait() {
                last_err = format!("nginx exited ({st}): {}", n.error_log_text());
                break;
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return n;
            }
            if Instant::now() > deadline {
                panic!(
                    "nginx did not listen on {port} within 10 s: {}",
                    n.error_log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !last_err.contains("in use") {
            break;
        }
    }
    panic!("cannot start nginx: {last_err}");
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}
