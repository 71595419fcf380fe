//! End-to-end test harness for ferry: real Nix 2.8, real nginx, real curl.
//!
//! Integration tests include it with `mod common;`. It depends on std,
//! `serde_json` and `tempfile` only, and never on the ferry crate itself, so
//! it can be checked on its own (`tests/harness_selftest.rs`).
//!
//! Rules it follows:
//! - A missing tool is a loud panic ("X is not installed: run .ci/run"); a
//!   test never passes by skipping.
//! - Every Nix command gets its settings through `NIX_CONFIG` (see
//!   [`nix::NIX_CONFIG`]), so tests do not depend on `/etc/nix/nix.conf`:
//!   no build users, no sandbox, no substituters (no network), no narinfo
//!   disk-cache TTLs, and a per-process `XDG_CACHE_HOME`.
//! - Everything temporary lives in `tempfile` directories removed on drop.
//!
//! Modules: [`tools`] (finding programs, ports, command output),
//! [`nix`] (building closures, path info, NAR dumps, keys, copying),
//! [`fs`] (tree comparison), [`garage`] (a single-node Garage S3 store with
//! a bucket and a key), [`nginx`] (reverse proxy / static server with a
//! parsed access log), [`http`] (curl wrapper returning status, headers and
//! body), [`upstream`] (a tiny HTTP sink server), [`client`] (the `ferry`
//! client binary with a home of its own), [`paths`] (made-up store paths
//! and bytes), [`served`] (a path's narinfo and
//! NAR as served, checked against the local store).
#![allow(dead_code, unused_imports)]

pub mod client;
pub mod ferry;
pub mod flaky;
pub mod fs;
pub mod garage;
pub mod http;
pub mod nginx;
pub mod nix;
pub mod paths;
pub mod postgres;
pub mod served;
pub mod tools;
pub mod upstream;

pub use self::ferry::{InProcess, ServerProcess, mint_in};
pub use fs::compare_trees;
pub use garage::{Garage, require_garage, start_garage};
pub use http::{Body, HttpResponse, curl, http_request, try_http_request};
pub use nginx::{
    LogEntry, Nginx, NginxOptions, nginx_max_request_length, start_nginx, start_nginx_static,
    start_nginx_static_auth, start_nginx_with,
};
pub use nix::{
    BlobKind, BlobSpec, BuiltClosure, CacheKey, ClosureSpec, FreshStore, PathInfo, build_closure,
    build_copy_of, dump_nar, generate_key, nix_cmd, nix_copy_from, nix_copy_to, nix_hash_to_base32,
    nix_sign, path_info, path_info_in, try_nix_copy_from, write_netrc,
};
pub use paths::{Nar, hash_part, noise, store_path};
pub use tools::{
    CmdFailure, env_num, files_under, free_port, require_tool, run_ok, seed_from_env, unique_salt,
};
pub use upstream::{SinkUpstream, start_sink_upstream};
