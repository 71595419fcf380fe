//! Who may do what: tokens from headers, checked against a cache.
//!
//! A token comes as `Authorization: Bearer <token>` or as the password of
//! HTTP Basic (what Nix sends from a netrc file). Anonymous pulls are
//! allowed from public caches. A token with no right on a cache gets the
//! same 401 whether the cache exists or not, so names cannot be probed.

use actix_web::http::header;
use actix_web::{HttpMessage, HttpRequest};
use base64::Engine as _;

use super::AppState;
use crate::auth::{AuthError, Operation};
use crate::db::caches::CacheRow;
use crate::error::{Error, Result};

/// Why a request's token was ignored (a pull from a public cache with an
/// invalid token); the server puts it in a response header.
#[derive(Clone, Debug)]
pub struct TokenIgnored(pub String);

/// The token a request carries, if any.
pub fn token_of(req: &HttpRequest) -> Option<String> {
    let value = req
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_, password) = text.split_once(':')?;
        return Some(password.to_owned());
    }
    None
}

/// Checks the cache name's syntax.
pub fn check_cache_name(name: &str) -> Result<()> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidCacheName(name.to_owned()))
    }
}

/// Checks that the request may do `op` on `name` without needing the
/// cache to exist (creating one).
pub fn require(state: &AppState, req: &HttpRequest, op: Operation, name: &str) -> Result<()> {
    let token = token_of(req).ok_or(Error::Unauthenticated)?;
    state.auth.check(&token, op, name).map_err(auth_error)
}

/// Whether the request's token may pull from a cache, by name: what a
/// dedup link needs (a right to the bytes, not the knowledge of a hash).
pub fn pull_check<'a>(state: &'a AppState, req: &HttpRequest) -> impl Fn(&str) -> bool + Sync + 'a {
    let token = token_of(req);
    move |name: &str| {
        token
            .as_deref()
            .is_some_and(|t| state.auth.check(t, Operation::Pull, name).is_ok())
    }
}

/// Checks, before a body naming the cache is read, that the request's
/// token is valid and holds `op` on some pattern (creating a cache: the
/// name comes in the body and is checked with [`require`] after).
pub fn require_some(state: &AppState, req: &HttpRequest, op: Operation) -> Result<()> {
    let token = token_of(req).ok_or(Error::Unauthenticated)?;
    let info = state.auth.inspect(&token).map_err(auth_error)?;
    if info.expires_at <= std::time::SystemTime::now() {
        return Err(Error::Auth(AuthError::Expired));
    }
    if info.rights.iter().any(|(o, _)| *o == op) {
        Ok(())
    } else {
        Err(Error::Forbidden(op))
    }
}

/// The request's token once checked (signature, revocation, expiry);
/// `None` without one. For answers that depend on who asks but need no
/// particular right (the status page).
pub fn valid_token(state: &AppState, req: &HttpRequest) -> Result<Option<String>> {
    let Some(token) = token_of(req) else {
        return Ok(None);
    };
    let info = state.auth.inspect(&token).map_err(auth_error)?;
    if info.expires_at <= std::time::SystemTime::now() {
        return Err(Error::Auth(AuthError::Expired));
    }
    Ok(Some(token))
}

/// Whether `token` has any right on the cache `name` (attenuation
/// included): a pull is allowed, or refused as forbidden because another
/// right is there.
pub fn has_any_right(state: &AppState, token: &str, name: &str) -> bool {
    matches!(
        state.auth.check(token, Operation::Pull, name),
        Ok(()) | Err(AuthError::Forbidden { .. })
    )
}

/// Who the request's token is, for per-token quotas: the revocation id
/// of its authority block, shared by every token attenuated from it.
pub fn owner_of(req: &HttpRequest) -> Option<String> {
    let token = token_of(req)?;
    crate::auth::revocation_ids(&token).ok()?.into_iter().next()
}

/// Whether the request came straight from a proxy whose forwarding
/// headers are believed.
fn from_trusted_proxy(req: &HttpRequest, trusted: &[std::net::IpAddr]) -> bool {
    req.peer_addr().is_some_and(|p| trusted.contains(&p.ip()))
}

/// The host the client asked for: `X-Forwarded-Host` / `Forwarded` only
/// from a trusted proxy, else the request's own `Host`.
pub fn host_of(req: &HttpRequest, trusted: &[std::net::IpAddr]) -> String {
    if from_trusted_proxy(req, trusted) {
        return req.connection_info().host().to_owned();
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default()
}

/// The client's address for the log: what a trusted proxy says it is
/// forwarding for, else the peer.
pub fn client_of(req: &HttpRequest, trusted: &[std::net::IpAddr]) -> String {
    if from_trusted_proxy(req, trusted)
        && let Some(ip) = req.connection_info().realip_remote_addr()
    {
        return ip.to_owned();
    }
    req.peer_addr()
        .map(|p| p.ip().to_string())
        .unwrap_or_default()
}

/// Maps an authorization failure to the server error.
pub fn auth_error(e: AuthError) -> Error {
    match e {
        AuthError::Forbidden { operation } => Error::Forbidden(operation),
        other => Error::Auth(other),
    }
}

/// The cache `name`, if the request may do `op` on it.
pub async fn cache(
    state: &AppState,
    req: &HttpRequest,
    name: &str,
    op: Operation,
) -> Result<CacheRow> {
    check_cache_name(name)?;
    let cache = state.caches.get(name).await?;
    if let Some(c) = cache.as_ref().filter(|c| op == Operation::Pull && c.public) {
        // A stale netrc must never break substitution from a public cache:
        // serve anonymously and say why the token was not used.
        if let Some(token) = token_of(req)
            && let Err(e) = state.auth.check(&token, op, name)
            && !matches!(e, AuthError::NoAccess | AuthError::Forbidden { .. })
        {
            let why = Error::Auth(e);
            req.extensions_mut()
                .insert(TokenIgnored(format!("{}: {}", why.code(), why)));
        }
        return Ok(CacheRow::clone(c));
    }
    require(state, req, op, name)?;
    cache
        .map(|c| CacheRow::clone(&c))
        .ok_or_else(|| Error::CacheNotFound(name.to_owned()))
}

/// The cache `name`, if the request has any right on it (reading its
/// settings and public key).
pub async fn cache_any(state: &AppState, req: &HttpRequest, name: &str) -> Result<CacheRow> {
    let mut last = Error::Unauthenticated;
    for op in Operation::ALL {
        match cache(state, req, name, op).await {
            Ok(c) => return Ok(c),
            Err(e @ Error::CacheNotFound(_)) => return Err(e),
            Err(e) => last = e,
        }
    }
    Err(last)
}
