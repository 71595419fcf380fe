//! Server configuration: one serde tree, TOML, kebab-case keys.
//!
//! Every key has a default, so `ferry serve` runs with no file at all.
//! Unknown keys are refused by name (`deny_unknown_fields`), and
//! [`Config::validate`] checks the limits that matter behind a tunnel.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Cloudflare's free tier refuses request bodies above 100 MB; parts above
/// this bound leave too little room for headers and proxies.
pub const PART_SIZE_CEILING: u64 = 95_000_000;

/// The server's settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
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
    /// The largest NarSize an upload may declare, in bytes (413
    /// `nar_too_large` above).
    pub max_nar_size: u64,
    /// Uploads one token (and the tokens attenuated from it) may have open
    /// at once (429 `too_many_uploads` above).
    pub max_open_uploads_per_token: u64,
    /// Seconds without a request after which an upload is removed.
    pub upload_expiry_secs: u64,
    /// zstd level for plain NARs the server compresses (1–19).
    pub zstd_level: i32,
    /// Largest tus upload accepted (`Tus-Max-Size`), in bytes.
    pub tus_max_size: u64,
    /// Origins allowed to use the tus endpoint from a browser (CORS);
    /// `["*"]` allows any. Empty: no CORS headers at all.
    pub cors_origins: Vec<String>,
    /// Seconds between garbage collection runs.
    pub gc_interval_secs: u64,
    /// Retention given to new caches that name none (e.g. "6 months");
    /// unset keeps paths forever.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_retention: Option<String>,
    /// Seconds a file no database row knows (in the blob store or the
    /// uploads dir: a crash's leftover) is left alone before GC removes it.
    /// Blobs the database knows go as soon as nothing refers to them.
    pub orphan_grace_secs: u64,
    /// Seconds between writes of the recorded read times (narinfo and NAR
    /// reads keep a path past its cache's retention).
    pub access_flush_secs: u64,
    /// Host names the server answers for (the `Host` header); empty: any.
    pub allowed_hosts: Vec<String>,
    /// Peer addresses (IPs) whose `X-Forwarded-*` / `Forwarded` headers are
    /// believed (a reverse proxy on the same host, such as cloudflared);
    /// empty: nobody's.
    pub trusted_proxies: Vec<String>,
    /// The URL clients reach the server at (e.g. https://cache.example.org),
    /// used for links in answers; unset: links are paths.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// Log format on stderr: "text" or "json".
    pub log_format: String,
    /// An address serving `/metrics` without a token (for a Prometheus on
    /// the same host); unset: none. The main listener serves `/metrics`
    /// only to a token with `admin`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Keep metadata in PostgreSQL instead of `DATA-DIR/ferry.db`: a libpq
    /// URL (`postgres://USER@HOST:PORT/DB`, or `host=/run/postgresql
    /// dbname=ferry`). Leave the password out: `PGPASSWORD` in the
    /// environment is used when the URL has none. Unset: SQLite.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// The token root key (created, mode 0600, on first start when
    /// absent); unset: `DATA-DIR/root.key`. Instances that serve one set
    /// of caches name the same file (or a copy of it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_key_file: Option<PathBuf>,
    /// Keep blobs in an S3-compatible bucket instead of `DATA-DIR/blobs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Config>,
}

/// The `[s3]` table: an S3-compatible bucket for blobs (Garage, R2, AWS,
/// MinIO).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct S3Config {
    /// The service URL (e.g. `http://127.0.0.1:3900` for Garage,
    /// `https://ACCOUNT.r2.cloudflarestorage.com` for R2); unset: AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub bucket: String,
    /// The region the signature names (Garage: "garage", R2: "auto").
    #[serde(default = "default_region")]
    pub region: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    /// A file holding the key id (for systemd credentials, secret stores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key_file: Option<PathBuf>,
    /// `http://endpoint/bucket/key` (true) or `http://bucket.endpoint/key`.
    #[serde(default = "yes")]
    pub path_style: bool,
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

fn yes() -> bool {
    true
}

impl S3Config {
    /// (key id, secret): each from its key, else its `-file` key, else
    /// `FERRY_S3_ACCESS_KEY_ID` / `FERRY_S3_SECRET_ACCESS_KEY`.
    pub fn credentials(&self) -> anyhow::Result<(String, String)> {
        let one = |value: &Option<String>, file: &Option<PathBuf>, key: &str, env: &str| {
            if let Some(v) = value {
                return Ok(v.trim().to_owned());
            }
            if let Some(f) = file {
                let v = std::fs::read_to_string(f).map_err(|e| {
                    anyhow::anyhow!("[s3] {key}-file: cannot read {}: {e}", f.display())
                })?;
                return Ok(v.trim().to_owned());
            }
            match std::env::var(env) {
                Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_owned()),
                _ => Err(anyhow::anyhow!(
                    "[s3] needs {key} (or {key}-file, or the environment variable {env})"
                )),
            }
        };
        Ok((
            one(
                &self.access_key_id,
                &self.access_key_id_file,
                "access-key-id",
                "FERRY_S3_ACCESS_KEY_ID",
            )?,
            one(
                &self.secret_access_key,
                &self.secret_access_key_file,
                "secret-access-key",
                "FERRY_S3_SECRET_ACCESS_KEY",
            )?,
        ))
    }
}

impl Config {
    /// The limits a public-facing server relies on, one `key = value` line
    /// each, as `--check-config` lists them.
    pub fn limits(&self) -> String {
        let or_none = |v: Option<String>| v.unwrap_or_else(|| "(none)".to_owned());
        format!(
            "limits:\n  max-part-size = {}\n  max-nar-size = {}\n  \
             max-open-uploads-per-token = {}\n  upload-expiry-secs = {}\n  \
             tus-max-size = {}\n  allowed-hosts = {:?}\n  trusted-proxies = {:?}\n  \
             metrics-listen = {}\n",
            self.max_part_size,
            self.max_nar_size,
            self.max_open_uploads_per_token,
            self.upload_expiry_secs,
            self.tus_max_size,
            self.allowed_hosts,
            self.trusted_proxies,
            or_none(self.metrics_listen.map(|a| a.to_string())),
        )
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("ferry-data"),
            max_part_size: 64 * 1024 * 1024,
            force_max_part_size: false,
            upload_expiry_secs: 24 * 3600,
            max_nar_size: crate::upload::DEFAULT_MAX_NAR_SIZE,
            max_open_uploads_per_token: crate::upload::DEFAULT_MAX_OPEN_UPLOADS,
            zstd_level: crate::store::zstd_io::DEFAULT_LEVEL,
            tus_max_size: 1 << 40,
            cors_origins: vec![],
            gc_interval_secs: 3600,
            default_retention: None,
            orphan_grace_secs: 3600,
            access_flush_secs: 60,
            allowed_hosts: vec![],
            trusted_proxies: vec![],
            public_url: None,
            log_format: "text".to_owned(),
            metrics_listen: None,
            database_url: None,
            s3: None,
            root_key_file: None,
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
        if let Some(url) = &self.database_url {
            crate::db::postgres::parse_url(url).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        if let Some(s3) = &self.s3 {
            if s3.bucket.trim().is_empty() {
                anyhow::bail!("[s3] bucket must not be empty");
            }
            if let Some(e) = &s3.endpoint
                && !(e.starts_with("http://") || e.starts_with("https://"))
            {
                anyhow::bail!("[s3] endpoint {e:?} must start with http:// or https://");
            }
            s3.credentials()?;
        }
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
        if self.gc_interval_secs == 0 {
            anyhow::bail!("gc-interval-secs must be greater than 0");
        }
        if self.max_nar_size == 0 {
            anyhow::bail!("max-nar-size must be greater than 0");
        }
        if self.max_open_uploads_per_token == 0 {
            anyhow::bail!("max-open-uploads-per-token must be greater than 0");
        }
        for p in &self.trusted_proxies {
            if p.parse::<std::net::IpAddr>().is_err() {
                anyhow::bail!(
                    "trusted-proxies: {p:?} is not an IP address (give addresses such as \"127.0.0.1\" or \"::1\")"
                );
            }
        }
        if self.access_flush_secs == 0 {
            anyhow::bail!("access-flush-secs must be greater than 0");
        }
        if let Some(r) = &self.default_retention {
            crate::auth::parse_duration(r)
                .map_err(|e| anyhow::anyhow!("default-retention = {r:?} is not a duration: {e}"))?;
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            anyhow::bail!(
                "log-format must be \"text\" or \"json\", not {:?}",
                self.log_format
            );
        }
        if let Some(u) = &self.public_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            anyhow::bail!("public-url must start with http:// or https://, not {u:?}");
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
        let cfg: Config =
            toml::from_str("max-part-size = 200000000\nforce-max-part-size = true").unwrap();
        cfg.validate().unwrap();
        Config::default().validate().unwrap();
    }
}
