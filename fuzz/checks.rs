//! The properties the fuzz targets check, kept in one place so that the
//! fuzz targets (`fuzz/fuzz_targets/*.rs`) and the regression test that
//! replays saved inputs (`tests/fuzz_regressions.rs`) check the same
//! things. Each check takes the raw fuzzer input and panics when a
//! property fails; an input the parser rejects is fine unless the way it
//! is rejected breaks a property.
//!
//! [`TARGETS`] names every check; the name is both the fuzz target's name
//! and the directory under `fuzz/regressions/` holding its saved inputs.

// Each fuzz target uses one check; the regression test uses all of them.
#![allow(dead_code)]

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ferry::api::{content_digest_sha256, parse_content_digest};
use ferry::error::Error;
use ferry::nar::archive::read_nar;
use ferry::nar::store_path::{validate_hash_part, validate_store_dir};
use ferry::nar::{
    FormatError, ListingNode, NarInfo, NarListing, NarValidator, Sha256Hash, StorePath, Tree,
    nix32, write_nar,
};
use ferry::server::parse_range;
use ferry::upload::tus::parse_metadata;
use ferry::upload::{DigestAlgorithm, ExpectedDigest};

/// The store directory inputs are parsed against unless they name one.
const STORE_DIR: &str = "/nix/store";

/// A property check over one raw fuzz input; panics when a property fails.
pub type Check = fn(&[u8]);

/// Every check by name: `(target and regression directory, check)`.
pub const TARGETS: &[(&str, Check)] = &[
    ("narinfo", narinfo),
    ("nar", nar),
    ("tus_metadata", tus_metadata),
    ("content_digest", content_digest),
    ("range", range),
    ("nix32", nix32_and_hashes),
    ("store_path", store_path),
];

/// narinfo text: whatever parses renders to text that parses back to the
/// same value, and rendering that again gives the same text.
pub fn narinfo(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(info) = NarInfo::parse(text, STORE_DIR) else {
        return;
    };
    assert!(info.nar_size > 0, "NarSize 0 was accepted");
    let rendered = info.render();
    let again = NarInfo::parse(&rendered, STORE_DIR)
        .unwrap_or_else(|e| panic!("rendered narinfo does not parse: {e}\n{rendered}"));
    assert_eq!(again, info, "parse(render(x)) != x for\n{rendered}");
    assert_eq!(again.render(), rendered, "render is not stable");
    let fingerprint = info.fingerprint();
    assert!(fingerprint.starts_with("1;"), "{fingerprint}");
}

/// NAR bytes, framed as `[n] [n chunk sizes] [archive]` with `n` taken
/// modulo 16. The archive goes through the validator (with and without a
/// listing) and `read_nar` in one slice, and through the validator again
/// in the chunking the sizes give (cycled; a size of 0 feeds an empty
/// slice; no sizes means one byte at a time). Every way must reach the
/// same verdict; an accepted archive must be exactly as long as the
/// validator says, re-serialize to the same bytes, and have a listing
/// whose files sit where it says they do.
pub fn nar(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (sizes, bytes) = rest.split_at(n);

    let plain = validate(NarValidator::new(), &[bytes]);
    let listed = validate(NarValidator::with_listing(), &[bytes]);
    assert_eq!(plain.0.as_ref().err(), listed.0.as_ref().err());
    let chunked = validate(NarValidator::with_listing(), &chunks(bytes, sizes));
    assert_eq!(chunked, listed, "chunking {sizes:?} changed the verdict");

    let tree = read_nar(bytes);
    match (&listed.0, &tree) {
        (Ok(listing), Ok(tree)) => {
            let listing = listing.as_ref().expect("an accepted NAR has a listing");
            check_against_tree(&listing.root, tree, bytes);
            assert_eq!(write_nar(tree), bytes, "accepted NAR is not canonical");
        }
        (Ok(listing), Err(e)) => {
            assert!(
                e.to_string().contains("UTF-8"),
                "validator accepts what read_nar rejects: {e}"
            );
            // JSON cannot carry such names faithfully: no listing at all.
            assert!(listing.is_none(), "a listing of a NAR with non-UTF-8 names");
        }
        (Err(e), Ok(_)) => panic!("read_nar accepts what the validator rejects: {e}"),
        (Err(v), Err(r)) => assert!(
            v == r || r.to_string().contains("UTF-8"),
            "validator says {v}, read_nar says {r}"
        ),
    }

    let Ok(listing) = &listed.0 else {
        return;
    };
    assert_eq!(listed.1, bytes.len() as u64, "bytes_seen != input length");
    assert!(
        bytes.len().is_multiple_of(8),
        "accepted NAR is not 8-byte aligned"
    );
    if let Some(listing) = listing {
        check_offsets(&listing.root, bytes);
    }
    // Every cut short of the end is reported as truncation, never as
    // malformed; one byte more is trailing data.
    for cut in [bytes.len() - 1, bytes.len() / 2, 16] {
        let mut v = NarValidator::new();
        v.update(&bytes[..cut])
            .expect("a prefix of a valid NAR is valid");
        let err = v.finish().expect_err("a cut NAR was accepted");
        assert!(
            matches!(err, FormatError::TruncatedNar { .. }),
            "cut at {cut}: {err}"
        );
    }
    let mut longer = bytes.to_vec();
    longer.push(0);
    assert!(
        validate(NarValidator::new(), &[longer.as_slice()])
            .0
            .is_err()
    );
}

/// The outcome of feeding `pieces` to `validator`: the verdict (with the
/// listing if one was built) and `bytes_seen` at the end.
type Verdict = (Result<Option<NarListing>, FormatError>, u64);

fn validate(mut validator: NarValidator, pieces: &[&[u8]]) -> Verdict {
    let mut first_err = None;
    for piece in pieces {
        if let Err(e) = validator.update(piece) {
            // After an error every call returns that same error.
            match &first_err {
                None => first_err = Some(e),
                Some(first) => assert_eq!(&e, first, "the validator changed its error"),
            }
        }
    }
    let seen = validator.bytes_seen();
    let result = validator.finish_listing();
    if let Some(first) = first_err {
        assert_eq!(
            result.as_ref().err(),
            Some(&first),
            "finish forgot the error"
        );
    }
    (result, seen)
}

/// `bytes` cut into pieces whose lengths cycle through `sizes`.
fn chunks<'a>(mut bytes: &'a [u8], sizes: &[u8]) -> Vec<&'a [u8]> {
    let sizes: &[u8] = if sizes.iter().all(|&s| s == 0) {
        &[1]
    } else {
        sizes
    };
    let mut out = Vec::new();
    for &size in sizes.iter().cycle() {
        if bytes.is_empty() {
            break;
        }
        let (piece, rest) = bytes.split_at(usize::from(size).min(bytes.len()));
        out.push(piece);
        bytes = rest;
    }
    out
}

/// The listing describes `tree` exactly, and each file's `narOffset`
/// points at its contents in `nar`.
fn check_against_tree(node: &ListingNode, tree: &Tree, nar: &[u8]) {
    match (node, tree) {
        (
            ListingNode::Regular {
                size,
                executable,
                nar_offset,
            },
            Tree::Regular {
                executable: x,
                contents,
            },
        ) => {
            assert_eq!(executable, x);
            assert_eq!(*size, contents.len() as u64);
            let start = *nar_offset as usize;
            assert_eq!(&nar[start..start + contents.len()], contents.as_slice());
        }
        (ListingNode::Symlink { target }, Tree::Symlink { target: t }) => assert_eq!(target, t),
        (ListingNode::Directory { entries }, Tree::Directory(children)) => {
            assert!(
                entries.keys().eq(children.keys()),
                "listing entries differ from the tree's"
            );
            for (name, child) in children {
                check_against_tree(&entries[name], child, nar);
            }
        }
        (node, tree) => panic!("listing node {node:?} does not match tree {tree:?}"),
    }
}

/// Each file in the listing starts right
/// after its own length field and ends inside the archive.
fn check_offsets(node: &ListingNode, nar: &[u8]) {
    match node {
        ListingNode::Regular {
            size, nar_offset, ..
        } => {
            let start = usize::try_from(*nar_offset).expect("offset fits");
            assert!(
                start >= 8 && start.is_multiple_of(8),
                "odd narOffset {start}"
            );
            assert_eq!(nar[start - 8..start], size.to_le_bytes(), "size field");
            let end = start as u64 + size;
            assert!(end <= nar.len() as u64, "file runs past the end");
        }
        ListingNode::Symlink { target } => assert!(!target.is_empty()),
        ListingNode::Directory { entries } => {
            for child in entries.values() {
                check_offsets(child, nar);
            }
        }
    }
}

/// tus `Upload-Metadata`: a parsed header has sane keys, and encoding the
/// pairs again the way tus clients do gives back the same pairs.
pub fn tus_metadata(data: &[u8]) {
    let Ok(header) = std::str::from_utf8(data) else {
        return;
    };
    let pairs = match parse_metadata(header) {
        Ok(pairs) => pairs,
        Err(Error::BadRequest(_)) => return,
        Err(e) => panic!("unexpected error kind: {e:?}"),
    };
    let sorted: BTreeMap<_, _> = pairs.iter().collect();
    let mut encoded = Vec::new();
    for (key, value) in &sorted {
        assert!(!key.is_empty(), "empty key from {header:?}");
        assert!(!key.contains([',', ' ']), "key {key:?} from {header:?}");
        if value.is_empty() {
            encoded.push(key.to_string());
        } else {
            encoded.push(format!("{key} {}", STANDARD.encode(value)));
        }
    }
    let encoded = encoded.join(",");
    let again = parse_metadata(&encoded)
        .unwrap_or_else(|e| panic!("re-encoded {encoded:?} does not parse: {e:?}"));
    assert_eq!(again, pairs, "re-encoded as {encoded:?}");
}

/// `Content-Digest`: a digest found is 32 bytes and reads back the same
/// when written out again; unknown algorithms in front change nothing.
pub fn content_digest(data: &[u8]) {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse_content_digest(value);
    if let Ok(Some(ExpectedDigest { algorithm, value })) = &parsed {
        assert_eq!(value.len(), 32);
        let written = match algorithm {
            DigestAlgorithm::Sha256 => content_digest_sha256(value),
            DigestAlgorithm::Blake3 => format!("blake3=:{}:", STANDARD.encode(value)),
            other => panic!("Content-Digest gave {other:?}"),
        };
        assert_eq!(parse_content_digest(&written), parsed, "{written}");
    }
    let prefixed = format!("md5=:AAAA:, x-unknown=?,{value}");
    assert_eq!(parse_content_digest(&prefixed), parsed, "{prefixed:?}");
}

/// `Range` against a size: `[flag] header` with the size in the low bits
/// of the first byte, or `[flag] [8-byte LE size] header` when its top bit
/// is set. A range given is inside the file and reads back the same.
pub fn range(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let (size, header) = if first & 0x80 == 0 {
        (u64::from(first), rest)
    } else if rest.len() >= 8 {
        let (size, header) = rest.split_at(8);
        (
            u64::from_le_bytes(size.try_into().expect("8 bytes")),
            header,
        )
    } else {
        return;
    };
    let Ok(header) = std::str::from_utf8(header) else {
        return;
    };
    match parse_range(header, size) {
        Ok(Some((start, end))) => {
            assert!(
                start <= end && end < size,
                "{header:?} on {size}: {start}-{end}"
            );
            let canonical = format!("bytes={start}-{end}");
            assert!(
                matches!(parse_range(&canonical, size), Ok(Some(r)) if r == (start, end)),
                "{canonical} on {size}"
            );
        }
        Ok(None) => assert!(
            !header.trim().starts_with("bytes=") || header.contains(','),
            "{header:?} on {size} was taken as no range"
        ),
        Err(Error::RangeNotSatisfiable { size: s }) => assert_eq!(s, size),
        Err(e) => panic!("unexpected error kind: {e:?}"),
    }
}

/// Nix base-32 and hash spellings: encoding round-trips, every accepted
/// spelling is canonical (re-encodes to itself), and a parsed hash reads
/// back the same from each spelling ferry writes.
pub fn nix32_and_hashes(data: &[u8]) {
    let encoded = nix32::encode(data);
    assert_eq!(encoded.len(), nix32::encoded_len(data.len()));
    assert_eq!(
        nix32::decode(&encoded).expect("encode output decodes"),
        data
    );
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(bytes) = nix32::decode(text) {
        assert_eq!(nix32::encode(&bytes), text, "two spellings decode alike");
    }
    if let Ok(hash) = Sha256Hash::parse(text) {
        for spelling in [
            hash.to_nix32_string(),
            hash.nix32(),
            hash.to_sri(),
            hash.to_hex(),
            format!("sha256:{}", hash.to_hex()),
        ] {
            assert_eq!(Sha256Hash::parse(&spelling), Ok(hash), "{spelling}");
        }
    }
}

/// Store paths: `<path>` against `/nix/store`, or `<store dir>\n<path>`.
/// A parsed path renders back to the input and survives the base-name
/// round trip; a parsed base name likewise.
pub fn store_path(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (dir, path) = text.split_once('\n').unwrap_or((STORE_DIR, text));
    if let Ok(p) = StorePath::parse(path, dir) {
        assert!(validate_store_dir(dir).is_ok());
        assert!(validate_hash_part(p.hash_part()).is_ok());
        assert_eq!(p.store_dir(), dir);
        assert_eq!(p.to_absolute(), path);
        assert_eq!(p.to_string(), path);
        assert!(!p.name().contains('/'), "{path:?}");
        assert_eq!(StorePath::from_base_name(&p.base_name(), dir), Ok(p));
    }
    if let Ok(p) = StorePath::from_base_name(path, dir) {
        assert_eq!(p.base_name(), path);
        assert_eq!(StorePath::parse(&p.to_absolute(), dir), Ok(p));
    }
}
