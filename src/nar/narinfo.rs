//! `.narinfo` files: the per-store-path metadata a binary cache serves at
//! `/<hash>.narinfo` and that `nix copy --to http://...` uploads.
//!
//! Rendering follows Nix's field order and spacing so clients parse it
//! without surprises; parsing follows Nix's rules (missing `Compression`
//! means bzip2, unknown keys are ignored) but is strict about anything
//! that would make the stored metadata ambiguous.

use std::fmt::Write as _;

use super::{FormatError, Sha256Hash, StorePath, signing};

/// Metadata about one store path and the NAR file holding it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NarInfo {
    /// The store path described.
    pub store_path: StorePath,
    /// Where the (compressed) NAR is, relative to the cache root.
    pub url: String,
    /// Compression of the file at `url` (`zstd`, `xz`, `none`, ...).
    pub compression: String,
    /// Hash of the file at `url`.
    pub file_hash: Option<Sha256Hash>,
    /// Size in bytes of the file at `url`.
    pub file_size: Option<u64>,
    /// Hash of the uncompressed NAR.
    pub nar_hash: Sha256Hash,
    /// Size in bytes of the uncompressed NAR.
    pub nar_size: u64,
    /// Store paths this one refers to, rendered in this order.
    pub references: Vec<StorePath>,
    /// The derivation that built this path, if known.
    pub deriver: Option<StorePath>,
    /// Content address (e.g. `fixed:r:sha256:...`), if any.
    pub ca: Option<String>,
    /// Signatures, each `keyname:base64sig`.
    pub sigs: Vec<String>,
}

impl NarInfo {
    /// Renders the narinfo text: `Key: value` lines in Nix's order.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(512);
        // Writing to a String cannot fail.
        let _ = writeln!(out, "StorePath: {}", self.store_path);
        let _ = writeln!(out, "URL: {}", self.url);
        let _ = writeln!(out, "Compression: {}", self.compression);
        if let Some(h) = &self.file_hash {
            let _ = writeln!(out, "FileHash: {h}");
        }
        if let Some(size) = self.file_size {
            let _ = writeln!(out, "FileSize: {size}");
        }
        let _ = writeln!(out, "NarHash: {}", self.nar_hash);
        let _ = writeln!(out, "NarSize: {}", self.nar_size);
        out.push_str("References: ");
        for (i, r) in self.references.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(&r.base_name());
        }
        out.push('\n');
        if let Some(d) = &self.deriver {
            let _ = writeln!(out, "Deriver: {}", d.base_name());
        }
        for sig in &self.sigs {
            let _ = writeln!(out, "Sig: {sig}");
        }
        if let Some(ca) = &self.ca {
            let _ = writeln!(out, "CA: {ca}");
        }
        out
    }

    /// The string signed by `Sig:` lines (see [`signing::fingerprint`]).
    pub fn fingerprint(&self) -> String {
        let refs: Vec<String> = self.references.iter().map(StorePath::to_absolute).collect();
        signing::fingerprint(
            &self.store_path.to_absolute(),
            &self.nar_hash,
            self.nar_size,
            &refs,
        )
    }

    /// Parses narinfo text whose paths live in `store_dir`.
    ///
    /// Requires `StorePath`, `URL`, `NarHash` and `NarSize` (> 0); a missing
    /// `Compression` means `bzip2`; unknown keys are ignored; a key other
    /// than `Sig` may appear only once.
    pub fn parse(text: &str, store_dir: &str) -> Result<Self, FormatError> {
        let mut fields = Fields::default();
        for (idx, line) in text.split('\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let malformed = || FormatError::NarInfoMalformedLine {
                line_no: idx + 1,
                line: line.to_string(),
            };
            let (key, rest) = line.split_once(':').ok_or_else(malformed)?;
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(malformed());
            }
            let value = rest.strip_prefix(' ').unwrap_or(rest);
            fields.set(key, value, store_dir)?;
        }
        let missing = |field: &str| FormatError::NarInfoMissingField {
            field: field.to_string(),
        };
        Ok(Self {
            store_path: fields.store_path.ok_or_else(|| missing("StorePath"))?,
            url: fields.url.ok_or_else(|| missing("URL"))?,
            compression: fields.compression.unwrap_or_else(|| "bzip2".to_string()),
            file_hash: fields.file_hash,
            file_size: fields.file_size,
            nar_hash: fields.nar_hash.ok_or_else(|| missing("NarHash"))?,
            nar_size: fields.nar_size.ok_or_else(|| missing("NarSize"))?,
            references: fields.references.unwrap_or_default(),
            deriver: fields.deriver.flatten(),
            ca: fields.ca.flatten(),
            sigs: fields.sigs,
        })
    }
}

/// Fields seen so far while parsing; `Some` means "already set".
#[derive(Default)]
struct Fields {
    store_path: Option<StorePath>,
    url: Option<String>,
    compression: Option<String>,
    file_hash: Option<Sha256Hash>,
    file_size: Option<u64>,
    nar_hash: Option<Sha256Hash>,
    nar_size: Option<u64>,
    references: Option<Vec<StorePath>>,
    deriver: Option<Option<StorePath>>,
    ca: Option<Option<String>>,
    sigs: Vec<String>,
}

fn invalid(field: &str, value: &str, reason: &str) -> FormatError {
    FormatError::NarInfoInvalidField {
        field: field.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn put<T>(slot: &mut Option<T>, key: &str, value: T) -> Result<(), FormatError> {
    if slot.is_some() {
        return Err(FormatError::NarInfoDuplicateField {
            field: key.to_string(),
        });
    }
    *slot = Some(value);
    Ok(())
}

fn non_empty(key: &str, value: &str) -> Result<String, FormatError> {
    if value.trim().is_empty() {
        Err(invalid(key, value, "it must not be empty"))
    } else {
        Ok(value.to_string())
    }
}

fn number(key: &str, value: &str) -> Result<u64, FormatError> {
    // Digits only: `u64::from_str` would also take a leading `+`.
    let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    digits
        .then(|| value.parse().ok())
        .flatten()
        .ok_or_else(|| invalid(key, value, "expected a decimal number of bytes"))
}

impl Fields {
    fn set(&mut self, key: &str, value: &str, store_dir: &str) -> Result<(), FormatError> {
        match key {
            "StorePath" => {
                let path = StorePath::parse(value, store_dir)?;
                put(&mut self.store_path, key, path)
            }
            "URL" => put(&mut self.url, key, non_empty(key, value)?),
            "Compression" => put(&mut self.compression, key, non_empty(key, value)?),
            "FileHash" => put(
                &mut self.file_hash,
                key,
                Sha256Hash::parse_named(value, key)?,
            ),
            "FileSize" => put(&mut self.file_size, key, number(key, value)?),
            "NarHash" => put(
                &mut self.nar_hash,
                key,
                Sha256Hash::parse_named(value, key)?,
            ),
            "NarSize" => {
                let size = number(key, value)?;
                if size == 0 {
                    return Err(invalid(
                        key,
                        value,
                        "a NAR is never empty, so it must be > 0",
                    ));
                }
                put(&mut self.nar_size, key, size)
            }
            "References" => {
                let refs = value
                    .split_whitespace()
                    .map(|r| StorePath::from_base_name(r, store_dir))
                    .collect::<Result<Vec<_>, _>>()?;
                put(&mut self.references, key, refs)
            }
            "Deriver" => {
                let deriver = match value {
                    "unknown-deriver" => None,
                    v => Some(StorePath::from_base_name(v, store_dir)?),
                };
                put(&mut self.deriver, key, deriver)
            }
            "CA" => {
                let ca = (!value.is_empty()).then(|| value.to_string());
                put(&mut self.ca, key, ca)
            }
            "Sig" => {
                if !value.contains(':') {
                    return Err(invalid(
                        key,
                        value,
                        "expected <key name>:<base64 signature>",
                    ));
                }
                self.sigs.push(value.to_string());
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SD: &str = "/nix/store";

    fn sp(base: &str) -> StorePath {
        StorePath::from_base_name(base, SD).unwrap()
    }

    fn sample() -> NarInfo {
        let nar_hash = Sha256Hash::digest(b"");
        NarInfo {
            store_path: sp("7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello-2.12.1"),
            url: format!("nar/{}.nar.zst", nar_hash.nix32()),
            compression: "zstd".into(),
            file_hash: Some(Sha256Hash([7; 32])),
            file_size: Some(50),
            nar_hash,
            nar_size: 120,
            references: vec![
                sp("007qgvs4kgzsn8a6rb273saxyqh4jxlz-glibc-2.37"),
                sp("7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello-2.12.1"),
            ],
            deriver: Some(sp("zz7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello-2.12.1.drv")),
            ca: None,
            sigs: vec!["k-1:AAAA".into(), "k-2:BBBB".into()],
        }
    }

    #[test]
    fn render_exact() {
        let info = sample();
        let expected = format!(
            "StorePath: /nix/store/7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello-2.12.1\n\
             URL: {}\n\
             Compression: zstd\n\
             FileHash: {}\n\
             FileSize: 50\n\
             NarHash: sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73\n\
             NarSize: 120\n\
             References: 007qgvs4kgzsn8a6rb273saxyqh4jxlz-glibc-2.37 7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello-2.12.1\n\
             Deriver: zz7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello-2.12.1.drv\n\
             Sig: k-1:AAAA\n\
             Sig: k-2:BBBB\n",
            info.url,
            Sha256Hash([7; 32]).to_nix32_string(),
        );
        assert_eq!(info.render(), expected);
        assert_eq!(NarInfo::parse(&expected, SD).unwrap(), info);
    }

    #[test]
    fn sizes_are_digits_only() {
        let text = sample().render();
        for (from, to) in [
            ("NarSize: 120", "NarSize: +120"),
            ("FileSize: 50", "FileSize: 5 0"),
        ] {
            let bad = text.replace(from, to);
            assert!(NarInfo::parse(&bad, SD).is_err(), "{to} was accepted");
        }
    }

    #[test]
    fn empty_references_and_minimal() {
        let mut info = sample();
        info.references.clear();
        info.deriver = None;
        info.file_hash = None;
        info.file_size = None;
        info.sigs.clear();
        info.ca =
            Some("fixed:r:sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73".into());
        let text = info.render();
        assert!(text.contains("\nReferences: \n"), "{text}");
        assert!(text.ends_with(
            "\nCA: fixed:r:sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73\n"
        ));
        assert_eq!(NarInfo::parse(&text, SD).unwrap(), info);
    }

    #[test]
    fn nix_defaults_and_tolerance() {
        let text = "StorePath: /nix/store/7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello\n\
                    URL: nar/x.nar.bz2\n\
                    NarHash: sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
                    NarSize: 8\n\
                    System: x86_64-linux\n\
                    Deriver: unknown-deriver\n\
                    References:\n\
                    CA: \n";
        let info = NarInfo::parse(text, SD).unwrap();
        assert_eq!(info.compression, "bzip2");
        assert_eq!(info.nar_hash, Sha256Hash::digest(b""));
        assert!(info.references.is_empty());
        assert_eq!(info.deriver, None);
        assert_eq!(info.ca, None);
    }

    #[test]
    fn parse_errors() {
        let good = sample().render();
        let cases: Vec<(String, &str)> = vec![
            (
                good.replace("NarSize: 120\n", ""),
                "missing the required field NarSize",
            ),
            (good.replace("URL: ", "URL: x\nURL: "), "more than once"),
            (good.replace("NarSize: 120", "NarSize: 0"), "must be > 0"),
            (good.replace("NarSize: 120", "NarSize: lots"), "decimal"),
            (
                good.replace("NarHash: sha256:0", "NarHash: sha256:e"),
                "NarHash \"",
            ),
            (
                good.replace("/nix/store/7h7", "/gnu/store/7h7"),
                "not inside the store directory",
            ),
            (
                good.replace("References: 00", "References: /nix/store/00"),
                "store path",
            ),
            (format!("{good}garbage line\n"), "malformed"),
            (good.replace("Sig: k-1:AAAA", "Sig: nokey"), "key name"),
        ];
        for (text, needle) in cases {
            let msg = NarInfo::parse(&text, SD).unwrap_err().to_string();
            assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
        }
    }

    #[test]
    fn fingerprint_uses_absolute_sorted_refs() {
        let mut info = sample();
        info.references.reverse();
        assert_eq!(
            info.fingerprint(),
            "1;/nix/store/7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello-2.12.1;\
             sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73;120;\
             /nix/store/007qgvs4kgzsn8a6rb273saxyqh4jxlz-glibc-2.37,\
             /nix/store/7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello-2.12.1"
        );
    }

    /// Written by Nix 2.8's `nix copy --to file://...` after `nix store sign`
    /// with the key in `signing.rs`'s tests.
    const NIX_WRITTEN: &str = "StorePath: /nix/store/gw80lp9prdc4zdcvv2pw1dvaimr90gjs-a\n\
        URL: nar/0fi9086lgpm7risfq179888clp99qdx4akvdmnlhz5gkf6q2ygy7.nar.xz\n\
        Compression: xz\n\
        FileHash: sha256:0fi9086lgpm7risfq179888clp99qdx4akvdmnlhz5gkf6q2ygy7\n\
        FileSize: 128\n\
        NarHash: sha256:0sg9f58l1jj88w6pdrfdpj5x9b1zrwszk84j81zvby36q9whhhqa\n\
        NarSize: 120\n\
        References: \n\
        Sig: test-1:y8kGop4MMPYIJIPdSlccTqafqJ9B2TTQ254JOouK2imrrB5xWHAYb9dfbp8MrbrOgSclpNuzCOv4r41bOq7RAg==\n\
        CA: fixed:r:sha256:0sg9f58l1jj88w6pdrfdpj5x9b1zrwszk84j81zvby36q9whhhqa\n";

    #[test]
    fn nix_written_narinfo_is_reproduced_and_verifies() {
        let info = NarInfo::parse(NIX_WRITTEN, SD).unwrap();
        assert_eq!(info.render(), NIX_WRITTEN);
        let public =
            signing::PublicKey::parse("test-1:LOWDhNfBC5OzOFLildy7bCQCcWYM//fL9iBH2JkEBIY=")
                .unwrap();
        assert!(public.verify(&info.fingerprint(), &info.sigs[0]));
    }
}
