//! Ingest benchmark: NARs of 1 and 4 GiB, incompressible (random) and
//! compressible (text-like, about 3.4× with zstd), pushed in 64 MiB zstd
//! parts through nginx (`client_max_body_size 100m`, the tunnel stand-in)
//! to a real `ferry serve`, a fresh server per NAR.
//!
//! Timed: from the first request of the push (create upload, then parts
//! with `FERRY_BENCH_JOBS` in flight, then `complete`) to the answer
//! "committed". The client compresses beforehand, as `ferry push` does
//! (zstd level 3, one thread); that time is printed apart. Each figure sits
//! beside a reference from the same run: `dd conv=fsync` of the same
//! compressed bytes into the same directory (every acknowledged part must
//! be on disk, so this is the ceiling; mean of a run before and after the
//! push). Also printed: the commit latency after the last part, and the
//! server's peak RSS (`VmHWM`) against a 256 MiB NAR of the same kind.
//!
//! Also the same NAR sent plain (`compression: none`, as curl scripts and
//! tus clients send it; the server compresses it), at the smallest size,
//! against `dd conv=fsync` of the plain bytes.
//!
//! Run: `cargo bench --bench ingest`. Knobs: `FERRY_BENCH_SIZES=1,4` (GiB,
//! fractions allowed), `FERRY_BENCH_KINDS=random,text`,
//! `FERRY_BENCH_COMPRESSION=zstd,none`, `FERRY_BENCH_CURL=1` (zstd parts
//! each sent by `curl -T`, 1 and `FERRY_BENCH_JOBS` at a time),
//! `FERRY_BENCH_JOBS=4`, `FERRY_BENCH_DIR` (default `target/tmp`),
//! `FERRY_BENCH_PROXY=0` to push straight to ferry (to see nginx's share).

mod support;

use support::api::{Api, file_part, split_parts};
use support::nar::{self, Kind};
use support::nginx::Nginx;
use support::{Server, at_least, at_most, dd_fsync, mbps};

/// The RSS reference size, MiB.
const SMALL_MIB: u64 = 256;

/// What one ingest measured.
struct Ingest {
    nar: nar::Made,
    secs: f64,
    dd_mbps: f64,
    commit_ms: f64,
    rss_mib: f64,
    verify_mbps: f64,
    /// Sent as a plain NAR (`compression: none`).
    plain: bool,
    /// Parts sent by curl.
    curl: bool,
}

fn ingest(
    rt: &tokio::runtime::Runtime,
    kind: Kind,
    mib: u64,
    jobs: usize,
    seed: u64,
    plain: bool,
    curl: bool,
) -> Ingest {
    let work = support::work_dir();
    let zst = work.path().join("nar.zst");
    eprintln!("preparing a {mib} MiB {} NAR …", kind.name());
    let made = nar::to_file(&zst, kind, mib << 20, seed);
    // The bytes on the wire: the zstd file, or the NAR itself.
    let wire = if plain {
        let raw = work.path().join("nar");
        nar::decompress_file(&zst, &raw);
        std::fs::remove_file(&zst).ok();
        raw
    } else {
        zst
    };
    let dd_before = dd_fsync(&wire, work.path());
    let data = work.path().join("data");
    let server = Server::start(&data);
    let proxy = support::env_num("FERRY_BENCH_PROXY", 1) == 1;
    let proxy = proxy.then(|| Nginx::proxy(server.port));
    let url = proxy.as_ref().map_or_else(|| server.url(), Nginx::url);
    let api = Api::new(&url, &server.token);
    let compression = if plain { "none" } else { "zstd" };
    let (pushed, verify_mbps) = rt.block_on(async {
        api.create_cache("bench", false).await;
        let path = nar::store_path(seed, 0, "bench");
        let pushed = if curl {
            let files = split_parts(&wire);
            api.push_by_curl("bench", &path, &made, jobs, files).await
        } else {
            api.push_as("bench", &path, &made, jobs, compression, |n| {
                file_part(&wire, n)
            })
            .await
        };
        assert!(!pushed.linked);
        let bytes = api.metric("ferry_verified_bytes_total").await;
        let secs = api.metric("ferry_verify_seconds_total").await;
        (pushed, bytes / 1e6 / secs)
    });
    let rss_mib = server.peak_rss_mib();
    drop(proxy);
    drop(server);
    std::fs::remove_dir_all(&data).ok();
    let dd_after = dd_fsync(&wire, work.path());
    Ingest {
        secs: pushed.total.as_secs_f64(),
        dd_mbps: (dd_before + dd_after) / 2.0,
        commit_ms: pushed.commit.as_secs_f64() * 1e3,
        rss_mib,
        verify_mbps,
        nar: made,
        plain,
        curl,
    }
}

fn report(kind: Kind, mib: u64, r: &Ingest) {
    let n = &r.nar;
    let (wire, what) = match (r.plain, r.curl) {
        (true, _) => (n.nar_size, "plain NAR"),
        (false, true) => (n.zst_size, "zstd parts by curl"),
        (false, false) => (n.zst_size, "zstd"),
    };
    let wire_rate = wire as f64 / 1e6 / r.secs;
    let nar_rate = n.nar_size as f64 / 1e6 / r.secs;
    let ratio = wire_rate / r.dd_mbps;
    println!(
        "{} {}, sent as {what}: NAR {:.1} MB, {:.1} MB as zstd ({:.2}×)",
        kind.name(),
        size_name(mib),
        n.nar_size as f64 / 1e6,
        n.zst_size as f64 / 1e6,
        n.nar_size as f64 / n.zst_size as f64
    );
    println!(
        "  ferry/dd               {ratio:8.2}      {}  (ferry {wire_rate:.1} MB/s of {what} = {nar_rate:.1} MB/s of NAR, {:.2} s; dd of the same bytes {:.1} MB/s)",
        at_least(ratio, 0.8, "0.8"),
        r.secs,
        r.dd_mbps
    );
    println!(
        "  commit after last part {:8.0} ms   {}",
        r.commit_ms,
        at_most(r.commit_ms, 1000.0, "1 s")
    );
    println!("  server peak RSS        {:8.1} MiB", r.rss_mib);
    println!(
        "  server verifier        {:8.1} MB/s of uploaded bytes (its busy time, from /metrics)",
        r.verify_mbps
    );
    if !r.plain {
        println!(
            "  client zstd -3, 1 thread {:6.1} MB/s of NAR (done before the push, not timed)",
            mbps(n.nar_size, n.zstd_time)
        );
    }
}

fn size_name(mib: u64) -> String {
    if mib.is_multiple_of(1024) {
        format!("{} GiB", mib / 1024)
    } else {
        format!("{mib} MiB")
    }
}

fn main() {
    let sizes: Vec<u64> = support::env_list("FERRY_BENCH_SIZES", &[1.0, 4.0])
        .into_iter()
        .map(|g| (g * 1024.0).round() as u64)
        .filter(|&m| m > 0)
        .collect();
    let kinds: Vec<Kind> = std::env::var("FERRY_BENCH_KINDS")
        .unwrap_or_else(|_| "random,text".into())
        .split(',')
        .filter_map(|k| match k.trim() {
            "random" => Some(Kind::Random),
            "text" => Some(Kind::Text),
            _ => None,
        })
        .collect();
    let jobs: usize = support::env_num("FERRY_BENCH_JOBS", 4);
    let plains: Vec<bool> = std::env::var("FERRY_BENCH_COMPRESSION")
        .unwrap_or_else(|_| "zstd,none".into())
        .split(',')
        .filter_map(|c| match c.trim() {
            "zstd" => Some(false),
            "none" => Some(true),
            _ => None,
        })
        .collect();
    let curls = support::env_num("FERRY_BENCH_CURL", 1) == 1;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!(
        "ingest through nginx (client_max_body_size 100m) into ferry serve, loopback, \
         64 MiB zstd parts, {jobs} in flight"
    );
    println!(
        "timed: first request of the push -> `complete` answers committed; \
         reference: dd conv=fsync of the same zstd bytes (mean of a run before and after)"
    );
    let mut rss = vec![];
    let mut seed = 1;
    for &kind in &kinds {
        let mut all = sizes.clone();
        all.push(SMALL_MIB);
        all.sort();
        all.dedup();
        let mut peaks = vec![];
        for mib in all {
            seed += 1;
            let r = ingest(&rt, kind, mib, jobs, seed, false, false);
            if sizes.contains(&mib) && plains.contains(&false) {
                report(kind, mib, &r);
            }
            let parts = r.nar.zst_size.div_ceil(support::api::PART as u64);
            peaks.push((mib, r.rss_mib, parts));
        }
        // Plain NARs (as curl scripts and tus clients send them), at the
        // smallest size asked.
        if plains.contains(&true) {
            let mib = sizes.iter().copied().min().unwrap_or(1024);
            seed += 1;
            report(kind, mib, &ingest(&rt, kind, mib, jobs, seed, true, false));
        }
        // zstd parts each sent by curl (a shell script's push), 1 and
        // `jobs` in flight, at the smallest size.
        if curls {
            let mib = sizes.iter().copied().min().unwrap_or(1024);
            for j in [1, jobs] {
                seed += 1;
                println!("  ({j} curl at a time)");
                report(kind, mib, &ingest(&rt, kind, mib, j, seed, false, true));
            }
        }
        rss.push((kind, peaks));
    }
    println!("server peak RSS (VmHWM, fresh server per NAR), largest NAR vs {SMALL_MIB} MiB:");
    for (kind, peaks) in rss {
        let small = peaks.iter().find(|p| p.0 == SMALL_MIB).copied();
        let (big_mib, big, big_parts) = *peaks.last().expect("a size");
        if let Some((_, small, small_parts)) = small.filter(|_| big_mib > SMALL_MIB) {
            println!(
                "  {:9} {:5.2}   {}; {}  ({big:.1} MiB at {}, {big_parts} parts, vs \
                 {small:.1} MiB at {SMALL_MIB} MiB, {small_parts} parts)",
                kind.name(),
                big / small,
                at_most(big / small, 1.2, "1.2"),
                at_most(big, 128.0, "128 MiB"),
                size_name(big_mib)
            );
        }
    }
}
