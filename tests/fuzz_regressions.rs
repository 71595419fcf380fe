//! Replays the saved fuzz inputs, `fuzz/regressions/<target>/*` (the
//! inputs the fuzzers broke ferry with, and hand-made seeds of valid
//! input), through the same property checks the fuzz targets run
//! (`fuzz/checks.rs`), so found bugs stay fixed without cargo-fuzz.

use std::path::{Path, PathBuf};

#[path = "../fuzz/checks.rs"]
mod checks;

fn regressions() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions")
}

/// Runs `target`'s check on each of its saved inputs; fails naming every
/// input that breaks a property (the panic message is printed above).
fn replay(target: &str) {
    let (_, check) = checks::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a known target");
    let dir = regressions().join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 2,
        "{} should hold seed inputs for {target}",
        dir.display()
    );
    let failed: Vec<String> = files
        .iter()
        .filter(|file| {
            let data = std::fs::read(file).expect("a readable input");
            std::panic::catch_unwind(|| check(&data)).is_err()
        })
        .map(|file| file.display().to_string())
        .collect();
    assert!(failed.is_empty(), "{target} fails on {failed:#?}");
}

#[test]
fn every_regression_directory_names_a_target() {
    for entry in std::fs::read_dir(regressions()).expect("fuzz/regressions") {
        let name = entry.expect("a directory entry").file_name();
        let name = name.to_string_lossy();
        assert!(
            checks::TARGETS.iter().any(|(target, _)| *target == name),
            "fuzz/regressions/{name} is not a fuzz target"
        );
    }
}

#[test]
fn narinfo() {
    replay("narinfo");
}

#[test]
fn nar() {
    replay("nar");
}

#[test]
fn tus_metadata() {
    replay("tus_metadata");
}

#[test]
fn content_digest() {
    replay("content_digest");
}

#[test]
fn range() {
    replay("range");
}

#[test]
fn nix32() {
    replay("nix32");
}

#[test]
fn store_path() {
    replay("store_path");
}
