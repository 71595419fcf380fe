//! A tiny HTTP/1.1 origin for proxy tests: reads each request body fully
//! (Content-Length or chunked), counts it, answers `200` with
//! `{"received": N}` and closes the connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The running sink. Its accept thread lives until the process ends.
pub struct SinkUpstream {
    pub addr: SocketAddr,
    /// Largest body received so far, in bytes.
    pub max_body: Arc<AtomicU64>,
    /// Requests answered so far.
    pub requests: Arc<AtomicU64>,
}

impl SinkUpstream {
    pub fn max_body(&self) -> u64 {
        self.max_body.load(Ordering::SeqCst)
    }
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Start a sink on `127.0.0.1:<ephemeral>`.
pub fn start_sink_upstream() -> SinkUpstream {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let max_body = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let (m, r) = (max_body.clone(), requests.clone());
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let (m, r) = (m.clone(), r.clone());
            std::thread::spawn(move || {
                let _ = serve(s, &m, &r);
            });
        }
    });
    SinkUpstream {
        addr,
        max_body,
        requests,
    }
}

fn serve(s: TcpStream, max: &AtomicU64, reqs: &AtomicU64) -> std::io::Result<()> {
    let mut w = s.try_clone()?;
    let mut rd = BufReader::new(s);
    let mut line = String::new();
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut expect_continue = false;
    rd.read_line(&mut line)?;
    loop {
        line.clear();
        if rd.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            match k.as_str() {
                "content-length" => content_length = v.parse().ok(),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "expect" => expect_continue = v == "100-continue",
                _ => {}
            }
        }
    }
    if expect_continue {
        w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    let mut drain =
        |rd: &mut BufReader<TcpStream>, mut n: u64, total: &mut u64| -> std::io::Result<()> {
            while n > 0 {
                let k = rd.read(&mut buf[..n.min(1 << 16) as usize])?;
                if k == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                n -= k as u64;
                *total += k as u64;
            }
            Ok(())
        };
    if chunked {
        loop {
            line.clear();
            rd.read_line(&mut line)?;
            let size =
                u64::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
            if size == 0 {
                // trailers until the empty line
                loop {
                    line.clear();
                    if rd.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            drain(&mut rd, size, &mut total)?;
            line.clear();
            rd.read_line(&mut line)?;
        }
    } else if let Some(n) = content_length {
        drain(&mut rd, n, &mut total)?;
    }
    max.fetch_max(total, Ordering::SeqCst);
    reqs.fetch_add(1, Ordering::SeqCst);
    let body = format!("{{\"received\": {total}}}");
    write!(
        w,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    w.flush()
}
