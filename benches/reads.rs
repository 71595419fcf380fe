//! Read-path benchmark: what a token check costs and what narinfo reads
//! sustain.
//!
//! Prints, from one run: the verify+authorize cost per request, cold (token
//! never seen) and cached; narinfo requests/s against a real `ferry serve`
//! with 64 keep-alive connections for a private cache with a token and for
//! a public cache without one (goal: within 10 %), against nginx
//! (`worker_processes auto`) serving the same narinfo text as a static
//! file (sendfile off) as the reference (goals: private ≥ 0.7 and public
//! ≥ 0.85 of nginx). Then NAR downloads: a NAR of `FERRY_BENCH_NAR_MIB`
//! (default 1024) random bytes published in the public cache, fetched again
//! and again as `.nar.zst` over 1 and over 16 keep-alive connections,
//! against nginx serving the same file (sendfile off; goal: ferry ≥ 0.9 of
//! nginx), with nginx's sendfile-on figure printed for information. nginx
//! is required: without it the benchmark stops with an error.
//!
//! Run: `cargo bench --bench reads` (`FERRY_BENCH_SECS=5` per load run,
//! `FERRY_BENCH_NAR_MIB=256` for a quick run).

mod support;

use std::time::{Duration, Instant, SystemTime};

use ferry::auth::{self, Authorizer, Operation, RootKey, TokenSpec};
use support::api::{Api, file_part};
use support::nginx::Nginx;
use support::{at_least, load, nar};

const CONNECTIONS: usize = 64;

fn token_costs() -> (f64, f64) {
    let root = RootKey::generate();
    let spec = TokenSpec {
        subject: "bench".into(),
        rights: vec![
            (Operation::Pull, "main".into()),
            (Operation::Push, "main".into()),
        ],
        expires_at: SystemTime::now() + Duration::from_secs(3600),
    };
    let token = auth::mint(&root, &spec).expect("mint");
    let n = 300;
    let t = Instant::now();
    for _ in 0..n {
        let az = Authorizer::new(root.public());
        az.check(&token, Operation::Pull, "main").expect("allowed");
    }
    let cold = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let az = Authorizer::new(root.public());
    az.check(&token, Operation::Pull, "main").expect("allowed");
    let n = 100_000;
    let t = Instant::now();
    for _ in 0..n {
        az.check(&token, Operation::Pull, "main").expect("allowed");
    }
    let cached = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    (cold, cached)
}

/// A cache with one store path published: its narinfo path on the server.
struct Published {
    narinfo: String,
    nar_url: String,
}

/// Pushes the NAR (zstd bytes in `part(n)`) as a fresh path of `cache`.
fn publish<F: FnMut(usize) -> Vec<u8>>(
    rt: &tokio::runtime::Runtime,
    api: &Api,
    cache: &str,
    tag: u64,
    made: &nar::Made,
    part: F,
) -> Published {
    let path = nar::store_path(tag, 0, "bench");
    let hash = &path["/nix/store/".len()..][..32];
    rt.block_on(async {
        api.push(cache, &path, made, 4, part).await;
        let narinfo = format!("/{cache}/{hash}.narinfo");
        let text = api.get_text(&narinfo).await;
        let url = text
            .lines()
            .find_map(|l| l.strip_prefix("URL: "))
            .expect("narinfo URL");
        Published {
            nar_url: format!("/{cache}/{url}"),
            narinfo,
        }
    })
}

fn main() {
    let secs: f64 = support::env_num("FERRY_BENCH_SECS", 5.0);
    let nar_mib: u64 = support::env_num("FERRY_BENCH_NAR_MIB", 1024);
    let (cold, cached) = token_costs();

    let work = support::work_dir();
    let server = support::Server::start(&work.path().join("data"));
    let (port, token) = (server.port, server.token.clone());
    let api = Api::new(&server.url(), &token);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // One small NAR, published in a private and a public cache.
    let (small, bytes) = nar::to_vec(nar::Kind::Text, 100, 1);
    let mut narinfo_text = String::new();
    let mut paths = vec![];
    for (cache, public) in [("private", false), ("public", true)] {
        rt.block_on(api.create_cache(cache, public));
        let p = publish(&rt, &api, cache, 1, &small, |_| bytes.clone());
        narinfo_text = rt.block_on(api.get_text(&p.narinfo));
        paths.push(p.narinfo);
    }
    let private = load::requests(port, &paths[0], Some(&token), CONNECTIONS, secs);
    let public = load::requests(port, &paths[1], None, CONNECTIONS, secs);

    println!("token check (biscuit verify + authorize), per request:");
    println!("  cold (never seen)   : {cold:9.1} µs");
    println!("  cached              : {cached:9.2} µs");
    println!("narinfo GETs, {CONNECTIONS} keep-alive connections, {secs} s each:");
    println!(
        "  public, no token    : {public:9.0} req/s  ({:.1} µs/request of server time)",
        1e6 / public
    );
    println!(
        "  private, with token : {private:9.0} req/s  -> private/public = {:.2}  {}",
        private / public,
        at_least(private / public, 0.9, "0.9 (within 10 %)")
    );
    let root = work.path().join("root");
    std::fs::create_dir_all(root.join("c")).expect("root");
    std::fs::write(root.join("c/x.narinfo"), &narinfo_text).expect("narinfo");
    let files = Nginx::files(&root);
    let n = load::requests(files.port, "/c/x.narinfo", None, CONNECTIONS, secs);
    println!(
        "  nginx static file   : {n:9.0} req/s  -> ferry private/nginx = {:.2}  {};  public/nginx = {:.2}  {}",
        private / n,
        at_least(private / n, 0.7, "0.7"),
        public / n,
        at_least(public / n, 0.85, "0.85"),
    );

    // NAR downloads: one NAR in the public cache, and the same file in
    // nginx's root.
    let zst = root.join("c/nar.zst");
    eprintln!("preparing a {nar_mib} MiB NAR …");
    let made = nar::to_file(&zst, nar::Kind::Random, nar_mib << 20, 2);
    let big = publish(&rt, &api, "public", 2, &made, |n| file_part(&zst, n));
    let served = rt.block_on(api.get_sha256(&big.nar_url));
    let stored = {
        use sha2::Digest;
        let mut f = std::fs::File::open(&zst).expect("nar.zst");
        let mut sha = sha2::Sha256::new();
        std::io::copy(&mut f, &mut sha).expect("hash");
        <[u8; 32]>::from(sha.finalize())
    };
    assert_eq!(served, stored, "ferry served other bytes than were pushed");
    println!(
        "NAR GETs (.nar.zst, {:.1} MB, public cache), {secs} s each, against nginx serving the same file (sendfile off):",
        made.zst_size as f64 / 1e6
    );
    let kernel = Nginx::files_sendfile(&root);
    for conns in [1, 16] {
        let ferry = load::download(port, &big.nar_url, conns, secs) / 1e6;
        let nginx = load::download(files.port, "/c/nar.zst", conns, secs) / 1e6;
        let sendfile = load::download(kernel.port, "/c/nar.zst", conns, secs) / 1e6;
        let ratio = ferry / nginx;
        println!(
            "  {conns:2} connection{} : ferry/nginx = {ratio:.2}  {}  (ferry {ferry:.0} MB/s, nginx {nginx:.0} MB/s; for information, nginx with sendfile on {sendfile:.0} MB/s)",
            if conns == 1 { " " } else { "s" },
            at_least(ratio, 0.9, "0.9")
        );
    }
    drop(kernel);
    drop(files);
    drop(server);
}
