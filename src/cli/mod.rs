//! Command-line parsing; one file per subcommand group holds its glue.

mod client;
mod serve;
mod token;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use ferry::config::Config;

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
    /// Run garbage collection once against the server's data.
    ///
    /// Prints a JSON report. Exits 0 when everything went, 2 when the run
    /// finished but some deletions failed (each is logged; the next run
    /// tries them again), 1 when it could not run.
    Gc(ServerLocation),
    /// Capability tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    #[command(flatten)]
    Client(client::ClientCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff), e.g. `ferry man > ferry.1`.
    Man,
}

/// The manual page of `ferry` (roff, with its subcommands listed) on stdout.
fn man_pages() -> anyhow::Result<()> {
    let cmd = <Cli as clap::CommandFactory>::command();
    clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
    Ok(())
}

/// Where the server's configuration and data are.
#[derive(Args, Clone)]
pub struct ServerLocation {
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
pub struct ServeArgs {
    #[command(flatten)]
    location: ServerLocation,
    /// Address to listen on (overrides the config file).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::serve(args),
        Command::Gc(location) => serve::gc(location),
        Command::Token(cmd) => token::run(cmd),
        Command::Client(cmd) => client::run(cmd),
        Command::Completions { shell } => {
            // Written whole, so a closed pipe is an error, not a panic.
            let mut script = Vec::new();
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "ferry",
                &mut script,
            );
            std::io::Write::write_all(&mut std::io::stdout(), &script).map_err(Into::into)
        }
        Command::Man => man_pages(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<serve::SomeFailed>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
