//! The verifier's pipe for chunked uploads (`compression = "chunked"`).
//!
//! The parts of a chunked upload are the zstd frames of the chunks the
//! server did not hold, in manifest order; the manifest (`db::chunks`)
//! says for every chunk of the NAR where its frame comes from. The pipe
//! walks it: a sent frame is cut from the parts' bytes (its declared
//! `csize`), a held one is read from the blob store, a repeated one from
//! the file being written. Frames are independent, so they are
//! decompressed and checked (size, blake3) on several threads at once; the
//! results are taken in manifest order into the NAR check (SHA-256,
//! structure, listing: one thread, the ceiling) and their frames appended
//! to the stored file, the NAR as `.nar.zst` (concatenated frames, which
//! Nix reads as one stream).
//!
//! A sent frame that does not decode to its declared chunk is a verdict
//! on the client's bytes; a stored frame that does not is a fault.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use super::verifier::CompressedFile;
use crate::db::chunks::{Entry, Source};
use crate::error::{Error, Result};
use crate::nar::Sha256Hash;
use crate::store::SharedStore;

/// The largest chunk a manifest may declare.
pub const MAX_CHUNK_SIZE: u64 = 16 << 20;

/// The most bytes of held frames read at once.
const HELD_RUN: u64 = 16 << 20;

/// Where a chunk's frame lies in the stored file: (blake3, offset, csize,
/// size).
pub type FrameAt = (String, u64, u64, u64);

/// A frame to decode, and where to send the outcome.
struct Job {
    frame: Vec<u8>,
    size: u64,
    blake3: String,
    reply: SyncSender<std::result::Result<Decoded, String>>,
}

/// A frame and the chunk it decoded to (checked).
struct Decoded {
    frame: Vec<u8>,
    data: Vec<u8>,
}

/// Threads decoding frames.
struct Pool {
    jobs: Option<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    fn start(n: usize) -> Result<Pool> {
        let (tx, rx) = sync_channel::<Job>(n);
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = vec![];
        for _ in 0..n {
            let rx = rx.clone();
            let t = std::thread::Builder::new()
                .name("ferry-frames".into())
                .spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        let _ = job.reply.send(decode(job.frame, job.size, &job.blake3));
                    }
                })
                .map_err(Error::internal)?;
            threads.push(t);
        }
        Ok(Pool {
            jobs: Some(tx),
            threads,
        })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Decodes one frame into exactly `size` bytes whose blake3 is `blake3`.
fn decode(frame: Vec<u8>, size: u64, blake3: &str) -> std::result::Result<Decoded, String> {
    // The capacity bounds the output: a frame that would decode to more
    // than declared fails here, before allocating more.
    let data = zstd::bulk::decompress(&frame, size as usize).map_err(|e| {
        format!("its frame is not valid zstd or decodes to more than {size} bytes ({e})")
    })?;
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
    Ok(Decoded { frame, data })
}

/// The stored file being written, hashed as it is written.
struct OutFile {
    out: BufWriter<File>,
    /// The same file, for reading back repeated frames.
    reader: File,
    path: PathBuf,
    sha: Sha256,
    blake: blake3::Hasher,
    bytes: u64,
}

/// Frames of one chunked upload in, NAR bytes out (into `nar`).
pub struct ChunkedPipe {
    /// Manifest entries not yet taken, in order.
    todo: VecDeque<Entry>,
    /// Entries handed in so far.
    known: u64,
    /// Bytes of the parts not yet cut into frames, from `consumed` on.
    pending: Vec<u8>,
    consumed: usize,
    out: OutFile,
    /// Where each chunk's first frame went in the stored file.
    written: HashMap<String, (u64, u64)>,
    frames: Vec<FrameAt>,
    store: SharedStore,
    pool: Pool,
    /// Held frames read ahead (see [`ChunkedPipe::read_held_run`]), for
    /// the held entries at the front of `todo`.
    held: VecDeque<Vec<u8>>,
    /// Frames being decoded, oldest first.
    inflight: VecDeque<(Entry, Receiver<std::result::Result<Decoded, String>>)>,
    depth: usize,
}

impl ChunkedPipe {
    /// A pipe writing the stored file at `out_path`.
    pub fn new(out_path: &Path, store: SharedStore) -> Result<ChunkedPipe> {
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(out_path)?;
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(1, 8);
        Ok(ChunkedPipe {
            todo: VecDeque::new(),
            known: 0,
            pending: vec![],
            consumed: 0,
            out: OutFile {
                reader: file.try_clone()?,
                out: BufWriter::with_capacity(1 << 20, file),
                path: out_path.to_owned(),
                sha: Sha256::new(),
                blake: blake3::Hasher::new(),
                bytes: 0,
            },
            written: HashMap::new(),
            frames: vec![],
            held: VecDeque::new(),
            store,
            pool: Pool::start(threads)?,
            inflight: VecDeque::new(),
            depth: threads * 2 + 2,
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

    /// Takes bytes of the parts, in order.
    pub fn feed(&mut self, data: &[u8], nar: &mut dyn Write) -> Result<()> {
        if self.consumed > (1 << 20) && self.consumed * 2 > self.pending.len() {
            self.pending.drain(..self.consumed);
            self.consumed = 0;
        }
        self.pending.extend_from_slice(data);
        self.pump(nar)
    }

    /// Takes every entry whose frame is at hand.
    pub fn pump(&mut self, nar: &mut dyn Write) -> Result<()> {
        while let Some(entry) = self.todo.front().cloned() {
            let frame = match &entry.source {
                Source::Sent => {
                    let end = self.consumed as u64 + entry.csize;
                    if (self.pending.len() as u64) < end {
                        break;
                    }
                    let frame = self.pending[self.consumed..end as usize].to_vec();
                    self.consumed = end as usize;
                    frame
                }
                Source::Held { blob, offset } => {
                    if self.held.is_empty() {
                        self.read_held_run(blob, *offset)?;
                    }
                    self.held
                        .pop_front()
                        .ok_or_else(|| Error::internal("a held frame was not read"))?
                }
                Source::Repeat => {
                    // Its first frame must be in the file before it is read.
                    while !self.inflight.is_empty() {
                        self.collect_one(nar)?;
                    }
                    let (offset, csize) = *self.written.get(&entry.blake3).ok_or_else(|| {
                        Error::internal("a repeated chunk's first frame was not written")
                    })?;
                    self.out.out.flush()?;
                    let mut frame = vec![0u8; csize as usize];
                    self.out.reader.read_exact_at(&mut frame, offset)?;
                    frame
                }
            };
            self.todo.pop_front();
            let (reply, rx) = sync_channel(1);
            let job = Job {
                frame,
                size: entry.size,
                blake3: entry.blake3.clone(),
                reply,
            };
            self.pool
                .jobs
                .as_ref()
                .ok_or_else(|| Error::internal("frame pool gone"))?
                .send(job)
                .map_err(|_| Error::internal("frame pool stopped"))?;
            self.inflight.push_back((entry, rx));
            while self.inflight.len() >= self.depth {
                self.collect_one(nar)?;
            }
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
                        && (end - offset + e.csize <= HELD_RUN || sizes.is_empty()) =>
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

    /// Takes the oldest decoded frame into the NAR check and the file.
    fn collect_one(&mut self, nar: &mut dyn Write) -> Result<()> {
        let Some((entry, rx)) = self.inflight.pop_front() else {
            return Ok(());
        };
        let decoded = rx
            .recv()
            .map_err(|_| Error::internal("a frame decoder stopped"))?;
        let decoded = match (decoded, &entry.source) {
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
        nar.write_all(&decoded.data)?;
        let offset = self.out.bytes;
        self.out.out.write_all(&decoded.frame)?;
        self.out.sha.update(&decoded.frame);
        self.out.blake.update(&decoded.frame);
        self.out.bytes += decoded.frame.len() as u64;
        if !self.written.contains_key(&entry.blake3) {
            let csize = decoded.frame.len() as u64;
            self.written.insert(entry.blake3.clone(), (offset, csize));
            self.frames
                .push((entry.blake3.clone(), offset, csize, entry.size));
        }
        Ok(())
    }

    /// Takes what is left and closes the stored file: it and where each
    /// chunk's frame lies in it.
    pub fn finish(mut self, nar: &mut dyn Write) -> Result<(CompressedFile, Vec<FrameAt>)> {
        self.pump(nar)?;
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
        while !self.inflight.is_empty() {
            self.collect_one(nar)?;
        }
        self.out.out.flush()?;
        self.out.reader.sync_all()?;
        let file = CompressedFile {
            path: self.out.path.clone(),
            blake3: self.out.blake.finalize().to_hex().to_string(),
            sha256: Sha256Hash(self.out.sha.clone().finalize().into()),
            size: self.out.bytes,
        };
        Ok((file, std::mem::take(&mut self.frames)))
    }
}
