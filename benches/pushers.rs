//! Parallel pushers benchmark: 16 clients pushing at once into one cache
//! against 1 client alone, on the same `ferry serve` behind nginx.
//!
//! Each pusher pushes its own 164 paths (4 × 16 MiB, 32 × 1 MiB,
//! 128 × 64 KiB of random bytes, 104 MiB of NAR), one path at a time, each
//! as create upload → one zstd part → complete. Printed: the aggregate
//! rate of NAR bytes committed with 16 pushers over the rate of one, and
//! how often the database was found locked (`ferry_db_busy_total` from
//! `/metrics`, before and after; goal: 0).
//!
//! Run: `cargo bench --bench pushers` (`FERRY_BENCH_PUSHERS=16`).

mod support;

use std::time::{Duration, Instant};

use support::api::Api;
use support::nar::{self, Kind};
use support::nginx::Nginx;
use support::{Server, verdict};

/// One path to push: its store path, NAR facts and zstd bytes.
struct Path {
    store_path: String,
    nar: nar::Made,
    zst: Vec<u8>,
}

/// Pusher `p`'s paths, sizes interleaved.
fn workload(p: u64) -> Vec<Path> {
    let mut sizes = vec![];
    for _ in 0..4 {
        sizes.push(16 << 20);
        sizes.extend([1 << 20; 8]);
        sizes.extend([64 << 10; 32]);
    }
    sizes
        .into_iter()
        .enumerate()
        .map(|(i, size)| {
            let seed = p << 32 | i as u64;
            let (nar, zst) = nar::to_vec(Kind::Random, size, seed);
            Path {
                store_path: nar::store_path(p, i as u64, "push"),
                nar,
                zst,
            }
        })
        .collect()
}

/// Runs one task per pusher; returns the wall time and NAR bytes pushed.
async fn run(api: &Api, pushers: Vec<Vec<Path>>) -> (Duration, u64) {
    let bytes = pushers.iter().flatten().map(|p| p.nar.nar_size).sum();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for paths in pushers {
        let api = api.clone();
        tasks.spawn(async move {
            for p in paths {
                let pushed = api
                    .push("p", &p.store_path, &p.nar, 1, |_| p.zst.clone())
                    .await;
                assert!(!pushed.linked);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("pusher");
    }
    (start.elapsed(), bytes)
}

fn main() {
    let n: u64 = support::env_num("FERRY_BENCH_PUSHERS", 16);
    let work = support::work_dir();
    let server = Server::start(&work.path().join("data"));
    let proxy = Nginx::proxy(server.port);
    let api = Api::new(&proxy.url(), &server.token);
    eprintln!("preparing {} × 164 NARs …", n + 1);
    let one = vec![workload(1000)];
    let many: Vec<Vec<Path>> = (0..n).map(workload).collect();
    let paths = one[0].len();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (single, parallel, busy) = rt.block_on(async {
        api.create_cache("p", false).await;
        let b0 = api.metric("ferry_db_busy_total").await;
        let single = run(&api, one).await;
        let b1 = api.metric("ferry_db_busy_total").await;
        let parallel = run(&api, many).await;
        let b2 = api.metric("ferry_db_busy_total").await;
        (single, parallel, (b1 - b0, b2 - b1))
    });
    drop(proxy);
    drop(server);
    let rate = |(d, bytes): (Duration, u64)| bytes as f64 / 1e6 / d.as_secs_f64();
    let paths_rate = |(d, _): (Duration, u64), k: u64| (k * paths as u64) as f64 / d.as_secs_f64();
    println!(
        "{n} pushers at once vs 1 alone, same server behind nginx; each pushes {paths} paths \
         (4 × 16 MiB, 32 × 1 MiB, 128 × 64 KiB, random), one at a time, one part each"
    );
    println!(
        "  {n} pushers / 1 pusher   {:6.2}   (aggregate NAR MB/s committed)",
        rate(parallel) / rate(single)
    );
    println!(
        "  1 pusher               {:6.1} MB/s, {:6.1} paths/s",
        rate(single),
        paths_rate(single, 1)
    );
    println!(
        "  {n} pushers             {:6.1} MB/s, {:6.1} paths/s",
        rate(parallel),
        paths_rate(parallel, n)
    );
    println!(
        "  SQLITE_BUSY waits (ferry_db_busy_total): {} with 1 pusher, {} with {n}   {}",
        busy.0,
        busy.1,
        verdict(busy.0 + busy.1 == 0.0, "0")
    );
}
