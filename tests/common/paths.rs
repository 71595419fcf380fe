//! Made-up store paths, bytes and NARs for HTTP-level tests: a valid store
//! path derived from a name, its hash part, seeded incompressible bytes, a
//! NAR declared for a path ([`Nar`]; tests add their own methods to it).

use std::collections::BTreeMap;

use ferry::nar::{Sha256Hash, Tree, nix32, write_nar};

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

/// Bytes declared as the NAR of a store path, with their SHA-256.
pub struct Nar {
    pub path: String,
    pub bytes: Vec<u8>,
    pub hash: Sha256Hash,
}

impl Nar {
    /// A valid NAR for the store path named `name`: a directory holding an
    /// executable `bin` of `size` bytes of [`noise`] and a symlink to it.
    pub fn new(name: &str, size: usize) -> Nar {
        let mut entries = BTreeMap::new();
        entries.insert(
            "bin".to_owned(),
            Tree::Regular {
                executable: true,
                contents: noise(name, size),
            },
        );
        entries.insert(
            "link".to_owned(),
            Tree::Symlink {
                target: "bin".into(),
            },
        );
        Nar::from_bytes(&store_path(name), write_nar(&Tree::Directory(entries)))
    }

    /// `bytes`, whatever they are, declared with their true hash and size
    /// as the NAR of `path`.
    pub fn from_bytes(path: &str, bytes: Vec<u8>) -> Nar {
        Nar {
            path: path.to_owned(),
            hash: Sha256Hash::digest(&bytes),
            bytes,
        }
    }

    /// The hash part of the NAR's store path.
    pub fn hash_part(&self) -> &str {
        hash_part(&self.path)
    }
}
