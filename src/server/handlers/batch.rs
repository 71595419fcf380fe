//! `POST /_api/v1/caches/{cache}/batch`: many small NARs in one request.
//!
//! Through a tunnel every request is a round trip; a closure of small
//! paths pushed with the parts API costs three per path. A batch body is a
//! sequence of records, each a header line (the JSON of a create request
//! plus `size`) and then `size` bytes of the NAR in its `compression`.
//! Records are taken one by one as the body streams in, in order, each
//! through the upload engine's one-request door: created, verified and
//! published on its own, with the same rules and verdicts as the parts
//! API. The answer lists one result per record. A verdict on one record
//! does not stop the others; a fault (full disk, unreachable database)
//! stops the request with its status, and the paths published before it
//! stay published (sending the batch again finds them committed).

use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::json_no_store;
use super::uploads::new_upload;
use crate::api::{BATCH_SIZE_FIELD, BatchResponse, BatchResult, CreateUpload, MAX_BATCH_PATHS};
use crate::auth::Operation;
use crate::error::{Error, Result};
use crate::server::{AppState, access, body, error::status_of};
use crate::upload::Whole;

/// Header lines on top of the NAR bytes a body may carry.
const SLACK: u64 = 8 << 20;

/// The request answers within this, whatever it carries: a record whose
/// verdict is not in by then is answered "verifying".
const BUDGET: Duration = Duration::from_secs(60);

/// `POST /caches/{cache}/batch`.
pub async fn batch(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let started = Instant::now();
    let cache = access::cache(&state, &req, &path, Operation::Push).await?;
    let max_part = state.engine.config().max_part_size;
    let limit = max_part + SLACK;
    body::declared_within(&req, limit)?;
    let may_read = access::pull_check(&state, &req);
    let owner = access::owner_of(&req);
    let mut records = Records {
        payload,
        buf: BytesMut::new(),
        read: 0,
        limit,
    };
    let mut results: Vec<BatchResult> = vec![];
    let mut failed = std::collections::HashSet::new();
    while let Some((header, bytes)) = records.next(results.len() + 1, max_part).await? {
        if results.len() == MAX_BATCH_PATHS {
            return Err(Error::TooManyPaths {
                count: MAX_BATCH_PATHS + 1,
                limit: MAX_BATCH_PATHS,
            });
        }
        let store_path = header
            .get("store_path")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        let wait = state
            .engine
            .config()
            .complete_wait
            .min(BUDGET.saturating_sub(started.elapsed()));
        let outcome = match serde_json::from_value::<CreateUpload>(header.into())
            .map_err(|e| Error::BadRequest(format!("record {}: {e}", results.len() + 1)))
            .and_then(|body| {
                // A path whose reference failed in this batch is not
                // published: a substituter must never see a path without
                // its references.
                if body.compression.as_deref() == Some("chunked") {
                    return Err(Error::BadRequest(
                        "a batch record carries its whole NAR: use compression \"none\" or \"zstd\" (chunked uploads go through the parts API)".into(),
                    ));
                }
                match body.references.iter().find(|r| failed.contains(*r)) {
                    Some(r) => Err(Error::ReferenceNotPublished(r.clone())),
                    None => new_upload(&cache, body, owner.clone()),
                }
            }) {
            Ok(new) => {
                state
                    .engine
                    .put_whole(&cache, new, bytes, &may_read, wait)
                    .await
            }
            Err(e) => Err(e),
        };
        let result = match outcome {
            Err(e) if e.is_fault() => return Err(e),
            other => result_of(&state, store_path, other),
        };
        if result.state == "failed" {
            failed.insert(result.store_path.clone());
        }
        results.push(result);
    }
    Ok(json_no_store(StatusCode::OK, &BatchResponse { results }))
}

/// One record's answer.
fn result_of(state: &AppState, store_path: String, outcome: Result<Whole>) -> BatchResult {
    let mut r = BatchResult {
        store_path,
        state: "committed".into(),
        narinfo_url: None,
        nar_hash: None,
        id: None,
        status: None,
        error: None,
    };
    match outcome {
        Ok(Whole::Published { narinfo_url }) => {
            r.narinfo_url = Some(format!("{}{narinfo_url}", state.settings.public_url));
        }
        Ok(Whole::Present { nar_hash }) => r.nar_hash = Some(nar_hash),
        Ok(Whole::Verifying { id }) => {
            r.state = "verifying".into();
            r.id = Some(id);
        }
        Err(e) => {
            r.state = "failed".into();
            r.status = Some(status_of(&e).as_u16());
            r.error = Some(e.to_json());
        }
    }
    r
}

/// The records of a batch body, read as they are needed.
struct Records {
    payload: web::Payload,
    buf: BytesMut,
    read: u64,
    limit: u64,
}

impl Records {
    /// Reads more of the body; `false` at its end.
    async fn fill(&mut self) -> Result<bool> {
        match self.payload.next().await {
            None => Ok(false),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "a batch body broke off");
                Err(Error::BadRequest(
                    "the request body broke off: send the batch again".into(),
                ))
            }
            Some(Ok(chunk)) => {
                self.read += chunk.len() as u64;
                if self.read > self.limit {
                    return Err(Error::BodyTooLarge {
                        size: self.read,
                        limit: self.limit,
                    });
                }
                self.buf.extend_from_slice(&chunk);
                Ok(true)
            }
        }
    }

    /// Record `k` (from 1): its header (without `size`) and its bytes;
    /// `None` at the end of the body. Blank lines between records are
    /// skipped.
    async fn next(
        &mut self,
        k: usize,
        max_part: u64,
    ) -> Result<Option<(serde_json::Map<String, serde_json::Value>, Bytes)>> {
        let end = loop {
            let blank = self
                .buf
                .iter()
                .take_while(|b| matches!(b, b'\n' | b'\r'))
                .count();
            let _ = self.buf.split_to(blank);
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                break i;
            }
            if self.buf.len() as u64 > body::JSON_LIMIT {
                return Err(Error::BadRequest(format!(
                    "record {k}: its header line runs past {} bytes without a newline",
                    body::JSON_LIMIT
                )));
            }
            if !self.fill().await? {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(Error::BadRequest(format!(
                    "record {k}: the body ends inside its header line"
                )));
            }
        };
        let line = self.buf.split_to(end + 1);
        let mut header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&line)
            .map_err(|e| {
                Error::BadRequest(format!(
                    "record {k}: its header line is not a JSON object ({e})"
                ))
            })?;
        let size = header
            .remove(BATCH_SIZE_FIELD)
            .and_then(|v| v.as_u64())
            .ok_or_else(|| {
                Error::BadRequest(format!(
                    "record {k}: its header line has no \"size\" (the number of NAR bytes after the line)"
                ))
            })?;
        if size > max_part {
            return Err(Error::PartTooLarge {
                size,
                limit: max_part,
            });
        }
        while (self.buf.len() as u64) < size {
            if !self.fill().await? {
                return Err(Error::BadRequest(format!(
                    "record {k}: the body ends after {} of its {size} bytes",
                    self.buf.len()
                )));
            }
        }
        let bytes = self.buf.split_to(size as usize).freeze();
        Ok(Some((header, bytes)))
    }
}
