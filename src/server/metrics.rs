//! `GET /metrics`: Prometheus text exposition.
//!
//! On the main listener it needs a token with `admin` on every cache (the
//! text names every cache, private ones included); on the optional
//! `metrics-listen` address (for a Prometheus on the same host) it needs
//! none, and that listener serves nothing else.
//!
//! Counters live in memory ([`Metrics`]) and are bumped by a middleware
//! (requests by route pattern and status, bytes in and out), by the part
//! handler and by the garbage collector; `ferry_db_busy_total` is the
//! database layer's process-wide count of lock waits; gauges are read
//! when scraped, cheaply: uploads by state from a small table, paths and
//! bytes per cache from `cache_stats`, which triggers keep up to date.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::{HttpResponse, web};

use crate::error::{Error, Result};
use crate::server::AppState;

/// Upper bounds of the part-size histogram, in bytes.
const PART_BUCKETS: [u64; 6] = [1 << 20, 8 << 20, 16 << 20, 32 << 20, 64 << 20, 95_000_000];

/// In-memory counters.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    parts: AtomicU64,
    part_bytes: AtomicU64,
    /// Cumulative part-size histogram, one count per bucket of `PART_BUCKETS`.
    part_buckets: [AtomicU64; PART_BUCKETS.len()],
    gc_runs: AtomicU64,
    gc_bytes_freed: AtomicU64,
}

impl Metrics {
    /// One answered request.
    pub fn request(&self, route: &str, status: u16, bytes_in: u64, bytes_out: u64) {
        if let Ok(mut r) = self.requests.lock() {
            *r.entry((route.to_owned(), status)).or_default() += 1;
        }
        self.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
    }

    /// One part stored.
    pub fn part(&self, size: u64) {
        self.parts.fetch_add(1, Ordering::Relaxed);
        self.part_bytes.fetch_add(size, Ordering::Relaxed);
        for (bound, count) in PART_BUCKETS.iter().zip(&self.part_buckets) {
            if size <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// One garbage collection run.
    pub fn gc(&self, bytes_freed: u64) {
        self.gc_runs.fetch_add(1, Ordering::Relaxed);
        self.gc_bytes_freed
            .fetch_add(bytes_freed, Ordering::Relaxed);
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

/// Renders every metric.
/// `GET /metrics` on the main listener: `admin` only.
pub async fn render_for_admin(
    state: web::Data<AppState>,
    req: actix_web::HttpRequest,
) -> Result<HttpResponse> {
    let token = crate::server::access::token_of(&req).ok_or(Error::Unauthenticated)?;
    state
        .auth
        .check_global(&token, crate::auth::Operation::Admin)
        .map_err(crate::server::access::auth_error)?;
    render(state).await
}

/// The exposition text, for whoever may read it.
pub async fn render(state: web::Data<AppState>) -> Result<HttpResponse> {
    let m = &state.metrics;
    let mut out = String::new();
    out.push_str(
        "# HELP ferry_http_requests_total HTTP requests answered, by route pattern and status.\n",
    );
    out.push_str("# TYPE ferry_http_requests_total counter\n");
    for ((route, status), n) in m.requests.lock().map_err(Error::internal)?.iter() {
        let _ = writeln!(
            out,
            "ferry_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
            escape(route)
        );
    }
    counter(
        &mut out,
        "ferry_http_request_bytes_total",
        "Request body bytes received.",
        m.bytes_in.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "ferry_http_response_bytes_total",
        "Response body bytes sent (sized bodies).",
        m.bytes_out.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "ferry_parts_received_total",
        "Upload parts stored.",
        m.parts.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "ferry_part_bytes_total",
        "Bytes of upload parts stored.",
        m.part_bytes.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "ferry_gc_runs_total",
        "Garbage collection runs.",
        m.gc_runs.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "ferry_gc_bytes_freed_total",
        "Blob bytes freed by garbage collection.",
        m.gc_bytes_freed.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "ferry_db_busy_total",
        "Times a database call found SQLite locked (SQLITE_BUSY) and waited for the lock.",
        crate::db::busy_waits(),
    );
    let parts = m.parts.load(Ordering::Relaxed);
    out.push_str("# HELP ferry_part_size_bytes Sizes of upload parts stored.\n");
    out.push_str("# TYPE ferry_part_size_bytes histogram\n");
    for (bound, count) in PART_BUCKETS.iter().zip(&m.part_buckets) {
        let n = count.load(Ordering::Relaxed);
        let _ = writeln!(out, "ferry_part_size_bytes_bucket{{le=\"{bound}\"}} {n}");
    }
    let sum = m.part_bytes.load(Ordering::Relaxed);
    let _ = writeln!(out, "ferry_part_size_bytes_bucket{{le=\"+Inf\"}} {parts}");
    let _ = writeln!(
        out,
        "ferry_part_size_bytes_sum {sum}\nferry_part_size_bytes_count {parts}"
    );
    let stats = &state.engine.stats;
    counter(
        &mut out,
        "ferry_verified_bytes_total",
        "Uploaded bytes run through the verifier; divided by ferry_verify_seconds_total it is the verify throughput.",
        stats.verified_bytes.load(Ordering::Relaxed),
    );
    let secs = stats.verify_nanos.load(Ordering::Relaxed) as f64 / 1e9;
    out.push_str("# HELP ferry_verify_seconds_total Time the verifier spent.\n");
    out.push_str("# TYPE ferry_verify_seconds_total counter\n");
    let _ = writeln!(out, "ferry_verify_seconds_total {secs}");
    let (uploads, sizes) = state
        .db
        .call(|c| {
            let uploads = crate::db::uploads::count_by_state(c)?;
            let sizes = crate::db::caches::sizes(c)?;
            Ok((uploads, sizes))
        })
        .await?;
    out.push_str("# HELP ferry_uploads Uploads by state.\n# TYPE ferry_uploads gauge\n");
    for s in ["open", "verifying", "failed", "committed"] {
        let n = uploads
            .iter()
            .find(|(st, _)| st == s)
            .map(|(_, n)| *n)
            .unwrap_or(0);
        let _ = writeln!(out, "ferry_uploads{{state=\"{s}\"}} {n}");
    }
    out.push_str("# HELP ferry_cache_stored_bytes Compressed NAR bytes published per cache (shared NARs count in each).\n# TYPE ferry_cache_stored_bytes gauge\n");
    for (name, bytes, _) in &sizes {
        let _ = writeln!(
            out,
            "ferry_cache_stored_bytes{{cache=\"{}\"}} {bytes}",
            escape(name)
        );
    }
    out.push_str("# HELP ferry_cache_paths Store paths published per cache.\n# TYPE ferry_cache_paths gauge\n");
    for (name, _, paths) in &sizes {
        let _ = writeln!(
            out,
            "ferry_cache_paths{{cache=\"{}\"}} {paths}",
            escape(name)
        );
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .insert_header(("cache-control", "no-store"))
        .body(out))
}
