//! The push API as the benchmarks drive it (reqwest, async): create a
//! cache, push a NAR in parts with some in flight, ask what is missing,
//! scrape `/metrics`. Every unexpected answer panics with its body.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Bytes per part, as `ferry push` sends by default.
pub const PART: usize = 64 * 1024 * 1024;

/// A client for one server (or the proxy in front of it).
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
    auth: String,
}

/// How long one push took.
pub struct Pushed {
    /// From the first request of the push to `complete` answering committed.
    pub total: Duration,
    /// From the last part acknowledged to committed.
    pub commit: Duration,
    /// True when the server linked an already stored NAR (nothing sent).
    pub linked: bool,
}

impl Api {
    pub fn new(base: &str, token: &str) -> Api {
        ferry::client::install_tls_provider();
        Api {
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .expect("http client"),
            base: base.to_owned(),
            auth: format!("Bearer {token}"),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> (u16, Vec<u8>) {
        let r = req
            .header("authorization", &self.auth)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = r.status().as_u16();
        let body = r.bytes().await.unwrap_or_default().to_vec();
        assert!(
            (200..300).contains(&status),
            "{what}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        (status, body)
    }

    fn json(body: &[u8]) -> Value {
        serde_json::from_slice(body).unwrap_or(Value::Null)
    }

    /// `POST /_api/v1/caches`.
    pub async fn create_cache(&self, name: &str, public: bool) {
        let req = self
            .client
            .post(format!("{}/_api/v1/caches", self.base))
            .json(&json!({"name": name, "public": public}));
        self.send(req, "create cache").await;
    }

    /// `POST /_api/v1/caches/{cache}/uploads` (zstd parts, no references):
    /// the upload's absolute URL, or `None` when the server linked a NAR it
    /// already had.
    pub async fn create_upload(
        &self,
        cache: &str,
        store_path: &str,
        nar_hash: &str,
        nar_size: u64,
    ) -> Option<String> {
        self.create_upload_as(cache, store_path, nar_hash, nar_size, "zstd")
            .await
    }

    /// [`Api::create_upload`] of bytes in `compression`.
    pub async fn create_upload_as(
        &self,
        cache: &str,
        store_path: &str,
        nar_hash: &str,
        nar_size: u64,
        compression: &str,
    ) -> Option<String> {
        let req = self
            .client
            .post(format!("{}/_api/v1/caches/{cache}/uploads", self.base))
            .json(&json!({
                "store_path": store_path, "nar_hash": nar_hash,
                "nar_size": nar_size, "compression": compression, "references": []
            }));
        let (status, body) = self.send(req, "create upload").await;
        let v = Api::json(&body);
        if status == 200 {
            assert_eq!(v["state"], "committed", "create upload: {v}");
            return None;
        }
        Some(format!(
            "{}{}",
            self.base,
            v["upload_url"].as_str().expect("upload_url")
        ))
    }

    /// `PUT {upload}/parts/{n}`.
    pub async fn put_part(&self, upload: &str, n: usize, bytes: Vec<u8>) {
        let req = self
            .client
            .put(format!("{upload}/parts/{n}"))
            .header("content-type", "application/octet-stream")
            .body(bytes);
        self.send(req, "part").await;
    }

    /// `POST {upload}/complete`, then polls until committed.
    pub async fn complete(&self, upload: &str, parts: usize) {
        let req = self
            .client
            .post(format!("{upload}/complete"))
            .json(&json!({"parts": parts}));
        let (_, body) = self.send(req, "complete").await;
        let mut state = Api::json(&body)["state"].clone();
        while state == "verifying" {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let (_, body) = self.send(self.client.get(upload), "upload state").await;
            state = Api::json(&body)["state"].clone();
        }
        assert_eq!(state, "committed", "upload ended {state}");
    }

    /// Pushes one NAR whose zstd bytes come `PART` at a time from
    /// `part(n)` (n from 0), with up to `jobs` parts in flight.
    pub async fn push<F>(
        &self,
        cache: &str,
        store_path: &str,
        nar: &super::nar::Made,
        jobs: usize,
        part: F,
    ) -> Pushed
    where
        F: FnMut(usize) -> Vec<u8>,
    {
        self.push_as(cache, store_path, nar, jobs, "zstd", part)
            .await
    }

    /// [`Api::push`] of bytes in `compression` (`zstd`: `nar.zst_size`
    /// bytes; `none`: `nar.nar_size`).
    pub async fn push_as<F>(
        &self,
        cache: &str,
        store_path: &str,
        nar: &super::nar::Made,
        jobs: usize,
        compression: &str,
        mut part: F,
    ) -> Pushed
    where
        F: FnMut(usize) -> Vec<u8>,
    {
        let start = Instant::now();
        let Some(upload) = self
            .create_upload_as(cache, store_path, &nar.nar_hash, nar.nar_size, compression)
            .await
        else {
            let t = start.elapsed();
            return Pushed {
                total: t,
                commit: Duration::ZERO,
                linked: true,
            };
        };
        let wire = if compression == "none" {
            nar.nar_size
        } else {
            nar.zst_size
        };
        let parts = (wire as usize).div_ceil(PART).max(1);
        let permits = Arc::new(tokio::sync::Semaphore::new(jobs.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..parts {
            let permit = permits.clone().acquire_owned().await.expect("permit");
            let bytes = part(n);
            let (api, upload) = (self.clone(), upload.clone());
            tasks.spawn(async move {
                api.put_part(&upload, n + 1, bytes).await;
                drop(permit);
            });
        }
        self.settle(tasks, &upload, parts, start).await
    }

    /// Waits for the part tasks, completes the upload and times it all.
    async fn settle(
        &self,
        mut tasks: tokio::task::JoinSet<()>,
        upload: &str,
        parts: usize,
        start: Instant,
    ) -> Pushed {
        while let Some(r) = tasks.join_next().await {
            r.expect("part task");
        }
        let last_part = Instant::now();
        self.complete(upload, parts).await;
        Pushed {
            total: start.elapsed(),
            commit: last_part.elapsed(),
            linked: false,
        }
    }

    /// [`Api::push_as`] of zstd parts held in `files`, each sent by its own
    /// `curl -T` (as a shell script pushes), `jobs` at a time.
    pub async fn push_by_curl(
        &self,
        cache: &str,
        store_path: &str,
        nar: &super::nar::Made,
        jobs: usize,
        files: Vec<std::path::PathBuf>,
    ) -> Pushed {
        let start = Instant::now();
        let upload = self
            .create_upload_as(cache, store_path, &nar.nar_hash, nar.nar_size, "zstd")
            .await
            .expect("a fresh NAR");
        let parts = files.len();
        let permits = Arc::new(tokio::sync::Semaphore::new(jobs.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for (n, file) in files.into_iter().enumerate() {
            let permit = permits.clone().acquire_owned().await.expect("permit");
            let (auth, url) = (
                format!("Authorization: {}", self.auth),
                format!("{upload}/parts/{}", n + 1),
            );
            tasks.spawn_blocking(move || {
                let out = std::process::Command::new("curl")
                    .args(["-sS", "-f", "-o", "/dev/null", "-H", &auth, "-T"])
                    .arg(&file)
                    .arg(&url)
                    .output()
                    .expect("curl (install it: .ci/run)");
                assert!(
                    out.status.success(),
                    "curl part {}: {}",
                    n + 1,
                    String::from_utf8_lossy(&out.stderr)
                );
                drop(permit);
            });
        }
        self.settle(tasks, &upload, parts, start).await
    }

    /// `POST /_api/v1/caches/{cache}/missing`.
    pub async fn missing(&self, cache: &str, paths: &[String]) -> Vec<String> {
        let req = self
            .client
            .post(format!("{}/_api/v1/caches/{cache}/missing", self.base))
            .json(&json!({ "store_paths": paths }));
        let (_, body) = self.send(req, "missing").await;
        serde_json::from_value(Api::json(&body)["missing"].clone()).expect("missing list")
    }

    /// A GET that must succeed, as text.
    pub async fn get_text(&self, path: &str) -> String {
        let req = self.client.get(format!("{}{path}", self.base));
        String::from_utf8(self.send(req, path).await.1).expect("utf-8")
    }

    /// SHA-256 of what a GET of `path` answers (streamed, not kept).
    pub async fn get_sha256(&self, path: &str) -> [u8; 32] {
        use sha2::Digest;
        let mut r = self
            .client
            .get(format!("{}{path}", self.base))
            .header("authorization", &self.auth)
            .send()
            .await
            .expect("GET");
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        let mut sha = sha2::Sha256::new();
        while let Some(chunk) = r.chunk().await.expect("body") {
            sha.update(&chunk);
        }
        sha.finalize().into()
    }

    /// The value of an unlabelled counter in `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.get_text("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics"))
    }
}

/// Reads part `n` (`PART` bytes at most) of the file at `path`.
/// Splits `path` into files of [`PART`] bytes beside it.
pub fn split_parts(path: &std::path::Path) -> Vec<std::path::PathBuf> {
    let len = std::fs::metadata(path).expect("nar").len() as usize;
    (0..len.div_ceil(PART).max(1))
        .map(|n| {
            let out = path.with_extension(format!("part{}", n + 1));
            std::fs::write(&out, file_part(path, n)).expect("write part");
            out
        })
        .collect()
}

pub fn file_part(path: &std::path::Path, n: usize) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).expect("open");
    f.seek(SeekFrom::Start((n * PART) as u64)).expect("seek");
    let mut buf = Vec::with_capacity(PART);
    f.take(PART as u64).read_to_end(&mut buf).expect("read");
    buf
}
