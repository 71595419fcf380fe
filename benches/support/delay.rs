//! A TCP proxy that adds a round trip to every request, as a tunnel does:
//! bytes from the client that follow bytes from the server (a new request
//! on a kept-alive connection, or the first bytes of a connection) wait
//! `rtt` before they are passed on. Loopback only; one thread per
//! direction of each connection.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// A running proxy; stops taking connections when dropped.
pub struct Delay {
    port: u16,
    stop: Arc<AtomicBool>,
    /// Requests delayed so far.
    pub delayed: Arc<AtomicU64>,
}

impl Delay {
    /// Listens on a free loopback port, forwarding to `upstream`.
    pub fn start(upstream: u16, rtt: Duration) -> Delay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let delayed = Arc::new(AtomicU64::new(0));
        let (s, d) = (stop.clone(), delayed.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                // Whether the server spoke last: the next client bytes
                // start a new request.
                let turn = Arc::new(AtomicBool::new(true));
                let (c2, s2) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let (t1, t2, d) = (turn.clone(), turn, d.clone());
                std::thread::spawn(move || {
                    pump(client, server, || {
                        if t1.swap(false, Ordering::Relaxed) {
                            d.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(rtt);
                        }
                    })
                });
                std::thread::spawn(move || pump(s2, c2, || t2.store(true, Ordering::Relaxed)));
            }
        });
        Delay {
            port,
            stop,
            delayed,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Delay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies `from` into `to` until either ends, calling `before` ahead of
/// passing on each read.
fn pump(mut from: TcpStream, mut to: TcpStream, before: impl Fn()) {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        before();
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
