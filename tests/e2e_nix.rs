//! End-to-end tests with real Nix 2.8, real curl and real nginx against
//! ferry: pushing through a 100 MB proxy with curl only
//! (`examples/curl-push.sh`), `nix copy --to` with a netrc token, a wrong
//! NarHash refused, resuming an upload after SIGKILL, and private versus
//! public caches. Every tool is required: a missing one fails the test.
mod common;

mod e2e_nix {
    pub mod access;
    pub mod curl_push;
    pub mod nix_copy;
    pub mod parts_api;
    pub mod support;
}
