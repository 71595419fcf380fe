//! `GET /healthz` and the JSON 404 for unknown routes.

use actix_web::{HttpRequest, HttpResponse, web};

use crate::error::Error;
use crate::server::AppState;

/// Answers 200 when the database answers.
pub async fn healthz(state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    state
        .db
        .call(|c| c.query_one("SELECT 1", &[], |r| r.get::<i64>(0)))
        .await?;
    Ok(HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .json(serde_json::json!({"status": "ok"})))
}

/// Any route that does not exist.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, Error> {
    Err(Error::NotFound(format!("{} {}", req.method(), req.path())))
}
