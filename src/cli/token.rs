//! `ferry token …`: mint, attenuate (offline), inspect, revoke.

use std::time::SystemTime;

use clap::{Args, Subcommand};

use ferry::auth::{self, Operation, TokenSpec};
use ferry::service::{self, DataDir};

use super::ServerLocation;

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Mint a token with the server's root key; prints only the token.
    Mint(MintArgs),
    /// Narrow a token offline (no key needed); prints only the new token.
    Attenuate(AttenuateArgs),
    /// Show what a token says: subject, rights, expiry, blocks, revocation ids.
    Inspect(InspectArgs),
    /// Revoke a token and every token attenuated from it, in the server's
    /// database (a running server notices within 2 s).
    Revoke(RevokeArgs),
}

#[derive(Args)]
pub struct AttenuateArgs {
    /// The token to narrow.
    token: String,
    /// Keep only these caches (name or pattern with `*`; repeatable).
    #[arg(long = "cache", value_name = "PAT")]
    caches: Vec<String>,
    /// Keep only the pull right.
    #[arg(long, conflicts_with = "ops")]
    pull_only: bool,
    /// Keep only these operations (comma-separated, e.g. pull,push).
    #[arg(long, value_delimiter = ',')]
    ops: Vec<String>,
    /// Expire after this long (e.g. 1h, 30d); the earliest expiry of all
    /// blocks applies.
    #[arg(long)]
    expires: Option<String>,
}

#[derive(Args)]
pub struct InspectArgs {
    #[command(flatten)]
    location: ServerLocation,
    /// The token to show.
    token: String,
}

#[derive(Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    location: ServerLocation,
    /// The token to revoke.
    token: String,
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
        TokenCommand::Attenuate(args) => attenuate(args),
        TokenCommand::Inspect(args) => inspect(args),
        TokenCommand::Revoke(args) => revoke(args),
    }
}

fn mint(args: MintArgs) -> anyhow::Result<()> {
    let cfg = args.location.load()?;
    let dir = DataDir::of(&cfg);
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
        anyhow::bail!(
            "the token would grant nothing: give at least one of --pull, --push, --create-cache, …"
        );
    }
    let spec = TokenSpec {
        subject: args.sub,
        rights,
        expires_at: SystemTime::now() + validity,
    };
    println!("{}", auth::mint(&root, &spec)?);
    Ok(())
}

fn attenuate(args: AttenuateArgs) -> anyhow::Result<()> {
    let operations = if args.pull_only {
        Some(vec![Operation::Pull])
    } else if args.ops.is_empty() {
        None
    } else {
        let mut ops = vec![];
        for name in &args.ops {
            ops.push(Operation::parse(name.trim()).ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown operation {name:?}: use pull, push, delete, create-cache, configure-cache, destroy-cache or admin"
                )
            })?);
        }
        Some(ops)
    };
    let expires_at = match &args.expires {
        Some(d) => Some(SystemTime::now() + auth::parse_duration(d)?),
        None => None,
    };
    let a = auth::Attenuation {
        caches: args.caches,
        operations,
        expires_at,
    };
    println!("{}", auth::attenuate(&args.token, &a)?);
    Ok(())
}

fn fmt_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let left = t
        .duration_since(SystemTime::now())
        .map(|d| format!("in {} days", d.as_secs() / 86_400))
        .unwrap_or_else(|_| "already passed".into());
    format!("{secs} (Unix time; {left})")
}

fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let cfg = args.location.load()?;
    let dir = DataDir::of(&cfg);
    let ids = auth::revocation_ids(&args.token)?;
    let mut blocks = auth::block_sources(&args.token)?;
    let authority = if blocks.is_empty() {
        String::new()
    } else {
        blocks.remove(0)
    };
    if dir.root_key().exists() {
        let (root, _) = service::root_key(&dir)?;
        let info = auth::Authorizer::new(root.public()).inspect(&args.token)?;
        println!(
            "signature: valid (checked with {})",
            dir.root_key().display()
        );
        println!("subject:   {}", info.subject);
        println!("expires:   {}", fmt_time(info.expires_at));
        println!("rights granted by the issuer:");
        for (op, pat) in &info.rights {
            println!("  {op:<16} on caches matching {pat}");
        }
    } else {
        println!(
            "signature: not checked (no root key at {}; pass --data-dir to check it)",
            dir.root_key().display()
        );
        println!("issuer's block, as written (unverified):");
        for line in authority.lines() {
            println!("    {line}");
        }
    }
    if blocks.is_empty() {
        println!("attenuations: none");
    } else {
        println!("attenuations (each can only narrow the rights above):");
        for (i, b) in blocks.iter().enumerate() {
            println!("  block {}:", i + 1);
            for line in b.lines() {
                println!("    {line}");
            }
        }
    }
    println!(
        "revocation ids (revoking an id revokes the token that ends with it and all tokens made from it):"
    );
    for id in ids {
        println!("  {id}");
    }
    Ok(())
}

fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    let cfg = args.location.load()?;
    let dir = DataDir::of(&cfg);
    if cfg.database_url.is_none() && !dir.db().exists() {
        anyhow::bail!(
            "no database at {}: pass the server's --data-dir or --config",
            dir.db().display()
        );
    }
    let id = service::revocation_id_of(&args.token).map_err(|e| anyhow::anyhow!("{e}"))?;
    let db = ferry::db::Db::open_configured(cfg.database_url.as_deref(), &dir.db())
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    db.call_blocking(|c| ferry::db::revocations::insert(c, &id))
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    println!("revoked {id}");
    Ok(())
}
