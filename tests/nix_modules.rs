//! The Nix modules in deploy/ (NixOS `services.ferry` with its client side
//! `services.ferry.client`, home-manager `programs.ferry`): every .nix file
//! parsed, both modules evaluated against stand-ins for nixpkgs' lib, and the
//! netrc scripts they generate run on token files, with this build's
//! `ferry login`. tests/nix/check.sh does the work (and says what cannot be
//! checked without nixpkgs and home-manager).

use std::path::Path;
use std::process::Command;

#[test]
fn nix_modules_parse_evaluate_and_write_the_netrc() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("tests/nix/check.sh"))
        .env("FERRY_BIN", env!("CARGO_BIN_EXE_ferry"))
        .env(
            "NIX_CONFIG",
            "build-users-group =\nsandbox = false\nexperimental-features = nix-command\nsubstituters =\n",
        )
        .output()
        .expect("cannot run bash");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "tests/nix/check.sh failed:\n{text}");
    assert!(text.contains("generated netrc scripts: ok"), "{text}");
}
