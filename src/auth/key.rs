//! The server's root signing key: generation, hex encoding, and the key file.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use biscuit_auth::{KeyPair, PrivateKey, PublicKey, builder::Algorithm};

use super::AuthError;

/// The ed25519 key pair that signs every token this server issues.
pub struct RootKey {
    pair: KeyPair,
}

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private half.
        f.debug_struct("RootKey")
            .field("public", &self.pair.public().to_bytes_hex())
            .finish_non_exhaustive()
    }
}

impl RootKey {
    /// A new random key from the operating system's RNG.
    pub fn generate() -> Self {
        RootKey {
            pair: KeyPair::new_with_algorithm(Algorithm::Ed25519),
        }
    }

    /// Reads a private key written by [`RootKey::to_private_hex`]
    /// (64 hex digits; surrounding whitespace is ignored).
    pub fn from_private_hex(s: &str) -> Result<Self, AuthError> {
        let private = PrivateKey::from_bytes_hex(s.trim(), Algorithm::Ed25519).map_err(|e| {
            AuthError::Malformed(format!(
                "the root key is not 64 hex digits of an ed25519 private key: {e}"
            ))
        })?;
        Ok(RootKey {
            pair: KeyPair::from(&private),
        })
    }

    /// The private key as 64 lowercase hex digits. Keep it secret.
    pub fn to_private_hex(&self) -> String {
        self.pair.private().to_bytes_hex()
    }

    /// The public key, which verifies tokens.
    pub fn public(&self) -> PublicKey {
        self.pair.public()
    }

    /// The key pair, for minting.
    pub(super) fn pair(&self) -> &KeyPair {
        &self.pair
    }

    /// Reads the key file, or creates it (mode 0600, written to a temp file,
    /// fsync, rename) when absent. Returns (key, created).
    pub fn load_or_create(path: &Path) -> io::Result<(Self, bool)> {
        match fs::read_to_string(path) {
            Ok(text) => {
                let key = Self::from_private_hex(&text).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: {e}", path.display()),
                    )
                })?;
                Ok((key, false))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = Self::generate();
                write_secret_file(path, format!("{}\n", key.to_private_hex()).as_bytes())?;
                Ok((key, true))
            }
            Err(e) => Err(e),
        }
    }
}

/// Writes `contents` to `path` atomically with mode 0600: temp file in the
/// same directory, fsync, rename, then fsync the directory (best effort).
fn write_secret_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "key path has no file name"))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{nanos}",
        file_name.to_string_lossy(),
        std::process::id()
    ));

    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let key = RootKey::generate();
        let hex = key.to_private_hex();
        assert_eq!(hex.len(), 64);
        let back = RootKey::from_private_hex(&format!(" {hex}\n")).unwrap();
        assert_eq!(back.public(), key.public());
        assert!(RootKey::from_private_hex("zz").is_err());
        assert!(RootKey::from_private_hex("abcd").is_err());
        assert!(!format!("{key:?}").contains(&hex), "Debug leaks the key");
    }

    #[test]
    fn load_or_create_creates_then_reloads() {
        let dir = std::env::temp_dir().join(format!(
            "ferry-auth-key-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("root.key");

        let (created, was_created) = RootKey::load_or_create(&path).unwrap();
        assert!(was_created);
        let (loaded, was_created_again) = RootKey::load_or_create(&path).unwrap();
        assert!(!was_created_again);
        assert_eq!(created.public(), loaded.public());
        assert_eq!(created.to_private_hex(), loaded.to_private_hex());

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Only the key file is left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);

        fs::write(&path, "not a key").unwrap();
        let err = RootKey::load_or_create(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        fs::remove_dir_all(&dir).unwrap();
    }
}
