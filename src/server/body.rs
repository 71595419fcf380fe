//! JSON request bodies, read only once the request is authorized.
//!
//! Handlers take the raw body stream and call [`json`] after their access
//! check, so a request without the right gets its 401/403 before a byte of
//! its body is read. Bodies are capped: 1 MiB for every JSON body but
//! `missing`, which takes up to 100 000 store paths. A `Content-Length`
//! over the cap is refused before reading; a body that grows past it is
//! refused as soon as it does.

use actix_web::{HttpRequest, http::header, web};
use bytes::BytesMut;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// The cap of a JSON body, in bytes.
pub const JSON_LIMIT: u64 = 1 << 20;

/// Store paths one `missing` request may ask about.
pub const MISSING_PATHS: usize = 100_000;
/// Largest body of a manifest batch: [`crate::upload::MAX_CHUNK_BATCH`]
/// entries of about 110 bytes of JSON each.
pub const CHUNKS_LIMIT: u64 = (crate::upload::MAX_CHUNK_BATCH as u64) * 128 + 4096;

/// The cap of a `missing` body: 100 000 of the longest store paths
/// (`/nix/store/` + 32 + `-` + 211), quoted and comma-separated.
pub const MISSING_LIMIT: u64 = (MISSING_PATHS as u64) * 260 + 4096;

/// The request's `Content-Length`, if it gives one; `BodyTooLarge` when
/// it is over `limit` (refused before reading a byte).
pub fn declared_within(req: &HttpRequest, limit: u64) -> Result<Option<u64>> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(size) = declared.filter(|s| *s > limit) {
        return Err(Error::BodyTooLarge { size, limit });
    }
    Ok(declared)
}

/// Reads `payload` (at most `limit` bytes) and parses it as JSON.
pub async fn json<T: DeserializeOwned>(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: u64,
) -> Result<T> {
    let declared = declared_within(req, limit)?;
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(limit) as usize);
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            tracing::debug!(error = %e, "a JSON body broke off");
            Error::BadRequest("the request body broke off: send it again".into())
        })?;
        let size = buf.len() as u64 + chunk.len() as u64;
        if size > limit {
            return Err(Error::BodyTooLarge { size, limit });
        }
        buf.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&buf)
        .map_err(|e| Error::BadRequest(format!("the JSON body is invalid: {e}")))
}
