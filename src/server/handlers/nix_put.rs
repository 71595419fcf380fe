//! Nix's own uploads: `nix copy --to 'http://HOST/{cache}?compression=zstd'`.
//!
//! Nix `PUT`s the NAR file, then its narinfo. The file waits in the
//! engine's staging area; the narinfo turns it into a one-part upload of
//! the same engine, which checks FileHash/FileSize and NarHash/NarSize
//! before it publishes and signs with the cache key.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::json_no_store;
use crate::auth::Operation;
use crate::db::uploads::UploadMeta;
use crate::error::{Error, Result};
use crate::nar::NarInfo;
use crate::server::{AppState, access};
use crate::upload::{Completion, Compression, Created, NewUpload};

/// `PUT /{cache}/nar/{file}`.
pub async fn nar(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Payload,
) -> Result<HttpResponse> {
    let (name, file) = path.into_inner();
    let cache = access::cache(&state, &req, &name, Operation::Push).await?;
    state.engine.stage(cache.id, &file, body).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .finish())
}

/// `PUT /{cache}/{hash}.narinfo`.
pub async fn narinfo(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: String,
) -> Result<HttpResponse> {
    let (name, hash) = path.into_inner();
    let cache = access::cache(&state, &req, &name, Operation::Push).await?;
    let info = NarInfo::parse(&body, &cache.store_dir)?;
    if info.store_path.hash_part() != hash {
        return Err(Error::BadRequest(format!(
            "the narinfo is for {} but was sent to {hash}.narinfo",
            info.store_path
        )));
    }
    // xz is Nix's default for `nix copy --to`: it is decoded, checked and
    // stored as zstd, so every reader sees the same narinfo whatever the
    // pusher used.
    let compression = match info.compression.as_str() {
        "zstd" => Compression::Zstd,
        "none" => Compression::None,
        "xz" => Compression::Xz,
        other => {
            return Err(Error::BadRequest(format!(
                "compression {other:?} is not supported: push with xz (Nix's default), zstd or none"
            )));
        }
    };
    let file = info.url.rsplit('/').next().unwrap_or_default().to_owned();
    let new = NewUpload {
        store_path: info.store_path.clone(),
        nar_hash: info.nar_hash,
        nar_size: info.nar_size,
        meta: UploadMeta {
            references: info.references.iter().map(|r| r.to_absolute()).collect(),
            deriver: info.deriver.as_ref().map(|d| d.to_absolute()),
            ca: info.ca.clone(),
            sigs: info.sigs.clone(),
            file_hash: info.file_hash.map(|h| h.to_string()),
            file_size: info.file_size,
        },
        compression,
        owner: access::owner_of(&req),
    };
    let staged = state.engine.staged(cache.id, &file).await?;
    let may_read = access::pull_check(&state, &req);
    let id = match state.engine.create(&cache, new, &may_read).await? {
        Created::Committed { .. } => {
            if let Some(p) = staged {
                state.engine.unstage(p).await;
            }
            return Ok(json_no_store(
                StatusCode::OK,
                &json!({"state": "committed"}),
            ));
        }
        Created::Upload { id, .. } => id,
    };
    let Some(staged) = staged else {
        state.engine.remove(&id).await?;
        return Err(Error::NarFileMissing(info.url));
    };
    state.engine.adopt_part(&id, 1, staged).await?;
    match state.engine.complete(&id, 1).await? {
        Completion::Committed { .. } => Ok(json_no_store(
            StatusCode::OK,
            &json!({"state": "committed"}),
        )),
        Completion::Verifying => Ok(json_no_store(
            StatusCode::ACCEPTED,
            &json!({"state": "verifying"}),
        )),
    }
}
