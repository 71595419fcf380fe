//! Property: any byte stream split into random parts, sent in random order
//! (some twice), reassembles through the upload engine to the same NAR,
//! for zstd and for plain uploads.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use ferry::db::Db;
use ferry::db::caches::{self, NewCache};
use ferry::db::nars;
use ferry::db::uploads::UploadMeta;
use ferry::nar::{Sha256Hash, SigningKey, StorePath, Tree, write_nar};
use ferry::store::{ChainReader, ChunkRef, LocalStore, SharedStore};
use ferry::upload::{Completion, Compression, Created, Engine, EngineConfig, NewUpload, PartRules};
use proptest::prelude::*;

fn tree() -> impl Strategy<Value = Tree> {
    let file = (
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..40_000),
    )
        .prop_map(|(executable, contents)| Tree::Regular {
            executable,
            contents,
        });
    proptest::collection::btree_map("[a-z]{1,8}", file, 1..6)
        .prop_map(|m| Tree::Directory(m.into_iter().collect::<BTreeMap<_, _>>()))
}

/// Cut points (sorted, deduplicated) splitting `len` bytes into parts.
fn cuts(len: usize, raw: &[usize]) -> Vec<(usize, usize)> {
    let mut points: Vec<usize> = raw.iter().map(|r| r % (len + 1)).collect();
    points.push(0);
    points.push(len);
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| (w[0], w[1])).collect()
}

fn run(nar: Vec<u8>, zstd: bool, raw_cuts: Vec<usize>, order_seed: Vec<usize>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db")).unwrap();
        let store: SharedStore = Arc::new(LocalStore::open(&dir.path().join("blobs")).unwrap());
        let engine = Engine::new(
            db.clone(),
            store.clone(),
            dir.path().join("up"),
            EngineConfig::default(),
        )
        .unwrap();
        let key = SigningKey::generate("t-1").unwrap().to_nix_string();
        let cache = db
            .call_blocking(|c| {
                caches::insert(
                    c,
                    &NewCache {
                        name: "t".into(),
                        public: false,
                        priority: 41,
                        store_dir: "/nix/store".into(),
                        retention_secs: None,
                        signing_key: key,
                        upstream_keys: vec![],
                    },
                )
            })
            .unwrap();
        let body = if zstd {
            zstd::encode_all(&nar[..], 1).unwrap()
        } else {
            nar.clone()
        };
        let parts = cuts(body.len(), &raw_cuts);
        let new = NewUpload {
            store_path: StorePath::parse(
                "/nix/store/00000000000000000000000000000000-x",
                "/nix/store",
            )
            .unwrap(),
            nar_hash: Sha256Hash::digest(&nar),
            nar_size: nar.len() as u64,
            meta: UploadMeta::default(),
            compression: if zstd {
                Compression::Zstd
            } else {
                Compression::None
            },
        };
        let Created::Upload { id, .. } = engine.create(&cache, new).await.unwrap() else {
            panic!("expected an upload")
        };
        // A permutation of the parts, with a few sent twice.
        let mut order: Vec<usize> = (0..parts.len()).collect();
        for (i, s) in order_seed.iter().enumerate() {
            let n = order.len();
            order.swap(i % n, s % n);
        }
        order.extend(order_seed.iter().take(2).map(|s| s % parts.len()));
        let mut handles = vec![];
        for i in order {
            let (a, b) = parts[i];
            let chunk = Bytes::copy_from_slice(&body[a..b]);
            let (engine, id) = (engine.clone(), id.clone());
            handles.push(tokio::spawn(async move {
                let len = chunk.len() as u64;
                let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(chunk)]);
                let rules = PartRules {
                    content_length: Some(len),
                    ..PartRules::default()
                };
                engine
                    .put_part(&id, i as u64 + 1, rules, stream)
                    .await
                    .unwrap();
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        let done = engine.complete(&id, parts.len() as u32).await.unwrap();
        assert!(matches!(done, Completion::Committed { .. }), "{done:?}");
        let nar_hash = Sha256Hash::digest(&nar).to_string();
        let (row, chunks) = db
            .call_blocking(|c| {
                let row = nars::find_by_nar_hash(c, &nar_hash)?.unwrap();
                let chunks = nars::chunks(c, row.id)?;
                Ok((row, chunks))
            })
            .unwrap();
        let refs: Vec<ChunkRef> = chunks
            .into_iter()
            .map(|c| ChunkRef {
                blob: c.blob,
                size: c.size,
            })
            .collect();
        let mut file = vec![];
        ChainReader::new(store, &refs, 0, row.file_size)
            .read_to_end(&mut file)
            .unwrap();
        assert_eq!(Sha256Hash::digest(&file).to_string(), row.file_hash);
        let back = zstd::decode_all(&file[..]).unwrap();
        assert_eq!(Sha256Hash::digest(&back), Sha256Hash::digest(&nar));
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_parts_in_random_order_reassemble(
        t in tree(),
        zstd in any::<bool>(),
        raw_cuts in proptest::collection::vec(any::<usize>(), 0..8),
        order_seed in proptest::collection::vec(any::<usize>(), 1..10),
    ) {
        run(write_nar(&t), zstd, raw_cuts, order_seed);
    }
}
