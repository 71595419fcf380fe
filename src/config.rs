//! Server configuration: one serde tree, TOML, kebab-case keys.
//!
//! Every key has a default, so `ferry serve` runs with no file at all.
//! Unknown keys are refused by name (`deny_unknown_fields`), and
//! [`Config::validate`] checks the limits that matter behind a tunnel.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Cloudflare's free tier refuses request bodies above 100 MB; parts above
/// this bound leave too little room for headers and proxies.
pub const PART_SIZE_CEILING: u64 = 95_000_000;

/// The server's settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory for the SQLite database, blobs, parts and the root key.
    pub data_dir: PathBuf,
    /// Largest part accepted, in bytes (default 64 MiB, at most 95 MB
    /// unless `force-max-part-size` is set).
    pub max_part_size: u64,
    /// Allow `max-part-size` above 95 MB (for servers not behind a tunnel).
    pub force_max_part_size: bool,
    /// Seconds without a request after which an upload is removed.
    pub upload_expiry_secs: u64,
    /// zstd level for plain NARs the server compresses (1–19).
    pub zstd_level: i32,
    /// Largest tus upload accepted (`Tus-Max-Size`), in bytes.
    pub tus_max_size: u64,
    /// Origins allowed to use the tus endpoint from a browser (CORS);
    /// `["*"]` allows any. Empty: no CORS headers at all.
    pub cors_origins: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("ferry-data"),
            max_part_size: 64 * 1024 * 1024,
            force_max_part_size: false,
            upload_expiry_secs: 24 * 3600,
            zstd_level: crate::store::zstd_io::DEFAULT_LEVEL,
            tus_max_size: 1 << 40,
            cors_origins: vec![],
        }
    }
}

impl Config {
    /// Reads a TOML file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        let cfg: Config = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
        Ok(cfg)
    }

    /// Checks limits; the message names the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.max_part_size == 0 {
            anyhow::bail!("max-part-size must be greater than 0");
        }
        if self.max_part_size > PART_SIZE_CEILING && !self.force_max_part_size {
            anyhow::bail!(
                "max-part-size = {} is above 95 MB: a Cloudflare tunnel refuses request bodies over 100 MB; lower it, or set force-max-part-size = true if no such proxy is in front",
                self.max_part_size
            );
        }
        if !(1..=19).contains(&self.zstd_level) {
            anyhow::bail!("zstd-level must be between 1 and 19");
        }
        if self.upload_expiry_secs == 0 {
            anyhow::bail!("upload-expiry-secs must be greater than 0");
        }
        Ok(())
    }

    /// Upload expiry as a duration.
    pub fn upload_expiry(&self) -> Duration {
        Duration::from_secs(self.upload_expiry_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named_and_big_parts_refused() {
        let err = toml::from_str::<Config>("listne = \"1.2.3.4:5\"").unwrap_err();
        assert!(err.to_string().contains("listne"), "{err}");
        let cfg: Config = toml::from_str("max-part-size = 200000000").unwrap();
        let msg = cfg.validate().unwrap_err().to_string();
        assert!(msg.contains("max-part-size"), "{msg}");
        let cfg: Config = toml::from_str("max-part-size = 200000000\nforce-max-part-size = true").unwrap();
        cfg.validate().unwrap();
        Config::default().validate().unwrap();
    }
}
