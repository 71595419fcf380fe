//! Client commands: `login`, `cache …`, `push`, `use`, `watch-store`.
//! Glue only: parse, load the saved config, call `ferry::client`.

use std::io::Read as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use ferry::api::CacheInfo;
use ferry::client::config::{ClientConfig, Target, config_path};
use ferry::client::http::Api;
use ferry::client::push::{PushOptions, push};
use ferry::client::resume::StateFile;
use ferry::client::watch::watch_store;

mod cache;
mod nix_use;

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Save a server (URL and token) under a NAME in ~/.config/ferry/config.toml.
    Login(LoginArgs),
    /// Create, show, configure or destroy a cache.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Push store paths (with their closure) to NAME:CACHE.
    Push(PushArgs),
    /// Make Nix use NAME:CACHE: nix.conf block + netrc line (offline), in
    /// your config, the system's (--system) or as NixOS lines (--nixos).
    Use(nix_use::UseArgs),
    /// Push every new store path as it appears.
    WatchStore(WatchArgs),
}

#[derive(Args)]
pub struct LoginArgs {
    /// A short name for the server (used as NAME in NAME:CACHE).
    name: String,
    /// The server's base URL, e.g. https://cache.example.org.
    url: String,
    /// The token (or use --token-file, which keeps it out of shell history).
    #[arg(required_unless_present = "token_file")]
    token: Option<String>,
    /// Read the token from this file.
    #[arg(long, conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// Make this the server used when a target names no server.
    #[arg(long)]
    set_default: bool,
}

#[derive(Args)]
pub struct PushArgs {
    /// NAME:CACHE (or CACHE on the default server).
    target: String,
    /// Store paths (or symlinks to them, such as ./result).
    paths: Vec<String>,
    /// Also read paths from standard input (whitespace-separated).
    #[arg(long)]
    stdin: bool,
    /// Push only the paths named, not their closure.
    #[arg(long)]
    no_closure: bool,
    /// Parts (and paths) in flight at once. Memory used for parts is at most
    /// JOBS × PART_SIZE (64 MiB × 4 = 256 MiB by default).
    #[arg(short = 'j', long = "jobs", default_value_t = 4, value_name = "JOBS")]
    jobs: usize,
    /// Bytes per part (e.g. 64MiB, 50MB, 8388608); capped by the server's
    /// max_part_size. Keep it under the proxy's body limit (Cloudflare: 100 MB).
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    part_size: u64,
    /// Push paths signed by the cache's upstream keys (cache.nixos.org-1) too.
    #[arg(long)]
    ignore_upstream_filter: bool,
    /// Send each NAR whole (zstd) instead of in content-defined chunks, of
    /// which only those the server lacks cross the wire.
    #[arg(long)]
    no_chunking: bool,
    /// Push small paths (NAR up to 1 MiB) one upload each (three requests
    /// per path) instead of many in one request.
    #[arg(long)]
    no_batching: bool,
}

#[derive(Args)]
pub struct WatchArgs {
    /// NAME:CACHE (or CACHE on the default server).
    target: String,
    /// Seconds between two listings of the store directory.
    #[arg(long, default_value_t = 2)]
    interval: u64,
    /// Parts in flight at once (memory: JOBS × PART_SIZE).
    #[arg(short = 'j', long = "jobs", default_value_t = 4)]
    jobs: usize,
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    part_size: u64,
    #[arg(long)]
    ignore_upstream_filter: bool,
    /// Send each NAR whole (zstd) instead of in content-defined chunks.
    #[arg(long)]
    no_chunking: bool,
    /// Push small paths one upload each instead of many in one request.
    #[arg(long)]
    no_batching: bool,
}

/// Runs a client command.
pub fn run(cmd: ClientCommand) -> anyhow::Result<()> {
    init_tracing();
    match cmd {
        ClientCommand::Login(a) => login(a),
        ClientCommand::Use(a) => nix_use::run(a),
        ClientCommand::Cache(c) => runtime()?.block_on(cache::run(c)),
        ClientCommand::Push(a) => runtime()?.block_on(push_cmd(a)),
        ClientCommand::WatchStore(a) => runtime()?.block_on(watch(a)),
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .try_init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("cannot start the async runtime")
}

/// Parses `64MiB`, `50MB`, `8m`, `1048576`.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 64MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "kb" => 1000,
        "m" | "mib" => 1 << 20,
        "mb" => 1_000_000,
        "g" | "gib" => 1 << 30,
        "gb" => 1_000_000_000,
        u => {
            return Err(format!(
                "unknown size unit {u:?}: use B, KiB, MiB, GiB, KB, MB or GB"
            ));
        }
    };
    match n.checked_mul(mult) {
        Some(0) | None => Err(format!("{s:?} is not a usable part size")),
        Some(v) => Ok(v),
    }
}

/// The saved config and the target a command names.
struct Loaded {
    path: PathBuf,
    config: ClientConfig,
    target: Target,
}

impl Loaded {
    fn new(spec: &str) -> anyhow::Result<Loaded> {
        let path = config_path()?;
        let config = ClientConfig::load_from(&path)?;
        let target = config.target(spec)?;
        Ok(Loaded {
            path,
            config,
            target,
        })
    }

    fn api(&self) -> anyhow::Result<Api> {
        let s = self.config.server(&self.target.server)?;
        Ok(Api::new(&s.url, &s.token)?)
    }

    fn remember(&mut self, info: &CacheInfo) -> anyhow::Result<()> {
        self.config.remember(&self.target, info);
        Ok(self.config.save_to(&self.path)?)
    }
}

fn login(a: LoginArgs) -> anyhow::Result<()> {
    let token = match (&a.token, &a.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?
        }
        (None, None) => bail!("give the token, or --token-file FILE"),
    };
    if token.trim().is_empty() {
        bail!("the token is empty");
    }
    let path = config_path()?;
    let mut config = ClientConfig::load_from(&path)?;
    config.login(&a.name, &a.url, &token, a.set_default)?;
    config.save_to(&path)?;
    eprintln!(
        "saved server {:?} ({}) in {}",
        a.name,
        a.url,
        path.display()
    );
    Ok(())
}

async fn push_cmd(a: PushArgs) -> anyhow::Result<()> {
    let l = Loaded::new(&a.target)?;
    let mut paths = a.paths.clone();
    if a.stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read paths from stdin")?;
        paths.extend(s.split_whitespace().map(str::to_owned));
    }
    if paths.is_empty() {
        bail!("no store paths to push: name some, or pass --stdin");
    }
    let api = l.api()?;
    let info = api.cache_info(&l.target.cache).await?;
    let state = StateFile::open(StateFile::location(&l.target.server, &l.target.cache)?)?;
    let opts = PushOptions {
        closure: !a.no_closure,
        jobs: a.jobs,
        part_size: a.part_size,
        ignore_upstream_filter: a.ignore_upstream_filter,
        chunking: !a.no_chunking,
        batching: !a.no_batching,
    };
    let summary = push(&api, &l.target.cache, &info, state, paths, &opts).await?;
    eprintln!("{summary}");
    Ok(())
}

async fn watch(a: WatchArgs) -> anyhow::Result<()> {
    let l = Loaded::new(&a.target)?;
    let api = l.api()?;
    let info = api.cache_info(&l.target.cache).await?;
    let state_path = StateFile::location(&l.target.server, &l.target.cache)?;
    let opts = PushOptions {
        closure: true,
        jobs: a.jobs,
        part_size: a.part_size,
        ignore_upstream_filter: a.ignore_upstream_filter,
        chunking: !a.no_chunking,
        batching: !a.no_batching,
    };
    let interval = Duration::from_secs(a.interval.max(1));
    Ok(watch_store(&api, &l.target.cache, &info, &state_path, interval, &opts).await?)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("50MB"), Ok(50_000_000));
        assert_eq!(parse_size("8m"), Ok(8 << 20));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert!(
            parse_size("0").is_err()
                && parse_size("x").is_err()
                && parse_size("5 parsecs").is_err()
        );
    }
}
