//! Property tests for `ferry::nar`: encodings round-trip, narinfo
//! render/parse round-trips, and the NAR writer, reader and streaming
//! validator agree on random trees fed in random slices.

use std::collections::BTreeMap;

use ferry::nar::archive::read_nar;
use ferry::nar::{NarInfo, NarValidator, Sha256Hash, StorePath, Tree, nix32, write_nar};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

const STORE_DIR: &str = "/nix/store";

fn hash() -> impl Strategy<Value = Sha256Hash> {
    any::<[u8; 32]>().prop_map(Sha256Hash)
}

fn store_path() -> impl Strategy<Value = StorePath> {
    (
        "[0-9a-df-np-sv-z]{32}",
        "[A-Za-z0-9+_?=-][A-Za-z0-9+._?=-]{0,40}",
    )
        .prop_map(|(h, n)| StorePath::from_base_name(&format!("{h}-{n}"), STORE_DIR).unwrap())
}

fn narinfo() -> impl Strategy<Value = NarInfo> {
    (
        (
            store_path(),
            "nar/[a-z0-9]{1,52}\\.nar(\\.zst)?",
            "zstd|none|xz|bzip2",
        ),
        (
            proptest::option::of(hash()),
            proptest::option::of(any::<u64>()),
        ),
        (hash(), 1..u64::MAX),
        (vec(store_path(), 0..5), proptest::option::of(store_path())),
        (
            proptest::option::of("fixed:r:sha256:[0-9a-z]{52}|text:sha256:[0-9a-z]{52}"),
            vec("[a-z.-]{1,20}-1:[A-Za-z0-9+/]{86}==", 0..3),
        ),
    )
        .prop_map(
            |(
                (store_path, url, compression),
                (file_hash, file_size),
                (nar_hash, nar_size),
                (references, deriver),
                (ca, sigs),
            )| NarInfo {
                store_path,
                url,
                compression,
                file_hash,
                file_size,
                nar_hash,
                nar_size,
                references,
                deriver,
                ca,
                sigs,
            },
        )
}

fn leaf() -> impl Strategy<Value = Tree> {
    prop_oneof![
        (any::<bool>(), vec(any::<u8>(), 0..100)).prop_map(|(executable, contents)| {
            Tree::Regular {
                executable,
                contents,
            }
        }),
        "[a-zA-Z0-9._/-]{1,30}".prop_map(|target| Tree::Symlink { target }),
    ]
}

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_+=-][a-zA-Z0-9._+=-]{0,15}"
}

/// Random trees of depth at most 3 (including empty directories).
fn tree() -> impl Strategy<Value = Tree> {
    leaf().prop_recursive(3, 40, 6, |inner| {
        btree_map(name(), inner, 0..6).prop_map(|m: BTreeMap<String, Tree>| Tree::Directory(m))
    })
}

/// Feeds `bytes` to a fresh validator in slices whose sizes cycle
/// through `sizes`.
fn feed(bytes: &[u8], sizes: &[usize]) -> NarValidator {
    let mut v = NarValidator::new();
    let mut rest = bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].clamp(1, rest.len());
        v.update(&rest[..n]).expect("valid NAR rejected");
        rest = &rest[n..];
        i += 1;
    }
    v
}

proptest! {
    #[test]
    fn nix32_round_trip(bytes in vec(any::<u8>(), 0..80)) {
        let s = nix32::encode(&bytes);
        prop_assert_eq!(s.len(), nix32::encoded_len(bytes.len()));
        prop_assert_eq!(nix32::decode(&s).unwrap(), bytes);
    }

    #[test]
    fn hash_every_form_round_trips(h in hash()) {
        for s in [h.to_nix32_string(), h.nix32(), h.to_hex(), format!("sha256:{}", h.to_hex()), h.to_sri(), h.to_sri().replacen('-', ":", 1), h.to_string()] {
            prop_assert_eq!(Sha256Hash::parse(&s).unwrap(), h, "{}", s);
        }
    }

    #[test]
    fn narinfo_round_trip(info in narinfo()) {
        let text = info.render();
        let parsed = NarInfo::parse(&text, STORE_DIR).unwrap();
        prop_assert_eq!(&parsed, &info);
        prop_assert_eq!(parsed.render(), text);
    }

    #[test]
    fn nar_write_read_round_trip(t in tree()) {
        let nar = write_nar(&t);
        prop_assert_eq!(nar.len() % 8, 0);
        prop_assert_eq!(read_nar(&nar).unwrap(), t);
    }

    #[test]
    fn validator_accepts_any_slicing(t in tree(), sizes in vec(1usize..64, 1..8)) {
        let nar = write_nar(&t);
        let v = feed(&nar, &sizes);
        prop_assert_eq!(v.bytes_seen(), nar.len() as u64);
        prop_assert!(v.finish().is_ok());
    }

    #[test]
    fn validator_rejects_truncation(t in tree(), cut in any::<prop::sample::Index>(), sizes in vec(1usize..64, 1..8)) {
        let nar = write_nar(&t);
        let cut = cut.index(nar.len());
        let v = feed(&nar[..cut], &sizes);
        prop_assert!(v.finish().is_err());
    }

    #[test]
    fn validator_rejects_appended_bytes(t in tree(), extra in vec(any::<u8>(), 1..16)) {
        let mut nar = write_nar(&t);
        nar.extend_from_slice(&extra);
        let mut v = NarValidator::new();
        prop_assert!(v.update(&nar).is_err());
    }
}
