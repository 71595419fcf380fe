//! The ferry client: a push engine and the local state the commands share.
//!
//! Commands in `src/cli/client.rs` are glue over these modules:
//! [`config`] (servers saved by `ferry login`, cached cache settings),
//! [`http`] (the API with retries, see [`backoff`]), [`pathinfo`] (closures
//! from `nix path-info`, topological order), [`parts`] (splitting a
//! compressed NAR stream into exact-size parts), [`chunk`] (content-defined
//! chunks of a NAR, each its own zstd frame), [`chunked_parts`] (a chunked
//! upload's manifest and parts), [`resume`] (the state file
//! that lets a killed push carry on), [`push`] (the engine), [`progress`]
//! (indicatif bars), [`nixconf`] (`ferry use`: nix.conf block and netrc),
//! [`nixenv`] (which Nix `ferry use` talks to: single-user or a daemon)
//! and [`watch`] (`ferry watch-store`).

pub mod backoff;
pub mod batch;
pub mod chunk;
pub mod chunked_parts;
pub mod config;
pub mod dump;
pub mod http;
pub mod nixconf;
pub mod nixenv;
pub mod parts;
pub mod pathinfo;
pub mod progress;
pub mod push;
mod push_path;
pub mod resume;
pub mod watch;

/// Everything the client can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Config(String),
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{method} {url} failed: {message}")]
    Transport {
        method: String,
        url: String,
        message: String,
    },
    /// The server answered with an error status.
    #[error("{method} {url}: server answered {status} {code}: {message}")]
    Api {
        method: String,
        url: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("{0}")]
    Nix(String),
    #[error("{path}: {message}")]
    Push { path: String, message: String },
}

impl ClientError {
    pub(crate) fn io(
        what: &'static str,
        path: impl AsRef<std::path::Path>,
        source: std::io::Error,
    ) -> Self {
        ClientError::Io {
            what,
            path: path.as_ref().display().to_string(),
            source,
        }
    }

    /// The API error code, when the server sent one.
    pub fn api_code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Installs the process-wide TLS crypto provider (ring) once; reqwest is
/// built with `rustls-no-provider`, so this must run before a client is
/// made.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
