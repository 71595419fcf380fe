//! What both benchmarks share: a real `ferry serve` in its own process
//! (so its RSS is its own), killed when dropped.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running `ferry serve` on a fresh data dir.
pub struct Server {
    pub port: u16,
    /// The admin token printed at first start.
    pub token: String,
    pub child: Child,
}

impl Server {
    /// Starts the server and reads its first-start admin token.
    pub fn start(data_dir: &Path) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("port")
            .local_addr()
            .expect("addr")
            .port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data_dir)
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
        Server { port, token, child }
    }

    /// The server's base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
