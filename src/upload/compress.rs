//! Server-side compression of plain (and xz) NAR uploads into the stored
//! `.nar.zst`: the NAR is cut into blocks of [`BLOCK`] bytes, each
//! compressed as an independent zstd frame on a thread of a pool, and the
//! frames are written in order. Concatenated frames are one valid zstd
//! stream for Nix and every zstd reader; one stream kept a single core
//! busy (it bounded plain ingest at a quarter of the disk's speed).
//!
//! Memory per upload: the block being filled plus at most `threads + 1`
//! blocks in flight, and their frames. A NAR smaller than one block (most
//! store paths) is compressed on the caller's thread: the pool starts with
//! the first full block.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use super::pool::{self, Pool};

/// NAR bytes per frame.
pub const BLOCK: usize = 2 << 20;

/// A block to compress, and where its frame goes.
struct Job {
    data: Vec<u8>,
    reply: SyncSender<io::Result<Vec<u8>>>,
}

/// Compresses what is written into independent frames on several
/// threads; writes the frames into `out` in order.
pub struct FrameWriter<W: Write> {
    out: W,
    level: i32,
    block: Vec<u8>,
    /// Started with the first full block.
    pool: Option<Pool<Job>>,
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
            pool: None,
            inflight: VecDeque::new(),
            depth: pool::threads() + 1,
        })
    }

    fn pool(&mut self) -> io::Result<&Pool<Job>> {
        if self.pool.is_none() {
            let level = self.level;
            let pool = Pool::start(
                "ferry-compress",
                pool::threads(),
                move || zstd::bulk::Compressor::new(level),
                |cctx: &mut io::Result<zstd::bulk::Compressor<'static>>, job: Job| {
                    let frame = match cctx {
                        Ok(c) => c.compress(&job.data),
                        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                    };
                    let _ = job.reply.send(frame);
                },
            )
            .map_err(|e| io::Error::other(e.to_string()))?;
            self.pool = Some(pool);
        }
        self.pool
            .as_ref()
            .ok_or_else(|| io::Error::other("compression stopped"))
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
        self.pool()?
            .send(Job { data, reply })
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
        if self.pool.is_none() {
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
            assert!(w.pool.is_none(), "a pool for {len} bytes");
            let out = w.finish().unwrap();
            assert_eq!(zstd::decode_all(&out[..]).unwrap(), &data[..len]);
        }
    }
}
