//! `missing` benchmark: how long `POST /_api/v1/caches/{cache}/missing`
//! takes for 10 000 store paths (half present, half absent) in a cache
//! holding 10 000 published paths. Goal: median and p99 ≤ 20 ms.
//!
//! The cache is filled through the push API: one path is uploaded, the
//! other 9 999 declare the same NarHash, which the server links without
//! a body (one `POST …/uploads` each, 16 in flight). The reference is the
//! same lookup (`db::nars::present`, 500 paths per query) run in this
//! process on the server's SQLite file: the part no HTTP or JSON can save.
//!
//! Run: `cargo bench --bench missing` (`FERRY_BENCH_CALLS=100` timed calls).

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::api::Api;
use support::{at_most, median_p99, nar};

const PATHS: u64 = 10_000;
const CACHE: &str = "m";

fn path(present: bool, i: u64) -> String {
    nar::store_path(if present { 7 } else { 8 }, i, "p")
}

/// The same lookups straight on the database file: median of 5 rounds.
fn sqlite_reference(db: &std::path::Path, query: &[String]) -> Duration {
    let conn = rusqlite::Connection::open(db).expect("db");
    let cache_id: i64 = conn
        .query_row("SELECT id FROM caches WHERE name = ?1", [CACHE], |r| {
            r.get(0)
        })
        .expect("cache row");
    let hashes: Vec<String> = query
        .iter()
        .map(|p| p["/nix/store/".len()..][..32].to_owned())
        .collect();
    let conn = ferry::db::Conn::sqlite(&conn);
    let mut rounds: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            let found = ferry::db::nars::present(&conn, cache_id, &hashes).expect("lookup");
            assert_eq!(found.len() as u64, PATHS / 2);
            t.elapsed()
        })
        .collect();
    median_p99(&mut rounds).0
}

fn main() {
    let calls: usize = support::env_num("FERRY_BENCH_CALLS", 100);
    let work = support::work_dir();
    let data = work.path().join("data");
    let server = support::Server::start(&data);
    let api = Api::new(&server.url(), &server.token);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let query: Vec<String> = (0..PATHS).map(|i| path(i % 2 == 0, i)).collect();
    let (fill, mut times) = rt.block_on(async {
        api.create_cache(CACHE, false).await;
        let (made, bytes) = nar::to_vec(nar::Kind::Text, 1000, 7);
        api.push(CACHE, &path(true, 0), &made, 1, |_| bytes.clone())
            .await;
        let t = Instant::now();
        futures_util::stream::iter(1..PATHS)
            .for_each_concurrent(16, |i| {
                let (api, made) = (&api, &made);
                async move {
                    let up = api
                        .create_upload(CACHE, &path(true, i), &made.nar_hash, made.nar_size)
                        .await;
                    assert!(up.is_none(), "path {i} was not linked");
                }
            })
            .await;
        let fill = t.elapsed();
        for _ in 0..3 {
            api.missing(CACHE, &query).await;
        }
        let mut times = vec![];
        for _ in 0..calls {
            let t = Instant::now();
            let missing = api.missing(CACHE, &query).await;
            times.push(t.elapsed());
            assert_eq!(missing.len() as u64, PATHS / 2);
        }
        (fill, times)
    });
    let reference = sqlite_reference(&data.join("ferry.db"), &query);
    drop(server);
    let (median, p99) = median_p99(&mut times);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "missing for {PATHS} store paths (half present) in a cache of {PATHS} paths, {calls} calls, direct to ferry serve:"
    );
    println!(
        "  median  {:7.1} ms  {}  -> {:.1}× the same lookups in SQLite alone ({:.1} ms)",
        ms(median),
        at_most(ms(median), 20.0, "20 ms"),
        median.as_secs_f64() / reference.as_secs_f64(),
        ms(reference)
    );
    println!(
        "  p99     {:7.1} ms  {}",
        ms(p99),
        at_most(ms(p99), 20.0, "20 ms")
    );
    println!(
        "  (filling the cache: {} paths linked by NarHash in {:.1} s, {:.0} paths/s, 16 in flight)",
        PATHS - 1,
        fill.as_secs_f64(),
        (PATHS - 1) as f64 / fill.as_secs_f64()
    );
}
