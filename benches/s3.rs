//! Blobs in S3, against a real Garage started here (single node, loopback,
//! the tests' harness): each figure beside Garage's own speed on the same
//! bytes, measured in the same run.
//!
//! - ingest: a 1 GiB random NAR pushed to `ferry serve` (`[s3]` config)
//!   in 64 MiB zstd parts, 4 in flight, timed to "committed" (the parts
//!   are on the server's disk, then verified, then uploaded to the bucket);
//!   reference: `curl --aws-sigv4` PUTs of the same 16 part files straight
//!   to Garage, 4 at a time.
//! - NAR GET: the whole `.nar.zst` through ferry (one connection), against
//!   `curl` GETs of the same objects, in order, straight from Garage.
//!
//! Run: `cargo bench --bench s3`. Knob: `FERRY_BENCH_S3_MIB` (default 1024).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use common::garage::{Garage, start_garage};
use support::api::{Api, PART, file_part};
use support::nar::{self, Kind};
use support::{Server, at_least, mbps};

/// Runs the commands at most `jobs` at a time; returns the wall time.
fn run_parallel(mut cmds: Vec<Command>, jobs: usize) -> Duration {
    let start = Instant::now();
    while !cmds.is_empty() {
        let batch: Vec<_> = cmds
            .drain(..jobs.min(cmds.len()))
            .map(|mut c| c.spawn().expect("spawn curl"))
            .collect();
        for mut child in batch {
            assert!(child.wait().expect("curl").success(), "curl failed");
        }
    }
    start.elapsed()
}

fn quiet(mut c: Command) -> Command {
    c.args(["-f", "-o", "/dev/null"]);
    c
}

fn garage_put(g: &Garage, key: &str, file: &std::path::Path) -> Command {
    let mut c = quiet(g.curl());
    c.arg("-T").arg(file).arg(g.object_url(key));
    c
}

fn garage_get(g: &Garage, key: &str) -> Command {
    let mut c = quiet(g.curl());
    c.arg(g.object_url(key));
    c
}

fn main() {
    let mib: u64 = support::env_num("FERRY_BENCH_S3_MIB", 1024);
    let g = start_garage();
    let work = support::work_dir();
    let zst = work.path().join("nar.zst");
    eprintln!("preparing a {mib} MiB random NAR …");
    let made = nar::to_file(&zst, Kind::Random, mib << 20, 7);
    let parts = (made.zst_size as usize).div_ceil(PART);
    let part_files: Vec<_> = (0..parts)
        .map(|n| {
            let f = work.path().join(format!("part-{n}"));
            std::fs::write(&f, file_part(&zst, n)).expect("part file");
            f
        })
        .collect();

    // Reference: Garage's own PUT of the same bytes, 4 at a time.
    let puts = part_files
        .iter()
        .enumerate()
        .map(|(n, f)| garage_put(&g, &format!("reference/{n}"), f))
        .collect();
    let garage_put_secs = run_parallel(puts, 4).as_secs_f64();

    // ferry with [s3].
    let config = work.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "[s3]\nendpoint = {:?}\nbucket = {:?}\nregion = {:?}\naccess-key-id = {:?}\n\
             secret-access-key = {:?}\n",
            g.endpoint, g.bucket, g.region, g.access_key_id, g.secret_access_key
        ),
    )
    .expect("config");
    let server = Server::start_with(
        &work.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let api = Api::new(&server.url(), &server.token);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let path = nar::store_path(7, 0, "s3-bench");
    let pushed = rt.block_on(async {
        api.create_cache("bench", true).await;
        api.push("bench", &path, &made, 4, |n| file_part(&zst, n))
            .await
    });
    let hash = path
        .trim_start_matches("/nix/store/")
        .split('-')
        .next()
        .unwrap()
        .to_owned();

    // Reads: the whole NAR through ferry vs the same objects from Garage.
    let narinfo = rt.block_on(api.get_text(&format!("/bench/{hash}.narinfo")));
    let url = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .expect("URL line")
        .to_owned();
    let t = Instant::now();
    let mut c = quiet(Command::new("curl"));
    c.arg("-s").arg(format!("{}/bench/{url}", server.url()));
    assert!(c.status().expect("curl").success());
    let ferry_get = t.elapsed();
    let gets: Vec<_> = (0..parts)
        .map(|n| garage_get(&g, &format!("reference/{n}")))
        .collect();
    let garage_get = run_parallel(gets, 1);

    let zst_mb = made.zst_size as f64 / 1e6;
    println!(
        "S3 (Garage 2.5, single node, loopback): {mib} MiB random NAR, {zst_mb:.0} MB as zstd, \
         {parts} parts of 64 MiB"
    );
    let ingest = zst_mb / pushed.total.as_secs_f64();
    let garage_put = zst_mb / garage_put_secs;
    println!(
        "  ingest ferry/Garage PUT {:6.2}   {}  (ferry {ingest:.0} MB/s to committed, {:.2} s, \
         of which {:.2} s after the last part; Garage PUT, curl, 4 at a time: {garage_put:.0} MB/s)",
        ingest / garage_put,
        at_least(ingest / garage_put, 0.8, "0.8"),
        pushed.total.as_secs_f64(),
        pushed.commit.as_secs_f64(),
    );
    let ferry_read = mbps(made.zst_size, ferry_get);
    let garage_read = mbps(made.zst_size, garage_get);
    println!(
        "  NAR GET ferry/Garage    {:6.2}   {}  (ferry {ferry_read:.0} MB/s, one connection; \
         Garage GET of the same objects in order: {garage_read:.0} MB/s)",
        ferry_read / garage_read,
        at_least(ferry_read / garage_read, 0.9, "0.9"),
    );
}
