//! What Nix reads as a substituter: `nix-cache-info`, narinfo and `.ls`
//! listings.
//!
//! narinfo texts are rendered and signed at publish time, so a read is one
//! indexed lookup. A private cache's answers say `private, no-store` so no
//! edge cache hands them to someone without a token.

use actix_web::http::Method;
use actix_web::{HttpRequest, HttpResponse, web};

use crate::auth::Operation;
use crate::db::nars;
use crate::error::{Error, Result};
use crate::nar::store_path::validate_hash_part;
use crate::server::{AppState, access, stream};

/// `Cache-Control` for a cache's answers.
pub fn cache_control(public: bool, max_age: u32) -> String {
    if public {
        format!("public, max-age={max_age}")
    } else {
        "private, no-store".to_owned()
    }
}

/// `GET /{cache}/nix-cache-info`.
pub async fn cache_info(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let cache = access::cache(&state, &req, &path, Operation::Pull).await?;
    let body = format!(
        "StoreDir: {}\nWantMassQuery: 1\nPriority: {}\n",
        cache.store_dir, cache.priority
    );
    Ok(HttpResponse::Ok()
        .content_type("text/x-nix-cache-info")
        .insert_header(("cache-control", cache_control(cache.public, 300)))
        .body(body))
}

/// `GET`/`HEAD /{cache}/{hash}.narinfo`.
pub async fn narinfo(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (name, hash) = path.into_inner();
    let cache = access::cache(&state, &req, &name, Operation::Pull).await?;
    validate_hash_part(&hash)?;
    let (cache_id, key) = (cache.id, hash.clone());
    let text = state
        .db
        .lookup(move |c| nars::narinfo(c, cache_id, &key))
        .await?
        .ok_or_else(|| Error::NotFound(format!("{hash}.narinfo")))?;
    state.access.narinfo(cache.id, &hash);
    let mut res = HttpResponse::Ok();
    res.content_type("text/x-nix-narinfo")
        .insert_header(("cache-control", cache_control(cache.public, 60)));
    if req.method() == Method::HEAD {
        return Ok(res
            .no_chunking(text.len() as u64)
            .streaming(stream::empty()));
    }
    Ok(res.body(text))
}

/// `GET /{cache}/{hash}.ls`: the NAR's listing in Nix's `.ls` JSON format,
/// stored when the NAR was verified.
pub async fn listing(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (name, hash) = path.into_inner();
    let cache = access::cache(&state, &req, &name, Operation::Pull).await?;
    validate_hash_part(&hash)?;
    let key = hash.clone();
    let cache_id = cache.id;
    let z = state
        .db
        .call(move |c| nars::listing(c, cache_id, &key))
        .await?
        .ok_or_else(|| Error::NotFound(format!("{hash}.ls")))?;
    // Decompressed as it is sent: memory holds the compressed listing and
    // a few buffers, not the whole JSON.
    let json = zstd::stream::read::Decoder::new(std::io::Cursor::new(z))?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .insert_header(("cache-control", cache_control(cache.public, 60)))
        .streaming(crate::server::stream::from_reader(json)))
}
