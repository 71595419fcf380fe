//! `ferry push` as a user runs it: a client with a home of its own, a
//! fresh server behind a logged nginx (optionally behind a proxy adding a
//! round trip per request, see [`super::delay`]), and store paths built
//! with Nix.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::Server;
use super::delay::Delay;
use super::nginx::Nginx;

/// Nix in single-user mode, as root here.
pub const NIX_CONFIG: &str =
    "build-users-group =\nsandbox = false\nexperimental-features = nix-command\nsubstituters =\n";

/// A `ferry` client with a home of its own.
pub struct Client {
    home: tempfile::TempDir,
}

impl Client {
    pub fn new() -> Client {
        Client {
            home: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Runs `ferry ARGS` (asserting success); its wall time.
    pub fn run(&self, args: &[&str]) -> Duration {
        let t = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .env("XDG_CONFIG_HOME", self.home.path().join("config"))
            .env("XDG_STATE_HOME", self.home.path().join("state"))
            .env("HOME", self.home.path())
            .env("NIX_CONFIG", NIX_CONFIG)
            .env("FERRY_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("run ferry");
        assert!(
            out.status.success(),
            "ferry {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t.elapsed()
    }
}

/// A fresh server with a logged proxy, a client logged in through it (or
/// through a delaying proxy in front of it), and a cache `main`.
pub struct Site {
    _dir: tempfile::TempDir,
    _server: Server,
    pub nginx: Nginx,
    _delay: Option<Delay>,
    pub client: Client,
}

impl Site {
    pub fn new(base: &Path) -> Site {
        Site::start(base, None)
    }

    /// A site whose client reaches nginx through a proxy that adds `rtt`
    /// to every request (see [`Delay`]).
    pub fn with_round_trip(base: &Path, rtt: Duration) -> Site {
        Site::start(base, Some(rtt))
    }

    fn start(base: &Path, rtt: Option<Duration>) -> Site {
        let dir = tempfile::tempdir_in(base).expect("tempdir");
        let server = Server::start(&dir.path().join("data"));
        let nginx = Nginx::proxy_logged(server.port);
        let delay = rtt.map(|rtt| Delay::start(nginx.port, rtt));
        let url = match &delay {
            Some(d) => d.url(),
            None => nginx.url(),
        };
        let client = Client::new();
        client.run(&["login", "b", &url, &server.token]);
        client.run(&["cache", "create", "b:main"]);
        Site {
            _dir: dir,
            _server: server,
            nginx,
            _delay: delay,
            client,
        }
    }

    /// Pushes `path` (with `extra` arguments): time and bytes at the proxy.
    pub fn push(&self, path: &str, extra: &[&str]) -> (Duration, u64) {
        let before = self.nginx.wire_bytes();
        let mut args = vec!["push", "b:main", path];
        args.extend_from_slice(extra);
        let t = self.client.run(&args);
        // nginx logs a request once it has ended; the last one may lag.
        std::thread::sleep(Duration::from_millis(200));
        (t, self.nginx.wire_bytes() - before)
    }
}

/// Builds the Nix expression `expr` (a derivation or a list of them);
/// the output paths, one per derivation.
pub fn nix_build(expr: &str) -> Vec<String> {
    let out = Command::new("nix-build")
        .args(["--no-out-link", "--quiet", "-E", expr])
        .env("NIX_CONFIG", NIX_CONFIG)
        .output()
        .expect("nix-build (is Nix installed? run .ci/run)");
    assert!(
        out.status.success(),
        "nix-build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Builds a store path holding a copy of `src` (file or directory).
pub fn build_copy(name: &str, src: &Path, salt: &str) -> String {
    let e = format!(
        "derivation {{ name = \"{name}\"; system = builtins.currentSystem; builder = \"/bin/sh\"; \
         args = [ \"-c\" \"cp -r '{}' $out\" ]; PATH = \"/usr/bin:/bin\"; salt = \"{salt}\"; }}",
        src.display()
    );
    nix_build(&e).pop().expect("one path")
}
