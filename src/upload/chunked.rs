//! The verifier's pipe for chunked uploads (`compression = "chunked"`).
//!
//! The parts of a chunked upload are the zstd frames of the chunks the
//! server did not hold, in manifest order; the manifest (`db::chunks`)
//! says for every chunk of the NAR where its frame comes from. The pipe
//! walks it: a sent frame is cut from the parts' bytes (its declared
//! `csize`), a held one is read from the blob store, a repeated one from
//! where its first occurrence lies. Frames are independent, so they are
//! decompressed and checked (size, blake3) on several threads at once; the
//! results are taken in manifest order into the NAR check (SHA-256,
//! structure, listing: one thread, the ceiling).
//!
//! Nothing is written: the stored file, the NAR as `.nar.zst` (its frames
//! concatenated, which Nix reads as one stream), is described as a list
//! of byte ranges of blobs ([`Layout`]): ranges of the upload's parts for
//! sent frames (each part becomes a blob, as for zstd uploads), ranges of
//! the blobs that held frames came from. A fresh NAR is then stored as
//! its parts, with no second write; a new version of a path mostly points
//! into the blobs of the old one.
//!
//! A sent frame that does not decode to its declared chunk is a verdict
//! on the client's bytes; a stored frame that does not is a fault.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use sha2::{Digest, Sha256};

use crate::db::chunks::{Entry, Source};
use crate::error::{Error, Result};
use crate::nar::Sha256Hash;
use crate::store::SharedStore;

use super::pool::Pool;

/// The largest chunk a manifest may declare.
pub const MAX_CHUNK_SIZE: u64 = 16 << 20;

/// The most bytes of held frames read at once.
const HELD_RUN: u64 = 16 << 20;

/// A new chunk frame lying whole inside one blob: (blake3, blob, offset,
/// csize, size), for `chunk_frames`.
pub type FrameAt = (String, String, u64, u64, u64);

/// The stored file of a chunked NAR.
pub struct Layout {
    /// The file, as (blob, offset, length) ranges in order; adjacent
    /// ranges of one blob are merged.
    pub ranges: Vec<(String, u64, u64)>,
    /// SHA-256 and size of the file (the frames in manifest order).
    pub file_hash: Sha256Hash,
    pub file_size: u64,
    /// Where the frames of chunks new to the server lie.
    pub frames: Vec<FrameAt>,
}

/// Where a frame lies.
#[derive(Clone, Debug)]
enum Loc {
    /// At this offset of the parts' byte stream.
    Stream(u64),
    /// At this offset of a stored blob.
    Blob(String, u64),
}

/// A part folded so far: its blob id (blake3), where it starts in the
/// parts' byte stream, its size, and its local file (if still there).
struct PartAt {
    blob: String,
    start: u64,
    size: u64,
    path: PathBuf,
}

/// The most frames handed to a decoder at once, and the most bytes they
/// may decode to: a batch, not a frame, crosses the threads (one wake-up
/// per batch: frames of 128 KiB one by one cost a tenth of the CPU in
/// thread switches).
const BATCH_FRAMES: usize = 32;
const BATCH_BYTES: u64 = 2 << 20;

/// Frames to decode (each with its declared size and blake3), and where
/// to send the outcomes, in order.
struct Job {
    frames: Vec<(Vec<u8>, u64, String)>,
    reply: SyncSender<Vec<Decoded>>,
    spare: Spare,
}

/// Buffers of chunks already taken into the NAR check, for the decoders
/// to fill again: fresh memory for every chunk cost a page fault per
/// 4 KiB (85 % of the server's page faults on a 1 GiB ingest).
#[derive(Clone, Default)]
struct Spare(std::sync::Arc<std::sync::Mutex<SpareList>>);

#[derive(Default)]
struct SpareList {
    bufs: Vec<Vec<u8>>,
    bytes: usize,
}

/// The most bytes of spare buffers kept per upload: what the batches in
/// flight decode to, about (see `ChunkedPipe::depth`).
const SPARE_BYTES: usize = 16 << 20;
/// A buffer larger than this is not kept (a chunk far above the usual
/// sizes, which a client may declare up to [`MAX_CHUNK_SIZE`]).
const SPARE_LARGEST: usize = 1 << 20;

impl Spare {
    fn take(&self) -> Vec<u8> {
        let got = self.0.lock().ok().and_then(|mut s| {
            let buf = s.bufs.pop()?;
            s.bytes -= buf.capacity();
            Some(buf)
        });
        got.unwrap_or_default()
    }

    fn give(&self, buf: Vec<u8>) {
        if let Ok(mut s) = self.0.lock()
            && buf.capacity() <= SPARE_LARGEST
            && s.bytes + buf.capacity() <= SPARE_BYTES
        {
            s.bytes += buf.capacity();
            s.bufs.push(buf);
        }
    }
}

/// Threads decoding frames, each with its own zstd context.
fn decoders(n: usize) -> Result<Pool<Job>> {
    Pool::start(
        "ferry-frames",
        n,
        zstd::bulk::Decompressor::new,
        |dctx: &mut std::io::Result<zstd::bulk::Decompressor<'static>>, job: Job| {
            let out = job
                .frames
                .into_iter()
                .map(|(frame, size, blake3)| {
                    let data = match dctx {
                        Ok(d) => decode(d, &frame, size, &blake3, job.spare.take()),
                        Err(e) => Err(format!("cannot start zstd ({e})")),
                    };
                    (frame, data)
                })
                .collect();
            let _ = job.reply.send(out);
        },
    )
}

/// Decodes one frame into exactly `size` bytes whose blake3 is `blake3`,
/// in `data` (a spare buffer).
fn decode(
    dctx: &mut zstd::bulk::Decompressor<'static>,
    frame: &[u8],
    size: u64,
    blake3: &str,
    mut data: Vec<u8>,
) -> std::result::Result<Vec<u8>, String> {
    // The slice bounds the output: a frame that would decode to more than
    // declared fails here. (Zeroing a warm buffer costs less than the
    // page faults of a fresh one.)
    data.clear();
    data.resize(size as usize, 0);
    let n = dctx
        .decompress_to_buffer(frame, &mut data[..])
        .map_err(|e| {
            format!("its frame is not valid zstd or decodes to more than {size} bytes ({e})")
        })?;
    data.truncate(n);
    if data.len() as u64 != size {
        return Err(format!(
            "its frame decodes to {} bytes, not the {size} declared",
            data.len()
        ));
    }
    let got = blake3::hash(&data).to_hex();
    if got.as_str() != blake3 {
        return Err(format!("its bytes hash to blake3 {got}, not {blake3}"));
    }
    Ok(data)
}

/// A frame handed back by its decoder, with the chunk it decoded to.
type Decoded = (Vec<u8>, std::result::Result<Vec<u8>, String>);

/// A batch of frames in flight: their entries, where they lie, and their
/// decoding (the frames travel with it and come back).
struct Flight {
    entries: Vec<(Entry, Loc)>,
    decoded: Receiver<Vec<Decoded>>,
}

/// Frames taken from the manifest, not yet handed to a decoder.
#[derive(Default)]
struct Batch {
    entries: Vec<(Entry, Loc)>,
    frames: Vec<(Vec<u8>, u64, String)>,
    bytes: u64,
}

/// Frames of one chunked upload in, NAR bytes out (into `nar`).
pub struct ChunkedPipe {
    /// Manifest entries not yet taken, in order.
    todo: VecDeque<Entry>,
    /// Entries handed in so far.
    known: u64,
    /// Bytes of the parts not yet cut into frames, from `consumed` on;
    /// `pending[0]` is at `base` in the parts' byte stream.
    pending: Vec<u8>,
    consumed: usize,
    base: u64,
    /// The parts fed so far, in order.
    parts: Vec<PartAt>,
    fed: u64,
    /// The stored file as it grows: its ranges, hash and size.
    ranges: Vec<(Loc, u64)>,
    sha: Sha256,
    file_size: u64,
    /// Where each chunk's first frame lies.
    first: HashMap<String, (Loc, u64, u64)>,
    store: SharedStore,
    pool: Pool<Job>,
    /// Held frames read ahead (see [`ChunkedPipe::read_held_run`]), for
    /// the held entries at the front of `todo`.
    held: VecDeque<Vec<u8>>,
    /// Frames being gathered for a decoder.
    batch: Batch,
    /// Batches being decoded, oldest first.
    inflight: VecDeque<Flight>,
    depth: usize,
    /// Chunk buffers to decode into again.
    spare: Spare,
}

impl ChunkedPipe {
    /// A pipe reading held and repeated frames from `store` (and the
    /// upload's part files).
    pub fn new(store: SharedStore) -> Result<ChunkedPipe> {
        let threads = super::pool::threads();
        Ok(ChunkedPipe {
            todo: VecDeque::new(),
            known: 0,
            pending: vec![],
            consumed: 0,
            base: 0,
            parts: vec![],
            fed: 0,
            ranges: vec![],
            sha: Sha256::new(),
            file_size: 0,
            first: HashMap::new(),
            store,
            pool: decoders(threads)?,
            held: VecDeque::new(),
            batch: Batch::default(),
            inflight: VecDeque::new(),
            depth: threads * 2,
            spare: Spare::default(),
        })
    }

    /// Manifest entries handed in so far.
    pub fn known(&self) -> u64 {
        self.known
    }

    /// Hands in manifest entries (those already known are skipped).
    pub fn extend(&mut self, entries: Vec<Entry>) {
        for e in entries {
            if e.idx == self.known {
                self.todo.push_back(e);
                self.known += 1;
            }
        }
    }

    /// A part begins: its blob id and local file.
    pub fn begin_part(&mut self, blob: &str, path: PathBuf) {
        self.parts.push(PartAt {
            blob: blob.to_owned(),
            start: self.fed,
            size: 0,
            path,
        });
    }

    /// Takes bytes of the current part.
    pub fn feed(&mut self, data: &[u8], nar: &mut dyn Write) -> Result<()> {
        if self.consumed > (1 << 20) && self.consumed * 2 > self.pending.len() {
            self.pending.drain(..self.consumed);
            self.base += self.consumed as u64;
            self.consumed = 0;
        }
        self.pending.extend_from_slice(data);
        self.fed += data.len() as u64;
        if let Some(p) = self.parts.last_mut() {
            p.size += data.len() as u64;
        }
        self.pump(nar)
    }

    /// Takes every entry whose frame is at hand.
    pub fn pump(&mut self, nar: &mut dyn Write) -> Result<()> {
        while let Some(entry) = self.todo.front().cloned() {
            let (loc, frame) = match &entry.source {
                Source::Sent => {
                    let end = self.consumed as u64 + entry.csize;
                    if (self.pending.len() as u64) < end {
                        break;
                    }
                    let at = self.base + self.consumed as u64;
                    let frame = self.pending[self.consumed..end as usize].to_vec();
                    self.consumed = end as usize;
                    (Loc::Stream(at), frame)
                }
                Source::Held { blob, offset } => {
                    if self.held.is_empty() {
                        self.read_held_run(blob, *offset)?;
                    }
                    let frame = self
                        .held
                        .pop_front()
                        .ok_or_else(|| Error::internal("a held frame was not read"))?;
                    (Loc::Blob(blob.clone(), *offset), frame)
                }
                Source::Repeat => {
                    let (loc, csize, _) =
                        self.first.get(&entry.blake3).cloned().ok_or_else(|| {
                            Error::internal("a repeated chunk's first frame is unknown")
                        })?;
                    let frame = self.read_at(&loc, csize)?;
                    (loc, frame)
                }
            };
            self.todo.pop_front();
            self.first.entry(entry.blake3.clone()).or_insert((
                loc.clone(),
                frame.len() as u64,
                entry.size,
            ));
            self.batch.bytes += entry.size;
            self.batch
                .frames
                .push((frame, entry.size, entry.blake3.clone()));
            self.batch.entries.push((entry, loc));
            if self.batch.frames.len() >= BATCH_FRAMES || self.batch.bytes >= BATCH_BYTES {
                self.dispatch(nar)?;
            }
        }
        // What is gathered goes now: the next frames may be a part away.
        self.dispatch(nar)
    }

    /// Hands the gathered frames to a decoder; takes the oldest decoded
    /// batches while too many are in flight.
    fn dispatch(&mut self, nar: &mut dyn Write) -> Result<()> {
        if self.batch.frames.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let (reply, decoded) = sync_channel(1);
        let job = Job {
            frames: batch.frames,
            reply,
            spare: self.spare.clone(),
        };
        self.pool.send(job)?;
        self.inflight.push_back(Flight {
            entries: batch.entries,
            decoded,
        });
        while self.inflight.len() >= self.depth {
            self.collect_one(nar)?;
        }
        Ok(())
    }

    /// Reads the held frames at the front of the manifest that lie one
    /// after another in blob `blob` from `offset` (a run of chunks the
    /// server had in the same order: the usual case for a new version of
    /// a path) with one read, up to [`HELD_RUN`] bytes: one ranged GET
    /// instead of one per chunk on S3.
    fn read_held_run(&mut self, blob: &str, offset: u64) -> Result<()> {
        let mut sizes = vec![];
        let mut end = offset;
        for e in &self.todo {
            match &e.source {
                Source::Held { blob: b, offset: o }
                    if b == blob
                        && *o == end
                        && (sizes.is_empty() || end - offset + e.csize <= HELD_RUN) =>
                {
                    sizes.push(e.csize);
                    end += e.csize;
                }
                _ => break,
            }
        }
        let mut reader = self.store.open(blob, offset)?.take(end - offset);
        for size in sizes {
            let mut frame = vec![0u8; size as usize];
            reader.read_exact(&mut frame)?;
            self.held.push_back(frame);
        }
        Ok(())
    }

    /// The `len` bytes at `loc`: from a stored blob, or from the parts
    /// (their local files, else their copies in the store).
    fn read_at(&self, loc: &Loc, len: u64) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(len as usize);
        match loc {
            Loc::Blob(blob, offset) => {
                self.store
                    .open(blob, *offset)?
                    .take(len)
                    .read_to_end(&mut out)?;
            }
            Loc::Stream(at) => {
                for (blob, offset, n) in self.stream_ranges(*at, len)? {
                    let mut reader: Box<dyn Read> = match self
                        .parts
                        .iter()
                        .find(|p| p.blob == blob)
                        .and_then(|p| std::fs::File::open(&p.path).ok())
                    {
                        Some(mut f) => {
                            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(offset))?;
                            Box::new(f)
                        }
                        None => self.store.open(&blob, offset)?,
                    };
                    reader.by_ref().take(n).read_to_end(&mut out)?;
                }
            }
        }
        if out.len() as u64 != len {
            return Err(Error::internal("a stored frame is shorter than recorded"));
        }
        Ok(out)
    }

    /// The parts' byte range `[at, at + len)` as (part blob, offset, len).
    fn stream_ranges(&self, at: u64, len: u64) -> Result<Vec<(String, u64, u64)>> {
        let mut out = vec![];
        let end = at + len;
        for p in &self.parts {
            let (from, to) = (at.max(p.start), end.min(p.start + p.size));
            if from < to {
                out.push((p.blob.clone(), from - p.start, to - from));
            }
        }
        if out.iter().map(|r| r.2).sum::<u64>() != len {
            return Err(Error::internal("a frame lies outside the parts folded"));
        }
        Ok(out)
    }

    /// Takes the oldest decoded batch into the NAR check and the layout.
    fn collect_one(&mut self, nar: &mut dyn Write) -> Result<()> {
        let Some(flight) = self.inflight.pop_front() else {
            return Ok(());
        };
        let decoded = flight
            .decoded
            .recv()
            .map_err(|_| Error::internal("a frame decoder stopped"))?;
        if decoded.len() != flight.entries.len() {
            return Err(Error::internal("a frame decoder stopped"));
        }
        for ((entry, loc), (frame, decoded)) in flight.entries.into_iter().zip(decoded) {
            let data = match (decoded, &entry.source) {
                (Ok(d), _) => d,
                (Err(why), Source::Sent) => {
                    return Err(Error::InvalidCompression(format!(
                        "chunk {} of the manifest: {why}",
                        entry.idx
                    )));
                }
                (Err(why), _) => {
                    return Err(Error::internal(format!(
                        "a stored frame of chunk {} is damaged: {why}",
                        entry.blake3
                    )));
                }
            };
            nar.write_all(&data)?;
            self.spare.give(data);
            self.sha.update(&frame);
            self.file_size += frame.len() as u64;
            self.ranges.push((loc, frame.len() as u64));
        }
        Ok(())
    }

    /// Takes what is left; the stored file's layout.
    pub fn finish(mut self, nar: &mut dyn Write) -> Result<Layout> {
        self.pump(nar)?;
        // Verdicts on the frames taken come first: they are earlier in
        // the NAR than a missing or extra byte.
        while !self.inflight.is_empty() {
            self.collect_one(nar)?;
        }
        if let Some(e) = self.todo.front() {
            return Err(Error::InvalidCompression(format!(
                "the parts end before the frame of chunk {} ({} bytes, {} at hand): send the rest",
                e.idx,
                e.csize,
                self.pending.len() - self.consumed
            )));
        }
        let extra = self.pending.len() - self.consumed;
        if extra > 0 {
            return Err(Error::InvalidCompression(format!(
                "{extra} bytes follow the last chunk's frame: the parts hold more than the manifest"
            )));
        }
        let mut ranges: Vec<(String, u64, u64)> = vec![];
        for (loc, len) in std::mem::take(&mut self.ranges) {
            let pieces = match loc {
                Loc::Blob(blob, offset) => vec![(blob, offset, len)],
                Loc::Stream(at) => self.stream_ranges(at, len)?,
            };
            for (blob, offset, n) in pieces {
                match ranges.last_mut() {
                    Some(last) if last.0 == blob && last.1 + last.2 == offset => last.2 += n,
                    _ => ranges.push((blob, offset, n)),
                }
            }
        }
        // New frames whole inside one part: where later uploads find them.
        let mut frames = vec![];
        for (blake3, (loc, csize, size)) in std::mem::take(&mut self.first) {
            if let Loc::Stream(at) = loc
                && let [(blob, offset, _)] = self.stream_ranges(at, csize)?.as_slice()
            {
                frames.push((blake3, blob.clone(), *offset, csize, size));
            }
        }
        Ok(Layout {
            ranges,
            file_hash: Sha256Hash(self.sha.clone().finalize().into()),
            file_size: self.file_size,
            frames,
        })
    }
}
