//! `GET /`, the status page for people, and `GET /_api/v1/status`, the
//! JSON it polls.
//!
//! The page is one static HTML file (`server/status/page.html`, inline
//! CSS and JS, no external assets) compiled in. Its token lives in the
//! browser's session storage and goes out only as an `Authorization`
//! header of the page's own requests, never in a URL.
//!
//! Who sees what: public caches, anyone; a private cache, a token with any
//! right on it (its name is never in an answer to anyone else); uploads in
//! flight, a token that may push to their cache (they are push-side
//! information, even in a public cache); the last garbage collection, its
//! time to anyone and its counts to a valid token. A bad token is the usual
//! 401, never a silent anonymous answer.

use std::sync::OnceLock;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;
use sha2::Digest as _;

use super::json_no_store;
use crate::api::{CacheStatus, GcStatus, InFlightUpload, PartStatus, ServerStatus};
use crate::auth::Operation;
use crate::db::{self, status};
use crate::error::Result;
use crate::server::{AppState, access};

/// The page, as served.
const PAGE: &str = include_str!("../status/page.html");

/// The page's `Content-Security-Policy`: nothing but its own inline style
/// and script (by hash) and requests to this origin; no forms submitted
/// anywhere, so a token can never land in a URL even without the script.
fn csp() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        format!(
            "default-src 'none'; style-src '{}'; script-src '{}'; connect-src 'self'; \
             img-src 'self' data:; form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
            inline_hash("style"),
            inline_hash("script")
        )
    })
}

/// `sha256-…` of the text inside the page's one `<tag>` element.
fn inline_hash(tag: &str) -> String {
    let open = format!("<{tag}>");
    let body = PAGE
        .split_once(&open)
        .and_then(|(_, rest)| rest.split_once(&format!("</{tag}>")))
        .map(|(body, _)| body)
        .unwrap_or("");
    let digest = sha2::Sha256::digest(body.as_bytes());
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// `GET /`: the HTML page.
pub async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, csp()))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(PAGE)
}

/// `GET /_api/v1/status`: what this viewer may see.
pub async fn status(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse> {
    let token = access::valid_token(&state, &req)?;
    // Uploads are shown only to a token that may push: an anonymous
    // visitor's poll does not read them at all.
    let with_uploads = token.is_some();
    let (caches, uploads, last_gc) = state
        .db
        .call(move |c| {
            let uploads = if with_uploads {
                status::in_flight(c, db::now())?
            } else {
                vec![]
            };
            Ok((status::caches(c)?, uploads, db::gc::last_run(c)?))
        })
        .await?;
    let token = token.as_deref();
    let sees = |name: &str, public: bool| {
        public || token.is_some_and(|t| access::has_any_right(&state, t, name))
    };
    let pushes =
        |name: &str| token.is_some_and(|t| state.auth.check(t, Operation::Push, name).is_ok());
    let caches = caches
        .into_iter()
        .filter(|c| sees(&c.name, c.public))
        .map(|c| CacheStatus {
            name: c.name,
            public: c.public,
            paths: c.paths,
            nar_bytes: c.bytes,
            last_push: c.last_push,
        })
        .collect();
    let uploads = uploads
        .into_iter()
        .filter(|u| pushes(&u.cache))
        .map(|u| InFlightUpload {
            parts_received: u.parts.len() as u32,
            bytes_received: u.parts.iter().map(|p| p.size).sum(),
            bytes_expected: (u.compression == "none").then_some(u.nar_size),
            parts: u
                .parts
                .iter()
                .map(|p| PartStatus {
                    n: p.n,
                    size: p.size,
                })
                .collect(),
            id: u.id,
            cache: u.cache,
            store_path: u.store_path,
            state: u.state.as_str().to_owned(),
            compression: u.compression,
            nar_size: u.nar_size,
            parts_total: u.total_parts,
            created: u.created_at,
            expires_at: u.expires_at,
        })
        .collect();
    let last_gc = last_gc.map(|run| {
        let full = token.is_some();
        GcStatus {
            at: run.finished_at,
            seconds: full.then_some(run.finished_at - run.started_at),
            paths_expired: full.then_some(run.report.paths_expired),
            uploads_removed: full.then_some(run.report.uploads_removed),
            bytes_freed: full.then_some(run.report.bytes_freed),
            failed: full.then_some(run.report.failed),
        }
    });
    let body = ServerStatus {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        token: token.is_some(),
        caches,
        uploads,
        last_gc,
    };
    Ok(json_no_store(StatusCode::OK, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_one_style_and_one_script_and_the_policy_names_both() {
        for tag in ["style", "script"] {
            assert_eq!(PAGE.matches(&format!("<{tag}>")).count(), 1, "{tag}");
            assert_eq!(PAGE.matches(&format!("<{tag} ")).count(), 0, "{tag}");
            assert!(!inline_hash(tag).is_empty());
        }
        assert!(csp().contains(&inline_hash("script")));
        assert!(!PAGE.contains("http://") && !PAGE.contains("https://"));
        assert!(PAGE.lines().count() < 300);
    }
}
