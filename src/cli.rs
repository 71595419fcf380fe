//! Command-line parsing and the glue of each subcommand.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use ferry::auth::{self, Operation, TokenSpec};
use ferry::config::Config;
use ferry::service::{self, DataDir};

/// ferry: a Nix binary cache that takes NARs in parts through a 100 MB proxy.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (defaults: listen 127.0.0.1:8080, data in ./ferry-data).
    Serve(ServeArgs),
    /// Capability tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// Where the server's configuration and data are.
#[derive(Args, Clone)]
struct ServerLocation {
    /// Configuration file (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (overrides the config file's data-dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl ServerLocation {
    fn load(&self) -> anyhow::Result<Config> {
        let mut cfg = match &self.config {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        if let Some(d) = &self.data_dir {
            cfg.data_dir = d.clone();
        }
        Ok(cfg)
    }
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    location: ServerLocation,
    /// Address to listen on (overrides the config file).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint a token with the server's root key; prints only the token.
    Mint(MintArgs),
}

#[derive(Args)]
struct MintArgs {
    #[command(flatten)]
    location: ServerLocation,
    /// Who the token is for (shown by `token inspect`).
    #[arg(long)]
    sub: String,
    /// How long the token is valid: 1h, 30d, 1y, "6 months".
    #[arg(long, default_value = "1y")]
    validity: String,
    /// Caches (name or pattern with `*`) the token may pull from.
    #[arg(long, value_name = "PAT")]
    pull: Vec<String>,
    /// Caches the token may push to.
    #[arg(long, value_name = "PAT")]
    push: Vec<String>,
    /// Cache names the token may create.
    #[arg(long, value_name = "PAT")]
    create_cache: Vec<String>,
    /// Caches the token may delete paths from.
    #[arg(long, value_name = "PAT")]
    delete: Vec<String>,
    /// Caches the token may configure.
    #[arg(long, value_name = "PAT")]
    configure_cache: Vec<String>,
    /// Caches the token may destroy.
    #[arg(long, value_name = "PAT")]
    destroy_cache: Vec<String>,
    /// Caches on which the token may administer tokens.
    #[arg(long, value_name = "PAT")]
    admin: Vec<String>,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Token(TokenCommand::Mint(args)) => mint(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut cfg = args.location.load()?;
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    cfg.validate()?;
    if args.check_config {
        println!("configuration is valid");
        return Ok(());
    }
    init_tracing();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let opened = service::open(&cfg)?;
        let listener = std::net::TcpListener::bind(cfg.listen)
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        if let Some(token) = &opened.first_admin_token {
            print_first_start(&cfg, addr, token);
        }
        tracing::info!(%addr, data_dir = %cfg.data_dir.display(), "ferry is serving");
        let engine = opened.state.engine.clone();
        engine
            .resume_verifying()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tokio::spawn(ferry::gc::run_periodic(engine, std::time::Duration::from_secs(600)));
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        ferry::server::run(listener, opened.state, shutdown).await?;
        Ok(())
    })
}

fn print_first_start(cfg: &Config, addr: SocketAddr, token: &str) {
    let dir = cfg.data_dir.display();
    println!(
        "First start: created {dir} with a new root key.\n\
         \n\
         Admin token (shown once; every right on every cache, valid 1 year):\n\
         \n    {token}\n\
         \n\
         Next:\n\
         \n    export FERRY_TOKEN='{token}'\n\
         \n    curl -H \"Authorization: Bearer $FERRY_TOKEN\" -d '{{\"name\":\"main\",\"public\":false}}' http://{addr}/_api/v1/caches\n\
         \n    ferry token mint --data-dir {dir} --sub laptop --validity 1y --pull main --push main\n"
    );
}

fn mint(args: MintArgs) -> anyhow::Result<()> {
    let cfg = args.location.load()?;
    let dir = DataDir::new(&cfg.data_dir);
    if !dir.root_key().exists() {
        anyhow::bail!(
            "no root key at {}: run `ferry serve` once with this data dir, or pass --data-dir/--config",
            dir.root_key().display()
        );
    }
    let (root, _) = service::root_key(&dir)?;
    let validity = auth::parse_duration(&args.validity)?;
    let mut rights = vec![];
    for (op, pats) in [
        (Operation::Pull, &args.pull),
        (Operation::Push, &args.push),
        (Operation::CreateCache, &args.create_cache),
        (Operation::Delete, &args.delete),
        (Operation::ConfigureCache, &args.configure_cache),
        (Operation::DestroyCache, &args.destroy_cache),
        (Operation::Admin, &args.admin),
    ] {
        rights.extend(pats.iter().map(|p| (op, p.clone())));
    }
    if rights.is_empty() {
        anyhow::bail!("the token would grant nothing: give at least one of --pull, --push, --create-cache, …");
    }
    let spec = TokenSpec {
        subject: args.sub,
        rights,
        expires_at: SystemTime::now() + validity,
    };
    println!("{}", auth::mint(&root, &spec)?);
    Ok(())
}
