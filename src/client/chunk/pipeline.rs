//! The threads behind [`super::chunks`]: one reads the NAR and cuts it,
//! `workers` hash and compress, and the caller's iterator puts the results
//! back in NAR order.
//!
//! The reader groups consecutive chunks into batches of about
//! [`BATCH_BYTES`] and hands each batch to a worker with a one-shot
//! channel (its *slot*) for the result. The slots go to the caller, in
//! order, through a queue of [`window`] entries: the caller waits on the
//! oldest slot, so results come back in order with no reordering buffer,
//! and the reader stops when the queue is full, so memory stays bounded by
//! the window whatever the NAR's size and however slow the caller.
//!
//! Batches, rather than single chunks, because each hand-off between
//! threads costs a few microseconds of wake-ups: at a 16 KiB chunk that is
//! a sizeable share of compressing it.

use std::io::{self, Read};
use std::mem;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use fastcdc::v2020::StreamCDC;

use super::{Chunk, ChunkEntry, ChunkSizes, FrameEncoder};

/// A batch closes once its chunks hold this many bytes (so it holds at
/// most this plus one chunk); [`super::chunks`] uses this, tests smaller.
pub(super) const BATCH_BYTES: usize = 1 << 20;

/// Batches in flight for `workers` compressing threads: enough that a
/// worker finds the next batch waiting, few enough that memory stays a few
/// MiB per worker.
pub(super) fn window(workers: usize) -> usize {
    4 * workers
}

type Batch = io::Result<Vec<Chunk>>;

/// Where a batch's result will arrive: a one-shot channel its worker fills.
type Slot = Receiver<Batch>;

/// What the reader hands the caller, in NAR order.
enum Next {
    Batch(Slot),
    /// The NAR ended after the batches before it. A queue that closes
    /// without it means the reader died, and the NAR must not look
    /// complete.
    End,
}

/// A batch of chunks on its way to a worker, with the slot to fill.
struct Job {
    chunks: Vec<Vec<u8>>,
    slot: SyncSender<Batch>,
}

/// Starts the threads and returns the caller's side. An error in starting
/// them is the iterator's only item.
pub(super) fn start<R: Read + Send + 'static>(
    nar: R,
    sizes: ChunkSizes,
    level: i32,
    workers: usize,
    batch_bytes: usize,
) -> InOrder {
    let (slots_tx, slots_rx) = sync_channel(window(workers));
    if let Err(e) = spawn(nar, sizes, level, workers, batch_bytes, slots_tx.clone()) {
        // The queue is empty, so this cannot block.
        let _ = slots_tx.send(Next::Batch(resolved(Err(e))));
    }
    InOrder {
        slots: slots_rx,
        ready: Vec::new().into_iter(),
        finished: false,
    }
}

/// A slot that already holds its result.
fn resolved(batch: Batch) -> Slot {
    let (tx, rx) = sync_channel(1);
    let _ = tx.send(batch);
    rx
}

fn spawn<R: Read + Send + 'static>(
    nar: R,
    sizes: ChunkSizes,
    level: i32,
    workers: usize,
    batch_bytes: usize,
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
        .spawn(move || cut_into_jobs(nar, sizes, batch_bytes, &jobs_tx, &slots))?;
    Ok(())
}

/// The reading thread: cuts the NAR into batches; queues each batch's slot
/// for the caller and its chunks for a worker. Stops at the end of the
/// NAR, at its first read error (after the chunks before it), or when the
/// caller has gone.
fn cut_into_jobs<R: Read>(
    nar: R,
    sizes: ChunkSizes,
    batch_bytes: usize,
    jobs: &SyncSender<Job>,
    slots: &SyncSender<Next>,
) {
    let mut batch = Vec::new();
    let mut bytes = 0;
    for cut in StreamCDC::new(nar, sizes.min, sizes.avg, sizes.max) {
        match cut {
            Ok(cut) => {
                bytes += cut.data.len();
                batch.push(cut.data);
            }
            Err(e) => {
                if dispatch(mem::take(&mut batch), jobs, slots) {
                    let _ = slots.send(Next::Batch(resolved(Err(e.into()))));
                }
                return;
            }
        }
        if bytes >= batch_bytes {
            bytes = 0;
            if !dispatch(mem::take(&mut batch), jobs, slots) {
                return;
            }
        }
    }
    if dispatch(batch, jobs, slots) {
        let _ = slots.send(Next::End);
    }
}

/// Queues a batch (if it has chunks); false once the caller has gone.
fn dispatch(chunks: Vec<Vec<u8>>, jobs: &SyncSender<Job>, slots: &SyncSender<Next>) -> bool {
    if chunks.is_empty() {
        return true;
    }
    let (slot, result) = sync_channel(1);
    slots.send(Next::Batch(result)).is_ok() && jobs.send(Job { chunks, slot }).is_ok()
}

/// A compressing thread: takes jobs until the reader is gone.
fn compress_jobs(jobs: &Mutex<Receiver<Job>>, level: i32) {
    let mut encoder = FrameEncoder::new(level);
    loop {
        // The lock is held only while waiting for the next job.
        let next = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(Job { chunks, slot }) = next else {
            return;
        };
        let batch = match &mut encoder {
            Ok(encoder) => chunks.iter().map(|data| compress(encoder, data)).collect(),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        };
        // The caller may be gone; the batch is then simply dropped.
        let _ = slot.send(batch);
    }
}

fn compress(encoder: &mut FrameEncoder, data: &[u8]) -> io::Result<Chunk> {
    let frame = encoder.frame(data)?;
    Ok(Chunk {
        entry: ChunkEntry {
            blake3: blake3::hash(data).to_hex().to_string(),
            size: data.len() as u64,
            csize: frame.len() as u64,
        },
        frame,
    })
}

/// The caller's side: slots in NAR order, each waited for in turn.
pub(super) struct InOrder {
    slots: Receiver<Next>,
    /// The rest of the batch being handed out.
    ready: std::vec::IntoIter<Chunk>,
    finished: bool,
}

impl Iterator for InOrder {
    type Item = io::Result<Chunk>;

    fn next(&mut self) -> Option<io::Result<Chunk>> {
        loop {
            if let Some(chunk) = self.ready.next() {
                return Some(Ok(chunk));
            }
            if self.finished {
                return None;
            }
            let batch = match self.slots.recv() {
                Ok(Next::Batch(slot)) => slot
                    .recv()
                    .unwrap_or_else(|_| Err(io::Error::other("a chunk compressing thread died"))),
                Ok(Next::End) => {
                    self.finished = true;
                    return None;
                }
                Err(_) => Err(io::Error::other("the NAR reading thread died")),
            };
            match batch {
                Ok(chunks) => self.ready = chunks.into_iter(),
                Err(e) => {
                    self.finished = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::super::chunks;
    use super::*;

    const SMALL: ChunkSizes = ChunkSizes::around(4096);

    /// Hands out `ok` bytes of `x`, then fails.
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
    fn a_read_error_comes_after_the_chunks_before_it() {
        // Runs of one byte cut at `max`: 2.5 MiB is 160 chunks, in 3 batches.
        let got: Vec<_> = chunks(Broken { ok: 5 << 19 }, SMALL, 3, 2).collect();
        let (last, before) = got.split_last().unwrap();
        assert_eq!(before.len(), (5 << 19) / SMALL.max as usize);
        assert!(before.iter().all(Result::is_ok));
        assert_eq!(last.as_ref().err().unwrap().to_string(), "disk on fire");
    }

    /// Endless pseudo-random bytes, counting what was read.
    struct Endless(Arc<AtomicUsize>, u64);
    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            for b in buf.iter_mut() {
                self.1 = self.1.wrapping_mul(6364136223846793005).wrapping_add(1);
                *b = (self.1 >> 56) as u8;
            }
            self.0.fetch_add(buf.len(), Ordering::Relaxed);
            Ok(buf.len())
        }
    }

    #[test]
    fn a_slow_caller_bounds_what_is_read() {
        let read = Arc::new(AtomicUsize::new(0));
        let workers = 2;
        let mut it = chunks(Endless(read.clone(), 1), SMALL, 3, workers);
        assert!(it.next().unwrap().is_ok());
        std::thread::sleep(Duration::from_millis(300));
        // The queue's batches, the one the caller holds, the reader's own
        // and FastCDC's buffer.
        let batch = BATCH_BYTES + SMALL.max as usize;
        let bound = (window(workers) + 2) * batch + SMALL.max as usize;
        let read = read.load(Ordering::Relaxed);
        assert!(read <= bound, "read {read} bytes, bound {bound}");
        assert!(read >= window(workers) * BATCH_BYTES, "the window filled");
        drop(it);
    }

    #[test]
    fn many_small_batches_on_many_workers_stay_in_order() {
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let expected: Vec<_> = super::super::manifest(&data[..], SMALL)
            .map(Result::unwrap)
            .collect();
        for (workers, batch_bytes) in [(4, 1), (3, 10_000), (8, 50_000)] {
            let got: Vec<_> = start(
                io::Cursor::new(data.clone()),
                SMALL,
                1,
                workers,
                batch_bytes,
            )
            .map(Result::unwrap)
            .collect();
            assert_eq!(got.len(), expected.len());
            for (chunk, id) in got.iter().zip(&expected) {
                assert_eq!(chunk.entry.blake3, id.blake3);
            }
        }
    }

    #[test]
    fn dropping_the_iterator_early_stops_the_reader() {
        let read = Arc::new(AtomicUsize::new(0));
        let mut it = chunks(Endless(read.clone(), 7), SMALL, 3, 2);
        assert!(it.next().unwrap().is_ok());
        drop(it);
        std::thread::sleep(Duration::from_millis(100));
        let then = read.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(read.load(Ordering::Relaxed), then, "the reader stopped");
    }
}
