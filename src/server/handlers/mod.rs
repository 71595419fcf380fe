//! One file per endpoint group; each handler checks input and access,
//! calls the domain, and shapes the answer.

pub mod batch;
pub mod caches;
pub mod health;
pub mod logs;
pub mod nar;
pub mod nix_put;
pub mod reads;
pub mod status;
pub mod tokens;
pub mod tus;
pub mod uploads;

use actix_web::HttpResponse;
use actix_web::http::header;

/// A JSON answer that no cache keeps.
pub fn json_no_store(
    status: actix_web::http::StatusCode,
    body: &impl serde::Serialize,
) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(body)
}
