//! `POST /_api/v1/tokens/revoke`: revoke a token (and everything
//! attenuated from it) or a bare revocation id. Needs `admin` on `*`.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::json_no_store;
use crate::api::RevokeRequest;
use crate::auth::Operation;
use crate::error::{Error, Result};
use crate::server::{AppState, access, body};
use crate::service;

/// Revokes and answers with the id stored.
pub async fn revoke(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let token = access::token_of(&req).ok_or(Error::Unauthenticated)?;
    state
        .auth
        .check_global(&token, Operation::Admin)
        .map_err(access::auth_error)?;
    let body: RevokeRequest = body::json(&req, payload, body::JSON_LIMIT).await?;
    let id = match (&body.token, &body.revocation_id) {
        (Some(t), None) => service::revocation_id_of(t)?,
        (None, Some(id)) if id.len() >= 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) => {
            id.to_ascii_lowercase()
        }
        (None, Some(id)) => {
            return Err(Error::BadRequest(format!(
                "revocation_id {id:?} is not a hex revocation id"
            )));
        }
        _ => {
            return Err(Error::BadRequest(
                "give exactly one of \"token\" and \"revocation_id\"".into(),
            ));
        }
    };
    service::revoke(&state, &id).await?;
    Ok(json_no_store(
        StatusCode::OK,
        &serde_json::json!({"revoked": id}),
    ))
}
