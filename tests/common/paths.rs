//! Made-up store paths and bytes for HTTP-level tests: a valid store path
//! derived from a name, its hash part, seeded incompressible bytes.

use ferry::nar::{Sha256Hash, nix32};

/// A valid store path in `/nix/store` whose hash part derives from `name`.
pub fn store_path(name: &str) -> String {
    let h = Sha256Hash::digest(name.as_bytes());
    format!("/nix/store/{}-{name}", nix32::encode(&h.0[..20]))
}

/// The 32-character hash part of a store path.
pub fn hash_part(path: &str) -> &str {
    &path.rsplit('/').next().unwrap()[..32]
}

/// `size` pseudo-random (incompressible) bytes seeded by `seed`.
pub fn noise(seed: &str, size: usize) -> Vec<u8> {
    let mut out = vec![0u8; size];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}
