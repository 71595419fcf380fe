//! `ferry token …`: mint (and, later, attenuate, inspect, revoke).

use std::time::SystemTime;

use clap::{Args, Subcommand};

use ferry::auth::{self, Operation, TokenSpec};
use ferry::service::{self, DataDir};

use super::ServerLocation;

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Mint a token with the server's root key; prints only the token.
    Mint(MintArgs),
}

#[derive(Args)]
pub struct MintArgs {
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


/// Runs a token subcommand.
pub fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Mint(args) => mint(args),
    }
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
