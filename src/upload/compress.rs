//! Server-side compression into the stored `.nar.zst`: each part of a
//! plain NAR upload as it arrives (the part's file is then its piece of
//! the stored file), and the NAR of an xz upload as it is verified. The
//! bytes are cut into blocks of [`BLOCK`] bytes, each compressed as an
//! independent zstd frame on a thread of a pool, and the frames are
//! written in order. Concatenated frames are one valid zstd stream for Nix
//! and every zstd reader, across parts too; one stream kept a single core
//! busy (it bounded plain ingest at a quarter of the disk's speed).
//!
//! Memory per writer: the block being filled plus at most `threads + 1`
//! blocks in flight, and their frames. The threads are shared by every
//! writer (one per core); a NAR smaller than one block (most store paths)
//! is compressed on the caller's thread.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use super::pool::{self, Pool};

/// NAR bytes per frame.
pub const BLOCK: usize = 2 << 20;

/// A block to compress, at which level, and where its frame goes.
struct Job {
    data: Vec<u8>,
    level: i32,
    reply: SyncSender<io::Result<Vec<u8>>>,
}

/// The compression threads every writer shares (one per core, at most 8):
/// parts received at once, and verifiers, add no threads of their own.
fn shared_pool() -> io::Result<&'static Pool<Job>> {
    static POOL: OnceLock<std::result::Result<Pool<Job>, String>> = OnceLock::new();
    POOL.get_or_init(|| {
        Pool::start(
            "ferry-compress",
            pool::threads(),
            || None,
            |cctx: &mut Option<(i32, zstd::bulk::Compressor<'static>)>, job: Job| {
                let _ = job.reply.send(compress(cctx, &job));
            },
        )
        .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| io::Error::other(e.clone()))
}

/// One frame of `job`, with the thread's context (made again when the
/// level changes).
fn compress(
    cctx: &mut Option<(i32, zstd::bulk::Compressor<'static>)>,
    job: &Job,
) -> io::Result<Vec<u8>> {
    if cctx.as_ref().is_none_or(|(level, _)| *level != job.level) {
        *cctx = Some((job.level, zstd::bulk::Compressor::new(job.level)?));
    }
    match cctx {
        Some((_, c)) => c.compress(&job.data),
        None => Err(io::Error::other("no compression context")),
    }
}

/// Compresses what is written into independent frames on the shared
/// threads; writes the frames into `out` in order.
pub struct FrameWriter<W: Write> {
    out: W,
    level: i32,
    block: Vec<u8>,
    /// Whether a block went to the threads (else, at most one block was
    /// written: it is compressed here).
    dispatched: bool,
    inflight: VecDeque<Receiver<io::Result<Vec<u8>>>>,
    depth: usize,
}

impl<W: Write> FrameWriter<W> {
    /// Frames at zstd `level` into `out`.
    pub fn new(out: W, level: i32) -> crate::error::Result<FrameWriter<W>> {
        Ok(FrameWriter {
            out,
            level,
            block: Vec::new(),
            dispatched: false,
            inflight: VecDeque::new(),
            depth: pool::threads() + 1,
        })
    }

    /// Takes NAR bytes.
    pub fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let take = (BLOCK - self.block.len()).min(data.len());
            self.block.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.block.len() == BLOCK {
                self.dispatch()?;
            }
        }
        Ok(())
    }

    fn dispatch(&mut self) -> io::Result<()> {
        let data = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK));
        let (reply, frame) = sync_channel(1);
        self.dispatched = true;
        shared_pool()?
            .send(Job {
                data,
                level: self.level,
                reply,
            })
            .map_err(|_| io::Error::other("compression stopped"))?;
        self.inflight.push_back(frame);
        while self.inflight.len() > self.depth {
            self.collect_one()?;
        }
        Ok(())
    }

    fn collect_one(&mut self) -> io::Result<()> {
        if let Some(rx) = self.inflight.pop_front() {
            let frame = rx
                .recv()
                .map_err(|_| io::Error::other("a compression thread stopped"))??;
            self.out.write_all(&frame)?;
        }
        Ok(())
    }

    /// Compresses what is left, writes every frame, returns `out`.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.dispatched {
            // Less than one block in all: one frame, here.
            if !self.block.is_empty() {
                let frame = zstd::bulk::compress(&self.block, self.level)?;
                self.out.write_all(&frame)?;
            }
            return Ok(self.out);
        }
        if !self.block.is_empty() {
            self.dispatch()?;
        }
        while !self.inflight.is_empty() {
            self.collect_one()?;
        }
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_decode_to_what_was_written_in_any_slicing() {
        let data: Vec<u8> = (0..(BLOCK * 3 + 12345))
            .map(|i| (i % 251) as u8 ^ (i / 4096) as u8)
            .collect();
        for step in [1usize, 4096, BLOCK - 1, BLOCK, BLOCK * 3 + 12345] {
            let mut w = FrameWriter::new(Vec::new(), 3).unwrap();
            for piece in data.chunks(step.max(997)) {
                w.write_all(piece).unwrap();
            }
            let out = w.finish().unwrap();
            assert!(out.len() < data.len() / 4, "compressed: {}", out.len());
            assert_eq!(zstd::decode_all(&out[..]).unwrap(), data);
        }
        // Nothing written, nothing out (a NAR is never empty).
        let empty = FrameWriter::new(Vec::new(), 3).unwrap().finish().unwrap();
        assert!(empty.is_empty());
        // Under one block: compressed here, no pool started.
        for len in [1, 5000, BLOCK - 1] {
            let mut w = FrameWriter::new(Vec::new(), 3).unwrap();
            w.write_all(&data[..len]).unwrap();
            assert!(!w.dispatched, "{len} bytes went to the threads");
            let out = w.finish().unwrap();
            assert_eq!(zstd::decode_all(&out[..]).unwrap(), &data[..len]);
        }
    }
}
