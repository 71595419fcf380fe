//! Property tests for `ferry::client::chunk`: on random inputs (random
//! bytes and long runs, which force cuts at `max`) and random valid sizes,
//! the chunks rejoin into the input, each frame is exactly its chunk, sizes
//! stay in bounds, and the same input gives the same chunks and frames on
//! any number of threads.

use std::io::Cursor;

use ferry::client::chunk::{self, Chunk, ChunkSizes};
use proptest::collection::vec;
use proptest::prelude::*;

/// Even sizes inside FastCDC's bounds, small enough for many chunks.
fn sizes() -> impl Strategy<Value = ChunkSizes> {
    (32u32..=1024)
        .prop_flat_map(|half_min| (Just(half_min), half_min.max(128)..=4096))
        .prop_flat_map(|(half_min, half_avg)| {
            (Just(half_min), Just(half_avg), half_avg.max(512)..=16384)
        })
        .prop_map(|(min, avg, max)| ChunkSizes {
            min: 2 * min,
            avg: 2 * avg,
            max: 2 * max,
        })
}

/// Random stretches and runs of one byte, up to about 10 MB: often enough to
/// cross the pipeline's 1 MiB batches.
fn input() -> impl Strategy<Value = Vec<u8>> {
    let stretch = prop_oneof![
        4 => vec(any::<u8>(), 0..20_000),
        1 => (any::<u8>(), 0..1_000_000usize).prop_map(|(b, n)| vec![b; n]),
    ];
    vec(stretch, 0..10).prop_map(|s| s.concat())
}

fn all(data: &[u8], sizes: ChunkSizes, threads: usize) -> Vec<Chunk> {
    chunk::chunks(Cursor::new(data.to_vec()), sizes, 3, threads)
        .collect::<std::io::Result<_>>()
        .expect("chunks")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn chunks_rejoin_and_frames_are_their_chunks(
        data in input(),
        sizes in sizes(),
        threads in 1usize..5,
    ) {
        let chunks = all(&data, sizes, threads);
        let mut rejoined = Vec::with_capacity(data.len());
        for (i, c) in chunks.iter().enumerate() {
            let bytes = zstd::bulk::decompress(&c.frame, c.entry.size as usize).expect("frame");
            prop_assert_eq!(bytes.len() as u64, c.entry.size);
            prop_assert_eq!(c.entry.csize, c.frame.len() as u64);
            prop_assert_eq!(&c.entry.blake3, &blake3::hash(&bytes).to_hex().to_string());
            let last = i + 1 == chunks.len();
            prop_assert!(bytes.len() as u32 <= sizes.max);
            prop_assert!(last || bytes.len() as u32 >= sizes.min, "chunk {} of {}", i, bytes.len());
            prop_assert!(!bytes.is_empty());
            rejoined.extend_from_slice(&bytes);
        }
        prop_assert_eq!(&rejoined, &data);
        // No frames at all is no zstd stream (zstd reads it as a truncated
        // frame); a NAR is never empty.
        if !data.is_empty() {
            let frames: Vec<u8> = chunks.iter().flat_map(|c| c.frame.iter().copied()).collect();
            prop_assert_eq!(zstd::stream::decode_all(&frames[..]).expect("concatenated"), data);
        }
    }

    #[test]
    fn same_input_same_chunks_and_frames(
        data in input(),
        sizes in sizes(),
        threads in 2usize..6,
    ) {
        let one = all(&data, sizes, 1);
        let many = all(&data, sizes, threads);
        prop_assert_eq!(one.len(), many.len());
        for (a, b) in one.iter().zip(&many) {
            prop_assert_eq!(&a.entry, &b.entry);
            prop_assert!(a.frame == b.frame, "frames differ for {}", a.entry.blake3);
        }
        let ids: Vec<_> = chunk::manifest(&data[..], sizes).map(|id| id.expect("cut")).collect();
        prop_assert_eq!(ids.len(), one.len());
        for (id, c) in ids.iter().zip(&one) {
            prop_assert_eq!((&id.blake3, id.size), (&c.entry.blake3, c.entry.size));
        }
    }
}

#[test]
fn empty_input_gives_no_chunks() {
    for threads in [1, 3] {
        assert!(all(&[], chunk::DEFAULT_SIZES, threads).is_empty());
    }
}
