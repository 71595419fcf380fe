//! `ferry use`: make Nix substitute from a cache, in the way the local
//! installation needs it.
//!
//! - default: the user's nix.conf and a netrc beside it, unless Nix fetches
//!   through a daemon that does not trust the user (then nothing is
//!   written and the error says what root must run) or nix.conf is a
//!   symlink (home-manager: the lines to add are printed instead);
//! - `--system`: the system nix.conf and netrc, for the daemon;
//! - `--nixos`: the `configuration.nix` lines, nothing written.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

use ferry::client::config::{ClientConfig, Server, Target, config_path, xdg_config_home};
use ferry::client::nixconf::{self, UseSettings};
use ferry::client::nixenv::{self, NixSetup};

#[derive(Args)]
pub struct UseArgs {
    /// NAME:CACHE (or CACHE on the default server).
    target: String,
    /// nix.conf to edit (default: $XDG_CONFIG_HOME/nix/nix.conf; with
    /// --system: $NIX_CONF_DIR/nix.conf, i.e. /etc/nix/nix.conf).
    #[arg(long)]
    nix_conf: Option<PathBuf>,
    /// netrc file to edit (default: netrc beside the nix.conf).
    #[arg(long)]
    netrc: Option<PathBuf>,
    /// Print the nix.conf block instead of writing any file.
    #[arg(long)]
    print: bool,
    /// As root: write the system nix.conf and netrc, which the Nix daemon
    /// reads for every user.
    #[arg(long, conflicts_with = "nixos")]
    system: bool,
    /// With --system: restart the Nix daemon so that it reads them now.
    #[arg(long, requires = "system")]
    restart_daemon: bool,
    /// Print the NixOS configuration lines; write nothing.
    #[arg(long)]
    nixos: bool,
    /// Read servers from this ferry config file instead of your own (for
    /// root setting up a cache a user logged in to).
    #[arg(long, value_name = "FILE")]
    ferry_config: Option<PathBuf>,
}

/// Runs `ferry use`.
pub fn run(a: UseArgs) -> anyhow::Result<()> {
    let config_file = match &a.ferry_config {
        Some(p) => p.clone(),
        None => config_path()?,
    };
    let config = ClientConfig::load_from(&config_file)?;
    let target = config.target(&a.target)?;
    let server = config.server(&target.server)?;
    let host = nixconf::host_of(&server.url)?;
    if a.nixos {
        let s = settings(&target, server, PathBuf::from("/etc/nix/netrc"))?;
        print!("{}", s.nixos_lines(&host));
        return Ok(());
    }
    if a.system {
        return system(&a, &target, server, &host);
    }
    user(&a, &target, server, &host, &config_file)
}

fn settings(target: &Target, server: &Server, netrc: PathBuf) -> anyhow::Result<UseSettings> {
    let Some(cached) = server.caches.get(&target.cache) else {
        bail!(
            "no saved settings for {0}:{1}: run `ferry cache info {0}:{1}` once (online) first",
            target.server,
            target.cache
        );
    };
    let netrc = std::path::absolute(&netrc)
        .with_context(|| format!("cannot resolve {}", netrc.display()))?;
    Ok(UseSettings {
        marker: format!("{}:{}", target.server, target.cache),
        substituter: format!("{}/{}", server.url, target.cache),
        cache: cached.clone(),
        netrc_file: netrc,
    })
}

fn beside(nix_conf: &Path, netrc: &Option<PathBuf>) -> PathBuf {
    match netrc {
        Some(p) => p.clone(),
        None => nix_conf
            .parent()
            .map(|d| d.join("netrc"))
            .unwrap_or_else(|| PathBuf::from("netrc")),
    }
}

fn is_symlink(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
}

fn system(a: &UseArgs, target: &Target, server: &Server, host: &str) -> anyhow::Result<()> {
    let dir = nixenv::system_conf_dir();
    let nix_conf = a.nix_conf.clone().unwrap_or_else(|| dir.join("nix.conf"));
    let s = settings(target, server, beside(&nix_conf, &a.netrc))?;
    if a.print {
        print!("{}", s.block());
        return Ok(());
    }
    if is_symlink(&nix_conf) {
        print!("{}", s.nixos_lines(host));
        bail!(
            "{} is a symlink (NixOS, or another tool, manages it): nothing was written. \
             Add the lines above to configuration.nix instead.",
            nix_conf.display()
        );
    }
    write(&s, &nix_conf, host, server)?;
    if a.restart_daemon {
        restart_daemon()?;
        eprintln!(
            "restarted the Nix daemon: it substitutes from {} now",
            s.substituter
        );
    } else {
        eprintln!(
            "The Nix daemon reads nix.conf only when it starts: restart it \
             (`sudo systemctl restart nix-daemon`), or run this again with --restart-daemon."
        );
    }
    Ok(())
}

fn user(
    a: &UseArgs,
    target: &Target,
    server: &Server,
    host: &str,
    config_file: &Path,
) -> anyhow::Result<()> {
    let nix_conf = match &a.nix_conf {
        Some(p) => p.clone(),
        None => xdg_config_home()?.join("nix").join("nix.conf"),
    };
    let s = settings(target, server, beside(&nix_conf, &a.netrc))?;
    if a.print {
        print!("{}", s.block());
        return Ok(());
    }
    match nixenv::probe() {
        Ok(setup) if setup.daemon && !setup.trusted => {
            bail!("{}", untrusted_advice(&setup, &a.target, config_file))
        }
        Ok(_) => {}
        Err(e) => eprintln!(
            "warning: could not ask Nix how it is installed ({e}); \
             writing your own nix.conf, as for single-user Nix"
        ),
    }
    if is_symlink(&nix_conf) {
        print!("{}", s.home_manager_lines());
        let wrote = write_netrc(&s.netrc_file, host, server)?;
        bail!(
            "{} is a symlink (home-manager manages it): ferry left it untouched{}. \
             Add the lines above to your home-manager configuration instead \
             (or enable programs.ferry from the flake's homeManagerModules.default, see the README).",
            nix_conf.display(),
            if wrote {
                format!(" and wrote the token to {}", s.netrc_file.display())
            } else {
                String::new()
            }
        );
    }
    write(&s, &nix_conf, host, server)
}

/// What to say when the daemon would ignore the user's settings.
fn untrusted_advice(setup: &NixSetup, target: &str, config_file: &Path) -> String {
    let mut m = format!(
        "Nix here fetches through the nix-daemon (store {:?}), and {} is not in its \
         trusted-users ({:?}): the daemon would ignore a substituter in your nix.conf \
         and never read your netrc. Nothing was written.\n",
        setup.store, setup.user, setup.trusted_users
    );
    let system_conf = setup.conf_dir.join("nix.conf");
    if is_symlink(&system_conf) {
        m.push_str(&format!(
            "{} is managed by NixOS: print the lines for configuration.nix with\n  \
             ferry use {target} --nixos",
            system_conf.display()
        ));
    } else {
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "ferry".into());
        m.push_str(&format!(
            "Have root set it up for every user of this machine:\n  \
             sudo {} use --system {} --ferry-config {} --restart-daemon\n\
             (on NixOS: `ferry use {target} --nixos` prints the lines for configuration.nix)",
            shell_quote(&exe),
            shell_quote(target),
            shell_quote(&config_file.display().to_string()),
        ));
    }
    m
}

fn write(s: &UseSettings, nix_conf: &Path, host: &str, server: &Server) -> anyhow::Result<()> {
    let conf =
        nixconf::rewrite_nix_conf(&nixconf::read_or_empty(nix_conf)?, &s.marker, &s.block())?;
    let wrote_conf = nixconf::write_if_changed(nix_conf, &conf, 0o644).map_err(permission_hint)?;
    let wrote_netrc = write_netrc(&s.netrc_file, host, server)?;
    let said = |w: bool| if w { "updated" } else { "unchanged" };
    eprintln!("{} {}", said(wrote_conf), nix_conf.display());
    eprintln!("{} {}", said(wrote_netrc), s.netrc_file.display());
    Ok(())
}

fn write_netrc(netrc: &Path, host: &str, server: &Server) -> anyhow::Result<bool> {
    if is_symlink(netrc) {
        bail!(
            "{} is a symlink: ferry does not replace it; add `machine {host} login token password <TOKEN>` where it points",
            netrc.display()
        );
    }
    let net = nixconf::rewrite_netrc(&nixconf::read_or_empty(netrc)?, host, &server.token);
    nixconf::write_if_changed(netrc, &net, 0o600).map_err(permission_hint)
}

fn permission_hint(e: ferry::client::ClientError) -> anyhow::Error {
    let denied = matches!(&e, ferry::client::ClientError::Io { source, .. }
        if source.kind() == std::io::ErrorKind::PermissionDenied);
    let e = anyhow::Error::new(e);
    if denied {
        e.context("permission denied: the system files need root (sudo)")
    } else {
        e
    }
}

fn restart_daemon() -> anyhow::Result<()> {
    let (program, args): (&str, &[&str]) = if cfg!(target_os = "macos") {
        (
            "launchctl",
            &["kickstart", "-k", "system/org.nixos.nix-daemon"],
        )
    } else {
        ("systemctl", &["restart", "nix-daemon.service"])
    };
    let status = std::process::Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    if !status.success() {
        bail!(
            "`{program} {}` failed ({status}): restart the Nix daemon by hand",
            args.join(" ")
        );
    }
    Ok(())
}

/// Quotes `s` for a POSIX shell when it needs it.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:+=@,".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/usr/bin/ferry"), "/usr/bin/ferry");
        assert_eq!(shell_quote("home:main"), "home:main");
        assert_eq!(shell_quote("/a b/c"), "'/a b/c'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
