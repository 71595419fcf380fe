//! Fuzz target `content_digest`: `Content-Digest`: a digest found is 32 bytes and reads back the same
//! (the properties are in `fuzz/checks.rs`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::content_digest(data));
