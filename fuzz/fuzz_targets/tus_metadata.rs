//! Fuzz target `tus_metadata`: tus `Upload-Metadata`: accepted headers re-encode to the same pairs
//! (the properties are in `fuzz/checks.rs`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::tus_metadata(data));
