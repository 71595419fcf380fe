//! Property tests (one test target): Nix formats, tokens, the upload engine,
//! the batch body framing
//! and the client's NAR chunks.

mod auth;
mod batch;
mod chunk;
mod nar;
mod upload;
