//! Fuzz target `nar`: NAR bytes: validator, listing and `read_nar` agree, in any chunking
//! (the properties are in `fuzz/checks.rs`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::nar(data));
