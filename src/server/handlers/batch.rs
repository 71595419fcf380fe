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

use std::collections::HashSet;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;

use super::json_no_store;
use super::uploads::new_upload;
use crate::api::{BatchResponse, BatchResult, CreateUpload, MAX_BATCH_PATHS};
use crate::auth::Operation;
use crate::db::caches::CacheRow;
use crate::error::{Error, Result};
use crate::server::batch_body::Framing;
use crate::server::{AppState, access, body, error::status_of};
use crate::upload::{NewUpload, Whole};

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
    mut payload: web::Payload,
) -> Result<HttpResponse> {
    let started = Instant::now();
    let cache = access::cache(&state, &req, &path, Operation::Push).await?;
    let max_part = state.engine.config().max_part_size;
    let limit = max_part + SLACK;
    body::declared_within(&req, limit)?;
    let may_read = access::pull_check(&state, &req);
    let owner = access::owner_of(&req);
    let mut framing = Framing::new(body::JSON_LIMIT as usize, max_part);
    let mut read = 0u64;
    let mut ended = false;
    let mut results: Vec<BatchResult> = vec![];
    let mut failed = HashSet::new();
    loop {
        let Some((header, bytes)) = framing.next_record()? else {
            if ended {
                framing.finish()?;
                break;
            }
            match payload.next().await {
                None => ended = true,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "a batch body broke off");
                    return Err(Error::BadRequest(
                        "the request body broke off: send the batch again".into(),
                    ));
                }
                Some(Ok(chunk)) => {
                    read += chunk.len() as u64;
                    if read > limit {
                        return Err(Error::BodyTooLarge { size: read, limit });
                    }
                    framing.push(&chunk);
                }
            }
            continue;
        };
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
        let outcome = match record_upload(&cache, header, results.len() + 1, &failed, &owner) {
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

/// Record `k`'s header as an upload, checked like a create request.
fn record_upload(
    cache: &CacheRow,
    header: serde_json::Map<String, serde_json::Value>,
    k: usize,
    failed: &HashSet<String>,
    owner: &Option<String>,
) -> Result<NewUpload> {
    let body: CreateUpload = serde_json::from_value(header.into())
        .map_err(|e| Error::BadRequest(format!("record {k}: {e}")))?;
    if body.compression.as_deref() == Some("chunked") {
        return Err(Error::BadRequest(
            "a batch record carries its whole NAR: use compression \"none\" or \"zstd\" (chunked uploads go through the parts API)".into(),
        ));
    }
    // A path whose reference failed in this batch is not published: a
    // substituter must never see a path without its references.
    if let Some(r) = body.references.iter().find(|r| failed.contains(*r)) {
        return Err(Error::ReferenceNotPublished(r.clone()));
    }
    new_upload(cache, body, owner.clone())
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
