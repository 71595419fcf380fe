//! Property tests (one test target): Nix formats, tokens, the upload engine
//! and the client's NAR chunks.

mod auth;
mod chunk;
mod nar;
mod upload;
