//! The real `ferry` client binary with a home of its own: XDG config and
//! state dirs in a temp dir, so saved logins and push resume state never
//! leak between tests.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use super::nix::NIX_CONFIG;
use super::tools::run_ok;

/// A client "home": its own `XDG_CONFIG_HOME`, `XDG_STATE_HOME` and `HOME`.
pub struct FerryClient {
    pub home: tempfile::TempDir,
}

impl FerryClient {
    pub fn new() -> FerryClient {
        FerryClient {
            home: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// `ferry ARGS` with this client's environment (and the harness's
    /// `NIX_CONFIG`, for the `nix path-info` / `nix-store --dump` it runs).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
        c.args(args)
            .env("XDG_CONFIG_HOME", self.home.path().join("config"))
            .env("XDG_STATE_HOME", self.home.path().join("state"))
            .env("HOME", self.home.path())
            .env("NIX_CONFIG", NIX_CONFIG)
            .env("FERRY_LOG", "warn");
        c
    }

    /// Runs `ferry ARGS`, panics on failure, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let t = Instant::now();
        let out = run_ok(&mut self.cmd(args));
        // The subcommand only: arguments may hold a token.
        let what = args.iter().take(2).copied().collect::<Vec<_>>().join(" ");
        eprintln!("ferry {what} took {:?}", t.elapsed());
        String::from_utf8(out).expect("utf-8 output")
    }

    /// The push resume state directory of `server:cache` (one
    /// `<hash-part>.json` per path being uploaded).
    pub fn state_dir(&self, server: &str, cache: &str) -> PathBuf {
        self.home
            .path()
            .join(format!("state/ferry/push-{server}-{cache}"))
    }

    /// Whether any file (a path's state or lock) is left in the push
    /// resume state of `server:cache`.
    pub fn push_state_left(&self, server: &str, cache: &str) -> bool {
        std::fs::read_dir(self.state_dir(server, cache))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    }
}

/// The `public-key:` value that `ferry cache create|info` prints.
pub fn public_key_of(cache_info: &str) -> String {
    cache_info
        .lines()
        .find_map(|l| l.strip_prefix("public-key:"))
        .unwrap_or_else(|| panic!("no public-key line in {cache_info:?}"))
        .trim()
        .to_owned()
}
