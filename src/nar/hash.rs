//! SHA-256 digests and all the ways Nix spells them.
//!
//! Nix tools emit and accept several spellings of the same hash (nix32,
//! hex, base64, SRI); a cache must accept all of them from clients but
//! always writes the canonical `sha256:<nix32>` form in narinfo files.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest as _, Sha256};

use super::{FormatError, nix32};

/// A SHA-256 digest (NAR hash or compressed file hash).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Sha256Hash(pub [u8; 32]);

impl Sha256Hash {
    /// Parses any accepted spelling: `sha256:<52 nix32>`, `sha256:<64 hex>`,
    /// `sha256:<44 base64>`, SRI `sha256-<base64>`, or a bare 52-char nix32
    /// or 64-char hex string.
    pub fn parse(s: &str) -> Result<Self, FormatError> {
        Self::parse_named(s, "hash")
    }

    /// Like [`Sha256Hash::parse`], but errors name `field` (e.g. `NarHash`
    /// or `nar_hash`) so the user knows which input was wrong.
    pub fn parse_named(s: &str, field: &str) -> Result<Self, FormatError> {
        Self::try_parse(s).ok_or_else(|| FormatError::InvalidHash {
            field: field.to_string(),
            value: s.to_string(),
        })
    }

    fn try_parse(s: &str) -> Option<Self> {
        if let Some(b64) = s.strip_prefix("sha256-") {
            return Self::from_base64(b64);
        }
        let body = s.strip_prefix("sha256:").unwrap_or(s);
        match body.len() {
            52 => Self::from_slice(&nix32::decode(body).ok()?),
            64 => Self::from_slice(&hex::decode(body).ok()?),
            // Base64 without the prefix is too ambiguous to guess at.
            44 if body.len() != s.len() => Self::from_base64(body),
            _ => None,
        }
    }

    fn from_base64(s: &str) -> Option<Self> {
        if s.len() != 44 {
            return None;
        }
        Self::from_slice(&STANDARD.decode(s).ok()?)
    }

    fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.try_into().ok()?))
    }

    /// The canonical narinfo spelling, `sha256:<52 nix32 chars>`.
    pub fn to_nix32_string(&self) -> String {
        format!("sha256:{}", self.nix32())
    }

    /// Just the 52 nix32 characters (used in NAR file names and URLs).
    pub fn nix32(&self) -> String {
        nix32::encode(&self.0)
    }

    /// The SRI spelling, `sha256-<44 base64 chars>`.
    pub fn to_sri(&self) -> String {
        format!("sha256-{}", STANDARD.encode(self.0))
    }

    /// 64 lowercase hex characters, without prefix.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Hashes `data` in one go.
    pub fn digest(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }
}

impl fmt::Display for Sha256Hash {
    /// Writes the canonical `sha256:<nix32>` form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_nix32_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_NIX32: &str = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
    const EMPTY_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const EMPTY_B64: &str = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";

    #[test]
    fn digest_of_empty() {
        let h = Sha256Hash::digest(b"");
        assert_eq!(h.to_hex(), EMPTY_HEX);
        assert_eq!(h.nix32(), EMPTY_NIX32);
        assert_eq!(h.to_nix32_string(), format!("sha256:{EMPTY_NIX32}"));
        assert_eq!(h.to_sri(), format!("sha256-{EMPTY_B64}"));
        assert_eq!(h.to_string(), h.to_nix32_string());
    }

    #[test]
    fn parses_every_spelling() {
        let h = Sha256Hash::digest(b"");
        for s in [
            format!("sha256:{EMPTY_NIX32}"),
            format!("sha256:{EMPTY_HEX}"),
            format!("sha256:{}", EMPTY_HEX.to_uppercase()),
            format!("sha256:{EMPTY_B64}"),
            format!("sha256-{EMPTY_B64}"),
            EMPTY_NIX32.to_string(),
            EMPTY_HEX.to_string(),
        ] {
            assert_eq!(Sha256Hash::parse(&s).unwrap(), h, "{s}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "sha256:",
            "sha256:xyz",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha512:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
            "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuF",
            "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c7e",
            EMPTY_B64,
        ] {
            assert!(Sha256Hash::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn error_names_field() {
        let msg = Sha256Hash::parse_named("xyz", "nar_hash")
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("nar_hash \"xyz\" is not a valid hash: expected sha256:<52 nix32"),
            "{msg}"
        );
    }
}
