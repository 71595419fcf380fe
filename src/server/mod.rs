//! HTTP wiring: the route table, shared state and `run(listener, shutdown)`.
//!
//! Handlers (one file per endpoint group under `handlers/`) stay thin:
//! check input and access, call the engine or the database, shape the
//! answer. Every error goes through `error.rs`.

pub mod access;
pub mod batch_body;
pub mod body;
pub mod error;
mod handlers;
pub mod metrics;
pub(crate) mod stream;

/// The `Range` header parser, public for the fuzz targets and their
/// regression test (`fuzz/`, `tests/fuzz_regressions.rs`).
#[doc(hidden)]
pub use handlers::nar::parse_range;

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;

use actix_web::http::Method;
use actix_web::{App, HttpServer, ResponseError, web};

use crate::auth::Authorizer;
use crate::db::Db;
use crate::db::caches::CacheIndex;
use crate::error::Error;
use crate::store::SharedStore;
use crate::upload::Engine;

/// What every handler can reach.
pub struct AppState {
    pub db: Db,
    pub store: SharedStore,
    pub engine: Arc<Engine>,
    pub auth: Authorizer,
    /// Cache rows by name (forget a name after changing its cache).
    pub caches: CacheIndex,
    /// tus limits and browser origins.
    pub tus: TusSettings,
    /// Reads waiting to be recorded as last-access times.
    pub access: Arc<crate::gc::AccessLog>,
    /// Settings that shape answers.
    pub settings: Settings,
    /// Counters for `/metrics`.
    pub metrics: Arc<metrics::Metrics>,
}

/// Server settings taken from the config.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Retention of caches created without one; `None`: forever.
    pub default_retention_secs: Option<i64>,
    /// Host names answered for; empty: any.
    pub allowed_hosts: Vec<String>,
    /// Peers whose forwarding headers are believed; empty: nobody's.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Prefix for links in answers (no trailing slash); empty: paths.
    pub public_url: String,
}

/// Settings of the tus door.
#[derive(Clone, Debug)]
pub struct TusSettings {
    /// `Tus-Max-Size`, in bytes.
    pub max_size: u64,
    /// Origins allowed by CORS (`*` for any).
    pub cors_origins: Vec<String>,
}

/// The route table, also used by in-process tests.
pub fn routes(cfg: &mut web::ServiceConfig) {
    use handlers::*;
    // JSON bodies are read by the handlers after their access check
    // (`body::json`), never by an extractor before it.
    cfg.app_data(
        web::PathConfig::default()
            .error_handler(|e, _| Error::BadRequest(format!("the URL is invalid: {e}")).into()),
    )
    .route("/", web::get().to(status::page))
    .route("/healthz", web::get().to(health::healthz))
    .route("/metrics", web::get().to(metrics::render_for_admin))
    .service(
        web::scope("/_api/v1")
            .service(
                web::scope("/caches/{cache}/tus")
                    .wrap(actix_web::middleware::from_fn(tus::middleware))
                    .route("", web::post().to(tus::create))
                    .route("/", web::post().to(tus::create))
                    .route("", web::method(Method::OPTIONS).to(tus::options))
                    .route("/", web::method(Method::OPTIONS).to(tus::options))
                    .route("/{id}", web::head().to(tus::head))
                    .route("/{id}", web::patch().to(tus::patch))
                    .route("/{id}", web::post().to(tus::post_override))
                    .route("/{id}", web::delete().to(tus::delete))
                    .route("/{id}", web::method(Method::OPTIONS).to(tus::options)),
            )
            .route("/caches", web::post().to(caches::create))
            .route("/caches/{cache}", web::get().to(caches::info))
            .route("/caches/{cache}", web::patch().to(caches::configure))
            .route("/caches/{cache}", web::delete().to(caches::destroy))
            .route(
                "/caches/{cache}/paths/{hash}",
                web::delete().to(caches::delete_path),
            )
            .route("/tokens/revoke", web::post().to(tokens::revoke))
            .route("/status", web::get().to(status::status))
            .route("/caches/{cache}/missing", web::post().to(uploads::missing))
            .route("/caches/{cache}/uploads", web::post().to(uploads::create))
            .route("/caches/{cache}/batch", web::post().to(batch::batch))
            .route("/caches/{cache}/uploads", web::get().to(uploads::list))
            .route("/uploads/{id}", web::get().to(uploads::status))
            .route("/uploads/{id}", web::delete().to(uploads::abandon))
            .route("/uploads/{id}/parts/{n}", web::put().to(uploads::put_part))
            .route("/uploads/{id}/complete", web::post().to(uploads::complete))
            .route("/uploads/{id}/chunks", web::post().to(uploads::chunks))
            .default_service(web::to(health::not_found)),
    )
    .route("/{cache}/nix-cache-info", web::get().to(reads::cache_info))
    .route("/{cache}/{hash}.narinfo", web::get().to(reads::narinfo))
    .route("/{cache}/{hash}.narinfo", web::head().to(reads::narinfo))
    .route("/{cache}/{hash}.narinfo", web::put().to(nix_put::narinfo))
    .route("/{cache}/{hash}.ls", web::get().to(reads::listing))
    .route("/{cache}/log/{drv}", web::get().to(logs::get))
    .route("/{cache}/log/{drv}", web::put().to(logs::put))
    .route("/{cache}/nar/{file}", web::get().to(nar::get))
    .route("/{cache}/nar/{file}", web::head().to(nar::get))
    .route("/{cache}/nar/{file}", web::put().to(nix_put::nar))
    .default_service(web::to(health::not_found));
}

/// `Some(error)` when the request's Host is not one the server answers for.
fn host_refused(req: &actix_web::dev::ServiceRequest) -> Option<Error> {
    let state = req.app_data::<web::Data<AppState>>()?;
    let allowed = &state.settings.allowed_hosts;
    if allowed.is_empty() {
        return None;
    }
    let host = access::host_of(req.request(), &state.settings.trusted_proxies);
    let name = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(&host);
    (!allowed.iter().any(|a| a == name || a == &host))
        .then(|| Error::HostNotAllowed(name.to_owned()))
}

/// Serves `/metrics` alone, without a token, on `listener` (the optional
/// `metrics-listen` address, for a Prometheus on the same host).
pub async fn run_metrics(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let data = web::Data::from(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/metrics", web::get().to(metrics::render))
            .default_service(web::to(handlers::health::not_found))
    })
    .workers(1)
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    until(server, shutdown).await
}

/// Runs `server` until it stops or `shutdown` resolves (then gracefully).
async fn until(
    server: actix_web::dev::Server,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let handle = server.handle();
    tokio::spawn(async move {
        shutdown.await;
        handle.stop(true).await;
    });
    server.await
}

/// Serves until `shutdown` resolves, on an already bound listener (so tests
/// can bind port 0).
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let data = web::Data::from(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .wrap_fn(|req, srv| {
                use actix_web::HttpMessage;
                use actix_web::dev::Service;
                if let Some(refused) = host_refused(&req) {
                    return Box::pin(async move { Ok(req.into_response(refused.error_response())) })
                        as std::pin::Pin<Box<dyn std::future::Future<Output = _>>>;
                }
                let bytes_in = req
                    .headers()
                    .get(actix_web::http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                let request_id = uuid::Uuid::now_v7().simple().to_string();
                let client = req
                    .app_data::<web::Data<AppState>>()
                    .map(|s| access::client_of(req.request(), &s.settings.trusted_proxies))
                    .unwrap_or_default();
                let span = tracing::info_span!(
                    "request",
                    id = %request_id,
                    client = %client,
                    method = %req.method(),
                    path = %req.path()
                );
                let started = std::time::Instant::now();
                let fut = {
                    let _entered = span.enter();
                    srv.call(req)
                };
                Box::pin(tracing::Instrument::instrument(
                    async move {
                        let mut res = fut.await?;
                        tracing::info!(
                            status = res.status().as_u16(),
                            ms = started.elapsed().as_millis() as u64,
                            "answered"
                        );
                        if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&request_id) {
                            res.headers_mut().insert(
                                actix_web::http::header::HeaderName::from_static("x-request-id"),
                                v,
                            );
                        }
                        if let Some(state) = res.request().app_data::<web::Data<AppState>>() {
                            use actix_web::body::{BodySize, MessageBody};
                            let route = res
                                .request()
                                .match_pattern()
                                .unwrap_or_else(|| "unmatched".to_owned());
                            let out = match res.response().body().size() {
                                BodySize::Sized(n) => n,
                                _ => 0,
                            };
                            state
                                .metrics
                                .request(&route, res.status().as_u16(), bytes_in, out);
                        }
                        let ignored = res
                            .request()
                            .extensions()
                            .get::<access::TokenIgnored>()
                            .cloned();
                        if let Some(access::TokenIgnored(why)) = ignored
                            && let Ok(v) = actix_web::http::header::HeaderValue::from_str(&why)
                        {
                            res.headers_mut().insert(
                                actix_web::http::header::HeaderName::from_static(
                                    crate::api::TOKEN_IGNORED,
                                ),
                                v,
                            );
                        }
                        Ok(res)
                    },
                    span,
                ))
            })
            .configure(routes)
    })
    .client_request_timeout(std::time::Duration::from_secs(60))
    // Answers go out whole as soon as they are written: with Nagle on, a
    // response's last short segment waited for the client's delayed ACK.
    .tcp_nodelay(true)
    // Idle keep-alive connections outlive the proxies' own idle timeouts
    // (cloudflared 90 s, nginx upstream 60 s): a proxy must never send a
    // request on a connection the server is closing at that moment.
    .keep_alive(std::time::Duration::from_secs(120))
    .shutdown_timeout(5)
    .listen(listener)?
    .run();
    until(server, shutdown).await
}
