//! `POST /_api/v1/caches` and `GET /_api/v1/caches/{cache}`.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::json_no_store;
use crate::api::{CacheInfo, ConfigureCache, CreateCache};
use crate::auth::{Operation, parse_duration};
use crate::db::caches::{self, CacheChanges, CacheRow, NewCache};
use crate::db::{nars, uploads};
use crate::error::{Error, Result};
use crate::nar::SigningKey;
use crate::nar::store_path::validate_hash_part;
use crate::nar::store_path::validate_store_dir;
use crate::server::{AppState, access, body};

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

/// Parses a retention duration (`None`: keep forever).
fn retention(r: Option<&str>) -> Result<Option<i64>> {
    match r {
        Some(r) => Ok(Some(
            parse_duration(r)
                .map_err(|e| Error::BadRequest(format!("retention {r:?} is not a duration: {e}")))?
                .as_secs() as i64,
        )),
        None => Ok(None),
    }
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
    payload: web::Payload,
) -> Result<HttpResponse> {
    // The name is in the body: first that the token may create some cache
    // (valid, unexpired, the right on a pattern), then the name itself.
    access::require_some(&state, &req, Operation::CreateCache)?;
    let body: CreateCache = body::json(&req, payload, body::JSON_LIMIT).await?;
    access::check_cache_name(&body.name)?;
    access::require(&state, &req, Operation::CreateCache, &body.name)?;
    let store_dir = body.store_dir.unwrap_or_else(|| "/nix/store".to_owned());
    validate_store_dir(&store_dir)?;
    let retention_secs = match body.retention.as_deref() {
        Some(r) => retention(Some(r))?,
        None => state.settings.default_retention_secs,
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
    state.caches.forget(&row.name);
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

/// `PATCH /caches/{cache}`: change settings (configure-cache right).
pub async fn configure(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let cache = access::cache(&state, &req, &path, Operation::ConfigureCache).await?;
    let body: ConfigureCache = body::json(&req, payload, body::JSON_LIMIT).await?;
    if let Some(keys) = &body.upstream_keys
        && let Some(bad) = keys
            .iter()
            .find(|k| k.is_empty() || k.contains(':') || k.contains(char::is_whitespace))
    {
        return Err(Error::BadRequest(format!(
            "upstream key name {bad:?} is invalid: give key names such as cache.nixos.org-1"
        )));
    }
    let changes = CacheChanges {
        public: body.public,
        priority: body.priority,
        retention_secs: match &body.retention {
            Some(r) => Some(retention(r.as_deref())?),
            None => None,
        },
        upstream_keys: body.upstream_keys,
    };
    let id = cache.id;
    let row = state
        .db
        .write(move |tx| {
            caches::update(tx, id, &changes)?;
            caches::get_by_id(tx, id)?.ok_or_else(|| Error::internal("cache vanished"))
        })
        .await?;
    state.caches.forget(&cache.name);
    Ok(json_no_store(StatusCode::OK, &info_of(&state, &row)?))
}

/// `DELETE /caches/{cache}`: the cache, its paths and uploads (destroy-cache right).
pub async fn destroy(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let cache = access::cache(&state, &req, &path, Operation::DestroyCache).await?;
    let id = cache.id;
    for upload in state.db.call(move |c| uploads::ids_of_cache(c, id)).await? {
        state.engine.remove(&upload).await?;
    }
    state.db.write(move |tx| caches::delete(tx, id)).await?;
    state.caches.forget(&cache.name);
    Ok(json_no_store(
        StatusCode::OK,
        &serde_json::json!({"destroyed": cache.name}),
    ))
}

/// `DELETE /caches/{cache}/paths/{hash}`: unpublish one path (delete right).
pub async fn delete_path(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (name, hash) = path.into_inner();
    let cache = access::cache(&state, &req, &name, Operation::Delete).await?;
    validate_hash_part(&hash)?;
    let (id, key) = (cache.id, hash.clone());
    if !state
        .db
        .write(move |tx| nars::delete_path(tx, id, &key))
        .await?
    {
        return Err(Error::NotFound(format!("{hash}.narinfo")));
    }
    Ok(json_no_store(
        StatusCode::OK,
        &serde_json::json!({"deleted": hash}),
    ))
}
