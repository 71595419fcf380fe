//! Which Nix `ferry use` is talking to: single-user (the user's own
//! settings are used) or a daemon that ignores an untrusted user's
//! substituters and reads only its own netrc.
//!
//! Facts come from Nix itself: `nix store ping` names the store (`local`,
//! `daemon`, `unix://…`) and, from Nix 2.15 on, says `Trusted: 1|0`; older
//! Nix gets the answer from `nix show-config`'s `trusted-users` (a name,
//! `@group` or `*`). The parsing and the verdict are pure functions; only
//! [`probe`] runs commands.

use std::path::PathBuf;
use std::process::Command;

/// What `ferry use` needs to know about the local Nix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NixSetup {
    /// The store URI Nix reports (`local`, `daemon`, `unix:///…`, …).
    pub store: String,
    /// Whether a daemon does the fetching.
    pub daemon: bool,
    /// Whether the daemon applies this user's settings.
    pub trusted: bool,
    /// The user, as `id -un` names them.
    pub user: String,
    /// Nix's `trusted-users` line, for messages.
    pub trusted_users: String,
    /// The directory of the system nix.conf (`$NIX_CONF_DIR`, else
    /// `/etc/nix`).
    pub conf_dir: PathBuf,
}

/// The user `ferry use` runs as.
#[derive(Clone, Debug)]
pub struct Who {
    pub name: String,
    pub uid: u32,
    pub groups: Vec<String>,
}

/// `key = value` lines of `nix show-config` as a lookup.
pub fn setting<'a>(show_config: &'a str, key: &str) -> Option<&'a str> {
    show_config.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim())
    })
}

/// `Store URL:` and `Trusted:` of `nix store ping` (or `nix store info`).
pub fn ping_fields(ping: &str) -> (Option<String>, Option<bool>) {
    let field = |name: &str| {
        ping.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_owned())
        })
    };
    let trusted = field("Trusted").and_then(|v| match v.as_str() {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    });
    (field("Store URL"), trusted)
}

/// Whether `who` matches a `trusted-users` value (names, `@group`, `*`).
pub fn is_trusted(trusted_users: &str, who: &Who) -> bool {
    who.uid == 0
        || trusted_users.split_whitespace().any(|t| {
            t == "*"
                || t == who.name
                || t.strip_prefix('@')
                    .is_some_and(|g| who.groups.iter().any(|x| x == g))
        })
}

/// Whether a store URI means "through a daemon".
pub fn is_daemon_store(store: &str) -> bool {
    store == "daemon" || store.starts_with("unix://")
}

/// The verdict from what Nix printed. `ping` is `None` when
/// `nix store ping` failed (no daemon running, say); then the `store`
/// setting decides.
pub fn decide(show_config: &str, ping: Option<&str>, who: &Who, conf_dir: PathBuf) -> NixSetup {
    let (url, trusted_said) = ping.map(ping_fields).unwrap_or((None, None));
    let store = url
        .or_else(|| setting(show_config, "store").map(str::to_owned))
        .unwrap_or_else(|| "auto".to_owned());
    let trusted_users = setting(show_config, "trusted-users")
        .unwrap_or("root")
        .to_owned();
    let daemon = is_daemon_store(&store);
    let trusted = trusted_said.unwrap_or_else(|| is_trusted(&trusted_users, who));
    NixSetup {
        store,
        daemon,
        trusted,
        user: who.name.clone(),
        trusted_users,
        conf_dir,
    }
}

/// Asks the local Nix (and `id`). An error says which command failed.
pub fn probe() -> Result<NixSetup, String> {
    let show = run(
        "nix",
        &[
            "--extra-experimental-features",
            "nix-command",
            "show-config",
        ],
    )?;
    // Nix 2.8 prints `Store URL:` on stderr, newer Nix on stdout.
    let ping = run_both(
        "nix",
        &[
            "--extra-experimental-features",
            "nix-command",
            "store",
            "ping",
        ],
    )
    .ok();
    let who = Who {
        name: run("id", &["-un"])?.trim().to_owned(),
        uid: run("id", &["-u"])?
            .trim()
            .parse()
            .map_err(|e| format!("`id -u` printed no number: {e}"))?,
        groups: run("id", &["-Gn"])?
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    };
    Ok(decide(&show, ping.as_deref(), &who, system_conf_dir()))
}

/// Where Nix reads the system nix.conf and its default netrc from.
pub fn system_conf_dir() -> PathBuf {
    std::env::var_os("NIX_CONF_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/nix"))
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    run_capture(program, args, false)
}

/// Like [`run`], with stderr appended to stdout.
fn run_both(program: &str, args: &[&str]) -> Result<String, String> {
    run_capture(program, args, true)
}

fn run_capture(program: &str, args: &[&str], with_stderr: bool) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let mut bytes = out.stdout;
    if with_stderr {
        bytes.push(b'\n');
        bytes.extend_from_slice(&out.stderr);
    }
    String::from_utf8(bytes).map_err(|_| format!("`{program}` printed non-UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(name: &str, uid: u32, groups: &[&str]) -> Who {
        Who {
            name: name.into(),
            uid,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    const SHOW: &str = "allowed-users = *\nnetrc-file = /etc/nix/netrc\nstore = auto\ntrusted-users = root @wheel alice\n";

    #[test]
    fn trusted_users_names_groups_and_star() {
        let t = "root @wheel alice";
        assert!(is_trusted(t, &who("alice", 1000, &[])));
        assert!(is_trusted(t, &who("bob", 1001, &["users", "wheel"])));
        assert!(!is_trusted(t, &who("bob", 1001, &["users"])));
        assert!(is_trusted(t, &who("anything", 0, &[])), "uid 0 is root");
        assert!(is_trusted("*", &who("bob", 1001, &[])));
        assert!(!is_trusted("", &who("bob", 1001, &[])));
        assert!(!is_trusted("@alice", &who("alice", 1000, &["users"])));
    }

    #[test]
    fn daemon_store_from_ping_or_setting() {
        let bob = who("bob", 1001, &["users"]);
        let d = decide(
            SHOW,
            Some("Store URL: daemon\nVersion: 2.8.0\n"),
            &bob,
            "/etc/nix".into(),
        );
        assert!(d.daemon && !d.trusted);
        assert_eq!(d.trusted_users, "root @wheel alice");
        let l = decide(
            SHOW,
            Some("Store URL: local\nVersion: 2.8.0\n"),
            &bob,
            "/etc/nix".into(),
        );
        assert!(!l.daemon);
        let no_ping = decide(
            &SHOW.replace("auto", "daemon"),
            None,
            &bob,
            "/etc/nix".into(),
        );
        assert!(no_ping.daemon, "the store setting decides without a ping");
        let unix = decide(SHOW, Some("Store URL: unix:///run/x\n"), &bob, "/e".into());
        assert!(unix.daemon);
    }

    #[test]
    fn newer_nix_says_trusted_itself() {
        let bob = who("bob", 1001, &[]);
        let d = decide(
            SHOW,
            Some("Store URL: daemon\nVersion: 2.18.1\nTrusted: 1\n"),
            &bob,
            "/e".into(),
        );
        assert!(d.trusted, "Nix's own answer wins over trusted-users");
        let alice = who("alice", 1000, &[]);
        let d = decide(
            SHOW,
            Some("Store URL: daemon\nTrusted: 0\n"),
            &alice,
            "/e".into(),
        );
        assert!(!d.trusted);
    }

    #[test]
    fn settings_lookup() {
        assert_eq!(setting(SHOW, "netrc-file"), Some("/etc/nix/netrc"));
        assert_eq!(setting(SHOW, "netrc"), None);
        assert_eq!(setting("substituters = \n", "substituters"), Some(""));
    }
}
