//! End to end: the `ferry` client commands against the real `ferry serve`
//! binary, behind nginx (100 MB body limit) or a flaky proxy, with real Nix
//! copying the pushed paths back with signatures checked.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::flaky::{FlakyOptions, start_flaky_proxy};
use common::*;

const MB: u64 = 1_000_000;

/// A client "home": its own XDG config and state dirs.
struct Client {
    home: tempfile::TempDir,
}

impl Client {
    fn new() -> Client {
        Client {
            home: tempfile::tempdir().unwrap(),
        }
    }
    fn config_home(&self) -> PathBuf {
        self.home.path().join("config")
    }
    fn state_home(&self) -> PathBuf {
        self.home.path().join("state")
    }
    /// `ferry ARGS` with this client's environment.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
        c.args(args)
            .env("XDG_CONFIG_HOME", self.config_home())
            .env("XDG_STATE_HOME", self.state_home())
            .env("HOME", self.home.path())
            .env("NIX_CONFIG", nix::NIX_CONFIG)
            .env("FERRY_LOG", "warn");
        c
    }
    /// Runs `ferry ARGS`, panics on failure, returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let t = Instant::now();
        let out = run_ok(&mut self.cmd(args));
        eprintln!("ferry {} took {:?}", args.join(" "), t.elapsed());
        String::from_utf8(out).unwrap()
    }
    /// The push resume state directory of `server:cache`.
    fn state_dir(&self, server: &str, cache: &str) -> PathBuf {
        self.state_home()
            .join(format!("ferry/push-{server}-{cache}"))
    }
    /// Whether any path's state (or lock) is left there.
    fn push_state_left(&self, server: &str, cache: &str) -> bool {
        std::fs::read_dir(self.state_dir(server, cache))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    }
}

/// A server process with its data dir.
struct Server {
    _data: tempfile::TempDir,
    process: ServerProcess,
    token: String,
}

fn start_server() -> Server {
    let data = tempfile::tempdir().unwrap();
    let process = ServerProcess::start(data.path(), free_port());
    let token = process
        .admin_token
        .clone()
        .expect("admin token at first start");
    Server {
        _data: data,
        process,
        token,
    }
}

fn addr(url: &str) -> std::net::SocketAddr {
    url.trim_start_matches("http://").parse().unwrap()
}

fn public_key_of(info: &str) -> String {
    info.lines()
        .find_map(|l| l.strip_prefix("public-key:"))
        .expect("public-key line")
        .trim()
        .to_owned()
}

/// A value from the generated nix.conf.
fn conf_value(conf: &str, key: &str) -> String {
    conf.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("{key} missing in\n{conf}"))
        .to_owned()
}

#[test]
fn push_through_100mb_proxy_then_nix_copies_with_generated_config() {
    let t = Instant::now();
    let server = start_server();
    let ngx = start_nginx(addr(&server.process.url));
    let client = Client::new();
    client.ok(&["login", "home", &ngx.url(), &server.token]);
    let info = client.ok(&["cache", "create", "home:main"]);
    let pubkey = public_key_of(&info);

    let closure = build_closure(
        &ClosureSpec::new("client-e2e")
            .random("big-random", 250 * MB)
            .compressible("big-text", 100 * MB),
    );
    eprintln!("built closure in {:?}", t.elapsed());
    client.ok(&["push", "home:main", &closure.top]);

    let log = ngx.log_entries();
    let max = log.iter().map(|e| e.request_length).max().unwrap_or(0);
    assert!(
        max < 100 * MB,
        "a request body of {max} bytes went through the proxy"
    );
    let parts: Vec<_> = log
        .iter()
        .filter(|e| e.method == "PUT" && e.uri.contains("/parts/"))
        .collect();
    assert!(
        parts.len() >= 5,
        "expected the 250 MB path in several parts: {parts:?}"
    );
    assert!(log.iter().all(|e| e.status < 400), "{log:?}");
    assert!(
        !client.push_state_left("home", "main"),
        "state is removed after a complete push"
    );

    // A second push finds nothing to send.
    let before = ngx.log_entries().len();
    client.ok(&["push", "home:main", &closure.top]);
    assert!(
        ngx.log_entries()[before..]
            .iter()
            .all(|e| !e.uri.contains("/parts/"))
    );

    // `ferry use`, twice: byte-identical files.
    let nixdir = tempfile::tempdir().unwrap();
    let conf_path = nixdir.path().join("nix.conf");
    let netrc_path = nixdir.path().join("netrc");
    std::fs::write(&conf_path, "# existing user setting\nkeep-outputs = true\n").unwrap();
    let use_args = [
        "use",
        "home:main",
        "--nix-conf",
        conf_path.to_str().unwrap(),
        "--netrc",
        netrc_path.to_str().unwrap(),
    ];
    client.ok(&use_args);
    let (conf1, netrc1) = (
        std::fs::read(&conf_path).unwrap(),
        std::fs::read(&netrc_path).unwrap(),
    );
    client.ok(&use_args);
    assert_eq!(
        std::fs::read(&conf_path).unwrap(),
        conf1,
        "nix.conf changed on a second run"
    );
    assert_eq!(
        std::fs::read(&netrc_path).unwrap(),
        netrc1,
        "netrc changed on a second run"
    );
    let conf = String::from_utf8(conf1).unwrap();
    assert!(
        conf.starts_with("# existing user setting\nkeep-outputs = true\n"),
        "{conf}"
    );
    assert_eq!(conf_value(&conf, "extra-trusted-public-keys"), pubkey);
    let netrc = String::from_utf8(netrc1).unwrap();
    assert_eq!(
        netrc,
        format!("machine 127.0.0.1 login token password {}\n", server.token)
    );

    // Nix reads only the generated file (NIX_CONF_DIR): substituter URL,
    // key and netrc all come from it; the cache is private, signatures are
    // required.
    let substituter = conf_value(&conf, "extra-substituters");
    let store = FreshStore::new();
    let t_copy = Instant::now();
    run_ok(
        nix_cmd("nix")
            .env("NIX_CONF_DIR", nixdir.path())
            .args([
                "copy",
                "--option",
                "require-sigs",
                "true",
                "--from",
                &substituter,
                "--to",
            ])
            .arg(store.root())
            .arg(&closure.top),
    );
    eprintln!("nix copy took {:?}", t_copy.elapsed());
    for p in &closure.paths {
        compare_trees(Path::new(p), &store.real_path(p));
    }
    eprintln!(
        "push_through_100mb_proxy_then_nix_copies_with_generated_config: {:?}",
        t.elapsed()
    );
}

/// The first path's state file in a push state directory.
fn first_state_file(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "json"))
}

/// Waits for a path's file in the push state directory to record at least
/// `n` acknowledged parts; returns (upload id, acknowledged part numbers).
fn wait_for_acks(state: &Path, child: &mut Child, n: usize) -> (String, Vec<u64>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(file) = first_state_file(state)
            && let Ok(bytes) = std::fs::read(file)
            && let Ok(p) = serde_json::from_slice::<serde_json::Value>(&bytes)
        {
            let parts: Vec<u64> = p["parts"]
                .as_object()
                .map(|m| m.keys().map(|k| k.parse().unwrap()).collect())
                .unwrap_or_default();
            if parts.len() >= n {
                return (p["upload_id"].as_str().unwrap().to_owned(), parts);
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the push ended ({status}) before {n} parts were acknowledged");
        }
        assert!(
            Instant::now() < deadline,
            "no {n} acknowledged parts in time"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn killed_push_resumes_without_resending_acknowledged_parts() {
    let t = Instant::now();
    let server = start_server();
    let ngx = start_nginx(addr(&server.process.url));
    // Throttled so the client is surely killed half-way.
    let slow = start_flaky_proxy(
        addr(&ngx.url()),
        FlakyOptions {
            drop_percent: 0,
            bytes_per_sec: Some(25 * MB),
            ..FlakyOptions::default()
        },
    );
    let client = Client::new();
    client.ok(&["login", "home", &slow.url(), &server.token]);
    let pubkey = public_key_of(&client.ok(&["cache", "create", "home:resume"]));
    let closure = build_closure(&ClosureSpec::new("client-resume").random("resume-blob", 120 * MB));
    let blob = closure.blobs[0].clone();
    let args = [
        "push",
        "home:resume",
        "--part-size",
        "8MiB",
        "-j",
        "1",
        &blob,
    ];

    let mut child = client
        .cmd(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state = client.state_dir("home", "resume");
    let (id, acked) = wait_for_acks(&state, &mut child, 2);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    eprintln!("killed the push after parts {acked:?} of upload {id}");

    let status = http_request(
        "GET",
        &format!("{}/_api/v1/uploads/{id}", server.process.url),
        &[&format!("Authorization: Bearer {}", server.token)],
        Body::None,
    );
    assert_eq!(status.status, 200, "{}", status.text());
    let st = status.json();
    assert_eq!(st["state"], "open");
    let on_server: Vec<u64> = st["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["n"].as_u64().unwrap())
        .collect();
    for n in &acked {
        assert!(
            on_server.contains(n),
            "acknowledged part {n} is not on the server: {on_server:?}"
        );
    }
    let before = ngx.log_entries().len();

    client.ok(&args);
    let resent: Vec<_> = ngx.log_entries()[before..]
        .iter()
        .filter(|e| e.method == "PUT")
        .filter_map(|e| {
            e.uri
                .strip_prefix(&format!("/_api/v1/uploads/{id}/parts/"))
                .map(|n| n.parse::<u64>().unwrap())
        })
        .collect();
    assert!(
        !resent.is_empty(),
        "the rest of the parts went to the same upload"
    );
    for n in &resent {
        assert!(
            !on_server.contains(n),
            "part {n} was on the server but sent again (sent {resent:?})"
        );
    }
    let mut all: Vec<u64> = resent.iter().chain(&on_server).copied().collect();
    all.sort();
    let n = all.len() as u64;
    assert!(n >= 14, "120 MB in 8 MiB parts: {all:?}");
    assert_eq!(
        all,
        (1..=n).collect::<Vec<_>>(),
        "every part sent exactly once over both runs"
    );
    assert!(
        !client.push_state_left("home", "resume"),
        "state is removed after the resumed push"
    );

    let netrc_dir = tempfile::tempdir().unwrap();
    let netrc = write_netrc(netrc_dir.path(), "127.0.0.1", &server.token);
    let store = nix_copy_from(
        &format!("{}/resume", server.process.url),
        &pubkey,
        Some(&netrc),
        &blob,
    );
    compare_trees(Path::new(&blob), &store.real_path(&blob));
    eprintln!(
        "killed_push_resumes_without_resending_acknowledged_parts: {:?}",
        t.elapsed()
    );
}

#[test]
fn push_survives_a_link_that_cuts_connections() {
    let t = Instant::now();
    let server = start_server();
    let proxy = start_flaky_proxy(addr(&server.process.url), FlakyOptions::default());
    let client = Client::new();
    client.ok(&["login", "flaky", &proxy.url(), &server.token]);
    let pubkey = public_key_of(&client.ok(&["cache", "create", "flaky:shaky"]));
    let closure = build_closure(
        &ClosureSpec::new("client-flaky")
            .random("shaky-blob", 40 * MB)
            .compressible("shaky-text", 10 * MB),
    );
    client.ok(&[
        "push",
        "flaky:shaky",
        "--part-size",
        "2MiB",
        "-j",
        "4",
        &closure.top,
    ]);
    assert!(
        proxy.cut() > 0,
        "the proxy cut no connection ({} seen)",
        proxy.connections()
    );
    eprintln!(
        "proxy: {} connections, {} cut",
        proxy.connections(),
        proxy.cut()
    );

    let netrc_dir = tempfile::tempdir().unwrap();
    let netrc = write_netrc(netrc_dir.path(), "127.0.0.1", &server.token);
    let store = nix_copy_from(
        &format!("{}/shaky", server.process.url),
        &pubkey,
        Some(&netrc),
        &closure.top,
    );
    for p in &closure.paths {
        compare_trees(Path::new(p), &store.real_path(p));
    }
    eprintln!(
        "push_survives_a_link_that_cuts_connections: {:?}",
        t.elapsed()
    );
}
