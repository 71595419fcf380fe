//! Fuzz target `narinfo`: `.narinfo` text: parse → render → parse gives the same value
//! (the properties are in `fuzz/checks.rs`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::narinfo(data));
