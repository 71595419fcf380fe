//! HTTP through the real `curl` binary, returning status, headers and body
//! (tests look at status codes, so `--fail` is not used).

use super::tools::{require_tool, run_ok};
use std::path::PathBuf;
use std::process::Command;

/// `curl -sS` (silent, but errors shown). Add arguments as needed.
pub fn curl() -> Command {
    let mut c = Command::new(require_tool("curl"));
    c.arg("-sS");
    c
}

/// A request body.
pub enum Body {
    None,
    /// Sent from memory (written to a temp file first).
    Bytes(Vec<u8>),
    /// Sent from a file, with `Content-Length` (curl `--data-binary @file`).
    File(PathBuf),
}

/// What came back: the final status, headers of the final response
/// (names lower-cased; `100 Continue` blocks dropped) and the body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let n = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == n)
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// Body as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }
}

/// Send one request with curl: `method`, `url`, extra `headers`
/// (`"Name: value"`), `body`. Bodies go with `--data-binary @file`
/// (Content-Length, curl's default form content type unless a header says
/// otherwise). Panics only when curl itself fails (connection refused...).
pub fn http_request(method: &str, url: &str, headers: &[&str], body: Body) -> HttpResponse {
    try_http_request(method, url, headers, body).unwrap_or_else(|e| panic!("{e}"))
}

/// [`http_request`], with curl's own failure (connection refused or
/// reset: the server died) as `Err`.
pub fn try_http_request(
    method: &str,
    url: &str,
    headers: &[&str],
    body: Body,
) -> Result<HttpResponse, String> {
    let tmp = tempfile::tempdir().unwrap();
    let hfile = tmp.path().join("headers");
    let bfile = tmp.path().join("body");
    let mut c = curl();
    if method == "HEAD" {
        c.arg("-I"); // not `-X HEAD`: curl would wait for a body
    } else {
        c.arg("-X").arg(method);
    }
    c.arg("-D")
        .arg(&hfile)
        .arg("-o")
        .arg(&bfile)
        .arg("-w")
        .arg("%{http_code}");
    for h in headers {
        c.arg("-H").arg(h);
    }
    match body {
        Body::None => {}
        Body::Bytes(b) => {
            let p = tmp.path().join("request");
            std::fs::write(&p, b).unwrap();
            c.arg("--data-binary").arg(format!("@{}", p.display()));
        }
        Body::File(p) => {
            c.arg("--data-binary").arg(format!("@{}", p.display()));
        }
    }
    c.arg(url);
    let out = super::tools::run(&mut c).map_err(|e| e.to_string())?.stdout;
    let status: u16 = String::from_utf8_lossy(&out)
        .trim()
        .parse()
        .expect("curl %{http_code}");
    let raw = std::fs::read_to_string(&hfile).unwrap_or_default();
    let mut headers = Vec::new();
    for line in raw.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("HTTP/") {
            headers.clear(); // keep only the last response block
        } else if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let body = std::fs::read(&bfile).unwrap_or_default();
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}
