//! Property: any byte stream split into random parts (many above the
//! server's 256 KiB write batch), each part's body arriving in random
//! chunks, parts sent in random order and in parallel, some first with
//! other bytes (a conflicting re-send replaces the part), some with a
//! wrong `Content-Digest` (refused, the part kept as it was), reassembles
//! through the upload engine to the same NAR, for zstd and for plain
//! uploads. When the last bytes sent for a part are corrupt, `complete`
//! gives a verdict and nothing is published.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use ferry::db::Db;
use ferry::db::caches::{self, NewCache};
use ferry::db::nars;
use ferry::db::uploads::UploadMeta;
use ferry::nar::{Sha256Hash, SigningKey, StorePath, Tree, write_nar};
use ferry::store::{ChainReader, ChunkRef, LocalStore, SharedStore};
use ferry::upload::{
    Completion, Compression, Created, DigestAlgorithm, Engine, EngineConfig, ExpectedDigest,
    NewUpload, PartRules,
};
use proptest::prelude::*;

/// Files of up to ~900 KB: noise from a seed (cheap to make), some text.
fn tree() -> impl Strategy<Value = Tree> {
    let file = (any::<bool>(), any::<u64>(), 0usize..900_000, any::<bool>()).prop_map(
        |(executable, seed, len, text)| {
            let mut contents = vec![0u8; len];
            if text {
                for (i, b) in contents.iter_mut().enumerate() {
                    *b = b"ferry part property\n"[i % 20];
                }
            } else {
                blake3::Hasher::new()
                    .update(&seed.to_le_bytes())
                    .finalize_xof()
                    .fill(&mut contents);
            }
            Tree::Regular {
                executable,
                contents,
            }
        },
    );
    proptest::collection::btree_map("[a-z]{1,8}", file, 1..4)
        .prop_map(|m| Tree::Directory(m.into_iter().collect::<BTreeMap<_, _>>()))
}

/// How one case sends its parts.
#[derive(Debug, Clone)]
struct Plan {
    zstd: bool,
    raw_cuts: Vec<usize>,
    order_seed: Vec<usize>,
    /// Chunk sizes a body is split into (cycled).
    chunking: Vec<usize>,
    /// Parts (by seed) first sent with other bytes.
    conflicting: Vec<usize>,
    /// Parts (by seed) sent with a wrong digest first.
    bad_digest: Vec<usize>,
    /// A part (by seed) whose last bytes sent are corrupt.
    leave_corrupt: Option<usize>,
}

fn plan() -> impl Strategy<Value = Plan> {
    use proptest::collection::vec;
    (
        any::<bool>(),
        vec(any::<usize>(), 0..6),
        vec(any::<usize>(), 1..10),
        vec(1usize..400_000, 1..5),
        vec(any::<usize>(), 0..3),
        vec(any::<usize>(), 0..2),
        proptest::option::weighted(0.2, any::<usize>()),
    )
        .prop_map(
            |(zstd, raw_cuts, order_seed, chunking, conflicting, bad_digest, leave_corrupt)| Plan {
                zstd,
                raw_cuts,
                order_seed,
                chunking,
                conflicting,
                bad_digest,
                leave_corrupt,
            },
        )
}

/// `bytes` as a body stream of chunks sized by `chunking` (cycled).
fn chunked(
    bytes: &[u8],
    chunking: &[usize],
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Unpin + use<> {
    let mut chunks = vec![];
    let mut at = 0;
    for size in chunking.iter().cycle() {
        if at >= bytes.len() {
            break;
        }
        let end = (at + size).min(bytes.len());
        chunks.push(Ok(Bytes::copy_from_slice(&bytes[at..end])));
        at = end;
    }
    futures_util::stream::iter(chunks)
}

/// `bytes` with one byte flipped (or one byte, if empty).
fn corrupt(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    match out.len() {
        0 => out.push(1),
        n => out[at % n] ^= 0x5a,
    }
    out
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

fn run(nar: Vec<u8>, plan: Plan) {
    let Plan {
        zstd,
        raw_cuts,
        order_seed,
        ..
    } = plan.clone();
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
            owner: None,
        };
        let Created::Upload { id, .. } = engine.create(&cache, new, &|_| true).await.unwrap()
        else {
            panic!("expected an upload")
        };
        // A permutation of the parts, with a few sent twice.
        let mut order: Vec<usize> = (0..parts.len()).collect();
        for (i, s) in order_seed.iter().enumerate() {
            let n = order.len();
            order.swap(i % n, s % n);
        }
        order.extend(order_seed.iter().take(2).map(|s| s % parts.len()));
        let n_parts = parts.len();
        let pick = |seeds: &[usize]| -> Vec<usize> { seeds.iter().map(|s| s % n_parts).collect() };
        let (conflicting, bad_digest) = (pick(&plan.conflicting), pick(&plan.bad_digest));
        let leave_corrupt = plan.leave_corrupt.map(|s| s % n_parts);
        let mut handles = vec![];
        let corrupt_stored = Arc::new(AtomicBool::new(false));
        for i in order {
            let (a, b) = parts[i];
            let right = body[a..b].to_vec();
            let (engine, id, chunking) = (engine.clone(), id.clone(), plan.chunking.clone());
            let (conflict, wrong_digest) = (conflicting.contains(&i), bad_digest.contains(&i));
            let corrupt_last = leave_corrupt == Some(i);
            let has_corrupt = leave_corrupt.is_some();
            let corrupt_stored = corrupt_stored.clone();
            handles.push(tokio::spawn(async move {
                let put = |bytes: Vec<u8>, digest: Option<Vec<u8>>| {
                    let (engine, id, chunking) = (engine.clone(), id.clone(), chunking.clone());
                    async move {
                        let rules = PartRules {
                            content_length: Some(bytes.len() as u64),
                            digest: digest.map(|value| ExpectedDigest {
                                algorithm: DigestAlgorithm::Blake3,
                                value,
                            }),
                            ..PartRules::default()
                        };
                        engine
                            .put_part(&id, i as u64 + 1, rules, chunked(&bytes, &chunking))
                            .await
                    }
                };
                use ferry::error::Error::{PartAfterVerdict, PartDigestMismatch};
                // A part refused because an earlier part stands wrong is
                // sent again once that part is replaced, as a client would.
                // Only a corrupt part left in place can refuse it for good.
                let mut tries = 0;
                let mut refused = || {
                    tries += 1;
                    tries < 2000
                };
                if conflict {
                    loop {
                        match put(corrupt(&right, a + 1), None).await {
                            Err(PartAfterVerdict { .. }) if refused() => {}
                            Err(PartAfterVerdict { .. }) => break,
                            other => {
                                other.unwrap();
                                break;
                            }
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    }
                }
                if wrong_digest {
                    let wrong = blake3::hash(b"not these bytes").as_bytes().to_vec();
                    let e = put(right.clone(), Some(wrong)).await.unwrap_err();
                    assert!(
                        matches!(e, PartDigestMismatch { .. } | PartAfterVerdict { .. }),
                        "{e:?}"
                    );
                }
                let digest = blake3::hash(&right).as_bytes().to_vec();
                loop {
                    match put(right.clone(), Some(digest.clone())).await {
                        Ok(row) => {
                            assert_eq!(row.size, right.len() as u64);
                            break;
                        }
                        Err(PartAfterVerdict { .. }) if refused() => {}
                        Err(e @ PartAfterVerdict { .. }) => {
                            assert!(has_corrupt, "refused for good: {e:?}");
                            return;
                        }
                        Err(e) => panic!("{e:?}"),
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                if corrupt_last {
                    match put(corrupt(&right, a), None).await {
                        Ok(_) => corrupt_stored.store(true, Ordering::SeqCst),
                        Err(PartAfterVerdict { .. }) => {}
                        Err(e) => panic!("{e:?}"),
                    }
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        let done = engine.complete(&id, parts.len() as u32).await;
        if corrupt_stored.load(Ordering::SeqCst) {
            let e = done.expect_err("a corrupt part was published");
            // A verdict, or the parts the standing verdict kept out.
            assert!(
                e.is_verdict()
                    || matches!(
                        e,
                        ferry::error::Error::UploadFailed(_)
                            | ferry::error::Error::MissingParts { .. }
                    ),
                "{e:?}"
            );
            let nar_hash = Sha256Hash::digest(&nar).to_string();
            let stored = db
                .call_blocking(|c| nars::find_by_nar_hash(c, &nar_hash))
                .unwrap();
            assert!(stored.is_none(), "nothing is published");
            return;
        }
        let done = done.unwrap();
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
                offset: c.offset,
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
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_parts_in_random_chunks_and_order_reassemble(t in tree(), plan in plan()) {
        run(write_nar(&t), plan);
    }
}
