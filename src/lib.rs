//! ferry: a Nix binary cache that takes every NAR in parts small enough for
//! a Cloudflare Tunnel (100 MB per request), verifies the reassembled NAR
//! against its NarHash and NarSize, and only then publishes it.
//!
//! Data flow: the HTTP layer (`server`) hands request bodies to the upload
//! engine (`upload`), which writes parts durably, folds them in order into
//! a running verifier (zstd decode → SHA-256 + size + NAR structure), and
//! publishes in one SQLite transaction (`db`) once blobs are in the
//! content-addressed store (`store`). Substituter reads come straight from
//! `db` and `store`. `nar` holds the pure Nix formats, `auth` the biscuit
//! capability tokens, `config` the settings, `service` the assembly, `serve_lock` the
//! one-server-per-data-dir lock, and
//! `api` the wire types shared with the client.

pub mod api;
pub mod auth;
pub mod client;
pub mod config;
pub mod crash;
pub mod db;
pub mod error;
pub mod gc;
pub mod nar;
pub mod serve_lock;
pub mod server;
pub mod service;
pub mod store;
pub mod upload;
