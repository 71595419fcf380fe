//! `ferry use`: a marked block in nix.conf and a line in a netrc file, both
//! rewritten in place so that running it again changes nothing.
//!
//! The nix.conf block is
//!
//! ```text
//! # ferry:NAME:CACHE begin (written by `ferry use`; replaced on the next run)
//! extra-substituters = URL/CACHE
//! extra-trusted-public-keys = KEY
//! netrc-file = NETRC
//! # ferry:NAME:CACHE end
//! ```
//!
//! `extra-` settings add to what other lines and files set instead of
//! replacing it, so the block can sit anywhere in the file and several
//! caches can each have one. The netrc line is
//! `machine HOST login token password TOKEN` (curl skips entries without a
//! login); an existing entry for the host, on one line or several, is
//! replaced where it stands.

use std::path::{Path, PathBuf};

use super::config::{CachedCache, write_atomic};
use super::{ClientError, Result};

/// What `ferry use` writes for one cache.
#[derive(Clone, Debug)]
pub struct UseSettings {
    /// `NAME:CACHE`, used in the block markers.
    pub marker: String,
    /// The substituter URL (`server URL/cache`).
    pub substituter: String,
    pub cache: CachedCache,
    pub netrc_file: PathBuf,
}

impl UseSettings {
    /// The nix.conf block, markers included, ending with a newline.
    pub fn block(&self) -> String {
        format!(
            "{begin} (written by `ferry use`; replaced on the next run)\n\
             extra-substituters = {}\n\
             extra-trusted-public-keys = {}\n\
             netrc-file = {}\n\
             {end}\n",
            self.substituter,
            self.cache.public_key,
            self.netrc_file.display(),
            begin = begin_marker(&self.marker),
            end = end_marker(&self.marker),
        )
    }

    /// Lines for a NixOS `configuration.nix`: the daemon substitutes for
    /// every user. A private cache also needs the token in a root-only
    /// netrc outside the Nix store; `host` names its `machine`.
    pub fn nixos_lines(&self, host: &str) -> String {
        let mut s = format!(
            "# ferry cache {marker}: add to configuration.nix, then run `nixos-rebuild switch`.\n\
             nix.settings.substituters = [ \"{sub}\" ];\n\
             nix.settings.trusted-public-keys = [ \"{key}\" ];\n",
            marker = self.marker,
            sub = self.substituter,
            key = self.cache.public_key,
        );
        if !self.cache.public {
            s.push_str(&format!(
                "# A private cache: the daemon reads the token from a root-only netrc file,\n\
                 # kept out of the Nix store (world-readable). Its one line:\n\
                 #   machine {host} login token password <TOKEN>\n\
                 # Write it by hand (mode 0600) or with agenix/sops-nix, or let ferry's NixOS\n\
                 # module write it at boot from a token file: services.ferry.client (see the README).\n\
                 nix.settings.netrc-file = \"/etc/nix/netrc\";\n"
            ));
        }
        s
    }

    /// Lines for a home-manager configuration (when home-manager owns the
    /// user's nix.conf).
    pub fn home_manager_lines(&self) -> String {
        format!(
            "# ferry cache {marker}: add to your home-manager configuration, then run\n\
             # `home-manager switch` (home-manager needs `nix.package` set to write nix.conf).\n\
             nix.settings = {{\n\
             \x20 extra-substituters = [ \"{sub}\" ];\n\
             \x20 extra-trusted-public-keys = [ \"{key}\" ];\n\
             \x20 netrc-file = \"{netrc}\";\n\
             }};\n",
            marker = self.marker,
            sub = self.substituter,
            key = self.cache.public_key,
            netrc = self.netrc_file.display(),
        )
    }
}

fn begin_marker(marker: &str) -> String {
    format!("# ferry:{marker} begin")
}

fn end_marker(marker: &str) -> String {
    format!("# ferry:{marker} end")
}

/// `existing` nix.conf text with the block for `marker` replaced by
/// `block` (or appended when there is none).
pub fn rewrite_nix_conf(existing: &str, marker: &str, block: &str) -> Result<String> {
    let begin = begin_marker(marker);
    let end = end_marker(marker);
    let lines: Vec<&str> = existing.split_inclusive('\n').collect();
    let is = |l: &str, m: &str| {
        let t = l.trim();
        t == m || t.strip_prefix(m).is_some_and(|rest| rest.starts_with(' '))
    };
    let Some(start) = lines.iter().position(|l| is(l, &begin)) else {
        let mut out = existing.to_owned();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(block);
        return Ok(out);
    };
    let Some(len) = lines[start..].iter().position(|l| is(l, &end)) else {
        return Err(ClientError::Config(format!(
            "nix.conf has {begin:?} but no {end:?} after it: remove the partial block by hand"
        )));
    };
    let mut out: String = lines[..start].concat();
    out.push_str(block);
    out.push_str(&lines[start + len + 1..].concat());
    Ok(out)
}

/// `existing` netrc text with the entry for `host` replaced by one line.
pub fn rewrite_netrc(existing: &str, host: &str, token: &str) -> String {
    let entry = format!("machine {host} login token password {token}\n");
    let mut out = String::new();
    let mut placed = false;
    let mut skipping = false;
    for line in existing.split_inclusive('\n') {
        let mut words = line.split_whitespace();
        let first = words.next();
        if matches!(first, Some("machine" | "default" | "macdef")) {
            skipping = first == Some("machine") && words.next() == Some(host);
            if skipping && !placed {
                out.push_str(&entry);
                placed = true;
            }
        }
        if !skipping {
            out.push_str(line);
        }
    }
    if !placed {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&entry);
    }
    out
}

/// The host of a URL, without scheme, credentials, port or path (what a
/// netrc `machine` names).
pub fn host_of(url: &str) -> Result<String> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .ok_or_else(|| ClientError::Config(format!("{url:?} is not a URL")))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit('@').next().unwrap_or("");
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    if host.is_empty() {
        return Err(ClientError::Config(format!("{url:?} names no host")));
    }
    Ok(host.to_owned())
}

/// Replaces `path`'s content with `new` unless it is already that; keeps
/// the file's mode (new files get `mode`). Returns whether it wrote.
pub fn write_if_changed(path: &Path, new: &str, mode: u32) -> Result<bool> {
    use std::os::unix::fs::PermissionsExt as _;
    let (old, mode) = match std::fs::read(path) {
        Ok(b) => {
            let m = std::fs::metadata(path)
                .map(|m| m.permissions().mode() & 0o7777)
                .unwrap_or(mode);
            (Some(b), m)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, mode),
        Err(e) => return Err(ClientError::io("read", path, e)),
    };
    if old.as_deref() == Some(new.as_bytes()) {
        return Ok(false);
    }
    write_atomic(path, new.as_bytes(), mode)?;
    Ok(true)
}

/// Reads a text file; a missing one is empty.
pub fn read_or_empty(path: &Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(ClientError::io("read", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(key: &str) -> UseSettings {
        UseSettings {
            marker: "home:main".into(),
            substituter: "https://cache.example.org/main".into(),
            cache: CachedCache {
                public_key: key.into(),
                store_dir: "/nix/store".into(),
                priority: 41,
                public: false,
            },
            netrc_file: "/home/u/.config/nix/netrc".into(),
        }
    }

    #[test]
    fn nix_conf_block_is_appended_then_replaced_in_place() {
        let original = "substituters = https://cache.nixos.org\nmax-jobs = 4";
        let b1 = settings("main-1:AAAA").block();
        let once = rewrite_nix_conf(original, "home:main", &b1).unwrap();
        assert!(once.starts_with(
            "substituters = https://cache.nixos.org\nmax-jobs = 4\n# ferry:home:main begin"
        ));
        assert_eq!(
            rewrite_nix_conf(&once, "home:main", &b1).unwrap(),
            once,
            "idempotent"
        );
        let with_tail = format!("{once}keep-going = true\n");
        let b2 = settings("main-2:BBBB").block();
        let changed = rewrite_nix_conf(&with_tail, "home:main", &b2).unwrap();
        assert!(changed.contains("main-2:BBBB") && !changed.contains("main-1:AAAA"));
        assert!(changed.ends_with("# ferry:home:main end\nkeep-going = true\n"));
        let other = rewrite_nix_conf(
            &changed,
            "home:other",
            &b1.replace("home:main", "home:other"),
        )
        .unwrap();
        assert_eq!(other.matches("begin").count(), 2);
        assert!(rewrite_nix_conf("# ferry:home:main begin\nx = 1\n", "home:main", &b1).is_err());
    }

    #[test]
    fn netrc_entry_replaced_for_its_host_only() {
        let existing = "machine a.org login x password y\nmachine cache.example.org\n  login old\n  password old\ndefault login anon password z\n";
        let out = rewrite_netrc(existing, "cache.example.org", "T");
        assert_eq!(
            out,
            "machine a.org login x password y\nmachine cache.example.org login token password T\ndefault login anon password z\n"
        );
        assert_eq!(
            rewrite_netrc(&out, "cache.example.org", "T"),
            out,
            "idempotent"
        );
        assert_eq!(
            rewrite_netrc("", "h", "T"),
            "machine h login token password T\n"
        );
        assert_eq!(
            rewrite_netrc("machine a login b password c", "h", "T"),
            "machine a login b password c\nmachine h login token password T\n"
        );
    }

    #[test]
    fn hosts() {
        assert_eq!(
            host_of("https://cache.example.org/x").unwrap(),
            "cache.example.org"
        );
        assert_eq!(host_of("http://127.0.0.1:8080").unwrap(), "127.0.0.1");
        assert_eq!(host_of("http://u:p@[::1]:80/").unwrap(), "::1");
        assert!(host_of("nope").is_err());
    }
}
