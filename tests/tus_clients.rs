//! Stock tus clients against ferry's tus door, through nginx with
//! `client_max_body_size` 100 MB (the Cloudflare limit), then real Nix 2.8
//! substituting what they uploaded (fresh store, signatures required, the
//! cache key trusted):
//! - tuspy (tests/tus_py/upload.py), 50 MB chunks with `Upload-Checksum`,
//!   a NAR over 150 MB;
//! - tus-js-client 4 (tests/tus_js/upload.mjs), 50 MB chunks, a NAR over
//!   150 MB;
//! - tus-js-client with `parallelUploads: 3` (concatenation);
//! - tus-js-client aborted after two 8 MB chunks and resumed from the
//!   stored upload URL.
//!
//! Both clients are installed by `.ci/run` (`pip install tuspy`, `npm ci`
//! in tests/tus_js); a missing one fails the test.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Body, ClosureSpec, InProcess, Nginx, PathInfo};
use ferry::auth::Operation;
use serde_json::{Value, json};

const CACHE: &str = "c";
const MB: u64 = 1_000_000;
/// The request bodies nginx (and Cloudflare) let through.
const PROXY_LIMIT: u64 = 100 * MB;

/// ferry in-process with cache `c` (private), nginx in front, and a
/// push+pull token.
struct Setup {
    server: InProcess,
    nginx: Nginx,
    token: String,
    public_key: String,
    _netrc_dir: tempfile::TempDir,
    netrc: PathBuf,
}

impl Setup {
    fn start() -> Setup {
        let server = InProcess::start();
        let r = common::http_request(
            "POST",
            &format!("{}/_api/v1/caches", server.url),
            &[
                &format!("Authorization: Bearer {}", server.admin_token),
                "Content-Type: application/json",
            ],
            Body::Bytes(
                json!({"name": CACHE, "public": false})
                    .to_string()
                    .into_bytes(),
            ),
        );
        assert_eq!(r.status, 201, "create cache: {}", r.text());
        let public_key = r.json()["public_key"].as_str().unwrap().to_owned();
        let token = server.mint(
            &[(Operation::Pull, CACHE), (Operation::Push, CACHE)],
            Duration::from_secs(3600),
        );
        let addr = server
            .url
            .trim_start_matches("http://")
            .parse()
            .expect("server address");
        let nginx = common::start_nginx(addr);
        let netrc_dir = tempfile::tempdir().unwrap();
        let netrc = common::write_netrc(netrc_dir.path(), "127.0.0.1", &token);
        Setup {
            server,
            nginx,
            token,
            public_key,
            _netrc_dir: netrc_dir,
            netrc,
        }
    }

    /// The tus endpoint behind nginx.
    fn endpoint(&self) -> String {
        format!("{}/_api/v1/caches/{CACHE}/tus/", self.nginx.url())
    }

    /// The substituter URL behind nginx.
    fn cache_url(&self) -> String {
        format!("{}/{CACHE}", self.nginx.url())
    }

    fn narinfo_status(&self, path: &str) -> u16 {
        let hash = &path.rsplit('/').next().unwrap()[..32];
        common::http_request(
            "GET",
            &format!("{}/{CACHE}/{hash}.narinfo", self.server.url),
            &[&format!("Authorization: Bearer {}", self.token)],
            Body::None,
        )
        .status
    }

    /// Nix copies `path` from the cache (through nginx) into a fresh store
    /// with the cache key trusted; the copy matches the local store.
    fn nix_substitutes(&self, path: &str) {
        let store =
            common::nix_copy_from(&self.cache_url(), &self.public_key, Some(&self.netrc), path);
        let original = common::path_info(&[path], false).remove(0);
        let copied = common::path_info_in(Some(&store.url()), &[path], false).remove(0);
        assert_eq!(original.nar_hash, copied.nar_hash, "NarHash of {path}");
        assert_eq!(original.nar_size, copied.nar_size, "NarSize of {path}");
        assert_eq!(
            original.references, copied.references,
            "references of {path}"
        );
        common::compare_trees(Path::new(path), &store.real_path(path));
    }

    /// No request body nginx saw reached the proxy limit.
    fn assert_under_proxy_limit(&self) {
        let max = common::nginx_max_request_length(&self.nginx);
        assert!(
            max > 0 && max < PROXY_LIMIT,
            "largest request through nginx: {max} bytes"
        );
        let refused: Vec<_> = self
            .nginx
            .log_entries()
            .into_iter()
            .filter(|e| e.status == 413 || e.status >= 500)
            .collect();
        assert!(refused.is_empty(), "nginx answered {refused:?}");
    }

    /// Access log entries with `method` whose URI is under the tus endpoint.
    fn tus_requests(&self, method: &str) -> Vec<common::LogEntry> {
        self.nginx
            .log_entries()
            .into_iter()
            .filter(|e| {
                e.method == method && e.uri.starts_with(&format!("/_api/v1/caches/{CACHE}/tus"))
            })
            .collect()
    }
}

/// A leaf store path of `size` incompressible bytes (its own store path,
/// no references) and its NAR on disk.
struct Leaf {
    info: PathInfo,
    _dir: tempfile::TempDir,
    nar: PathBuf,
    nar_size: u64,
}

fn leaf(name: &str, size: u64) -> Leaf {
    let built = common::build_closure(&ClosureSpec::new(name).random("blob", size));
    let path = built.blobs[0].clone();
    let info = common::path_info(&[path.as_str()], false).remove(0);
    assert!(info.references.is_empty(), "{info:?}");
    let dir = tempfile::tempdir().unwrap();
    let nar = dir.path().join("nar");
    common::dump_nar(&path, &nar);
    let nar_size = std::fs::metadata(&nar).unwrap().len();
    assert_eq!(nar_size, info.nar_size);
    Leaf {
        info,
        _dir: dir,
        nar,
        nar_size,
    }
}

/// The tus metadata of a path, from `nix path-info --json` as is (SRI
/// NarHash).
fn metadata(info: &PathInfo) -> Value {
    let mut m = json!({
        "store_path": info.path,
        "nar_hash": info.nar_hash,
        "nar_size": info.nar_size.to_string(),
        "references": info.references.join(" "),
    });
    if let Some(d) = &info.deriver {
        m["deriver"] = json!(d);
    }
    m
}

fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

/// Runs a runner script with its options JSON; returns its JSON line.
fn run_runner(mut cmd: Command, opts: &Value) -> Value {
    cmd.arg(opts.to_string());
    let what = common::tools::describe(&cmd);
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{what} printed {stdout:?}: {e}"))
}

/// tuspy: `python3 tests/tus_py/upload.py OPTIONS`.
fn tuspy(opts: &Value) -> Value {
    let python = common::require_tool("python3");
    let check = Command::new(&python)
        .args(["-c", "import tusclient"])
        .output()
        .expect("python3");
    assert!(
        check.status.success(),
        "tuspy is not installed: run .ci/run (pip install tuspy): {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let mut cmd = Command::new(python);
    cmd.arg(tests_dir().join("tus_py/upload.py"));
    run_runner(cmd, opts)
}

/// tus-js-client: `node tests/tus_js/upload.mjs OPTIONS`.
fn tus_js(opts: &Value) -> Value {
    let dir = tests_dir().join("tus_js");
    assert!(
        dir.join("node_modules/tus-js-client/package.json").exists(),
        "tus-js-client is not installed: run .ci/run (npm ci in tests/tus_js)"
    );
    let mut cmd = Command::new(common::require_tool("node"));
    cmd.current_dir(&dir).arg("upload.mjs");
    run_runner(cmd, opts)
}

/// `HEAD` on an upload URL: its offset (asserting 200).
fn head_offset(url: &str, token: &str) -> u64 {
    let r = common::http_request(
        "HEAD",
        url,
        &[
            "Tus-Resumable: 1.0.0",
            &format!("Authorization: Bearer {token}"),
        ],
        Body::None,
    );
    assert_eq!(r.status, 200, "HEAD {url}: {:?}", r.headers);
    r.header("upload-offset")
        .expect("Upload-Offset")
        .parse()
        .unwrap()
}

#[test]
fn tuspy_uploads_a_150_mb_nar_in_50_mb_chunks_through_nginx() {
    let s = Setup::start();
    let leaf = leaf("tuspy-big", 150 * 1024 * 1024);
    assert!(leaf.nar_size >= 150 * MB);
    let chunk = 50 * MB;
    let out = tuspy(&json!({
        "endpoint": s.endpoint(),
        "file": leaf.nar,
        "metadata": metadata(&leaf.info),
        "token": s.token,
        "chunk_size": chunk,
        "checksum": true,
    }));
    assert_eq!(out["offset"], leaf.nar_size, "{out}");
    assert_eq!(s.narinfo_status(&leaf.info.path), 200);
    let patches = s.tus_requests("PATCH");
    assert_eq!(
        patches.len() as u64,
        leaf.nar_size.div_ceil(chunk),
        "{patches:?}"
    );
    assert!(patches.iter().all(|e| e.status == 204), "{patches:?}");
    s.assert_under_proxy_limit();
    s.nix_substitutes(&leaf.info.path);
}

#[test]
fn tus_js_client_uploads_a_150_mb_nar_in_50_mb_chunks_through_nginx() {
    let s = Setup::start();
    let leaf = leaf("tus-js-big", 150 * 1024 * 1024);
    assert!(leaf.nar_size >= 150 * MB);
    let chunk = 50 * MB;
    let out = tus_js(&json!({
        "endpoint": s.endpoint(),
        "file": leaf.nar,
        "metadata": metadata(&leaf.info),
        "token": s.token,
        "chunkSize": chunk,
    }));
    assert_eq!(out["done"], true, "{out}");
    assert_eq!(out["sent"], leaf.nar_size, "{out}");
    assert_eq!(s.narinfo_status(&leaf.info.path), 200);
    let patches = s.tus_requests("PATCH");
    assert_eq!(
        patches.len() as u64,
        leaf.nar_size.div_ceil(chunk),
        "{patches:?}"
    );
    assert!(patches.iter().all(|e| e.status == 204), "{patches:?}");
    s.assert_under_proxy_limit();
    s.nix_substitutes(&leaf.info.path);
}

#[test]
fn tus_js_client_parallel_uploads_concatenate() {
    let s = Setup::start();
    let leaf = leaf("tus-js-parallel", 60 * MB);
    let out = tus_js(&json!({
        "endpoint": s.endpoint(),
        "file": leaf.nar,
        "metadata": metadata(&leaf.info),
        "token": s.token,
        "chunkSize": 50 * MB,
        "parallelUploads": 3,
    }));
    assert_eq!(out["done"], true, "{out}");
    // Three partial creations and one final, all 201.
    let posts = s.tus_requests("POST");
    assert_eq!(posts.len(), 4, "{posts:?}");
    assert!(posts.iter().all(|e| e.status == 201), "{posts:?}");
    let patches = s.tus_requests("PATCH");
    assert!(
        patches.len() >= 3 && patches.iter().all(|e| e.status == 204),
        "{patches:?}"
    );
    let final_url = out["url"].as_str().expect("final upload URL");
    assert_eq!(head_offset(final_url, &s.token), leaf.nar_size);
    assert_eq!(s.narinfo_status(&leaf.info.path), 200);
    s.assert_under_proxy_limit();
    s.nix_substitutes(&leaf.info.path);
}

#[test]
fn tus_js_client_resumes_an_aborted_upload_from_the_server_offset() {
    let s = Setup::start();
    let leaf = leaf("tus-js-resume", 40 * MB);
    let chunk = 8 * MB;
    let first = tus_js(&json!({
        "endpoint": s.endpoint(),
        "file": leaf.nar,
        "metadata": metadata(&leaf.info),
        "token": s.token,
        "chunkSize": chunk,
        "abortAfter": 2 * chunk,
    }));
    assert_eq!(first["aborted"], true, "{first}");
    assert_eq!(first["done"], false, "{first}");
    let url = first["url"].as_str().expect("upload URL").to_owned();
    // Aborted from onChunkComplete: exactly two chunks are on the server.
    let offset = head_offset(&url, &s.token);
    assert_eq!(offset, 2 * chunk, "{first}");
    assert_eq!(s.narinfo_status(&leaf.info.path), 404);
    let log_before = s.nginx.log_entries().len();

    let second = tus_js(&json!({
        "endpoint": s.endpoint(),
        "file": leaf.nar,
        "metadata": metadata(&leaf.info),
        "token": s.token,
        "chunkSize": chunk,
        "uploadUrl": url,
    }));
    assert_eq!(second["done"], true, "{second}");
    assert_eq!(second["url"], url, "{second}");
    // The client asked the server (HEAD) and sent only the rest.
    assert_eq!(second["sent"], leaf.nar_size - offset, "{second}");
    let later: Vec<_> = s.nginx.log_entries().split_off(log_before);
    assert!(
        later.iter().any(|e| e.method == "HEAD" && e.status == 200),
        "{later:?}"
    );
    assert!(!later.iter().any(|e| e.method == "POST"), "{later:?}");
    let resent: u64 = later
        .iter()
        .filter(|e| e.method == "PATCH")
        .map(|e| e.request_length)
        .sum();
    assert!(
        resent >= leaf.nar_size - offset && resent < leaf.nar_size - chunk,
        "second run sent {resent} bytes of a {}-byte NAR resumed at {offset}",
        leaf.nar_size
    );
    assert_eq!(head_offset(&url, &s.token), leaf.nar_size);
    assert_eq!(s.narinfo_status(&leaf.info.path), 200);
    s.assert_under_proxy_limit();
    s.nix_substitutes(&leaf.info.path);
}
