//! Build logs: `PUT`/`GET /{cache}/log/{drv}`, what `nix store copy-log
//! --to` writes and `nix log --store` reads. `{drv}` is the derivation's
//! store path base name (`<hash>-<name>.drv`). Logs are stored
//! zstd-compressed; a `Content-Encoding` the client compressed with (Nix's
//! `log-compression`: br, gzip, zstd) is undone first.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;

use super::reads::cache_control;
use crate::auth::Operation;
use crate::db::logs;
use crate::error::{Error, Result};
use crate::nar::StorePath;
use crate::server::{AppState, access};

/// Largest log accepted, uncompressed.
pub const MAX_LOG_SIZE: u64 = 64 << 20;

/// zstd level of stored logs (text compresses well even at low levels).
const LOG_ZSTD_LEVEL: i32 = 3;

/// Checks that `drv` is a store path base name ending in `.drv`.
fn check_drv(drv: &str, store_dir: &str) -> Result<()> {
    StorePath::from_base_name(drv, store_dir)?;
    if !drv.ends_with(".drv") {
        return Err(Error::BadRequest(format!(
            "{drv:?} is not a derivation: build logs are stored under the derivation's base name, \"<hash>-<name>.drv\""
        )));
    }
    Ok(())
}

/// `PUT /{cache}/log/{drv}`: stores (or replaces) a build log.
pub async fn put(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Payload,
) -> Result<HttpResponse> {
    let (name, drv) = path.into_inner();
    let cache = access::cache(&state, &req, &name, Operation::Push).await?;
    check_drv(&drv, &cache.store_dir)?;
    let encoding = req
        .headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    if !matches!(
        encoding.as_str(),
        "" | "identity" | "br" | "gzip" | "deflate" | "zstd"
    ) {
        return Err(Error::BadRequest(format!(
            "Content-Encoding {encoding:?} is not supported for build logs: send them plain or with br, gzip or zstd"
        )));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_LOG_SIZE) {
        return Err(Error::LogTooLarge {
            limit: MAX_LOG_SIZE,
        });
    }
    let mut stream = std::pin::pin!(actix_web::dev::Decompress::from_headers(
        body,
        req.headers()
    ));
    let mut log = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| Error::BadRequest(format!("the request body was not read: {e}")))?;
        if log.len() as u64 + chunk.len() as u64 > MAX_LOG_SIZE {
            return Err(Error::LogTooLarge {
                limit: MAX_LOG_SIZE,
            });
        }
        log.extend_from_slice(&chunk);
    }
    let cache_id = cache.id;
    let z = web::block(move || zstd::encode_all(&log[..], LOG_ZSTD_LEVEL))
        .await
        .map_err(Error::internal)??;
    state
        .db
        .write(move |tx| logs::put(tx, cache_id, &drv, &z))
        .await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish())
}

/// `GET /{cache}/log/{drv}`: a stored build log as text.
pub async fn get(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (name, drv) = path.into_inner();
    let cache = access::cache(&state, &req, &name, Operation::Pull).await?;
    check_drv(&drv, &cache.store_dir)?;
    let key = drv.clone();
    let cache_id = cache.id;
    let log = state
        .db
        .call(move |c| {
            logs::get(c, cache_id, &key)?
                .map(|z| zstd::decode_all(&z[..]).map_err(Error::internal))
                .transpose()
        })
        .await?
        .ok_or_else(|| Error::NotFound(format!("the build log of {drv}")))?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, cache_control(cache.public, 60)))
        .body(log))
}
