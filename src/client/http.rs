//! The ferry API over HTTP(S), every request retried with [`Backoff`] on
//! connection errors, 5xx, 408, 429 and 524.
//!
//! Bodies are whole buffers ([`bytes::Bytes`]), so every request carries a
//! `Content-Length` (a Cloudflare tunnel has dropped chunked bodies) and a
//! retry re-sends the same bytes without copying them.

use std::time::Duration;

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::backoff::{Backoff, retryable_code, retryable_status};
use super::{ClientError, Result};
use crate::api::{
    CacheInfo, CompleteRequest, ConfigureCache, CreateCache, CreateUpload, ErrorBody,
    MissingRequest, MissingResponse, PartAck, UploadCreated, UploadStatus,
};

/// What `POST …/uploads` led to.
#[derive(Debug)]
pub enum UploadStart {
    /// The cache has the path, or the same NAR was linked: nothing to send.
    Committed,
    Created(UploadCreated),
}

/// What `POST …/complete` led to.
#[derive(Debug, PartialEq)]
pub enum Completed {
    Committed,
    /// The server is still checking: poll the upload.
    Verifying,
}

/// A request body.
#[derive(Clone)]
enum Body {
    Empty,
    Json(Bytes),
    Part { bytes: Bytes, digest: String },
    Batch(Bytes),
}

/// One ferry server, authenticated with a token.
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
    backoff: Backoff,
}

impl Api {
    /// A client for `base` (e.g. `https://cache.example.org`).
    pub fn new(base: &str, token: &str) -> Result<Api> {
        super::install_tls_provider();
        let client = reqwest::Client::builder()
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| ClientError::Config(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Api {
            client,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            backoff: Backoff::default(),
        })
    }

    /// Replaces the retry schedule.
    pub fn with_backoff(mut self, backoff: Backoff) -> Api {
        self.backoff = backoff;
        self
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn cache_info(&self, cache: &str) -> Result<CacheInfo> {
        self.json(
            Method::GET,
            &format!("/_api/v1/caches/{cache}"),
            Body::Empty,
        )
        .await
        .map(|(_, v)| v)
    }

    pub async fn create_cache(&self, req: &CreateCache) -> Result<CacheInfo> {
        self.json(Method::POST, "/_api/v1/caches", json_body(req)?)
            .await
            .map(|(_, v)| v)
    }

    pub async fn configure_cache(&self, cache: &str, req: &ConfigureCache) -> Result<CacheInfo> {
        let path = format!("/_api/v1/caches/{cache}");
        let (_, bytes) = self.send(Method::PATCH, &path, json_body(req)?).await?;
        match serde_json::from_slice(&bytes) {
            Ok(info) => Ok(info),
            Err(_) => self.cache_info(cache).await,
        }
    }

    pub async fn destroy_cache(&self, cache: &str) -> Result<()> {
        self.send(
            Method::DELETE,
            &format!("/_api/v1/caches/{cache}"),
            Body::Empty,
        )
        .await
        .map(|_| ())
    }

    /// The paths the cache lacks, asked in batches of 1000.
    pub async fn missing(&self, cache: &str, paths: &[String]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for chunk in paths.chunks(1000) {
            let req = MissingRequest {
                store_paths: chunk.to_vec(),
            };
            let path = format!("/_api/v1/caches/{cache}/missing");
            let (_, r): (_, MissingResponse) =
                self.json(Method::POST, &path, json_body(&req)?).await?;
            out.extend(r.missing);
        }
        Ok(out)
    }

    pub async fn create_upload(&self, cache: &str, req: &CreateUpload) -> Result<UploadStart> {
        let path = format!("/_api/v1/caches/{cache}/uploads");
        let (status, bytes) = self.send(Method::POST, &path, json_body(req)?).await?;
        if status == StatusCode::CREATED {
            Ok(UploadStart::Created(self.parse(
                &Method::POST,
                &path,
                &bytes,
            )?))
        } else {
            Ok(UploadStart::Committed)
        }
    }

    /// Sends part `n` with `Content-Length` and a SHA-256 `Content-Digest`.
    pub async fn put_part(&self, id: &str, n: u32, bytes: Bytes) -> Result<PartAck> {
        use sha2::Digest as _;
        let digest = crate::api::content_digest_sha256(&sha2::Sha256::digest(&bytes));
        let path = format!("/_api/v1/uploads/{id}/parts/{n}");
        self.json(Method::PUT, &path, Body::Part { bytes, digest })
            .await
            .map(|(_, v)| v)
    }

    /// Declares manifest entries `from..` of a chunked upload; returns the
    /// indices whose frames to send.
    pub async fn add_chunks(
        &self,
        id: &str,
        from: u64,
        chunks: Vec<crate::api::ChunkDecl>,
    ) -> Result<Vec<u64>> {
        let path = format!("/_api/v1/uploads/{id}/chunks");
        let body = json_body(&crate::api::AddChunks { from, chunks })?;
        let (_, answer): (_, crate::api::ChunksToSend) =
            self.json(Method::POST, &path, body).await?;
        Ok(answer.send)
    }

    /// Sends a batch body (small NARs, see [`super::batch`]); one result
    /// per record, in order.
    pub async fn batch(&self, cache: &str, body: Bytes) -> Result<Vec<crate::api::BatchResult>> {
        let path = format!("/_api/v1/caches/{cache}/batch");
        let (_, answer): (_, crate::api::BatchResponse) =
            self.json(Method::POST, &path, Body::Batch(body)).await?;
        Ok(answer.results)
    }

    pub async fn upload_status(&self, id: &str) -> Result<UploadStatus> {
        self.json(Method::GET, &format!("/_api/v1/uploads/{id}"), Body::Empty)
            .await
            .map(|(_, v)| v)
    }

    pub async fn complete(&self, id: &str, parts: u32) -> Result<Completed> {
        let path = format!("/_api/v1/uploads/{id}/complete");
        let (status, _) = self
            .send(Method::POST, &path, json_body(&CompleteRequest { parts })?)
            .await?;
        Ok(if status == StatusCode::ACCEPTED {
            Completed::Verifying
        } else {
            Completed::Committed
        })
    }

    pub async fn abandon(&self, id: &str) -> Result<()> {
        self.send(
            Method::DELETE,
            &format!("/_api/v1/uploads/{id}"),
            Body::Empty,
        )
        .await
        .map(|_| ())
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Body,
    ) -> Result<(StatusCode, T)> {
        let (status, bytes) = self.send(method.clone(), path, body).await?;
        Ok((status, self.parse(&method, path, &bytes)?))
    }

    fn parse<T: DeserializeOwned>(&self, method: &Method, path: &str, bytes: &[u8]) -> Result<T> {
        serde_json::from_slice(bytes).map_err(|e| ClientError::Transport {
            method: method.to_string(),
            url: format!("{}{path}", self.base),
            message: format!("the answer is not the JSON expected ({e}); is this a ferry server?"),
        })
    }

    /// One request with retries; `Ok` for 2xx only.
    async fn send(&self, method: Method, path: &str, body: Body) -> Result<(StatusCode, Bytes)> {
        let url = format!("{}{path}", self.base);
        let mut attempt = 0u32;
        loop {
            let (err, retry) = match self.once(&method, &url, &body).await {
                Ok((status, bytes)) if status.is_success() => return Ok((status, bytes)),
                Ok((status, bytes)) => {
                    let e = api_error(&method, &url, status, &bytes);
                    let retry = retryable_status(status.as_u16())
                        || e.api_code().is_some_and(retryable_code);
                    (e, retry)
                }
                Err(e) => (e, true),
            };
            if !retry || !self.backoff.allows(attempt) {
                return Err(err);
            }
            let wait = self.backoff.delay(attempt);
            tracing::warn!("{err}; retrying in {:.1}s", wait.as_secs_f64());
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    async fn once(&self, method: &Method, url: &str, body: &Body) -> Result<(StatusCode, Bytes)> {
        let mut req = self
            .client
            .request(method.clone(), url)
            .bearer_auth(&self.token);
        req = match body {
            Body::Empty => req,
            Body::Json(b) => req
                .header("content-type", "application/json")
                .body(b.clone()),
            Body::Part { bytes, digest } => req
                .header("content-type", "application/octet-stream")
                .header(crate::api::CONTENT_DIGEST, digest)
                .body(bytes.clone()),
            Body::Batch(b) => req
                .header("content-type", "application/octet-stream")
                .body(b.clone()),
        };
        let transport = |e: reqwest::Error| ClientError::Transport {
            method: method.to_string(),
            url: url.to_owned(),
            message: error_chain(&e),
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(transport)?;
        Ok((status, bytes))
    }
}

fn json_body<T: Serialize>(v: &T) -> Result<Body> {
    serde_json::to_vec(v)
        .map(|b| Body::Json(Bytes::from(b)))
        .map_err(|e| ClientError::Config(format!("cannot encode the request: {e}")))
}

fn api_error(method: &Method, url: &str, status: StatusCode, bytes: &[u8]) -> ClientError {
    let (code, message) = match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(b) => (b.error, b.message),
        Err(_) => {
            let text = String::from_utf8_lossy(bytes);
            let text: String = text.chars().take(200).collect();
            (String::from("http_error"), text.trim().to_owned())
        }
    };
    ClientError::Api {
        method: method.to_string(),
        url: url.to_owned(),
        status: status.as_u16(),
        code,
        message,
    }
}

/// A reqwest error with its causes (reqwest's own text is terse).
fn error_chain(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
