//! Nix store paths (`/nix/store/<32 nix32 chars>-<name>`) and the checks Nix
//! applies to them.
//!
//! Store paths arrive from untrusted clients (narinfo uploads, URLs), so
//! they are validated with Nix's own rules before being used as keys or
//! rendered back into files.

use std::fmt;

use super::{FormatError, nix32};

/// Length of the hash part of a store path base name.
pub const HASH_PART_LEN: usize = 32;

/// Longest name Nix allows after `<hash>-`.
pub const MAX_NAME_LEN: usize = 211;

/// A validated store path, split into store directory, hash part and name.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct StorePath {
    store_dir: String,
    hash_part: String,
    name: String,
}

impl StorePath {
    /// Parses an absolute path `"<store_dir>/<hash>-<name>"`.
    pub fn parse(abs: &str, store_dir: &str) -> Result<Self, FormatError> {
        validate_store_dir(store_dir)?;
        let base = abs
            .strip_prefix(store_dir)
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(|| {
                invalid(
                    abs,
                    format!("it is not inside the store directory {store_dir:?}"),
                )
            })?;
        Self::check_base(base, abs)?;
        Ok(Self::from_checked(base, store_dir))
    }

    /// Parses a base name `"<hash>-<name>"` (as used in narinfo `References`).
    pub fn from_base_name(base: &str, store_dir: &str) -> Result<Self, FormatError> {
        validate_store_dir(store_dir)?;
        Self::check_base(base, base)?;
        Ok(Self::from_checked(base, store_dir))
    }

    fn from_checked(base: &str, store_dir: &str) -> Self {
        Self {
            store_dir: store_dir.to_string(),
            hash_part: base[..HASH_PART_LEN].to_string(),
            name: base[HASH_PART_LEN + 1..].to_string(),
        }
    }

    /// Checks `base` against Nix's rules; `shown` is what errors quote.
    fn check_base(base: &str, shown: &str) -> Result<(), FormatError> {
        let bytes = base.as_bytes();
        if bytes.len() < HASH_PART_LEN + 2 || bytes[HASH_PART_LEN] != b'-' {
            return Err(invalid(
                shown,
                "expected <32 nix32 chars>-<name> after the store directory".to_string(),
            ));
        }
        if !bytes[..HASH_PART_LEN]
            .iter()
            .all(|&c| nix32::is_nix32_char(c))
        {
            return Err(invalid(
                shown,
                "its hash part must be 32 characters from 0123456789abcdfghijklmnpqrsvwxyz"
                    .to_string(),
            ));
        }
        check_name(&base[HASH_PART_LEN + 1..]).map_err(|reason| invalid(shown, reason))
    }

    /// The 32-character nix32 hash part.
    pub fn hash_part(&self) -> &str {
        &self.hash_part
    }

    /// The name after `<hash>-`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The store directory this path lives in, e.g. `/nix/store`.
    pub fn store_dir(&self) -> &str {
        &self.store_dir
    }

    /// `"<hash>-<name>"`.
    pub fn base_name(&self) -> String {
        format!("{}-{}", self.hash_part, self.name)
    }

    /// `"<store_dir>/<hash>-<name>"`.
    pub fn to_absolute(&self) -> String {
        format!("{}/{}-{}", self.store_dir, self.hash_part, self.name)
    }
}

impl fmt::Display for StorePath {
    /// Writes the absolute path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}-{}", self.store_dir, self.hash_part, self.name)
    }
}

fn invalid(path: &str, reason: String) -> FormatError {
    FormatError::InvalidStorePath {
        path: path.to_string(),
        reason,
    }
}

/// Nix's name rules; returns the reason on failure.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("its name (after <hash>-) is empty".to_string());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "its name is {} characters long; Nix allows at most {MAX_NAME_LEN}",
            name.len()
        ));
    }
    if name.starts_with('.') {
        return Err("its name must not start with '.'".to_string());
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "+-._?=".contains(c)))
    {
        return Err(format!(
            "its name contains {c:?}; only A-Z a-z 0-9 and + - . _ ? = are allowed"
        ));
    }
    Ok(())
}

/// Checks that `s` is exactly 32 characters of the nix32 alphabet, as in
/// `GET /<hash>.narinfo`.
pub fn validate_hash_part(s: &str) -> Result<(), FormatError> {
    if s.len() == HASH_PART_LEN && s.bytes().all(nix32::is_nix32_char) {
        Ok(())
    } else {
        Err(FormatError::InvalidHashPart {
            value: s.to_string(),
        })
    }
}

/// Checks that a store directory is absolute, has no trailing slash, no
/// empty, `.` or `..` components, and no whitespace or control characters.
pub fn validate_store_dir(s: &str) -> Result<(), FormatError> {
    let reason = if !s.starts_with('/') {
        Some("it must be an absolute path such as /nix/store")
    } else if s.ends_with('/') {
        Some("it must not end with '/' (write e.g. /nix/store)")
    } else if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("it must not contain whitespace or control characters")
    } else if s[1..]
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        Some("it must not contain empty, '.' or '..' components")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(FormatError::InvalidStoreDir {
            dir: s.to_string(),
            reason: reason.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/nix/store/7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello-2.12.1";

    #[test]
    fn parses_and_renders() {
        let p = StorePath::parse(P, "/nix/store").unwrap();
        assert_eq!(p.hash_part(), "7h7qgvs4kgzsn8a6rb273saxyqh4jxlz");
        assert_eq!(p.name(), "hello-2.12.1");
        assert_eq!(p.store_dir(), "/nix/store");
        assert_eq!(
            p.base_name(),
            "7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello-2.12.1"
        );
        assert_eq!(p.to_absolute(), P);
        assert_eq!(p.to_string(), P);
        let q = StorePath::from_base_name(&p.base_name(), "/nix/store").unwrap();
        assert_eq!(p, q);
    }

    #[test]
    fn other_store_dir() {
        let p = StorePath::parse(
            "/tmp/store/7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-x",
            "/tmp/store",
        )
        .unwrap();
        assert_eq!(
            p.to_absolute(),
            "/tmp/store/7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-x"
        );
        assert!(StorePath::parse(P, "/tmp/store").is_err());
        assert!(StorePath::parse(P, "/nix").is_err());
    }

    #[test]
    fn rejects_bad_paths() {
        let h = "7h7qgvs4kgzsn8a6rb273saxyqh4jxlz";
        for bad in [
            format!("/nix/store/{h}"),
            format!("/nix/store/{h}-"),
            format!("/nix/store/{h}-.hidden"),
            format!("/nix/store/{h}-a/b"),
            format!("/nix/store/{h}-a b"),
            format!("/nix/store/{h}-a\u{e9}"),
            format!("/nix/store/{h}x-a"),
            format!("/nix/store/{}-a", &h[..31]),
            format!("/nix/store/e{}-a", &h[1..]),
            format!("/nix/store//{h}-a"),
            format!("/nix/store/{h}-{}", "a".repeat(212)),
        ] {
            assert!(StorePath::parse(&bad, "/nix/store").is_err(), "{bad}");
        }
        let ok = format!("/nix/store/{h}-{}", "a".repeat(211));
        assert!(StorePath::parse(&ok, "/nix/store").is_ok());
        let ok = format!("/nix/store/{h}-A+-._?=0");
        assert!(StorePath::parse(&ok, "/nix/store").is_ok());
    }

    #[test]
    fn hash_parts() {
        assert!(validate_hash_part("7h7qgvs4kgzsn8a6rb273saxyqh4jxlz").is_ok());
        assert!(validate_hash_part("7h7qgvs4kgzsn8a6rb273saxyqh4jxl").is_err());
        assert!(validate_hash_part("eh7qgvs4kgzsn8a6rb273saxyqh4jxlz").is_err());
        assert!(validate_hash_part("../qgvs4kgzsn8a6rb273saxyqh4jxlz").is_err());
    }

    #[test]
    fn store_dirs() {
        for ok in ["/nix/store", "/a", "/tmp/my-store"] {
            assert!(validate_store_dir(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/",
            "nix/store",
            "/nix/store/",
            "/nix/../store",
            "/nix//store",
            "/nix/st ore",
            "/nix/./store",
        ] {
            assert!(validate_store_dir(bad).is_err(), "{bad}");
        }
    }
}
