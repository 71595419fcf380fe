//! The tus 1.0.0 endpoint, `/_api/v1/caches/{cache}/tus/`: headers in,
//! engine calls, headers out. The protocol's mapping onto uploads lives in
//! `upload::tus`; this file only speaks HTTP.
//!
//! Extensions: creation, creation-with-upload, creation-defer-length,
//! expiration, checksum (sha1, md5, sha256), termination, concatenation.
//! `Tus-Resumable` checking, its echo on every answer, and CORS are done by
//! [`middleware`] for the whole scope.

use std::time::{Duration, UNIX_EPOCH};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue, HttpDate};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, ResponseError, web};
use base64::Engine as _;

use crate::auth::Operation;
use crate::db::tus::TusKind;
use crate::error::{Error, Result};
use crate::server::{AppState, access};
use crate::upload::tus::{Concat, TusCreate, TusInfo};
use crate::upload::{DigestAlgorithm, ExpectedDigest};

const VERSION: &str = "1.0.0";
const EXTENSIONS: &str = "creation,creation-with-upload,creation-defer-length,expiration,checksum,termination,concatenation";
const OFFSET_TYPE: &str = "application/offset+octet-stream";
const TUS_HEADERS: &str = "Tus-Resumable, Upload-Length, Upload-Defer-Length, Upload-Metadata, Upload-Offset, Upload-Concat, Upload-Checksum, Content-Type, Authorization, X-HTTP-Method-Override";
const EXPOSED: &str = "Location, Tus-Resumable, Tus-Version, Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm, Upload-Offset, Upload-Length, Upload-Defer-Length, Upload-Metadata, Upload-Concat, Upload-Expires, Upload-Limit";

fn text<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

fn number(h: &HeaderMap, name: &str) -> Result<Option<u64>> {
    match text(h, name) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| Error::BadRequest(format!("{name} must be a non-negative integer"))),
    }
}

fn location(cache: &str, id: &str) -> String {
    format!("/_api/v1/caches/{cache}/tus/{id}")
}

fn expires(res: &mut HttpResponseBuilder, at: i64) {
    let when = UNIX_EPOCH + Duration::from_secs(at.max(0) as u64);
    res.insert_header(("upload-expires", HttpDate::from(when).to_string()));
}

/// The checksum of `Upload-Checksum: <algorithm> <base64>`.
fn checksum(h: &HeaderMap) -> Result<Option<ExpectedDigest>> {
    let Some(v) = text(h, "upload-checksum") else {
        return Ok(None);
    };
    let (alg, b64) = v.split_once(' ').ok_or_else(|| {
        Error::BadRequest("Upload-Checksum must be '<algorithm> <base64>'".into())
    })?;
    let algorithm = match alg {
        "sha1" => DigestAlgorithm::Sha1,
        "md5" => DigestAlgorithm::Md5,
        "sha256" => DigestAlgorithm::Sha256,
        other => {
            return Err(Error::BadRequest(format!(
                "checksum algorithm {other:?} is not supported: use sha1, md5 or sha256"
            )));
        }
    };
    let value = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| Error::BadRequest("Upload-Checksum value is not base64".into()))?;
    Ok(Some(ExpectedDigest { algorithm, value }))
}

/// The upload ids named by `Upload-Concat: final;<url> <url>`.
fn concat_of(h: &HeaderMap, cache: &str) -> Result<Concat> {
    let Some(v) = text(h, "upload-concat") else {
        return Ok(Concat::None);
    };
    if v == "partial" {
        return Ok(Concat::Partial);
    }
    let urls = v.strip_prefix("final;").ok_or_else(|| {
        Error::BadRequest("Upload-Concat must be 'partial' or 'final;<urls>'".into())
    })?;
    let prefix = format!("/_api/v1/caches/{cache}/tus/");
    let mut ids = vec![];
    for url in urls.split_whitespace() {
        // Absolute or relative URLs: only the path matters.
        let path = url
            .find(&prefix)
            .map(|i| &url[i + prefix.len()..])
            .unwrap_or("");
        let id = path.trim_end_matches('/');
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(Error::BadRequest(format!(
                "Upload-Concat names {url:?}, which is not an upload of this cache's tus endpoint"
            )));
        }
        ids.push(id.to_owned());
    }
    if ids.is_empty() {
        return Err(Error::BadRequest(
            "Upload-Concat: final names no partial uploads".into(),
        ));
    }
    Ok(Concat::Final(ids, v.to_owned()))
}

fn is_offset_stream(req: &HttpRequest) -> bool {
    text(req.headers(), "content-type").is_some_and(|c| c.starts_with(OFFSET_TYPE))
}

/// `OPTIONS`: what this server offers (no token needed).
pub async fn options(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::NoContent()
        .insert_header(("tus-version", VERSION))
        .insert_header(("tus-extension", EXTENSIONS))
        .insert_header(("tus-max-size", state.tus.max_size.to_string()))
        .insert_header(("tus-checksum-algorithm", "sha1,md5,sha256"))
        .insert_header((
            "upload-limit",
            format!("max-append-size={}", state.engine.config().max_part_size),
        ))
        .finish()
}

/// `POST`: creation (with an optional first chunk), partial or final.
pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse> {
    let cache = access::cache(&state, &req, &path, Operation::Push).await?;
    let h = req.headers();
    let concat = concat_of(h, &cache.name)?;
    let deferred = text(h, "upload-defer-length") == Some("1");
    let length = number(h, "upload-length")?;
    match (&concat, length, deferred) {
        (Concat::Final(..), None, false) => {}
        (Concat::Final(..), _, _) => {
            return Err(Error::BadRequest(
                "a final upload takes no Upload-Length: it is the sum of its partials".into(),
            ));
        }
        (_, Some(_), true) => {
            return Err(Error::BadRequest(
                "send Upload-Length or Upload-Defer-Length: 1, not both".into(),
            ));
        }
        (_, None, false) => {
            return Err(Error::BadRequest(
                "send Upload-Length (or Upload-Defer-Length: 1)".into(),
            ));
        }
        _ => {}
    }
    if let Some(l) = length.filter(|l| *l > state.tus.max_size) {
        return Err(Error::TusTooLarge {
            size: l,
            limit: state.tus.max_size,
        });
    }
    let metadata = text(h, "upload-metadata").unwrap_or("").to_owned();
    let creation = TusCreate {
        length,
        metadata,
        concat,
        owner: access::owner_of(&req),
    };
    let (mut info, _) = state.engine.tus_create(&cache, creation).await?;
    let content_length = number(h, "content-length")?.unwrap_or(0);
    if content_length > 0 && is_offset_stream(&req) && info.kind != TusKind::Final {
        let check = checksum(h)?;
        info = state
            .engine
            .tus_append(&info.id, 0, None, Some(content_length), check, body)
            .await?
            .0;
    }
    let mut res = HttpResponse::Created();
    res.insert_header((header::LOCATION, location(&cache.name, &info.id)))
        .insert_header(("upload-offset", info.offset.to_string()));
    expires(&mut res, info.expires_at);
    Ok(res.finish())
}

fn describe(res: &mut HttpResponseBuilder, info: &TusInfo) {
    res.insert_header(("upload-offset", info.offset.to_string()))
        .insert_header(("ferry-upload-state", info.state.as_str()))
        .insert_header((header::CACHE_CONTROL, "no-store"));
    match info.length {
        Some(l) => res.insert_header(("upload-length", l.to_string())),
        None => res.insert_header(("upload-defer-length", "1")),
    };
    if !info.metadata.is_empty() {
        res.insert_header(("upload-metadata", info.metadata.clone()));
    }
    match info.kind {
        TusKind::Partial => {
            res.insert_header(("upload-concat", "partial"));
        }
        TusKind::Final => {
            res.insert_header(("upload-concat", info.concat.clone()));
        }
        TusKind::Single => {}
    }
    expires(res, info.expires_at);
}

/// The upload `id`, if the request may push to `cache` and it belongs there.
async fn upload_in(state: &AppState, req: &HttpRequest, cache: &str, id: &str) -> Result<TusInfo> {
    let c = access::cache(state, req, cache, Operation::Push).await?;
    uuid::Uuid::parse_str(id).map_err(|_| Error::UploadNotFound(id.to_owned()))?;
    let row = state.engine.get(id).await?;
    if row.cache_id != c.id {
        return Err(Error::UploadNotFound(id.to_owned()));
    }
    state.engine.tus_info(id).await
}

/// `HEAD`: the offset to resume from.
pub async fn head(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (cache, id) = path.into_inner();
    match upload_in(&state, &req, &cache, &id).await {
        Ok(info) => {
            let mut res = HttpResponse::Ok();
            describe(&mut res, &info);
            res.finish()
        }
        // HEAD answers carry no body: status and Cache-Control only.
        Err(e) => HttpResponse::build(e.status_code())
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .finish(),
    }
}

/// `PATCH`: append a chunk at `Upload-Offset`.
pub async fn patch(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Payload,
) -> Result<HttpResponse> {
    let (cache, id) = path.into_inner();
    let info = upload_in(&state, &req, &cache, &id).await?;
    if info.kind == TusKind::Final {
        return Err(Error::TusFinalPatch);
    }
    if !is_offset_stream(&req) {
        return Err(Error::TusContentType);
    }
    let h = req.headers();
    let offset = number(h, "upload-offset")?
        .ok_or_else(|| Error::BadRequest("a PATCH needs Upload-Offset".into()))?;
    let length = number(h, "upload-length")?;
    let content_length = number(h, "content-length")?;
    // `Tus-Max-Size` holds for a length that comes late, and for bytes
    // sent while the length is still deferred.
    let limit = state.tus.max_size;
    let would_be = offset.saturating_add(content_length.unwrap_or(0));
    if let Some(size) = length
        .filter(|l| *l > limit)
        .or(Some(would_be).filter(|w| *w > limit))
    {
        return Err(Error::TusTooLarge { size, limit });
    }
    let check = checksum(h)?;
    let (info, _) = state
        .engine
        .tus_append(&id, offset, length, content_length, check, body)
        .await?;
    let mut res = HttpResponse::NoContent();
    res.insert_header(("upload-offset", info.offset.to_string()))
        .insert_header(("ferry-upload-state", info.state.as_str()));
    expires(&mut res, info.expires_at);
    Ok(res.finish())
}

/// `POST` with `X-HTTP-Method-Override: PATCH` or `DELETE`: what tus
/// clients send through proxies that pass only GET and POST.
pub async fn post_override(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Payload,
) -> Result<HttpResponse> {
    match text(req.headers(), "x-http-method-override").map(str::to_ascii_uppercase) {
        Some(m) if m == "PATCH" => patch(state, req, path, body).await,
        Some(m) if m == "DELETE" => delete(state, req, path).await,
        other => Err(Error::BadRequest(format!(
            "a POST to an upload needs X-HTTP-Method-Override: PATCH or DELETE (got {:?})",
            other.unwrap_or_default()
        ))),
    }
}

/// `DELETE`: termination.
pub async fn delete(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (cache, id) = path.into_inner();
    upload_in(&state, &req, &cache, &id).await?;
    state.engine.tus_terminate(&id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// For the whole tus scope: refuse other protocol versions (412), echo
/// `Tus-Resumable` on every answer but OPTIONS, and answer CORS for the
/// configured origins.
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> std::result::Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    let is_options = req.method() == Method::OPTIONS;
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let allowed = origin.filter(|o| {
        req.app_data::<web::Data<AppState>>()
            .is_some_and(|s| s.tus.cors_origins.iter().any(|a| a == "*" || a == o))
    });
    let version_ok = is_options || text(req.headers(), "tus-resumable") == Some(VERSION);
    let mut res = if version_ok {
        next.call(req).await?.map_into_boxed_body()
    } else {
        let (http_req, _) = req.into_parts();
        ServiceResponse::new(http_req, Error::TusVersion.error_response())
    };
    let headers = res.headers_mut();
    if !is_options {
        headers.insert(
            HeaderName::from_static("tus-resumable"),
            HeaderValue::from_static(VERSION),
        );
    }
    if let Some(o) = allowed
        && let Ok(v) = HeaderValue::from_str(&o)
    {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED),
        );
        if is_options {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("POST, GET, HEAD, PATCH, DELETE, OPTIONS"),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(TUS_HEADERS),
            );
            headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("86400"),
            );
        }
    }
    Ok(res)
}
