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
//! [`chunks`] is a pipeline: one thread reads the NAR and cuts it, `threads`
//! threads hash and compress, and the caller receives the chunks in NAR
//! order, with a bounded window of chunks in flight. [`manifest`] only cuts
//! and hashes (one thread, no compression): a cheap first pass for asking
//! the server what it lacks before compressing anything.

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use fastcdc::v2020::{self, StreamCDC};

/// FastCDC sizes, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkSizes {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

/// The sizes `ferry push` cuts with, chosen by `benches/chunking.rs`: with
/// about 1 % of a 1 GiB NAR changed (scattered small and large edits plus
/// an insertion that shifts every later offset), a 256 KiB average sends
/// little more than a 64 KiB one on the second push, loses less to
/// per-frame compression on the first, and has a manifest a quarter the
/// size (about 4 000 chunks per GiB).
pub const DEFAULT_SIZES: ChunkSizes = ChunkSizes {
    min: 64 << 10,
    avg: 256 << 10,
    max: 1 << 20,
};

impl ChunkSizes {
    /// Sizes with `min = avg / 4` and `max = avg × 4`, the ratios of
    /// [`DEFAULT_SIZES`].
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
            if !(low..=high).contains(&value) || value % 2 != 0 {
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
/// chunks per thread in flight), whatever the NAR size.
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
    let workers = threads.max(1);
    let (slots_tx, slots_rx) = sync_channel(window(workers));
    if let Err(e) = start(nar, sizes, level, workers, slots_tx.clone()) {
        // The window is empty, so this cannot block.
        let _ = slots_tx.send(Next::Chunk(resolved(Err(e))));
    }
    InOrder {
        slots: slots_rx,
        finished: false,
    }
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

/// Chunks in flight for `workers` compressing threads: enough that a large
/// chunk next to small ones does not leave a worker idle, few enough that
/// memory stays a small multiple of `max`.
fn window(workers: usize) -> usize {
    4 * workers
}

/// Where a chunk's result will arrive: a one-shot channel its worker fills.
type Slot = Receiver<io::Result<Chunk>>;

/// What the reader hands the caller, in NAR order.
enum Next {
    Chunk(Slot),
    /// The NAR ended after the chunks before it. A queue that closes without
    /// it means the reader died, and the NAR must not look complete.
    End,
}

/// A chunk's bytes on their way to a worker, with the slot to fill.
struct Job {
    data: Vec<u8>,
    slot: SyncSender<io::Result<Chunk>>,
}

/// A slot that already holds its result.
fn resolved(result: io::Result<Chunk>) -> Slot {
    let (tx, rx) = sync_channel(1);
    let _ = tx.send(result);
    rx
}

/// Starts the compressing threads and the reading thread.
fn start<R: Read + Send + 'static>(
    nar: R,
    sizes: ChunkSizes,
    level: i32,
    workers: usize,
    slots: SyncSender<Next>,
) -> io::Result<()> {
    sizes.check()?;
    let (jobs_tx, jobs_rx) = sync_channel::<Job>(workers);
    let jobs_rx = Arc::new(Mutex::new(jobs_rx));
    for _ in 0..workers {
        let jobs = jobs_rx.clone();
        thread::Builder::new()
            .name("ferry-chunk-zstd".into())
            .spawn(move || compress_jobs(&jobs, level))?;
    }
    thread::Builder::new()
        .name("ferry-chunk-read".into())
        .spawn(move || cut_into_jobs(nar, sizes, &jobs_tx, &slots))?;
    Ok(())
}

/// The reading thread: cuts the NAR, queues each chunk's slot for the caller
/// (which bounds the chunks in flight) and its bytes for a worker.
fn cut_into_jobs<R: Read>(
    nar: R,
    sizes: ChunkSizes,
    jobs: &SyncSender<Job>,
    slots: &SyncSender<Next>,
) {
    for cut in StreamCDC::new(nar, sizes.min, sizes.avg, sizes.max) {
        let data = match cut {
            Ok(cut) => cut.data,
            Err(e) => {
                let _ = slots.send(Next::Chunk(resolved(Err(e.into()))));
                return;
            }
        };
        let (slot, result) = sync_channel(1);
        // Either send fails only once the caller has dropped the iterator.
        if slots.send(Next::Chunk(result)).is_err() || jobs.send(Job { data, slot }).is_err() {
            return;
        }
    }
    let _ = slots.send(Next::End);
}

/// A compressing thread: takes jobs until the reader is gone.
fn compress_jobs(jobs: &Mutex<Receiver<Job>>, level: i32) {
    let mut encoder = FrameEncoder::new(level);
    loop {
        // The lock is held only while waiting for the next job.
        let next = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(Job { data, slot }) = next else {
            return;
        };
        let frame = match &mut encoder {
            Ok(encoder) => encoder.frame(&data),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        };
        let chunk = frame.map(|frame| Chunk {
            entry: ChunkEntry {
                blake3: blake3::hash(&data).to_hex().to_string(),
                size: data.len() as u64,
                csize: frame.len() as u64,
            },
            frame,
        });
        // The caller may be gone; the job is then simply dropped.
        let _ = slot.send(chunk);
    }
}

/// A zstd context set up for deterministic single frames, reused from one
/// chunk to the next (a fresh context per chunk would cost more than a
/// small chunk's compression).
pub struct FrameEncoder(zstd::bulk::Compressor<'static>);

impl FrameEncoder {
    pub fn new(level: i32) -> io::Result<FrameEncoder> {
        let mut compressor = zstd::bulk::Compressor::new(level)?;
        compressor.include_contentsize(true)?;
        compressor.include_checksum(false)?;
        compressor.include_dictid(false)?;
        Ok(FrameEncoder(compressor))
    }

    /// `data` as one zstd frame.
    pub fn frame(&mut self, data: &[u8]) -> io::Result<Vec<u8>> {
        self.0.compress(data)
    }
}

/// The caller's side: slots in NAR order, each waited for in turn.
struct InOrder {
    slots: Receiver<Next>,
    finished: bool,
}

impl Iterator for InOrder {
    type Item = io::Result<Chunk>;

    fn next(&mut self) -> Option<io::Result<Chunk>> {
        if self.finished {
            return None;
        }
        let result = match self.slots.recv() {
            Ok(Next::Chunk(slot)) => slot
                .recv()
                .unwrap_or_else(|_| Err(io::Error::other("a chunk's compressing thread died"))),
            Ok(Next::End) => {
                self.finished = true;
                return None;
            }
            Err(_) => Err(io::Error::other("the NAR's reading thread died")),
        };
        self.finished = result.is_err();
        Some(result)
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

    /// Fails after handing out `ok` bytes.
    struct Broken {
        ok: usize,
    }
    impl Read for Broken {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.ok == 0 {
                return Err(io::Error::other("disk on fire"));
            }
            let k = buf.len().min(self.ok);
            buf[..k].fill(b'x');
            self.ok -= k;
            Ok(k)
        }
    }

    #[test]
    fn a_read_error_ends_the_chunks() {
        let got: Vec<_> = chunks(Broken { ok: 100_000 }, SMALL, 3, 2).collect();
        let (last, before) = got.split_last().unwrap();
        assert!(before.iter().all(Result::is_ok));
        assert_eq!(last.as_ref().err().unwrap().to_string(), "disk on fire");
        let ids: Vec<_> = manifest(Broken { ok: 100_000 }, SMALL).collect();
        assert!(ids.last().unwrap().is_err());
    }

    #[test]
    fn dropping_the_iterator_early_is_fine() {
        let mut it = chunks(io::Cursor::new(text(1 << 20, 5)), SMALL, 3, 2);
        assert!(it.next().unwrap().is_ok());
        drop(it);
    }
}
