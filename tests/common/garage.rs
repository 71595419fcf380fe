//! Garage (an S3-compatible object store written in Rust) as a real S3
//! backend for the blob store tests.
//!
//! [`start_garage`] runs a single-node Garage 2.x in a temp dir: writes a
//! `garage.toml` (LMDB metadata, `replication_factor = 1`, no compression,
//! RPC and S3 API on free ports of 127.0.0.1, a random `rpc_secret`), starts
//! `garage -c garage.toml server`, and then drives the `garage` CLI the way
//! an operator would:
//!
//! ```text
//! garage -c CFG status                                 (until the node answers)
//! garage -c CFG node id -q                             (<hex id>@127.0.0.1:<rpc port>)
//! garage -c CFG layout assign -z dc1 -c 1G <hex id>
//! garage -c CFG layout apply --version 1
//! garage -c CFG key create ferry-test                  (prints "Key ID:" / "Secret key:")
//! garage -c CFG bucket create ferry-test
//! garage -c CFG bucket allow --read --write --owner ferry-test --key ferry-test
//! ```
//!
//! and returns once a signed S3 request on the bucket (a `ListObjects` by
//! `curl --aws-sigv4`) answers 200. Each call gets its own ports, temp dir and
//! keys, so tests may run several at once. The server is killed on drop.
//!
//! Start-up takes about 0.4 s (each CLI call is a process and an RPC
//! handshake). Compression is off: the blobs ferry stores are compressed
//! already.
//!
//! Addressing is path-style (`http://127.0.0.1:PORT/BUCKET/KEY`): no
//! `root_domain` is configured, so virtual-hosted-style requests do not work.
//! Requests must be signed (SigV4, region `garage`, service `s3`) and carry
//! `x-amz-content-sha256`; anonymous ones get 403. An `object_store` client:
//! `AmazonS3Builder::new().with_endpoint(&g.endpoint)
//! .with_bucket_name(&g.bucket).with_region(&g.region)
//! .with_access_key_id(&g.access_key_id)
//! .with_secret_access_key(&g.secret_access_key).with_allow_http(true)
//! .with_virtual_hosted_style_request(false)`.

use super::tools::{free_port, require_tool, run};
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running single-node Garage with one bucket and one key that owns it;
/// killed (and waited for) on drop.
pub struct Garage {
    /// `http://127.0.0.1:<s3 port>` (no trailing slash); path-style only.
    pub endpoint: String,
    /// The SigV4 region (`s3_region`): `"garage"`.
    pub region: String,
    /// The bucket: `"ferry-test"`.
    pub bucket: String,
    /// The key's id (`GK` + 24 hex digits).
    pub access_key_id: String,
    /// The key's secret (64 hex digits).
    pub secret_access_key: String,
    pub s3_port: u16,
    pub rpc_port: u16,
    /// The `garage.toml` the server runs with (for [`Garage::cli`]).
    pub config: PathBuf,
    /// The server's stderr (its log).
    pub log: PathBuf,
    /// How long [`start_garage`] took, from spawn to a working bucket.
    pub startup: Duration,
    pub child: Child,
    pub dir: tempfile::TempDir,
}

impl Garage {
    /// `garage -c <config>`: add the subcommand and its arguments.
    pub fn cli(&self) -> Command {
        garage_cli(&self.config)
    }

    /// `<endpoint>/<bucket>/<key>`: the path-style URL of object `key`.
    pub fn object_url(&self, key: &str) -> String {
        format!("{}/{}/{}", self.endpoint, self.bucket, key)
    }

    /// `curl -sS --aws-sigv4 aws:amz:<region>:s3 --user <id>:<secret> -H
    /// "x-amz-content-sha256: UNSIGNED-PAYLOAD"`: add the method, the URL
    /// and the rest. (Garage refuses a request without that header, "Missing
    /// X-Amz-Content-Sha256 field", and curl 7.88 does not send it by itself.)
    pub fn curl(&self) -> Command {
        s3_curl(&self.region, &self.access_key_id, &self.secret_access_key)
    }

    /// Object keys in the bucket under `blobs/`, through Garage's own S3
    /// listing (not ferry's).
    pub fn blob_keys(&self) -> Vec<String> {
        let out = super::tools::run_ok(
            self.curl()
                .arg(format!("{}/{}/", self.endpoint, self.bucket)),
        );
        let text = String::from_utf8(out).expect("utf-8 listing");
        assert!(text.contains("<ListBucketResult"), "not a listing: {text}");
        assert!(
            !text.contains("<IsTruncated>true"),
            "the listing is truncated: the test put more than a page of objects"
        );
        text.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .filter(|k| k.starts_with("blobs/"))
            .map(str::to_owned)
            .collect()
    }

    /// The server's log so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s3_curl(region: &str, key_id: &str, secret: &str) -> Command {
    let mut c = Command::new(require_tool("curl"));
    c.arg("-sS")
        .arg("--aws-sigv4")
        .arg(format!("aws:amz:{region}:s3"))
        .arg("--user")
        .arg(format!("{key_id}:{secret}"))
        .arg("-H")
        .arg("x-amz-content-sha256: UNSIGNED-PAYLOAD");
    c
}

fn garage_cli(config: &Path) -> Command {
    let mut c = Command::new(require_garage());
    c.arg("-c").arg(config).env("RUST_LOG", "warn");
    c
}

/// The `garage` binary, from `$PATH`, `/usr/local/bin` or `~/.local/bin`.
/// Panics when absent (`.ci/run` installs Garage 2.5.0 with `cargo install
/// garage --version 2.5.0 --locked --root /usr/local`, or `~/.local` when
/// `/usr/local` is not writable).
pub fn require_garage() -> PathBuf {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path_var).collect();
    dirs.push(PathBuf::from("/usr/local/bin"));
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".local/bin"));
    }
    for d in dirs {
        let p = d.join("garage");
        if let Ok(md) = std::fs::metadata(&p) {
            use std::os::unix::fs::PermissionsExt;
            if md.is_file() && md.permissions().mode() & 0o111 != 0 {
                return p;
            }
        }
    }
    panic!(
        "garage is not installed: run .ci/run (it runs `cargo install garage --version 2.5.0 \
         --locked --root /usr/local`)"
    );
}

/// 32 random bytes as 64 hex digits (the `rpc_secret` format).
fn random_hex32() -> String {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Start a single-node Garage with bucket `ferry-test` and a key allowed to
/// read, write and own it; return once a signed S3 request on the bucket
/// succeeds. Panics (with the server log) when any step fails; retries with
/// new ports when one was taken meanwhile.
pub fn start_garage() -> Garage {
    let garage = require_garage();
    require_tool("curl");
    let t0 = Instant::now();
    let mut last_err = String::new();
    for _attempt in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let s3_port = free_port();
        let mut rpc_port = free_port();
        while rpc_port == s3_port {
            rpc_port = free_port();
        }
        let config = d.join("garage.toml");
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{d}/meta\"\n\
                 data_dir = \"{d}/data\"\n\
                 db_engine = \"lmdb\"\n\
                 replication_factor = 1\n\
                 compression_level = \"none\"\n\
                 rpc_bind_addr = \"127.0.0.1:{rpc_port}\"\n\
                 rpc_public_addr = \"127.0.0.1:{rpc_port}\"\n\
                 rpc_secret = \"{secret}\"\n\
                 \n\
                 [s3_api]\n\
                 s3_region = \"garage\"\n\
                 api_bind_addr = \"127.0.0.1:{s3_port}\"\n",
                d = d.display(),
                secret = random_hex32(),
            ),
        )
        .unwrap();
        let log = d.join("garage.log");
        let child = Command::new(&garage)
            .arg("-c")
            .arg(&config)
            .arg("server")
            .env("RUST_LOG", "garage=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", garage.display()));
        let mut g = Garage {
            endpoint: format!("http://127.0.0.1:{s3_port}"),
            region: "garage".into(),
            bucket: "ferry-test".into(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            s3_port,
            rpc_port,
            config,
            log,
            startup: Duration::ZERO,
            child,
            dir,
        };
        match setup(&mut g) {
            Ok(()) => {
                g.startup = t0.elapsed();
                return g;
            }
            Err(e) => {
                last_err = format!("{e}\n--- garage log ---\n{}", g.log_text());
                if !last_err.contains("in use") {
                    break;
                }
            }
        }
    }
    panic!("cannot start garage: {last_err}");
}

/// Everything after the spawn; `Err` carries what went wrong.
fn setup(g: &mut Garage) -> Result<(), String> {
    // 1. Both ports listen and the CLI reaches the node over RPC.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(st)) = g.child.try_wait() {
            return Err(format!("garage server exited ({st})"));
        }
        if TcpStream::connect(("127.0.0.1", g.s3_port)).is_ok()
            && TcpStream::connect(("127.0.0.1", g.rpc_port)).is_ok()
            && run(g.cli().arg("status").stdout(Stdio::null())).is_ok()
        {
            break;
        }
        if Instant::now() > deadline {
            return Err("garage did not answer `garage status` within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let config = g.config.clone();
    let cli = |args: &[&str]| -> Result<String, String> {
        let mut c = garage_cli(&config);
        c.args(args);
        run(&mut c)
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .map_err(|e| format!("{e:?}"))
    };

    // 2. A one-node layout.
    let id_line = cli(&["node", "id", "-q"])?;
    let node_id = id_line.trim().split('@').next().unwrap_or("").to_string();
    if node_id.len() != 64 || !node_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "unexpected `garage node id -q` output: {id_line:?}"
        ));
    }
    cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node_id])?;
    cli(&["layout", "apply", "--version", "1"])?;

    // 3. A key and a bucket it owns.
    let key_out = cli(&["key", "create", "ferry-test"])?;
    let field = |name: &str| -> Result<String, String> {
        key_out
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("no {name:?} in `garage key create` output:\n{key_out}"))
    };
    g.access_key_id = field("Key ID:")?;
    g.secret_access_key = field("Secret key:")?;
    cli(&["bucket", "create", &g.bucket])?;
    cli(&[
        "bucket",
        "allow",
        "--read",
        "--write",
        "--owner",
        &g.bucket,
        "--key",
        "ferry-test",
    ])?;

    // 4. A signed S3 request on the bucket works (the layout and the key
    //    reach the S3 API a moment after the CLI returns).
    let deadline = Instant::now() + Duration::from_secs(30);
    let url = format!("{}/{}/", g.endpoint, g.bucket);
    loop {
        let mut c = s3_curl(&g.region, &g.access_key_id, &g.secret_access_key);
        c.args(["-o", "/dev/null", "-w", "%{http_code}"]).arg(&url);
        let code = run(&mut c)
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| format!("{e:?}"));
        if code.trim() == "200" {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "S3 ListObjects on {url} still fails after 30 s (last: {code})"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
