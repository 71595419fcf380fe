//! Fuzz target `range`: `Range`: a range given lies inside the file and reads back the same
//! (the properties are in `fuzz/checks.rs`).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::range(data));
