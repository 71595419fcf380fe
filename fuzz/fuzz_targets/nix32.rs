//! Fuzz target `nix32`: Nix base-32 and SHA-256 spellings round-trip and are canonical
//! (the properties are in `fuzz/checks.rs`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::nix32_and_hashes(data));
