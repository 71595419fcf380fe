//! Ed25519 signing keys, public keys and narinfo signatures in exactly the
//! text formats Nix uses (`nix-store --generate-binary-cache-key`,
//! `trusted-public-keys`, `Sig:` lines), so keys are interchangeable with
//! Nix's own tooling.
//!
//! Secret key: `name:` + base64(32-byte seed ++ 32-byte public key).
//! Public key: `name:` + base64(32 bytes). Signature: `name:` + base64(64 bytes).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer as _, VerifyingKey};

use super::{FormatError, Sha256Hash};

/// The string Nix signs for a store path:
/// `1;<store path>;sha256:<nix32>;<nar size>;<references, sorted, comma-joined>`.
///
/// `store_path` and every entry of `references` must be absolute store
/// paths; `references` are sorted here, so callers may pass them in any order.
pub fn fingerprint(
    store_path: &str,
    nar_hash: &Sha256Hash,
    nar_size: u64,
    references: &[String],
) -> String {
    let mut refs: Vec<&str> = references.iter().map(String::as_str).collect();
    refs.sort_unstable();
    format!(
        "1;{store_path};{};{nar_size};{}",
        nar_hash.to_nix32_string(),
        refs.join(",")
    )
}

fn check_name(name: &str) -> Result<(), FormatError> {
    if name.is_empty() || name.contains(':') || name.chars().any(char::is_whitespace) {
        return Err(FormatError::InvalidKeyName {
            name: name.to_string(),
        });
    }
    Ok(())
}

/// Splits `name:base64` and decodes the payload (after trimming surrounding
/// whitespace, as key files usually end with a newline).
fn split_key(s: &str) -> Result<(&str, Vec<u8>), String> {
    let (name, b64) = s
        .trim()
        .split_once(':')
        .ok_or_else(|| "expected <name>:<base64>, but there is no ':'".to_string())?;
    if name.is_empty() || name.chars().any(char::is_whitespace) {
        return Err("the key name before ':' must be non-empty and contain no whitespace".into());
    }
    let bytes = STANDARD
        .decode(b64)
        .map_err(|e| format!("the part after ':' is not valid base64 ({e})"))?;
    Ok((name, bytes))
}

/// A named Ed25519 secret key used to sign narinfo files.
#[derive(Clone)]
pub struct SigningKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

impl SigningKey {
    /// Generates a fresh key from the operating system's RNG.
    pub fn generate(name: &str) -> Result<Self, FormatError> {
        check_name(name)?;
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        Ok(Self {
            name: name.to_string(),
            key,
        })
    }

    /// Parses Nix's secret key format `name:base64(seed ++ public)`; checks
    /// that the stored public half really belongs to the seed.
    pub fn parse(s: &str) -> Result<Self, FormatError> {
        let err = |reason: String| FormatError::InvalidSecretKey { reason };
        let (name, bytes) = split_key(s).map_err(err)?;
        let bytes: [u8; 64] = bytes.try_into().map_err(|b: Vec<u8>| {
            err(if b.len() == 32 {
                "it decodes to 32 bytes, which is a public key; a secret key has 64 bytes (seed and public key)".to_string()
            } else {
                format!("it decodes to {} bytes, but a Nix secret key has 64", b.len())
            })
        })?;
        let key = ed25519_dalek::SigningKey::from_keypair_bytes(&bytes).map_err(|_| {
            err("its public half does not match its secret seed; the key file is corrupt".into())
        })?;
        Ok(Self {
            name: name.to_string(),
            key,
        })
    }

    /// The secret key in Nix's format, suitable for a key file.
    pub fn to_nix_string(&self) -> String {
        format!(
            "{}:{}",
            self.name,
            STANDARD.encode(self.key.to_keypair_bytes())
        )
    }

    /// The key name (e.g. `cache.example.org-1`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matching public key, for clients' `trusted-public-keys`.
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Signs a [`fingerprint`], returning a `Sig:` value `name:base64(sig)`.
    pub fn sign(&self, fingerprint: &str) -> String {
        let sig = self.key.sign(fingerprint.as_bytes());
        format!("{}:{}", self.name, STANDARD.encode(sig.to_bytes()))
    }
}

impl fmt::Debug for SigningKey {
    /// Shows the name and public key only; the secret never leaves.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("name", &self.name)
            .field("public_key", &self.public_key().to_nix_string())
            .finish_non_exhaustive()
    }
}

/// A named Ed25519 public key used to verify `Sig:` lines.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PublicKey {
    name: String,
    key: VerifyingKey,
}

impl PublicKey {
    /// Parses Nix's public key format `name:base64(32 bytes)`.
    pub fn parse(s: &str) -> Result<Self, FormatError> {
        let err = |reason: String| FormatError::InvalidPublicKey { reason };
        let (name, bytes) = split_key(s).map_err(err)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            err(if b.len() == 64 {
                "it decodes to 64 bytes, which is a secret key; never publish it, use the public key instead".to_string()
            } else {
                format!("it decodes to {} bytes, but a Nix public key has 32", b.len())
            })
        })?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| err("its 32 bytes are not a valid Ed25519 point".into()))?;
        Ok(Self {
            name: name.to_string(),
            key,
        })
    }

    /// The public key in Nix's format, as put in `trusted-public-keys`.
    pub fn to_nix_string(&self) -> String {
        format!("{}:{}", self.name, STANDARD.encode(self.key.as_bytes()))
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks a `name:base64(sig)` signature over `fingerprint`; false if
    /// the signature is malformed, names another key, or does not verify.
    pub fn verify(&self, fingerprint: &str, sig: &str) -> bool {
        let Some((name, b64)) = sig.split_once(':') else {
            return false;
        };
        if name != self.name {
            return false;
        }
        let Ok(bytes) = STANDARD.decode(b64) else {
            return false;
        };
        let Ok(sig) = Signature::from_slice(&bytes) else {
            return false;
        };
        self.key.verify_strict(fingerprint.as_bytes(), &sig).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed key (seed 0x01..0x20) so signatures are reproducible.
    fn fixed_key() -> SigningKey {
        let seed: [u8; 32] = std::array::from_fn(|i| i as u8 + 1);
        SigningKey {
            name: "cache.example.org-1".into(),
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        }
    }

    fn sample_fingerprint() -> String {
        fingerprint(
            "/nix/store/7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello-2.12.1",
            &Sha256Hash::digest(b""),
            120,
            &[
                "/nix/store/zz7qgvs4kgzsn8a6rb273saxyqh4jxlz-b".to_string(),
                "/nix/store/007qgvs4kgzsn8a6rb273saxyqh4jxlz-a".to_string(),
            ],
        )
    }

    #[test]
    fn fingerprint_format() {
        assert_eq!(
            sample_fingerprint(),
            "1;/nix/store/7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello-2.12.1;\
             sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73;120;\
             /nix/store/007qgvs4kgzsn8a6rb273saxyqh4jxlz-a,/nix/store/zz7qgvs4kgzsn8a6rb273saxyqh4jxlz-b"
        );
        let none = fingerprint("/nix/store/x", &Sha256Hash([0; 32]), 1, &[]);
        assert!(none.ends_with(";1;"), "{none}");
    }

    #[test]
    fn sign_verify_vector() {
        let key = fixed_key();
        let fp = sample_fingerprint();
        let sig = key.sign(&fp);
        // Ed25519 is deterministic: the same key and message give the same
        // signature forever.
        assert_eq!(sig, key.sign(&fp));
        assert!(sig.starts_with("cache.example.org-1:"));
        assert_eq!(sig.len(), "cache.example.org-1:".len() + 88);
        let public = key.public_key();
        assert!(public.verify(&fp, &sig));
        assert!(!public.verify(&format!("{fp}x"), &sig));
        assert!(!public.verify(&fp, &sig.replacen("cache", "other", 1)));
        assert!(!public.verify(&fp, "cache.example.org-1:AAAA"));
        assert!(!public.verify(&fp, "garbage"));
        // RFC 8032 public key for this seed is fixed too.
        assert_eq!(PublicKey::parse(&public.to_nix_string()).unwrap(), public);
    }

    #[test]
    fn rfc8032_test_vector_1() {
        let seed = hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
            .unwrap();
        let public =
            hex::decode("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
                .unwrap();
        let sig = hex::decode(
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        )
        .unwrap();
        let secret = format!("rfc:{}", STANDARD.encode([seed, public.clone()].concat()));
        let key = SigningKey::parse(&secret).unwrap();
        assert_eq!(
            key.public_key().to_nix_string(),
            format!("rfc:{}", STANDARD.encode(&public))
        );
        let expected = format!("rfc:{}", STANDARD.encode(&sig));
        assert_eq!(key.sign(""), expected);
        assert!(key.public_key().verify("", &expected));
    }

    /// Key made by `nix-store --generate-binary-cache-key test-1`; the
    /// signature was made by `nix store sign` (Nix 2.8) for this path.
    #[test]
    fn matches_nix_signature() {
        let key = SigningKey::parse(
            "test-1:j5Q8r7iuRsuKVq8kVtQqCt4pq26Ul4eHJDNSyJbHyiIs5YOE18ELk7M4UuKV3LtsJAJxZgz/98v2IEfYmQQEhg==",
        )
        .unwrap();
        assert_eq!(
            key.public_key().to_nix_string(),
            "test-1:LOWDhNfBC5OzOFLildy7bCQCcWYM//fL9iBH2JkEBIY="
        );
        let fp = fingerprint(
            "/nix/store/gw80lp9prdc4zdcvv2pw1dvaimr90gjs-a",
            &Sha256Hash::parse("sha256-CkMIecJm+LV/QJKg+TXPP6zUi7zN5XYNR0jKQFFx6Wk=").unwrap(),
            120,
            &[],
        );
        assert_eq!(
            fp,
            "1;/nix/store/gw80lp9prdc4zdcvv2pw1dvaimr90gjs-a;sha256:0sg9f58l1jj88w6pdrfdpj5x9b1zrwszk84j81zvby36q9whhhqa;120;"
        );
        assert_eq!(
            key.sign(&fp),
            "test-1:y8kGop4MMPYIJIPdSlccTqafqJ9B2TTQ254JOouK2imrrB5xWHAYb9dfbp8MrbrOgSclpNuzCOv4r41bOq7RAg=="
        );
    }

    #[test]
    fn secret_round_trip() {
        let key = SigningKey::generate("k-1").unwrap();
        let text = key.to_nix_string();
        let again = SigningKey::parse(&format!("{text}\n")).unwrap();
        assert_eq!(again.name(), "k-1");
        assert_eq!(again.public_key(), key.public_key());
        assert_eq!(again.to_nix_string(), text);
        let fp = sample_fingerprint();
        assert!(key.public_key().verify(&fp, &again.sign(&fp)));
    }

    #[test]
    fn rejects_bad_keys() {
        for name in ["", "a:b", "a b", "a\tb"] {
            assert!(SigningKey::generate(name).is_err(), "{name:?}");
        }
        let key = fixed_key();
        let public = key.public_key().to_nix_string();
        assert!(SigningKey::parse(&public).is_err());
        assert!(PublicKey::parse(&key.to_nix_string()).is_err());
        assert!(PublicKey::parse("nocolon").is_err());
        assert!(PublicKey::parse(":AAAA").is_err());
        assert!(PublicKey::parse("k:!!!").is_err());
        // Mismatched public half.
        let mut bytes = key.key.to_keypair_bytes();
        bytes[63] ^= 1;
        let corrupt = format!("k:{}", STANDARD.encode(bytes));
        let msg = SigningKey::parse(&corrupt).unwrap_err().to_string();
        assert!(msg.contains("does not match"), "{msg}");
    }

    #[test]
    fn debug_hides_secret() {
        let key = fixed_key();
        let secret_b64 = key.to_nix_string();
        let secret_b64 = secret_b64.split_once(':').unwrap().1;
        let dbg = format!("{key:?}");
        assert!(!dbg.contains(secret_b64), "{dbg}");
        assert!(!dbg.contains(&secret_b64[..43]), "{dbg}");
        assert!(dbg.contains("cache.example.org-1"));
    }
}
