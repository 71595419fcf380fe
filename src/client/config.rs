//! The client's saved state: servers from `ferry login` and a cached copy
//! of each cache's public settings, in `$XDG_CONFIG_HOME/ferry/config.toml`
//! (default `~/.config/ferry/config.toml`, mode 0600: it holds tokens).
//!
//! `ferry cache info` and `ferry cache create` refresh the cached copy, so
//! `ferry use` can write a Nix configuration without reaching the server.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ClientError, Result};
use crate::api::CacheInfo;

/// `$XDG_CONFIG_HOME` or `~/.config`.
pub fn xdg_config_home() -> Result<PathBuf> {
    xdg_dir("XDG_CONFIG_HOME", ".config")
}

/// `$XDG_STATE_HOME` or `~/.local/state`.
pub fn xdg_state_home() -> Result<PathBuf> {
    xdg_dir("XDG_STATE_HOME", ".local/state")
}

fn xdg_dir(var: &str, fallback: &str) -> Result<PathBuf> {
    if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(v));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            ClientError::Config(format!("neither {var} nor HOME is set: set one of them"))
        })?;
    Ok(PathBuf::from(home).join(fallback))
}

/// Where the config file is.
pub fn config_path() -> Result<PathBuf> {
    Ok(xdg_config_home()?.join("ferry").join("config.toml"))
}

/// A cache's settings as last seen from the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CachedCache {
    pub public_key: String,
    pub store_dir: String,
    pub priority: i64,
    #[serde(default)]
    pub public: bool,
}

impl From<&CacheInfo> for CachedCache {
    fn from(i: &CacheInfo) -> Self {
        CachedCache {
            public_key: i.public_key.clone(),
            store_dir: i.store_dir.clone(),
            priority: i.priority,
            public: i.public,
        }
    }
}

/// One server saved by `ferry login`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Server {
    /// Base URL, without a trailing slash.
    pub url: String,
    pub token: String,
    #[serde(default)]
    pub caches: BTreeMap<String, CachedCache>,
}

/// The whole config file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClientConfig {
    /// The server used when a target names no server.
    #[serde(default)]
    pub default_server: Option<String>,
    #[serde(default)]
    pub servers: BTreeMap<String, Server>,
}

/// `NAME:CACHE` (or just `CACHE` with a default server).
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub server: String,
    pub cache: String,
}

impl ClientConfig {
    /// Reads the config file; a missing file is an empty config.
    pub fn load_from(path: &Path) -> Result<ClientConfig> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| {
                ClientError::Config(format!(
                    "{} is not a valid ferry config: {e}",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ClientConfig::default()),
            Err(e) => Err(ClientError::io("read", path, e)),
        }
    }

    /// Writes the file atomically with mode 0600.
    pub fn save_to(&self, path: &Path) -> Result<()> {
        let text = toml::to_string(self)
            .map_err(|e| ClientError::Config(format!("cannot render the config: {e}")))?;
        write_private(path, text.as_bytes())
    }

    /// Adds or replaces a server; the first server becomes the default.
    pub fn login(&mut self, name: &str, url: &str, token: &str, set_default: bool) -> Result<()> {
        check_server_name(name)?;
        let url = url.trim_end_matches('/').to_owned();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ClientError::Config(format!(
                "server URL {url:?} must start with http:// or https://"
            )));
        }
        let caches = self
            .servers
            .remove(name)
            .filter(|s| s.url == url)
            .map(|s| s.caches)
            .unwrap_or_default();
        self.servers.insert(
            name.to_owned(),
            Server {
                url,
                token: token.trim().to_owned(),
                caches,
            },
        );
        if set_default || self.default_server.is_none() {
            self.default_server = Some(name.to_owned());
        }
        Ok(())
    }

    /// Parses `NAME:CACHE`, or `CACHE` for the default server.
    pub fn target(&self, spec: &str) -> Result<Target> {
        let (server, cache) = match spec.split_once(':') {
            Some((s, c)) => (s.to_owned(), c.to_owned()),
            None => match &self.default_server {
                Some(d) => (d.clone(), spec.to_owned()),
                None => {
                    return Err(ClientError::Config(format!(
                        "{spec:?} names no server and there is no default: write NAME:CACHE after `ferry login NAME URL TOKEN`"
                    )));
                }
            },
        };
        if cache.is_empty() {
            return Err(ClientError::Config(format!(
                "{spec:?} names no cache: write NAME:CACHE"
            )));
        }
        self.server(&server)?;
        Ok(Target { server, cache })
    }

    /// The saved server called `name`.
    pub fn server(&self, name: &str) -> Result<&Server> {
        self.servers.get(name).ok_or_else(|| {
            ClientError::Config(format!(
                "no server named {name:?}: run `ferry login {name} URL TOKEN` first"
            ))
        })
    }

    /// Remembers what the server said about a cache.
    pub fn remember(&mut self, target: &Target, info: &CacheInfo) {
        if let Some(s) = self.servers.get_mut(&target.server) {
            s.caches
                .insert(target.cache.clone(), CachedCache::from(info));
        }
    }
}

fn check_server_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ClientError::Config(format!(
            "server name {name:?} may only hold letters, digits, '.', '_' and '-' (no ':')"
        )))
    }
}

/// Writes `bytes` to `path` through a temp file and a rename, mode 0600,
/// creating parent directories (0700).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, bytes, 0o600)
}

/// Writes `bytes` to `path` through a temp file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.as_os_str().is_empty() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| ClientError::io("create", dir, e))?;
    }
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| ClientError::io("create", &tmp, e))?;
    f.write_all(bytes)
        .map_err(|e| ClientError::io("write", &tmp, e))?;
    f.sync_all().map_err(|e| ClientError::io("sync", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ClientError::io("replace", path, e))
}

use std::os::unix::fs::DirBuilderExt as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_targets_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry/config.toml");
        let mut c = ClientConfig::load_from(&path).unwrap();
        c.login("home", "https://cache.example.org/", "tok", false)
            .unwrap();
        c.login("work", "http://10.0.0.1:8080", "t2", false)
            .unwrap();
        assert_eq!(c.default_server.as_deref(), Some("home"));
        assert_eq!(
            c.target("main").unwrap(),
            Target {
                server: "home".into(),
                cache: "main".into()
            }
        );
        assert_eq!(c.target("work:x").unwrap().server, "work");
        assert!(c.target("nope:x").is_err());
        assert!(c.login("a:b", "http://x", "t", false).is_err());
        c.save_to(&path).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = ClientConfig::load_from(&path).unwrap();
        assert_eq!(back.servers["home"].url, "https://cache.example.org");
    }
}
