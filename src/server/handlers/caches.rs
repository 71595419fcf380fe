//! `POST /_api/v1/caches` and `GET /_api/v1/caches/{cache}`.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::json_no_store;
use crate::api::{CacheInfo, CreateCache};
use crate::auth::{Operation, parse_duration};
use crate::db::caches::{self, CacheRow, NewCache};
use crate::error::{Error, Result};
use crate::nar::SigningKey;
use crate::nar::store_path::validate_store_dir;
use crate::server::{AppState, access};

/// Default priority: one after cache.nixos.org's 40.
const DEFAULT_PRIORITY: i64 = 41;

/// Formats seconds as the largest exact unit (`"180d"`, `"2h"`, `"5s"`).
pub fn format_secs(secs: i64) -> String {
    for (unit, n) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs >= n && secs % n == 0 {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}

/// The public view of a cache.
pub fn info_of(state: &AppState, c: &CacheRow) -> Result<CacheInfo> {
    let key = SigningKey::parse(&c.signing_key)?;
    Ok(CacheInfo {
        name: c.name.clone(),
        public: c.public,
        priority: c.priority,
        store_dir: c.store_dir.clone(),
        public_key: key.public_key().to_nix_string(),
        max_part_size: state.engine.config().max_part_size,
        upstream_keys: c.upstream_keys.clone(),
        retention: c.retention_secs.map(format_secs),
    })
}

/// Creates a cache with a fresh signing key named `<cache>-1`.
pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<CreateCache>,
) -> Result<HttpResponse> {
    let body = body.into_inner();
    access::check_cache_name(&body.name)?;
    access::require(&state, &req, Operation::CreateCache, &body.name)?;
    let store_dir = body.store_dir.unwrap_or_else(|| "/nix/store".to_owned());
    validate_store_dir(&store_dir)?;
    let retention_secs = match &body.retention {
        Some(r) => Some(parse_duration(r).map_err(|e| {
            Error::BadRequest(format!("retention {r:?} is not a duration: {e}"))
        })?
        .as_secs() as i64),
        None => None,
    };
    let key = SigningKey::generate(&format!("{}-1", body.name))?;
    let new = NewCache {
        name: body.name,
        public: body.public,
        priority: body.priority.unwrap_or(DEFAULT_PRIORITY),
        store_dir,
        retention_secs,
        signing_key: key.to_nix_string(),
        upstream_keys: vec!["cache.nixos.org-1".to_owned()],
    };
    let row = state.db.write(move |tx| caches::insert(tx, &new)).await?;
    Ok(json_no_store(StatusCode::CREATED, &info_of(&state, &row)?))
}

/// Shows a cache's settings and public key (any right on it).
pub async fn info(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let cache = access::cache_any(&state, &req, &path).await?;
    Ok(json_no_store(StatusCode::OK, &info_of(&state, &cache)?))
}
