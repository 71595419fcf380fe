//! Metadata engines side by side: narinfo GETs from a server on SQLite
//! (the default) and from one on PostgreSQL (`database-url`, a throwaway
//! PostgreSQL 15 cluster started here, as the tests start it), in the same
//! run, same NAR, same load: 64 keep-alive connections, public cache
//! without a token and private cache with one.
//!
//! Run: `cargo bench --bench engines`. Knob: `FERRY_BENCH_SECS` (default 5).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use common::postgres::PgCluster;
use support::api::Api;
use support::{Server, load, nar};

const CONNECTIONS: usize = 64;

/// Starts a server (on `config`, if any), publishes one small NAR in a
/// public and a private cache, and measures narinfo req/s for both.
fn measure(
    rt: &tokio::runtime::Runtime,
    work: &std::path::Path,
    name: &str,
    config: Option<&str>,
    secs: f64,
) -> (f64, f64) {
    let config_file = work.join(format!("{name}.toml"));
    let mut args = vec![];
    if let Some(text) = config {
        std::fs::write(&config_file, text).expect("config");
        args = vec!["--config", config_file.to_str().unwrap()];
    }
    let server = Server::start_with(&work.join(name), &args);
    let api = Api::new(&server.url(), &server.token);
    let (made, bytes) = nar::to_vec(nar::Kind::Text, 100, 1);
    let mut paths = vec![];
    for (cache, public) in [("private", false), ("public", true)] {
        rt.block_on(api.create_cache(cache, public));
        let path = nar::store_path(1, 0, "bench");
        rt.block_on(api.push(cache, &path, &made, 1, |_| bytes.clone()));
        paths.push(format!(
            "/{cache}/{}.narinfo",
            &path["/nix/store/".len()..][..32]
        ));
    }
    let public = load::requests(server.port, &paths[1], None, CONNECTIONS, secs);
    let private = load::requests(
        server.port,
        &paths[0],
        Some(&server.token),
        CONNECTIONS,
        secs,
    );
    (public, private)
}

fn main() {
    let secs: f64 = support::env_num("FERRY_BENCH_SECS", 5.0);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let work = support::work_dir();
    let (sqlite_pub, sqlite_priv) = measure(&rt, work.path(), "sqlite", None, secs);
    let cluster = PgCluster::start();
    let url = cluster.new_database();
    let (pg_pub, pg_priv) = measure(
        &rt,
        work.path(),
        "postgres",
        Some(&format!("database-url = {url:?}\n")),
        secs,
    );
    println!(
        "narinfo GETs, {CONNECTIONS} keep-alive connections, {secs} s each, SQLite vs PostgreSQL 15 (same host):"
    );
    for (what, s, p) in [
        ("public, no token   ", sqlite_pub, pg_pub),
        ("private, with token", sqlite_priv, pg_priv),
    ] {
        println!(
            "  {what}: SQLite {s:8.0} req/s, PostgreSQL {p:8.0} req/s -> PostgreSQL/SQLite = {:.2}",
            p / s,
        );
    }
}
