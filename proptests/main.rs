//! Property tests (one test target): Nix formats and the upload engine.

mod nar;
mod upload;
