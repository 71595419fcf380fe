//! Unit tests for the NAR writer, reader and streaming validator, including
//! hand-built malformed archives for every rejection rule.

use super::*;

fn file(contents: &[u8]) -> Tree {
    Tree::Regular {
        executable: false,
        contents: contents.to_vec(),
    }
}

fn dir(entries: &[(&str, Tree)]) -> Tree {
    Tree::Directory(
        entries
            .iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect(),
    )
}

fn sample() -> Tree {
    dir(&[
        (
            "bin",
            dir(&[(
                "hello",
                Tree::Regular {
                    executable: true,
                    contents: b"#!/bin/sh\necho hi\n".to_vec(),
                },
            )]),
        ),
        ("empty", file(b"")),
        ("emptydir", dir(&[])),
        (
            "link",
            Tree::Symlink {
                target: "bin/hello".into(),
            },
        ),
        ("z", file(b"12345678")),
    ])
}

/// Encodes raw tokens, for building malformed archives.
fn tokens(toks: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in toks {
        write_str(&mut out, t);
    }
    out
}

fn validate(bytes: &[u8]) -> Result<u64, FormatError> {
    let mut v = NarValidator::new();
    v.update(bytes)?;
    let n = v.bytes_seen();
    v.finish()?;
    Ok(n)
}

fn dir_nar(names: &[&[u8]]) -> Vec<u8> {
    let mut t: Vec<&[u8]> = vec![b"nix-archive-1", b"(", b"type", b"directory"];
    for name in names {
        t.extend_from_slice(&[b"entry", b"(", b"name", name, b"node"]);
        t.extend_from_slice(&[b"(", b"type", b"regular", b"contents", b"", b")", b")"]);
    }
    t.push(b")");
    tokens(&t)
}

#[test]
fn exact_bytes_of_a_small_file() {
    let nar = write_nar(&file(b"hi"));
    let expected = tokens(&[
        b"nix-archive-1",
        b"(",
        b"type",
        b"regular",
        b"contents",
        b"hi",
        b")",
    ]);
    assert_eq!(nar, expected);
    assert_eq!(&nar[..8], &13u64.to_le_bytes());
    assert_eq!(&nar[8..24], b"nix-archive-1\0\0\0");
    assert_eq!(nar.len(), 24 + 6 * 16);
}

#[test]
fn round_trip_and_validate() {
    for tree in [
        sample(),
        file(b""),
        dir(&[]),
        Tree::Symlink { target: "x".into() },
    ] {
        let nar = write_nar(&tree);
        assert_eq!(read_nar(&nar).unwrap(), tree);
        assert_eq!(validate(&nar).unwrap(), nar.len() as u64);
    }
}

#[test]
fn byte_at_a_time_and_odd_slices() {
    let nar = write_nar(&sample());
    for step in [1, 3, 7, 8, 13, 1 << 20] {
        let mut v = NarValidator::default();
        for chunk in nar.chunks(step) {
            v.update(chunk).unwrap();
        }
        assert_eq!(v.bytes_seen(), nar.len() as u64);
        v.finish().unwrap();
    }
}

#[test]
fn rejects_truncation_everywhere() {
    let nar = write_nar(&sample());
    for cut in 0..nar.len() {
        let err = validate(&nar[..cut]).unwrap_err();
        assert!(
            matches!(err, FormatError::TruncatedNar { .. }),
            "{cut}: {err}"
        );
        assert!(read_nar(&nar[..cut]).is_err());
    }
}

#[test]
fn rejects_trailing_data() {
    let mut nar = write_nar(&sample());
    nar.push(0);
    let msg = validate(&nar).unwrap_err().to_string();
    assert!(msg.contains("trailing data"), "{msg}");
    // Also when the trailing bytes come in a later call.
    let mut v = NarValidator::new();
    v.update(&nar[..nar.len() - 1]).unwrap();
    assert!(v.update(&[0]).is_err());
    assert!(v.finish().is_err(), "errors are sticky");
}

#[test]
fn rejects_bad_magic_and_tokens() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            tokens(&[b"nix-archive-2"]),
            "expected the \"nix-archive-1\" magic",
        ),
        (tokens(&[b"hello"]), "not a NAR"),
        (b"\xff\xff\xff\xff\xff\xff\xff\xff".to_vec(), "not a NAR"),
        (tokens(&[b"nix-archive-1", b"["]), "expected \"(\""),
        (
            tokens(&[b"nix-archive-1", b"(", b"type", b"fifo"]),
            "a node type",
        ),
        (
            tokens(&[
                b"nix-archive-1",
                b"(",
                b"type",
                b"regular",
                b"executable",
                b"yes",
            ]),
            "empty string after",
        ),
        (
            tokens(&[b"nix-archive-1", b"(", b"type", b"symlink", b"target", b""]),
            "symlink target is empty",
        ),
        (
            tokens(&[
                b"nix-archive-1",
                b"(",
                b"type",
                b"directory",
                b"entry",
                b"(",
                b"name",
            ]),
            "",
        ),
        (
            tokens(&[
                b"nix-archive-1",
                b"(",
                b"type",
                b"regular",
                b"contents",
                b"x",
                b"(",
                b")",
            ]),
            "expected \")\" closing a node",
        ),
        (
            tokens(&[
                b"nix-archive-1",
                b"(",
                b"type",
                b"a very long keyword indeed",
            ]),
            "found a 26-byte string",
        ),
    ];
    for (nar, needle) in cases {
        let err = validate(&nar).unwrap_err();
        assert!(err.to_string().contains(needle), "{err} lacks {needle:?}");
    }
}

#[test]
fn rejects_bad_padding() {
    let mut nar = write_nar(&file(b"hi"));
    // Contents "hi" sit at 24 + 4*16 + 8 = 96..98; padding follows.
    assert_eq!(&nar[96..98], b"hi");
    nar[100] = 1;
    let msg = validate(&nar).unwrap_err().to_string();
    assert!(msg.contains("padding"), "{msg}");
    let mut nar = write_nar(&file(b""));
    nar[13 + 8] = b'x'; // padding of the magic
    assert!(validate(&nar).is_err());
}

#[test]
fn rejects_bad_names() {
    assert!(validate(&dir_nar(&[b"a", b"b", b"c"])).is_ok());
    let cases: Vec<(Vec<&[u8]>, &str)> = vec![
        (vec![b"b", b"a"], "sorted"),
        (vec![b"a", b"a"], "appears twice"),
        (vec![b"B", b"A"], "sorted"),
        (vec![b".."], "named \"..\""),
        (vec![b"."], "named \".\""),
        (vec![b""], "empty name"),
        (vec![b"a/b"], "contains '/'"),
        (vec![b"a\0b"], "NUL"),
    ];
    for (names, needle) in cases {
        let msg = validate(&dir_nar(&names)).unwrap_err().to_string();
        assert!(msg.contains(needle), "{names:?}: {msg} lacks {needle:?}");
    }
    let long = vec![b'a'; MAX_NAME_LEN + 1];
    let msg = validate(&dir_nar(&[&long])).unwrap_err().to_string();
    assert!(msg.contains("at most"), "{msg}");
    let ok = vec![b'a'; MAX_NAME_LEN];
    assert!(validate(&dir_nar(&[&ok])).is_ok());
}

#[test]
fn sorting_is_bytewise_and_per_directory() {
    // Byte order: 'B' (0x42) < 'a' (0x61) < 0xc3 (start of "é").
    let names: [&[u8]; 3] = [b"B", b"a", "\u{e9}".as_bytes()];
    assert!(validate(&dir_nar(&names)).is_ok());
    // A child directory's names do not constrain the parent's next name.
    let tree = dir(&[
        ("a", dir(&[("zzz", file(b"")), ("zzzz", file(b""))])),
        ("b", dir(&[("a", file(b""))])),
    ]);
    let nar = write_nar(&tree);
    assert_eq!(read_nar(&nar).unwrap(), tree);
}

#[test]
fn read_requires_utf8_but_validator_does_not() {
    let nar = dir_nar(&[b"\xff"]);
    assert!(validate(&nar).is_ok());
    assert!(read_nar(&nar).unwrap_err().to_string().contains("UTF-8"));
}

#[test]
fn names_that_are_not_utf8_get_no_listing() {
    // Two distinct names that lossy decoding would merge into one.
    let nar = dir_nar(&[b"\xfe", b"\xff"]);
    let mut v = NarValidator::with_listing();
    v.update(&nar).unwrap();
    assert!(v.finish_listing().unwrap().is_none());
    let nar = dir_nar(&[b"a", b"b"]);
    let mut v = NarValidator::with_listing();
    v.update(&nar).unwrap();
    assert!(v.finish_listing().unwrap().is_some());
}

#[test]
fn huge_claimed_size_is_counted_not_buffered() {
    let mut nar = tokens(&[b"nix-archive-1", b"(", b"type", b"regular", b"contents"]);
    nar.extend_from_slice(&(1u64 << 62).to_le_bytes());
    nar.extend_from_slice(&[7u8; 4096]);
    let mut v = NarValidator::new();
    v.update(&nar).unwrap();
    let msg = v.finish().unwrap_err().to_string();
    assert!(msg.contains("more bytes of file contents"), "{msg}");
}

/// `depth` nested directories named "d" around an empty file, built as raw
/// bytes (a `Tree` this deep would recurse heavily on drop).
fn deep_nar(depth: usize) -> Vec<u8> {
    let mut t: Vec<&[u8]> = vec![b"nix-archive-1"];
    for _ in 0..depth {
        t.extend_from_slice(&[
            b"(",
            b"type",
            b"directory",
            b"entry",
            b"(",
            b"name",
            b"d",
            b"node",
        ]);
    }
    t.extend_from_slice(&[b"(", b"type", b"regular", b"contents", b"", b")"]);
    for _ in 0..depth {
        t.extend_from_slice(&[b")", b")"]);
    }
    tokens(&t)
}

#[test]
fn nesting_limit() {
    assert!(validate(&deep_nar(3)).is_ok());
    assert!(validate(&deep_nar(MAX_DEPTH)).is_ok());
    let msg = validate(&deep_nar(MAX_DEPTH + 1)).unwrap_err().to_string();
    assert!(msg.contains("nested"), "{msg}");
}

#[test]
fn validator_is_send_and_small() {
    fn assert_send<T: Send>() {}
    assert_send::<NarValidator>();
    assert!(std::mem::size_of::<NarValidator>() < 256);
}

/// The contents a listing node points at, sliced out of the NAR.
fn slice<'a>(nar: &'a [u8], node: &serde_json::Value) -> &'a [u8] {
    let off = node["narOffset"].as_u64().unwrap() as usize;
    let size = node["size"].as_u64().unwrap() as usize;
    &nar[off..off + size]
}

#[test]
fn listing_matches_nix_format_and_offsets() {
    let nar = write_nar(&sample());
    // Fed in odd-sized slices, as the verifier does.
    let mut v = NarValidator::with_listing();
    for chunk in nar.chunks(7) {
        v.update(chunk).unwrap();
    }
    let listing = v.finish_listing().unwrap().unwrap().to_value();
    assert_eq!(listing["version"], 1);
    let root = &listing["root"];
    assert_eq!(root["type"], "directory");
    let e = &root["entries"];
    let names: Vec<&String> = e.as_object().unwrap().keys().collect();
    assert_eq!(names, ["bin", "empty", "emptydir", "link", "z"]);
    let hello = &e["bin"]["entries"]["hello"];
    assert_eq!(hello["type"], "regular");
    assert_eq!(hello["executable"], true);
    assert_eq!(hello["size"], 18);
    assert_eq!(slice(&nar, hello), b"#!/bin/sh\necho hi\n");
    let z = &e["z"];
    assert!(z.get("executable").is_none(), "{z}");
    assert_eq!(slice(&nar, z), b"12345678");
    assert_eq!(e["empty"]["size"], 0);
    assert!(e["empty"]["narOffset"].as_u64().unwrap() > 0);
    assert_eq!(
        e["link"],
        serde_json::json!({"type": "symlink", "target": "bin/hello"})
    );
    assert_eq!(
        e["emptydir"],
        serde_json::json!({"type": "directory", "entries": {}})
    );
    // Exactly the keys Nix writes for a file.
    let mut keys: Vec<&String> = hello.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["executable", "narOffset", "size", "type"]);
}

#[test]
fn listing_of_single_file_and_symlink_roots() {
    let nar = write_nar(&file(b"hello"));
    let mut v = NarValidator::with_listing();
    v.update(&nar).unwrap();
    let l = v.finish_listing().unwrap().unwrap().to_value();
    assert_eq!(l["root"]["type"], "regular");
    assert_eq!(slice(&nar, &l["root"]), b"hello");

    let nar = write_nar(&Tree::Symlink {
        target: "/x".into(),
    });
    let mut v = NarValidator::with_listing();
    v.update(&nar).unwrap();
    let l = v.finish_listing().unwrap().unwrap().to_json();
    assert_eq!(
        String::from_utf8(l).unwrap(),
        r#"{"version":1,"root":{"type":"symlink","target":"/x"}}"#
    );
}

#[test]
fn listing_absent_without_request_or_on_error() {
    let nar = write_nar(&sample());
    let mut v = NarValidator::new();
    v.update(&nar).unwrap();
    assert_eq!(v.finish_listing().unwrap(), None);
    let mut v = NarValidator::with_listing();
    v.update(&nar[..nar.len() - 8]).unwrap();
    assert!(v.finish_listing().is_err());
}
