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

/// Undoes the client's `Content-Encoding`, stopping one byte past
/// [`MAX_LOG_SIZE`].
fn decode_log(encoding: &str, raw: Vec<u8>) -> Result<Vec<u8>> {
    use std::io::Read;
    let input = std::io::Cursor::new(raw);
    let reader: Box<dyn Read> = match encoding {
        "br" => Box::new(brotli_decompressor::Decompressor::new(input, 64 << 10)),
        "gzip" => Box::new(flate2::read::MultiGzDecoder::new(input)),
        "deflate" => Box::new(flate2::read::ZlibDecoder::new(input)),
        "zstd" => Box::new(zstd::stream::read::Decoder::new(input)?),
        _ => Box::new(input),
    };
    let mut log = Vec::new();
    reader
        .take(MAX_LOG_SIZE + 1)
        .read_to_end(&mut log)
        .map_err(|e| {
            Error::BadRequest(format!(
                "the log is not valid {encoding} ({e}): send it plain or compressed as its Content-Encoding says"
            ))
        })?;
    if log.len() as u64 > MAX_LOG_SIZE {
        return Err(Error::LogTooLarge {
            limit: MAX_LOG_SIZE,
        });
    }
    Ok(log)
}

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
    // The body as sent (compressed or not), at most the limit...
    let mut stream = std::pin::pin!(body);
    let mut raw = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| Error::BadRequest(format!("the request body was not read: {e}")))?;
        if raw.len() as u64 + chunk.len() as u64 > MAX_LOG_SIZE {
            return Err(Error::LogTooLarge {
                limit: MAX_LOG_SIZE,
            });
        }
        raw.extend_from_slice(&chunk);
    }
    // ...then decoded a buffer at a time, stopping one byte past the
    // limit: a small compressed bomb never grows past it in memory.
    let cache_id = cache.id;
    let z = web::block(move || -> Result<Vec<u8>> {
        let log = decode_log(&encoding, raw)?;
        Ok(zstd::encode_all(&log[..], LOG_ZSTD_LEVEL)?)
    })
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
    let z = state
        .db
        .call(move |c| logs::get(c, cache_id, &key))
        .await?
        .ok_or_else(|| Error::NotFound(format!("the build log of {drv}")))?;
    // Decompressed as it is sent, not whole into memory.
    let log = zstd::stream::read::Decoder::new(std::io::Cursor::new(z))?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, cache_control(cache.public, 60)))
        .streaming(crate::server::stream::from_reader(log)))
}
