//! Content-defined chunks of a NAR, each compressed as its own zstd frame
//! (issue 17: only new bytes cross the tunnel).
//!
//! [`super::parts`] cuts one zstd stream at fixed offsets, so a NAR that
//! gained a byte near its start is sent whole again. Here the cuts are
//! chosen by the content (FastCDC 2020: a rolling gear hash over the bytes,
//! a cut where its masked bits are zero), so an edit moves only the cuts
//! around it: two versions of a NAR share most of their chunks, and a push
//! can send only the chunks the server lacks.
//!
//! A chunk is named by the blake3 of its uncompressed bytes and compressed
//! alone, as one zstd frame. zstd decoders (Nix's too) read concatenated
//! frames as one stream, so the frames of a NAR's chunks, in order, are its
//! `.nar.zst`. A frame is a pure function of its chunk for a given zstd
//! library: fixed level, one thread per frame, the content size in the
//! header, no checksum, no dictionary. Another zstd version may make other
//! (equally valid) frames, which is why chunks are named by their
//! uncompressed bytes and never by their frames.
//!
//! [`chunks`] is a pipeline (`pipeline.rs`): one thread reads the NAR and
//! cuts it, `threads` threads hash and compress, and the caller receives
//! the chunks in NAR order, with a bounded window of batches in flight.
//! [`manifest`] only cuts and hashes (one thread, no compression): a cheap
//! first pass for asking the server what it lacks before compressing
//! anything.

mod pipeline;

use std::io::{self, Read};

use fastcdc::v2020::{self, StreamCDC};

/// FastCDC sizes, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkSizes {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

/// The sizes `ferry push` cuts with, chosen by `benches/chunking.rs`: on a
/// 1 GiB NAR-like buffer changed by about 1 % (100 scattered edits, and 300
/// bytes inserted near the start that shift every later offset), a 128 KiB
/// average is the largest whose second push sends at most 5 % of what one
/// zstd stream of the changed NAR weighs (3.5 %; 256 KiB sent 5.3 %, 64 KiB
/// 2.5 %), its first push is 1.8 % larger than one zstd stream (16 KiB:
/// 12.6 %), and its manifest has about 6 800 chunks per GiB.
pub const DEFAULT_SIZES: ChunkSizes = ChunkSizes::around(128 << 10);

impl ChunkSizes {
    /// Sizes with `min = avg / 4` and `max = avg × 4` (the ratios attic
    /// uses, and [`DEFAULT_SIZES`]).
    pub const fn around(avg: u32) -> ChunkSizes {
        ChunkSizes {
            min: avg / 4,
            avg,
            max: avg.saturating_mul(4),
        }
    }

    /// Checks the sizes against FastCDC's bounds (it panics outside them)
    /// and that each is even: its scan tests cut points in byte pairs from
    /// `min / 2`, so an odd `min` would allow a chunk one byte short of it.
    pub fn check(self) -> io::Result<()> {
        let bounds = [
            ("min", self.min, v2020::MINIMUM_MIN, v2020::MINIMUM_MAX),
            ("avg", self.avg, v2020::AVERAGE_MIN, v2020::AVERAGE_MAX),
            ("max", self.max, v2020::MAXIMUM_MIN, v2020::MAXIMUM_MAX),
        ];
        for (name, value, low, high) in bounds {
            if !(low..=high).contains(&value) || !value.is_multiple_of(2) {
                return Err(invalid(format!(
                    "chunk size {name} = {value} is not an even number in {low}..={high}"
                )));
            }
        }
        if !(self.min <= self.avg && self.avg <= self.max) {
            return Err(invalid(format!(
                "chunk sizes must have min ≤ avg ≤ max, not {self:?}"
            )));
        }
        Ok(())
    }
}

/// One chunk of a NAR: blake3 (lowercase hex) of its bytes, its size, and
/// the size of its zstd frame.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkEntry {
    pub blake3: String,
    pub size: u64,
    pub csize: u64,
}

/// A chunk with its frame (the chunk compressed as one independent zstd
/// frame).
pub struct Chunk {
    pub entry: ChunkEntry,
    pub frame: Vec<u8>,
}

/// One chunk of a NAR as [`manifest`] gives it: blake3 (lowercase hex) of
/// its bytes and its size, without compressing it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkId {
    pub blake3: String,
    pub size: u64,
}

/// Cuts `nar` into chunks and compresses each as its own zstd frame at
/// `level`, on up to `threads` threads (at least one; one more thread reads
/// and cuts), yielding chunks in NAR order. Memory stays bounded (a few
/// MiB of chunks per thread in flight), whatever the NAR size.
///
/// The first error (reading `nar`, compressing, or sizes that fail
/// [`ChunkSizes::check`]) is the last item. Dropping the iterator early
/// stops the threads once the reader's current `read` returns.
pub fn chunks<R: Read + Send + 'static>(
    nar: R,
    sizes: ChunkSizes,
    level: i32,
    threads: usize,
) -> impl Iterator<Item = io::Result<Chunk>> {
    pipeline::start(nar, sizes, level, threads.max(1), pipeline::BATCH_BYTES)
}

/// Cuts `nar` and hashes each chunk, on the calling thread, without
/// compressing: the same cuts and names as [`chunks`] gives, at the speed
/// of blake3 and the gear hash. The first error is the last item.
pub fn manifest<R: Read>(nar: R, sizes: ChunkSizes) -> impl Iterator<Item = io::Result<ChunkId>> {
    let mut failed = sizes.check().err();
    let mut cuts = failed
        .is_none()
        .then(|| StreamCDC::new(nar, sizes.min, sizes.avg, sizes.max));
    std::iter::from_fn(move || {
        if let Some(e) = failed.take() {
            return Some(Err(e));
        }
        match cuts.as_mut()?.next()? {
            Ok(cut) => Some(Ok(ChunkId {
                blake3: blake3::hash(&cut.data).to_hex().to_string(),
                size: cut.data.len() as u64,
            })),
            Err(e) => {
                cuts = None;
                Some(Err(e.into()))
            }
        }
    })
}

/// A zstd context set up for deterministic single frames, reused from one
/// chunk to the next (no context to allocate and set up per chunk), and a
/// scratch buffer to compress into, so that each frame is allocated at its
/// own size rather than at zstd's worst case for its chunk.
pub struct FrameEncoder {
    compressor: zstd::bulk::Compressor<'static>,
    scratch: Vec<u8>,
}

impl FrameEncoder {
    pub fn new(level: i32) -> io::Result<FrameEncoder> {
        let mut compressor = zstd::bulk::Compressor::new(level)?;
        compressor.include_contentsize(true)?;
        compressor.include_checksum(false)?;
        compressor.include_dictid(false)?;
        Ok(FrameEncoder {
            compressor,
            scratch: Vec::new(),
        })
    }

    /// `data` as one zstd frame.
    pub fn frame(&mut self, data: &[u8]) -> io::Result<Vec<u8>> {
        self.scratch.clear();
        self.scratch
            .reserve(zstd::zstd_safe::compress_bound(data.len()));
        self.compressor
            .compress_to_buffer(data, &mut self.scratch)?;
        Ok(self.scratch.clone())
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: ChunkSizes = ChunkSizes {
        min: 1024,
        avg: 4096,
        max: 16384,
    };

    /// Text-like bytes: compressible, with enough variety for cuts.
    fn text(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut out = Vec::with_capacity(len + 16);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(
                [&b"nix "[..], b"store ", b"ferry ", b"chunk\n"][(x % 4) as usize],
            );
            out.push(b'a' + (x >> 8) as u8 % 26);
        }
        out.truncate(len);
        out
    }

    fn all(data: Vec<u8>, sizes: ChunkSizes, threads: usize) -> Vec<Chunk> {
        chunks(io::Cursor::new(data), sizes, 3, threads)
            .collect::<io::Result<_>>()
            .unwrap()
    }

    #[test]
    fn frames_concatenated_are_the_nar_as_one_zst() {
        let data = text(300_000, 7);
        let got = all(data.clone(), SMALL, 2);
        assert!(got.len() > 10, "{} chunks", got.len());
        let zst: Vec<u8> = got.iter().flat_map(|c| c.frame.clone()).collect();
        assert_eq!(zstd::stream::decode_all(&zst[..]).unwrap(), data);
    }

    #[test]
    fn frames_carry_their_content_size_and_match_a_fresh_context() {
        for chunk in all(text(100_000, 3), SMALL, 2) {
            let size = zstd::zstd_safe::get_frame_content_size(&chunk.frame).unwrap();
            assert_eq!(size, Some(chunk.entry.size));
            let data = zstd::bulk::decompress(&chunk.frame, chunk.entry.size as usize).unwrap();
            let fresh = FrameEncoder::new(3).unwrap().frame(&data).unwrap();
            assert_eq!(fresh, chunk.frame, "a reused context makes the same frame");
        }
    }

    #[test]
    fn manifest_names_the_same_chunks() {
        let data = text(200_000, 11);
        let ids: Vec<ChunkId> = manifest(&data[..], SMALL).map(Result::unwrap).collect();
        let entries = all(data, SMALL, 3);
        assert_eq!(ids.len(), entries.len());
        for (id, chunk) in ids.iter().zip(&entries) {
            assert_eq!(
                (&id.blake3, id.size),
                (&chunk.entry.blake3, chunk.entry.size)
            );
        }
    }

    #[test]
    fn empty_input_gives_no_chunks() {
        assert_eq!(all(vec![], SMALL, 2).len(), 0);
        assert_eq!(manifest(&[][..], SMALL).count(), 0);
    }

    #[test]
    fn bad_sizes_are_one_error() {
        let odd = ChunkSizes { min: 1025, ..SMALL };
        let upside_down = ChunkSizes { min: 8192, ..SMALL };
        let too_small = ChunkSizes::around(128);
        for sizes in [odd, upside_down, too_small] {
            let got: Vec<_> = chunks(io::Cursor::new(vec![1; 10]), sizes, 3, 1).collect();
            assert_eq!(got.len(), 1);
            let err = got.into_iter().next().unwrap().err().unwrap();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{sizes:?}");
            assert_eq!(manifest(&[1u8; 10][..], sizes).count(), 1);
        }
        DEFAULT_SIZES.check().unwrap();
    }

    struct Failing;
    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("disk on fire"))
        }
    }

    #[test]
    fn a_read_error_is_the_last_item() {
        let ids: Vec<_> = manifest(Failing, SMALL).collect();
        assert_eq!(ids.len(), 1);
        assert_eq!(ids[0].as_ref().err().unwrap().to_string(), "disk on fire");
        let got: Vec<_> = chunks(Failing, SMALL, 3, 2).collect();
        assert_eq!(got.len(), 1);
        assert!(got[0].is_err());
    }
}
