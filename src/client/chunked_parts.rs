//! The bytes of a chunked upload: `nix-store --dump PATH` cut into
//! content-defined chunks ([`super::chunk`]), the manifest declared to the
//! server in batches, and the zstd frames of the chunks it lacks packed
//! whole into parts of at most the part size.
//!
//! Deterministic like [`super::parts::NarStream`]: the same NAR gives the
//! same chunks and frames, and the server answers a batch sent again with
//! what it answered the first time, so a resumed push makes the same parts.

use std::collections::VecDeque;
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::chunk::{self, Chunk};
use super::http::Api;
use super::{ClientError, Result};
use crate::api::ChunkDecl;

/// Manifest entries per request at most.
const BATCH_ENTRIES: usize = 2048;
/// NAR bytes per request at most (frames wait in memory for the answer:
/// two batches at most).
const BATCH_BYTES: u64 = 32 << 20;

/// A batch declared to the server, and its answer to come.
struct Asked {
    from: u64,
    batch: Vec<Chunk>,
    answer: tokio::task::JoinHandle<Result<Vec<u64>>>,
}

/// A running chunked dump of one store path.
pub struct ChunkedStream {
    child: Child,
    chunks: Box<dyn Iterator<Item = std::io::Result<Chunk>> + Send>,
    path: String,
    api: Api,
    upload: String,
    handle: tokio::runtime::Handle,
    /// Manifest entries declared so far.
    declared: u64,
    /// The batch declared last, waiting for its answer.
    asked: Option<Asked>,
    /// Frames ready to go, in order, and how far the first is taken.
    ready: VecDeque<Vec<u8>>,
    taken: usize,
    done: bool,
    /// NAR bytes read so far.
    pub nar_bytes: Arc<AtomicU64>,
    /// Frame bytes the server did not need (held or repeated chunks).
    pub skipped_bytes: Arc<AtomicU64>,
}

impl ChunkedStream {
    /// Starts `nix-store --dump PATH`, for upload `upload` (created with
    /// compression "chunked"). `handle` runs the manifest requests: call
    /// [`ChunkedStream::next_part`] off the runtime (a blocking thread).
    pub fn start(
        path: &str,
        api: Api,
        upload: &str,
        handle: tokio::runtime::Handle,
    ) -> Result<ChunkedStream> {
        let (child, stdout) = super::parts::dump(path)?;
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let chunks = chunk::chunks(
            stdout,
            chunk::DEFAULT_SIZES,
            super::parts::ZSTD_LEVEL,
            threads,
        );
        Ok(ChunkedStream {
            child,
            chunks: Box::new(chunks),
            path: path.to_owned(),
            api,
            upload: upload.to_owned(),
            handle,
            declared: 0,
            asked: None,
            ready: VecDeque::new(),
            taken: 0,
            done: false,
            nar_bytes: Arc::new(AtomicU64::new(0)),
            skipped_bytes: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Chunks the next batch and declares it; while its answer travels,
    /// the batch after it is chunked (the server takes batches in order,
    /// one at a time). Queues the frames of the previous batch the server
    /// asked for. `false` once the NAR is at its end and every batch is
    /// answered.
    fn next_batch(&mut self) -> Result<bool> {
        let mut batch: Vec<Chunk> = vec![];
        let mut bytes = 0u64;
        while batch.len() < BATCH_ENTRIES && bytes < BATCH_BYTES {
            match self.chunks.next() {
                None => break,
                Some(Ok(c)) => {
                    bytes += c.entry.size;
                    self.nar_bytes.fetch_add(c.entry.size, Ordering::Relaxed);
                    batch.push(c);
                }
                Some(Err(e)) => {
                    return Err(ClientError::Nix(format!(
                        "reading the NAR of {}: {e}",
                        self.path
                    )));
                }
            }
        }
        let answered = match self.asked.take() {
            Some(asked) => {
                self.queue(asked)?;
                true
            }
            None => false,
        };
        if batch.is_empty() {
            return Ok(answered);
        }
        let decls: Vec<ChunkDecl> = batch
            .iter()
            .map(|c| ChunkDecl {
                blake3: c.entry.blake3.clone(),
                size: c.entry.size,
                csize: c.entry.csize,
            })
            .collect();
        let from = self.declared;
        self.declared += batch.len() as u64;
        let (api, upload) = (self.api.clone(), self.upload.clone());
        let answer = self
            .handle
            .spawn(async move { api.add_chunks(&upload, from, decls).await });
        self.asked = Some(Asked {
            from,
            batch,
            answer,
        });
        Ok(true)
    }

    /// Waits for a batch's answer and queues the frames asked for.
    fn queue(&mut self, asked: Asked) -> Result<()> {
        let send = self
            .handle
            .block_on(asked.answer)
            .map_err(|e| ClientError::Nix(format!("declaring chunks stopped: {e}")))??;
        let mut wanted = send.into_iter().peekable();
        for (k, c) in asked.batch.into_iter().enumerate() {
            if wanted.peek() == Some(&(asked.from + k as u64)) {
                wanted.next();
                self.ready.push_back(c.frame);
            } else {
                self.skipped_bytes
                    .fetch_add(c.entry.csize, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// The next part: whole frames, as many as fit in `size` bytes (a
    /// frame larger than `size` alone is cut, the rest starting the next
    /// part), or `None` after the last one (and after checking that
    /// `nix-store` succeeded). Parts that end at frame boundaries let the
    /// server find every new frame inside one stored blob later.
    pub fn next_part(&mut self, size: usize) -> Result<Option<Vec<u8>>> {
        let mut part = Vec::with_capacity(size.min(64 << 20));
        loop {
            let Some(front) = self.ready.front() else {
                if self.done || !self.next_batch()? {
                    self.done = true;
                    break;
                }
                continue;
            };
            let rest = front.len() - self.taken;
            if !part.is_empty() && part.len() + rest > size {
                break;
            }
            let take = rest.min(size - part.len());
            part.extend_from_slice(&front[self.taken..self.taken + take]);
            self.taken += take;
            if self.taken == front.len() {
                self.ready.pop_front();
                self.taken = 0;
            }
            if part.len() == size {
                break;
            }
        }
        if part.is_empty() {
            super::parts::dump_succeeded(&mut self.child, &self.path)?;
            return Ok(None);
        }
        Ok(Some(part))
    }
}

impl Drop for ChunkedStream {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
