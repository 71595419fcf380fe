//! The push API: `missing`, uploads, parts, `complete`, abandon.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::json_no_store;
use crate::api::{
    self, CompleteRequest, CreateUpload, MissingRequest, MissingResponse, PartAck, UploadCreated,
};
use crate::auth::Operation;
use crate::db::caches::{self, CacheRow};
use crate::db::nars;
use crate::db::uploads::UploadMeta;
use crate::error::{Error, Result};
use crate::nar::{Sha256Hash, StorePath};
use crate::server::{AppState, access, body};
use crate::upload::{Completion, Compression, Created, NewUpload, PartRules};

/// References one store path may declare (Nix's largest closures have a
/// few thousand direct references at most).
const MAX_REFERENCES: usize = 10_000;

/// `POST /caches/{cache}/missing`: the paths the cache lacks.
pub async fn missing(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let cache = match access::cache(&state, &req, &path, Operation::Push).await {
        Ok(c) => c,
        Err(_) => access::cache(&state, &req, &path, Operation::Pull).await?,
    };
    let body: MissingRequest = body::json(&req, payload, body::MISSING_LIMIT).await?;
    if body.store_paths.len() > body::MISSING_PATHS {
        return Err(Error::TooManyPaths {
            count: body.store_paths.len(),
            limit: body::MISSING_PATHS,
        });
    }
    let mut hashes = Vec::with_capacity(body.store_paths.len());
    for p in &body.store_paths {
        hashes.push(
            StorePath::parse(p, &cache.store_dir)?
                .hash_part()
                .to_owned(),
        );
    }
    // Up to 100 000 paths: on the blocking pool, not an async worker.
    let present = state
        .db
        .call(move |c| nars::present(c, cache.id, &hashes))
        .await?;
    let missing: Vec<String> = body
        .store_paths
        .into_iter()
        .filter(|p| {
            let hash = p
                .rsplit('/')
                .next()
                .map_or("", |b| b.get(..32).unwrap_or(""));
            !present.contains(hash)
        })
        .collect();
    Ok(json_no_store(StatusCode::OK, &MissingResponse { missing }))
}

/// `POST /caches/{cache}/uploads`: start an upload (or link a known NAR).
pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let cache = access::cache(&state, &req, &path, Operation::Push).await?;
    let body: CreateUpload = body::json(&req, payload, body::JSON_LIMIT).await?;
    let new = new_upload(&cache, body, access::owner_of(&req))?;
    let may_read = access::pull_check(&state, &req);
    match state.engine.create(&cache, new, &may_read).await? {
        Created::Committed { nar_hash } => Ok(json_no_store(
            StatusCode::OK,
            &json!({"state": "committed", "nar_hash": nar_hash}),
        )),
        Created::Upload { id, expires_at } => {
            let body = UploadCreated {
                upload_url: format!("{}/_api/v1/uploads/{id}", state.settings.public_url),
                id,
                max_part_size: state.engine.config().max_part_size,
                expires_at,
            };
            Ok(json_no_store(StatusCode::CREATED, &body))
        }
    }
}

/// Checks a create request's fields and turns them into the engine's.
pub(super) fn new_upload(
    cache: &CacheRow,
    body: CreateUpload,
    owner: Option<String>,
) -> Result<NewUpload> {
    if body.references.len() > MAX_REFERENCES {
        return Err(Error::TooManyPaths {
            count: body.references.len(),
            limit: MAX_REFERENCES,
        });
    }
    let compression = Compression::of_parts(body.compression.as_deref())?;
    for r in body.references.iter().chain(body.deriver.iter()) {
        StorePath::parse(r, &cache.store_dir)?;
    }
    Ok(NewUpload {
        store_path: StorePath::parse(&body.store_path, &cache.store_dir)?,
        nar_hash: Sha256Hash::parse(&body.nar_hash)?,
        nar_size: body.nar_size,
        meta: UploadMeta {
            references: body.references,
            deriver: body.deriver,
            ca: body.ca,
            sigs: body.sigs,
            file_hash: None,
            file_size: None,
        },
        compression,
        owner,
    })
}

/// `GET /caches/{cache}/uploads`: uploads not yet committed.
pub async fn list(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let cache = access::cache(&state, &req, &path, Operation::Push).await?;
    let list = state.engine.list(cache.id).await?;
    Ok(json_no_store(StatusCode::OK, &json!({"uploads": list})))
}

/// The upload's cache, if the request may push to it.
async fn upload_cache(state: &AppState, req: &HttpRequest, id: &str) -> Result<CacheRow> {
    uuid::Uuid::parse_str(id).map_err(|_| Error::UploadNotFound(id.to_owned()))?;
    let row = state.engine.get(id).await?;
    let cache_id = row.cache_id;
    let cache = state
        .db
        .call(move |c| caches::get_by_id(c, cache_id))
        .await?
        .ok_or_else(|| Error::UploadNotFound(id.to_owned()))?;
    access::require(state, req, Operation::Push, &cache.name)?;
    Ok(cache)
}

/// `PUT /uploads/{id}/parts/{n}`.
pub async fn put_part(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Payload,
) -> Result<HttpResponse> {
    let (id, n) = path.into_inner();
    let n: u64 = n
        .parse()
        .map_err(|_| Error::BadRequest(format!("part number {n:?} is not a number")))?;
    upload_cache(&state, &req, &id).await?;
    let length = match req.headers().get(header::CONTENT_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| Error::BadRequest("Content-Length is not a number".into()))?,
        ),
    };
    let digest = match req.headers().get(api::CONTENT_DIGEST) {
        None => None,
        Some(v) => {
            api::parse_content_digest(v.to_str().unwrap_or("")).map_err(Error::BadRequest)?
        }
    };
    let rules = PartRules {
        content_length: length,
        digest,
        keep_partial: false,
    };
    let part = state.engine.put_part(&id, n, rules, body).await?;
    state.metrics.part(part.size);
    let ack = PartAck {
        n: part.n,
        size: part.size,
        blake3: part.blake3,
    };
    Ok(json_no_store(StatusCode::OK, &ack))
}

/// `POST /uploads/{id}/chunks`: declares chunks of a chunked upload's
/// manifest; answers which frames to send.
pub async fn chunks(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    upload_cache(&state, &req, &path).await?;
    let body: api::AddChunks = body::json(&req, payload, body::CHUNKS_LIMIT).await?;
    let may_read = access::pull_check(&state, &req);
    let send = state
        .engine
        .add_chunks(&path, body.from, body.chunks, &may_read)
        .await?;
    Ok(json_no_store(StatusCode::OK, &api::ChunksToSend { send }))
}

/// `GET /uploads/{id}`: what a resuming client needs.
pub async fn status(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    upload_cache(&state, &req, &path).await?;
    let status = state.engine.status(&path).await?;
    Ok(json_no_store(StatusCode::OK, &status))
}

/// `POST /uploads/{id}/complete`.
pub async fn complete(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    upload_cache(&state, &req, &path).await?;
    let body: CompleteRequest = body::json(&req, payload, body::JSON_LIMIT).await?;
    match state.engine.complete(&path, body.parts).await? {
        Completion::Committed { narinfo_url } => Ok(json_no_store(
            StatusCode::OK,
            &json!({"state": "committed", "narinfo_url": format!("{}{narinfo_url}", state.settings.public_url)}),
        )),
        Completion::Verifying => Ok(json_no_store(
            StatusCode::ACCEPTED,
            &json!({"state": "verifying"}),
        )),
    }
}

/// `DELETE /uploads/{id}`.
pub async fn abandon(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    upload_cache(&state, &req, &path).await?;
    state.engine.abandon(&path).await?;
    Ok(json_no_store(
        StatusCode::OK,
        &json!({"state": "abandoned"}),
    ))
}
