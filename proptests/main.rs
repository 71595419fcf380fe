//! Property tests (one test target): Nix formats, tokens and the upload engine.

mod auth;
mod nar;
mod upload;
