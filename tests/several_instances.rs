//! Several `ferry serve` instances on one set of caches: two servers share
//! a PostgreSQL database (a throwaway cluster, `common::postgres`), a
//! Garage bucket (`common::garage`) and the token root key
//! (`root-key-file`); each has a data dir of its own.
//!
//! - behind one nginx (round robin), a `ferry push` whose upload began on
//!   one instance continues through the other when the first is
//!   SIGKILLed mid-push: the same upload gets parts from both and is
//!   completed by the survivor; reads work from either instance, and Nix
//!   copies the closure back through the balancer;
//! - an instance that dies while verifying (crash point
//!   `publish.after_verdict`) leaves a lease: the other instance leaves the
//!   upload alone while the lease lives, then takes it over and publishes;
//! - GC on one instance (its own periodic run and `ferry gc`, both with a
//!   two-second grace) while the other publishes loses nothing.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::client::{FerryClient, public_key_of};
use common::flaky::{FlakyOptions, start_flaky_proxy};
use common::nginx::start_nginx_balancing;
use common::postgres::shared;
use common::served::check_served_path;
use common::*;

/// One cache site: a database, a bucket, a key file, two instance configs.
struct Site {
    garage: Garage,
    db_url: String,
    dir: tempfile::TempDir,
    ports: [u16; 2],
}

impl Site {
    /// `extra[i]`: config lines of instance `i` only.
    fn new(extra: [&str; 2]) -> Site {
        let garage = start_garage();
        let db_url = shared().new_database();
        let dir = tempfile::tempdir().unwrap();
        let ports = [free_port(), free_port()];
        let site = Site {
            garage,
            db_url,
            dir,
            ports,
        };
        for (i, extra) in extra.iter().enumerate() {
            let g = &site.garage;
            std::fs::write(
                site.config(i),
                format!(
                    "data-dir = {data:?}\nlisten = \"127.0.0.1:{port}\"\n\
                     database-url = {url:?}\nroot-key-file = {key:?}\n{extra}\n\
                     [s3]\nendpoint = {:?}\nbucket = {:?}\nregion = {:?}\n\
                     access-key-id = {:?}\nsecret-access-key = {:?}\n",
                    g.endpoint,
                    g.bucket,
                    g.region,
                    g.access_key_id,
                    g.secret_access_key,
                    data = site.data(i),
                    port = site.ports[i],
                    url = site.db_url,
                    key = site.key_file(),
                ),
            )
            .unwrap();
        }
        site
    }

    fn config(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("instance-{i}.toml"))
    }

    fn data(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("data-{i}"))
    }

    fn key_file(&self) -> PathBuf {
        self.dir.path().join("shared/root.key")
    }

    fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[i]))
    }

    fn url(&self, i: usize) -> String {
        format!("http://{}", self.addr(i))
    }

    fn start(&self, i: usize, env: &[(&str, &str)]) -> ServerProcess {
        let config = self.config(i);
        ServerProcess::start_with(
            &self.data(i),
            self.ports[i],
            env,
            &["--config", config.to_str().unwrap()],
        )
    }

    fn psql(&self, sql: &str) -> String {
        shared().psql(&self.db_url, sql)
    }
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The upload id in a request line such as `PUT /_api/v1/uploads/ID/parts/3
/// HTTP/1.1`, and what follows it.
fn upload_request(line: &str) -> Option<(&str, &str)> {
    let rest = line.split_once(" /_api/v1/uploads/")?.1;
    let path = rest.split(' ').next()?;
    Some(path.split_once('/').unwrap_or((path, "")))
}

#[test]
fn a_push_continues_through_the_surviving_instance() {
    let site = Site::new(["", ""]);
    let mut a = site.start(0, &[]);
    let admin = a
        .admin_token
        .clone()
        .expect("the first start prints an admin token");
    assert!(
        site.key_file().exists() && !site.data(0).join("root.key").exists(),
        "the root key is made at root-key-file, not in the data dir"
    );
    // B is not running yet: nginx finds it refusing and uses A alone.
    let nginx = start_nginx_balancing(&[site.addr(0), site.addr(1)]);
    // 2 MB/s per connection: the push lasts long enough to lose A in it.
    let proxy = start_flaky_proxy(
        SocketAddr::from(([127, 0, 0, 1], nginx.port)),
        FlakyOptions {
            drop_percent: 0,
            bytes_per_sec: Some(2_000_000),
            ..FlakyOptions::default()
        },
    );
    let client = FerryClient::new();
    client.ok(&["login", "site", &proxy.url(), &admin]);
    let pubkey = public_key_of(&client.ok(&["cache", "create", "site:main"]));
    let closure = build_closure(
        &ClosureSpec::new("failover")
            .random("failover-big", 60_000_000)
            .salt(&unique_salt()),
    );
    let big = closure.blobs[0].clone();
    let push = client
        .cmd(&["push", "site:main", &closure.top, "--part-size", "1MiB"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Parts arrive through A, then B starts and gets parts of its own.
    let parts_of_big = || {
        site.psql(&format!(
            "SELECT count(*) FROM upload_parts p JOIN uploads u ON u.id = p.upload_id \
             WHERE u.store_path = '{big}'"
        ))
        .parse::<u64>()
        .unwrap()
    };
    wait_until("parts through A", Duration::from_secs(120), || {
        parts_of_big() >= 6
    });
    let b = site.start(1, &[]);
    assert!(
        b.admin_token.is_none(),
        "the second instance finds the shared key: no new admin token"
    );
    let b_addr = site.addr(1).to_string();
    wait_until("a part through B", Duration::from_secs(30), || {
        nginx.upstream_log().iter().any(|(addr, status, req)| {
            *addr == b_addr && *status == 200 && req.starts_with("PUT /_api/v1/uploads/")
        })
    });
    let before_kill = parts_of_big();
    a.kill_now();
    eprintln!("instance A killed with {before_kill} parts of the big path recorded");

    let out = push.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "push failed: {stderr}");
    assert!(
        before_kill < 50,
        "the push had nearly finished before A was killed ({before_kill} parts)"
    );

    // One upload of the big path, begun on A, parts through both,
    // completed through B.
    let ids = site.psql(&format!(
        "SELECT id || ' ' || state FROM uploads WHERE store_path = '{big}'"
    ));
    let (id, state) = ids.split_once(' ').expect("one upload row");
    assert_eq!(state, "committed", "{ids}");
    let a_addr = site.addr(0).to_string();
    let log = nginx.upstream_log();
    let of_upload: Vec<&(String, u16, String)> = log
        .iter()
        .filter(|(_, _, req)| upload_request(req).is_some_and(|(u, _)| u == id))
        .collect();
    let parts_by = |addr: &str| {
        of_upload
            .iter()
            .filter(|(a, s, req)| {
                a == addr
                    && *s == 200
                    && upload_request(req).is_some_and(|(_, rest)| rest.starts_with("parts/"))
            })
            .count()
    };
    assert!(
        parts_by(&a_addr) >= 6 && parts_by(&b_addr) >= 1,
        "parts by A {} and by B {}: {of_upload:?}",
        parts_by(&a_addr),
        parts_by(&b_addr)
    );
    // Every part acknowledged once: nothing A took had to be sent again.
    let mut acknowledged = std::collections::BTreeMap::<String, u32>::new();
    for (_, status, req) in &of_upload {
        if let Some((_, rest)) = upload_request(req)
            && rest.starts_with("parts/")
            && *status == 200
        {
            *acknowledged.entry(rest.to_owned()).or_default() += 1;
        }
    }
    let total: usize = site
        .psql(&format!(
            "SELECT total_parts FROM uploads WHERE id = '{id}'"
        ))
        .parse()
        .unwrap();
    assert_eq!(acknowledged.len(), total, "{acknowledged:?}");
    assert!(
        acknowledged.values().all(|&k| k == 1),
        "parts sent again: {acknowledged:?}"
    );
    assert!(!stderr.contains("reopened"), "{stderr}");
    let completed_by_b = of_upload.iter().any(|(a, s, req)| {
        *a == b_addr
            && (*s == 200 || *s == 202)
            && upload_request(req).is_some_and(|(_, rest)| rest == "complete")
    });
    assert!(completed_by_b, "B completed it: {of_upload:?}");

    // Reads from either instance (A restarted), and Nix through nginx.
    let infos = path_info(&[closure.top.as_str()], true);
    for info in &infos {
        check_served_path(&site.url(1), "main", &admin, info).expect("served by B");
    }
    let a = site.start(0, &[]);
    for info in &infos {
        check_served_path(&a.url, "main", &admin, info).expect("served by A");
    }
    let netrc_dir = tempfile::tempdir().unwrap();
    let netrc = write_netrc(netrc_dir.path(), "127.0.0.1", &admin);
    let store = nix_copy_from(
        &format!("{}/main", nginx.url()),
        &pubkey,
        Some(&netrc),
        &closure.top,
    );
    for p in &closure.paths {
        compare_trees(Path::new(p), &store.real_path(p));
    }
}

#[test]
fn a_verification_left_by_a_dead_instance_is_taken_over() {
    let site = Site::new(["", ""]);
    let mut a = site.start(0, &[("FERRY_CRASH_AT", "publish.after_verdict")]);
    let admin = a.admin_token.clone().expect("admin token");
    let b = site.start(1, &[]);
    let auth = format!("Authorization: Bearer {admin}");
    let call = |i: usize, method: &str, path: &str, body: Body| {
        try_http_request(method, &format!("{}{path}", site.url(i)), &[&auth], body)
    };
    let r = call(
        1,
        "POST",
        "/_api/v1/caches",
        Body::Bytes(br#"{"name":"main","public":false}"#.to_vec()),
    )
    .unwrap();
    assert!(r.status < 300, "{}", r.text());

    // A plain NAR in two parts: one through each instance.
    let nar = Nar::new(&format!("lease-{}", unique_salt()), 3_000_000);
    let body = serde_json::json!({
        "store_path": nar.path, "nar_hash": nar.hash.to_string(),
        "nar_size": nar.bytes.len(), "compression": "none",
    });
    let r = call(
        1,
        "POST",
        "/_api/v1/caches/main/uploads",
        Body::Bytes(body.to_string().into_bytes()),
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let (one, two) = nar.bytes.split_at(1_000_000);
    for (i, n, bytes) in [(1, 1, one), (0, 2, two)] {
        let r = call(
            i,
            "PUT",
            &format!("/_api/v1/uploads/{id}/parts/{n}"),
            Body::Bytes(bytes.to_vec()),
        )
        .unwrap();
        assert_eq!(r.status, 200, "part {n}: {}", r.text());
    }
    // A verifies (folding part 1 from the bucket) and dies before it
    // publishes: the complete request gets no answer.
    let done = call(
        0,
        "POST",
        &format!("/_api/v1/uploads/{id}/complete"),
        Body::Bytes(br#"{"parts":2}"#.to_vec()),
    );
    assert!(done.is_err(), "A answered instead of dying: {done:?}");
    assert!(a.wait_exit(Duration::from_secs(10)).is_some(), "A is gone");
    let killed_at = Instant::now();

    // B sees it verifying and leaves it while the lease lives, then
    // takes it over and publishes.
    let mut states = vec![];
    loop {
        let st = call(1, "GET", &format!("/_api/v1/uploads/{id}"), Body::None).unwrap();
        assert_eq!(st.status, 200, "{}", st.text());
        let state = st.json()["state"].as_str().unwrap().to_owned();
        states.push((killed_at.elapsed().as_secs(), state.clone()));
        if state == "committed" {
            break;
        }
        assert_eq!(state, "verifying", "{states:?}");
        assert!(
            killed_at.elapsed() < Duration::from_secs(90),
            "never taken over: {states:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        states.iter().filter(|(_, s)| s == "verifying").count() >= 10,
        "B waited for the lease: {states:?}"
    );
    let ni = call(
        1,
        "GET",
        &format!("/main/{}.narinfo", nar.hash_part()),
        Body::None,
    )
    .unwrap();
    assert_eq!(ni.status, 200, "{}", ni.text());
    assert!(ni.text().contains(&format!("NarHash: {}", nar.hash)));
    let url = ni
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .to_owned();
    let file = call(1, "GET", &format!("/main/{url}"), Body::None).unwrap();
    assert_eq!(file.status, 200);
    let nar_back = zstd::decode_all(&file.body[..]).unwrap();
    assert!(nar_back == nar.bytes, "the NAR served is the one sent");
    drop(b);
}

#[test]
fn gc_on_one_instance_while_the_other_publishes_loses_nothing() {
    let collecting = "gc-interval-secs = 1\norphan-grace-secs = 2";
    let site = Site::new([collecting, ""]);
    let a = site.start(0, &[]);
    let admin = a.admin_token.clone().expect("admin token");
    let _b = site.start(1, &[]);
    let client = FerryClient::new();
    client.ok(&["login", "b", &site.url(1), &admin]);
    let pubkey = public_key_of(&client.ok(&["cache", "create", "b:main"]));

    // Something for GC to free while the push runs: a path pushed, then
    // deleted.
    let doomed = build_closure(
        &ClosureSpec::new("gc-doomed")
            .random("gc-doomed-blob", 2_000_000)
            .salt(&unique_salt()),
    );
    client.ok(&["push", "b:main", &doomed.top]);
    let doomed_infos = path_info(&[doomed.top.as_str()], true);
    for info in &doomed_infos {
        let r = http_request(
            "DELETE",
            &format!(
                "{}/_api/v1/caches/main/paths/{}",
                site.url(1),
                info.hash_part()
            ),
            &[&format!("Authorization: Bearer {admin}")],
            Body::None,
        );
        assert!(r.status < 300, "delete: {}", r.status);
    }

    // `ferry gc` on A, over and over, while B publishes.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let runs = {
        let (stop, config) = (stop.clone(), site.config(0));
        std::thread::spawn(move || {
            let mut runs = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                run_ok(
                    std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
                        .args(["gc", "--config"])
                        .arg(&config)
                        .env("FERRY_LOG", "warn"),
                );
                runs += 1;
            }
            runs
        })
    };
    let mut spec = ClosureSpec::new("gc-kept").salt(&unique_salt());
    for i in 0..8 {
        spec = spec.random(&format!("gc-kept-random-{i}"), 1_500_000 + i * 250_000);
    }
    let kept = build_closure(
        &spec
            .compressible("gc-kept-text", 6_000_000)
            .random("gc-kept-big", 12_000_000),
    );
    let started = Instant::now();
    client.ok(&["push", "b:main", &kept.top, "--part-size", "1MiB"]);
    let pushed_in = started.elapsed();
    // Let collection run over the freshly published paths as well.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let runs = runs.join().unwrap();
    eprintln!("push took {pushed_in:?}; ferry gc ran {runs} times beside it");
    assert!(runs >= 3, "GC ran beside the push: {runs} runs");

    // Everything published is whole, from either instance and for Nix.
    let infos = path_info(&[kept.top.as_str()], true);
    for info in &infos {
        check_served_path(&a.url, "main", &admin, info).expect("served by A");
        check_served_path(&site.url(1), "main", &admin, info).expect("served by B");
    }
    let netrc_dir = tempfile::tempdir().unwrap();
    let netrc = write_netrc(netrc_dir.path(), "127.0.0.1", &admin);
    let store = nix_copy_from(&format!("{}/main", a.url), &pubkey, Some(&netrc), &kept.top);
    for p in &kept.paths {
        compare_trees(Path::new(p), &store.real_path(p));
    }
    // Every blob a NAR is made of is in the bucket; the deleted path's
    // are not.
    let objects: std::collections::HashSet<String> = site
        .garage
        .blob_keys()
        .into_iter()
        .map(|k| k.trim_start_matches("blobs/").to_owned())
        .collect();
    let live = site.psql("SELECT string_agg(DISTINCT blob, ' ') FROM nar_chunks");
    for blob in live.split(' ') {
        assert!(
            objects.contains(blob),
            "blob {blob} of a NAR is not in the bucket"
        );
    }
    let doomed_nars = site.psql("SELECT count(*) FROM nars n WHERE NOT EXISTS (SELECT 1 FROM paths p WHERE p.nar_id = n.id)");
    assert_eq!(doomed_nars, "0", "unpublished NARs were collected");
    assert_eq!(
        objects.len(),
        live.split(' ').count(),
        "only live blobs are left in the bucket: {objects:?}"
    );
}
