//! Blobs in S3: ferry's `S3Store` and a whole server on a real Garage
//! (started by the test, see `tests/common/garage.rs`).
//!
//! - the store alone: adopt (one PUT, and a multipart upload above 32 MiB),
//!   streamed reads from any offset, listing, `missing`, delete; a wrong
//!   secret is refused at start with the bucket named;
//! - `ferry serve` with an `[s3]` table (credentials from files): a pushed
//!   closure lands in the bucket and nowhere in the data dir, Nix copies it
//!   back with signatures checked, a ranged read of the `.nar.zst` is
//!   exact, and GC of a deleted path removes its objects.

mod common;

use std::io::Read as _;
use std::path::Path;
use std::process::Command;

use ::ferry::config::S3Config;
use ::ferry::store::{BlobStore, S3Store};
use common::client::FerryClient;
use common::garage::{Garage, start_garage};
use common::served::{check_served_path, parse_narinfo};
use common::*;

fn s3_config(g: &Garage) -> S3Config {
    S3Config {
        endpoint: Some(g.endpoint.clone()),
        bucket: g.bucket.clone(),
        region: g.region.clone(),
        access_key_id: Some(g.access_key_id.clone()),
        secret_access_key: Some(g.secret_access_key.clone()),
        access_key_id_file: None,
        secret_access_key_file: None,
        path_style: true,
    }
}

/// Writes `DIR/ferry.toml`: data in `DIR/data`, the `top` keys, then an
/// `[s3]` table for `g` ending with `credentials` (key lines).
fn write_config(dir: &Path, g: &Garage, top: &str, credentials: &str) -> std::path::PathBuf {
    let config = dir.join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "data-dir = {:?}\n{top}\n[s3]\nendpoint = {:?}\nbucket = {:?}\nregion = {:?}\n{credentials}",
            dir.join("data"),
            g.endpoint,
            g.bucket,
            g.region
        ),
    )
    .unwrap();
    config
}

/// `[s3]` lines giving the key itself.
fn key_lines(id: &str, secret: &str) -> String {
    format!("access-key-id = {id:?}\nsecret-access-key = {secret:?}\n")
}

fn adopt_bytes(store: &S3Store, dir: &Path, bytes: &[u8]) -> String {
    let id = blake3::hash(bytes).to_hex().to_string();
    let file = dir.join(&id);
    std::fs::write(&file, bytes).unwrap();
    store.adopt(&id, &file).unwrap();
    assert!(!file.exists(), "adopt removes the local file");
    id
}

#[test]
fn s3_store_on_garage() {
    let g = start_garage();
    eprintln!("garage up in {:?}", g.startup);
    let store = S3Store::open(&s3_config(&g)).unwrap();
    store.check().expect("the bucket answers");
    let tmp = tempfile::tempdir().unwrap();

    let small = noise("small", 300_000);
    let large = noise("large", 40 << 20); // above the multipart threshold
    let a = adopt_bytes(&store, tmp.path(), &small);
    let b = adopt_bytes(&store, tmp.path(), &large);
    // Adopting the same bytes again keeps the object and drops the file.
    assert_eq!(adopt_bytes(&store, tmp.path(), &small), a);

    for (id, bytes) in [(&a, &small), (&b, &large)] {
        assert!(store.exists(id).unwrap());
        for offset in [0usize, 1, bytes.len() / 3, bytes.len() - 1] {
            let mut got = vec![];
            store
                .open(id, offset as u64)
                .unwrap()
                .read_to_end(&mut got)
                .unwrap();
            assert!(got == bytes[offset..], "{id} from {offset}");
        }
        assert!(store.modified(id).unwrap().is_some());
    }
    // A reader dropped early stops its GET (nothing hangs).
    let mut r = store.open(&b, 0).unwrap();
    let mut first = [0u8; 1000];
    r.read_exact(&mut first).unwrap();
    assert_eq!(&first[..], &large[..1000]);
    drop(r);

    let mut listed: Vec<(String, u64)> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|i| (i.id, i.size))
        .collect();
    listed.sort();
    let mut want = vec![
        (a.clone(), small.len() as u64),
        (b.clone(), large.len() as u64),
    ];
    want.sort();
    assert_eq!(listed, want);
    let absent = "ab".repeat(32);
    assert_eq!(
        store
            .missing(vec![a.clone(), absent.clone(), b.clone()])
            .unwrap(),
        vec![absent.clone()]
    );
    assert!(!store.exists(&absent).unwrap());
    assert!(store.modified(&absent).unwrap().is_none());
    let err = store.open(&absent, 0).and_then(|mut r| {
        let mut v = vec![];
        r.read_to_end(&mut v)
    });
    assert_eq!(err.unwrap_err().kind(), std::io::ErrorKind::NotFound);

    store.delete(&a).unwrap();
    store.delete(&a).unwrap(); // absent: not an error
    assert!(!store.exists(&a).unwrap());
    assert_eq!(g.blob_keys(), vec![format!("blobs/{b}")]);

    // A wrong secret: refused when the store is checked, naming the bucket.
    let mut wrong = s3_config(&g);
    wrong.secret_access_key = Some("0".repeat(64));
    let e = S3Store::open(&wrong)
        .unwrap()
        .check()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&g.bucket) && e.contains("does not answer"),
        "{e}"
    );
}

#[test]
fn server_keeps_blobs_in_garage() {
    let g = start_garage();
    let dir = tempfile::tempdir().unwrap();
    let (id_file, secret_file) = (dir.path().join("key-id"), dir.path().join("secret"));
    std::fs::write(&id_file, format!("{}\n", g.access_key_id)).unwrap();
    std::fs::write(&secret_file, &g.secret_access_key).unwrap();
    let data = dir.path().join("data");
    let config = write_config(
        dir.path(),
        &g,
        "",
        &format!("access-key-id-file = {id_file:?}\nsecret-access-key-file = {secret_file:?}\n"),
    );
    let config_s = config.to_str().unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--check-config", "--config", config_s])
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");

    let server = ServerProcess::start_with(&data, free_port(), &[], &["--config", config_s]);
    let admin = server.admin_token.clone().expect("admin token");
    let client = FerryClient::new();
    client.ok(&["login", "home", &server.url, &admin]);
    let info = client.ok(&["cache", "create", "home:main"]);
    let pubkey = common::client::public_key_of(&info);
    let closure = build_closure(
        &ClosureSpec::new("s3-push")
            .random("s3-random", 3_000_000)
            .compressible("s3-text", 20_000_000)
            .salt(&unique_salt()),
    );
    client.ok(&["push", "home:main", &closure.top, "--part-size", "1MiB"]);

    // Every blob is an object; the data dir keeps none.
    let objects = g.blob_keys();
    assert!(objects.len() >= 4, "parts became objects: {objects:?}");
    let local_blobs = files_under(&data.join("blobs"));
    assert!(
        local_blobs.is_empty(),
        "blobs left on disk: {local_blobs:?}"
    );

    // Served exactly as a local store would; Nix checks the signature.
    let infos = path_info(&[closure.top.as_str()], true);
    for info in &infos {
        check_served_path(&server.url, "main", &admin, info).expect("served as stored");
    }
    let netrc_dir = tempfile::tempdir().unwrap();
    let netrc = write_netrc(netrc_dir.path(), "127.0.0.1", &admin);
    let store = nix_copy_from(
        &format!("{}/main", server.url),
        &pubkey,
        Some(&netrc),
        &closure.top,
    );
    for p in &closure.paths {
        compare_trees(Path::new(p), &store.real_path(p));
    }

    // A range of the compressed file, across part boundaries.
    let top_blob = infos
        .iter()
        .find(|i| i.path == closure.blobs[0])
        .expect("random blob path");
    let narinfo = http_request(
        "GET",
        &format!("{}/main/{}.narinfo", server.url, top_blob.hash_part()),
        &[&format!("Authorization: Bearer {admin}")],
        Body::None,
    )
    .text();
    let url = parse_narinfo(&narinfo)["URL"].clone();
    let whole = http_request(
        "GET",
        &format!("{}/main/{url}", server.url),
        &[&format!("Authorization: Bearer {admin}")],
        Body::None,
    );
    assert_eq!(whole.status, 200);
    let (from, to) = (1_000_000usize, 2_500_000usize);
    let part = http_request(
        "GET",
        &format!("{}/main/{url}", server.url),
        &[
            &format!("Authorization: Bearer {admin}"),
            &format!("Range: bytes={from}-{to}"),
        ],
        Body::None,
    );
    assert_eq!(part.status, 206);
    assert!(part.body == whole.body[from..=to], "ranged read differs");

    // Unpublish everything, collect: the objects go.
    for info in &infos {
        let r = http_request(
            "DELETE",
            &format!(
                "{}/_api/v1/caches/main/paths/{}",
                server.url,
                info.hash_part()
            ),
            &[&format!("Authorization: Bearer {admin}")],
            Body::None,
        );
        assert!(r.status < 300, "delete {}: {}", info.path, r.status);
    }
    run_ok(Command::new(env!("CARGO_BIN_EXE_ferry")).args(["gc", "--config", config_s]));
    let left = g.blob_keys();
    assert!(left.is_empty(), "objects left after GC: {left:?}");
}

#[test]
fn server_refuses_to_start_with_a_wrong_s3_secret() {
    let g = start_garage();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &g,
        "",
        &key_lines(&g.access_key_id, &"0".repeat(64)),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("does not answer") && err.contains(&g.bucket),
        "{err}"
    );
}

#[test]
fn parts_are_preloaded_while_open_and_collected_when_abandoned() {
    let g = start_garage();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = write_config(
        dir.path(),
        &g,
        "orphan-grace-secs = 0\n",
        &key_lines(&g.access_key_id, &g.secret_access_key),
    );
    let config_s = config.to_str().unwrap();
    let server = ServerProcess::start_with(&data, free_port(), &[], &["--config", config_s]);
    let auth = format!(
        "Authorization: Bearer {}",
        server.admin_token.clone().unwrap()
    );
    let api = |method: &str, path: &str, body: Body| {
        http_request(method, &format!("{}{path}", server.url), &[&auth], body)
    };
    let r = api(
        "POST",
        "/_api/v1/caches",
        Body::Bytes(br#"{"name":"main"}"#.to_vec()),
    );
    assert_eq!(r.status, 201, "{}", r.text());

    let nar = Nar::new("preload", 3_000_000);
    let zst = zstd::encode_all(&nar.bytes[..], 3).unwrap();
    let (a, b) = zst.split_at(zst.len() / 2);
    let create = serde_json::json!({
        "store_path": nar.path, "nar_hash": nar.hash.to_string(),
        "nar_size": nar.bytes.len(), "compression": "zstd",
    });
    let r = api(
        "POST",
        "/_api/v1/caches/main/uploads",
        Body::Bytes(create.to_string().into_bytes()),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let upload_url = r.json()["upload_url"].as_str().unwrap().to_owned();
    for (n, bytes) in [(1, a), (2, b)] {
        let r = api(
            "PUT",
            &format!("{upload_url}/parts/{n}"),
            Body::Bytes(bytes.to_vec()),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Before `complete`: both parts reach the bucket on their own.
    let want: Vec<String> = [a, b]
        .iter()
        .map(|p| format!("blobs/{}", blake3::hash(p).to_hex()))
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let have = g.blob_keys();
        if want.iter().all(|w| have.contains(w)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "parts not preloaded: {have:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Abandoned: no row owns the copies, GC removes them (grace 0).
    let r = api("DELETE", &upload_url, Body::None);
    assert!(r.status < 300, "{}", r.text());
    run_ok(Command::new(env!("CARGO_BIN_EXE_ferry")).args(["gc", "--config", config_s]));
    let left = g.blob_keys();
    assert!(left.is_empty(), "preloaded objects left: {left:?}");
}
