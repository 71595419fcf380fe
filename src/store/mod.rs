//! Content-addressed blob storage.
//!
//! A stored NAR file is an ordered list of blobs (today: one blob per part
//! the client sent when it sent zstd, or one blob when the server
//! compressed it), each named by the blake3 of its bytes. The read path
//! only ever sees "a list of blobs", so content-defined chunking can come
//! later without touching it. Backends implement [`BlobStore`], a small
//! blocking trait (callers run it on the blocking pool). Two exist:
//! [`LocalStore`] (the default): files under a two-level fan-out
//! directory, written to a temporary file, fsynced, renamed into place,
//! parent dir fsynced; and [`S3Store`]: objects in an S3-compatible bucket
//! (the `[s3]` config table).

pub mod local;
pub mod s3;
pub mod zstd_io;

use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;

pub use local::LocalStore;
pub use s3::S3Store;

/// A blob id: lowercase hex of the blake3 of the blob's bytes.
pub type BlobId = String;

/// Where blobs live.
pub trait BlobStore: Send + Sync + 'static {
    /// Moves `file`, a complete and fsynced local file whose blake3 is `id`,
    /// into the store. Afterwards `file` no longer exists. Storing an id
    /// that is already present keeps the present one.
    fn adopt(&self, id: &str, file: &Path) -> io::Result<()>;
    /// Opens a blob for reading, positioned at `offset`.
    fn open(&self, id: &str, offset: u64) -> io::Result<Box<dyn Read + Send>>;
    /// Whether the blob exists.
    fn exists(&self, id: &str) -> io::Result<bool>;
    /// Removes a blob; removing an absent blob is not an error.
    fn delete(&self, id: &str) -> io::Result<()>;
    /// Every blob with its size and last modification (for GC).
    fn list(&self) -> io::Result<Vec<BlobInfo>>;
    /// When a blob was last stored or re-stored; `None` if absent.
    fn modified(&self, id: &str) -> io::Result<Option<std::time::SystemTime>>;
    /// Whether the store is shared with other instances (a remote store):
    /// then every part is copied in ([`BlobStore::copy_in`]) before it is
    /// acknowledged, so any instance can fold it, and publish finds the
    /// blobs of zstd uploads already there.
    fn shared(&self) -> bool {
        false
    }
    /// Writes `file` (whose blake3 is `id`) into the store, leaving the
    /// file in place; a blob already present is written again, so its
    /// time is fresh. The part row written next owns the copy (GC keeps
    /// every blob a part row names); until then GC's grace protects it.
    /// A no-op where the store is not shared.
    fn copy_in(&self, _id: &str, _file: &Path) -> io::Result<()> {
        Ok(())
    }
    /// Which of `ids` are absent (a backend may answer with one listing).
    fn missing(&self, ids: Vec<String>) -> io::Result<Vec<String>> {
        let mut out = vec![];
        for id in ids {
            if !self.exists(&id)? {
                out.push(id);
            }
        }
        Ok(out)
    }
}

/// A stored blob as [`BlobStore::list`] reports it.
#[derive(Clone, Debug)]
pub struct BlobInfo {
    pub id: BlobId,
    pub size: u64,
    /// When it was stored (adopting a blob stamps it).
    pub modified: std::time::SystemTime,
}

/// A shared blob store.
pub type SharedStore = Arc<dyn BlobStore>;

/// One piece of a NAR file, as listed in the database: `size` bytes of
/// blob `blob` from `offset` (0 and the whole blob but for chunked NARs).
#[derive(Clone, Debug)]
pub struct ChunkRef {
    pub blob: BlobId,
    pub offset: u64,
    pub size: u64,
}

/// Reads `len` bytes starting at `offset` of the concatenation of `chunks`.
pub struct ChainReader {
    store: SharedStore,
    /// Remaining (blob, offset within blob, bytes to read from it).
    plan: std::collections::VecDeque<(BlobId, u64, u64)>,
    current: Option<(Box<dyn Read + Send>, u64)>,
}

impl ChainReader {
    /// Plans a read of `[offset, offset + len)` over the chunks.
    pub fn new(store: SharedStore, chunks: &[ChunkRef], offset: u64, len: u64) -> ChainReader {
        let mut plan = std::collections::VecDeque::new();
        let mut start = 0u64;
        let end = offset.saturating_add(len);
        for c in chunks {
            let (c_start, c_end) = (start, start + c.size);
            start = c_end;
            let (from, to) = (offset.max(c_start), end.min(c_end));
            if from < to {
                plan.push_back((c.blob.clone(), c.offset + from - c_start, to - from));
            }
        }
        ChainReader {
            store,
            plan,
            current: None,
        }
    }
}

impl Read for ChainReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some((reader, left)) = &mut self.current {
                if *left > 0 {
                    let want = buf.len().min(*left as usize);
                    let n = reader.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "blob shorter than recorded",
                        ));
                    }
                    *left -= n as u64;
                    return Ok(n);
                }
                self.current = None;
            }
            match self.plan.pop_front() {
                None => return Ok(0),
                Some((blob, off, len)) => {
                    self.current = Some((self.store.open(&blob, off)?, len));
                }
            }
        }
    }
}

/// Fsyncs a directory so a rename or create inside it is durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The metadata of an entry a directory listing gave, or `None` if it
/// is gone by now: a server beside a sweep removes upload directories
/// and blobs between the listing and the look.
pub fn listed_metadata(entry: &std::fs::DirEntry) -> io::Result<Option<std::fs::Metadata>> {
    match entry.metadata() {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_gone_after_the_listing_is_none_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kept"), b"k").unwrap();
        std::fs::write(dir.path().join("gone"), b"g").unwrap();
        let entries: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        std::fs::remove_file(dir.path().join("gone")).unwrap();
        let mut seen: Vec<(String, bool)> = entries
            .iter()
            .map(|e| {
                let name = e.file_name().into_string().unwrap();
                (name, listed_metadata(e).unwrap().is_some())
            })
            .collect();
        seen.sort();
        assert_eq!(seen, [("gone".into(), false), ("kept".into(), true)]);
    }

    #[test]
    fn chain_reader_reads_any_window_across_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore = Arc::new(LocalStore::open(dir.path()).unwrap());
        let pieces: Vec<Vec<u8>> = vec![b"hello ".to_vec(), b"big ".to_vec(), b"world".to_vec()];
        let mut chunks = vec![];
        for p in &pieces {
            let id = blake3::hash(p).to_hex().to_string();
            let tmp = dir.path().join("tmp-in");
            std::fs::write(&tmp, p).unwrap();
            store.adopt(&id, &tmp).unwrap();
            chunks.push(ChunkRef {
                blob: id,
                offset: 0,
                size: p.len() as u64,
            });
        }
        let all: Vec<u8> = pieces.concat();
        for off in 0..all.len() {
            for len in 0..=(all.len() - off) {
                let mut out = vec![];
                ChainReader::new(store.clone(), &chunks, off as u64, len as u64)
                    .read_to_end(&mut out)
                    .unwrap();
                assert_eq!(out, &all[off..off + len], "off {off} len {len}");
            }
        }
    }
}
