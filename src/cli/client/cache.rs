//! `ferry cache create|info|configure|destroy NAME:CACHE`. `create`,
//! `info` and `configure` remember the cache's public settings in the
//! client config, for `ferry use` to work offline.

use clap::{Args, Subcommand};

use ferry::api::{CacheInfo, ConfigureCache, CreateCache};

use super::Loaded;

#[derive(Subcommand)]
pub enum CacheCommand {
    /// Create a cache.
    Create(CreateArgs),
    /// Show a cache's settings and public key (and remember them for `ferry use`).
    Info(TargetArg),
    /// Change a cache's settings.
    Configure(ConfigureArgs),
    /// Destroy a cache and everything in it.
    Destroy(TargetArg),
}

#[derive(Args)]
pub struct TargetArg {
    /// NAME:CACHE (or CACHE on the default server).
    target: String,
}

#[derive(Args)]
pub struct CreateArgs {
    /// NAME:CACHE (or CACHE on the default server).
    target: String,
    /// Anyone may pull without a token.
    #[arg(long)]
    public: bool,
    /// Substituter priority (lower is tried first; default 41).
    #[arg(long)]
    priority: Option<i64>,
    /// Store directory of the cache (default /nix/store).
    #[arg(long)]
    store_dir: Option<String>,
    /// Remove paths not pushed or pulled for this long ("6 months", "30d").
    #[arg(long)]
    retention: Option<String>,
}

#[derive(Args)]
pub struct ConfigureArgs {
    /// NAME:CACHE (or CACHE on the default server).
    target: String,
    /// Make the cache public (true) or private (false).
    #[arg(long)]
    public: Option<bool>,
    #[arg(long)]
    priority: Option<i64>,
    /// A duration ("6 months", "30d"), or "forever".
    #[arg(long)]
    retention: Option<String>,
    /// Upstream key names whose paths `push` skips (repeat; replaces the list).
    #[arg(long = "upstream-key", value_name = "KEY")]
    upstream_keys: Vec<String>,
    /// Clear the upstream key list (push everything).
    #[arg(long, conflicts_with = "upstream_keys")]
    no_upstream_keys: bool,
}

/// Runs a `ferry cache` subcommand.
pub async fn run(cmd: CacheCommand) -> anyhow::Result<()> {
    match cmd {
        CacheCommand::Create(a) => {
            let mut l = Loaded::new(&a.target)?;
            let req = CreateCache {
                name: l.target.cache.clone(),
                public: a.public,
                priority: a.priority,
                store_dir: a.store_dir,
                retention: a.retention,
            };
            let info = l.api()?.create_cache(&req).await?;
            l.remember(&info)?;
            print_info(&info);
        }
        CacheCommand::Info(a) => {
            let mut l = Loaded::new(&a.target)?;
            let info = l.api()?.cache_info(&l.target.cache).await?;
            l.remember(&info)?;
            print_info(&info);
        }
        CacheCommand::Configure(a) => {
            let mut l = Loaded::new(&a.target)?;
            let req = ConfigureCache {
                public: a.public,
                priority: a.priority,
                retention: a.retention.map(|r| Some(r).filter(|r| r != "forever")),
                upstream_keys: if a.no_upstream_keys {
                    Some(vec![])
                } else {
                    Some(a.upstream_keys).filter(|k| !k.is_empty())
                },
            };
            let was_public = match a.public {
                Some(false) => l.api()?.cache_info(&l.target.cache).await?.public,
                _ => false,
            };
            let info = l.api()?.configure_cache(&l.target.cache, &req).await?;
            l.remember(&info)?;
            print_info(&info);
            if was_public && !info.public {
                eprintln!(
                    "warning: {} was public, and its NARs were served with \
                     `Cache-Control: public, max-age=31536000, immutable`: a CDN in front \
                     (Cloudflare) may keep serving them to anyone with their URL. \
                     Purge the CDN's cache for this host now.",
                    l.target.cache
                );
            }
        }
        CacheCommand::Destroy(a) => {
            let mut l = Loaded::new(&a.target)?;
            l.api()?.destroy_cache(&l.target.cache).await?;
            if let Some(s) = l.config.servers.get_mut(&l.target.server) {
                s.caches.remove(&l.target.cache);
            }
            l.config.save_to(&l.path)?;
            eprintln!("destroyed {}:{}", l.target.server, l.target.cache);
        }
    }
    Ok(())
}

fn print_info(i: &CacheInfo) {
    println!("name:          {}", i.name);
    println!("public:        {}", i.public);
    println!("priority:      {}", i.priority);
    println!("store-dir:     {}", i.store_dir);
    println!("public-key:    {}", i.public_key);
    println!("max-part-size: {}", i.max_part_size);
    println!("upstream-keys: {}", i.upstream_keys.join(" "));
    println!(
        "retention:     {}",
        i.retention.as_deref().unwrap_or("forever")
    );
}
