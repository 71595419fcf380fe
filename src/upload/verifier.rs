//! The in-order verifier: parts in, NarHash/NarSize/FileHash verdict out.
//!
//! Parts are folded strictly in order 1, 2, 3, … as soon as they extend the
//! contiguous prefix. Each part's bytes go through SHA-256 of the file as
//! uploaded, then (for zstd uploads) through a zstd decoder, into a sink
//! that hashes the NAR, counts its bytes, checks its structure and builds
//! its `.ls` listing (memory in proportion to its entries). For
//! plain NAR uploads the same sink also feeds the zstd frames of the file
//! that will be stored (compressed on several threads, see
//! [`super::compress`]). Everything here is blocking: it runs on the
//! blocking pool. State lives in memory only; after a restart it is rebuilt
//! by folding the parts on disk again from part 1.
//!
//! Two stages on two threads: the caller's thread hashes the uploaded bytes
//! and decompresses them; a thread of the verifier's own ([`NarStage`])
//! takes the NAR bytes in 256 KiB buffers and hashes, checks (and, for
//! plain uploads, compresses) them. SHA-256 of the NAR and zstd decoding
//! cost about the same, so this nearly doubles what one upload verifies per
//! second. A structural error on the second stage stops the first at its
//! next write.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::nar::{NarValidator, Sha256Hash};

/// The largest zstd window an upload may ask for: 2^23 = 8 MiB, what
/// levels up to 19 use. A frame asking for more (`--ultra`, `--long`) is
/// refused as invalid zstd, so no upload can make the server hold a
/// 128 MiB window per decoder.
pub const MAX_WINDOW_LOG: u32 = 23;

/// zstd level of stored listings (small JSON: compression is cheap).
const LISTING_ZSTD_LEVEL: i32 = 3;

/// What the uploaded bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd,
    /// xz (Nix's default `compression` for `nix copy --to`): decoded,
    /// checked, and stored as zstd like a plain NAR.
    Xz,
    /// Content-defined chunks: the parts are the zstd frames of the chunks
    /// the server lacked, the manifest says where the others are (see
    /// [`super::chunked`]).
    Chunked,
}

impl Compression {
    /// Parses the wire name (`none`, `zstd`).
    pub fn parse(s: &str) -> Option<Compression> {
        match s {
            "none" => Some(Compression::None),
            "zstd" => Some(Compression::Zstd),
            "xz" => Some(Compression::Xz),
            "chunked" => Some(Compression::Chunked),
            _ => None,
        }
    }

    /// The compression a parts or tus upload declares (`none`, the
    /// default, or `zstd`; xz is only for Nix's own door).
    pub fn of_parts(declared: Option<&str>) -> Result<Compression> {
        match declared {
            None => Ok(Compression::None),
            Some(c) => Compression::parse(c)
                .filter(|c| *c != Compression::Xz)
                .ok_or_else(|| {
                    Error::BadRequest(format!(
                        "compression {c:?} is not supported: use \"none\", \"zstd\" or \"chunked\""
                    ))
                }),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
            Compression::Chunked => "chunked",
        }
    }
}

/// Hashes, counts and validates decompressed NAR bytes.
struct NarSink {
    sha: Sha256,
    bytes: u64,
    /// The declared size: more bytes than this is a mismatch, caught early
    /// so a decompression bomb costs nothing.
    limit: u64,
    validator: NarValidator,
    /// The first structural error, kept because `Write` can only say "io error".
    error: Option<Error>,
    /// For plain uploads: the zstd frames of the stored file.
    encoder: Option<super::compress::FrameWriter<FileSink>>,
}

impl NarSink {
    /// A sink expecting `nar_size` NAR bytes.
    fn new(nar_size: u64) -> NarSink {
        NarSink {
            sha: Sha256::new(),
            bytes: 0,
            limit: nar_size,
            validator: NarValidator::with_listing(),
            error: None,
            encoder: None,
        }
    }
}

impl Write for NarSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.error.is_some() {
            return Err(io::Error::other("verification already failed"));
        }
        self.bytes += buf.len() as u64;
        if self.bytes > self.limit {
            self.error = Some(Error::NarSizeMismatch {
                expected: self.limit,
                actual: self.bytes,
            });
            return Err(io::Error::other("NAR larger than declared"));
        }
        if let Err(e) = self.validator.update(buf) {
            self.error = Some(Error::InvalidNar(e.to_string()));
            return Err(io::Error::other("invalid NAR"));
        }
        self.sha.update(buf);
        if let Some(enc) = &mut self.encoder
            && let Err(e) = enc.write_all(buf)
        {
            // The server's own file (disk full, I/O error): a fault, not
            // a verdict on the client's bytes.
            let kind = e.kind();
            self.error = Some(Error::from(e));
            return Err(io::Error::new(kind, "writing the compressed file failed"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes the server-compressed file, hashing what it writes.
pub struct FileSink {
    out: BufWriter<File>,
    sha: Sha256,
    blake: blake3::Hasher,
    bytes: u64,
}

impl Write for FileSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write_all(buf)?;
        self.sha.update(buf);
        self.blake.update(buf);
        self.bytes += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// NAR bytes per hand-over between the stages.
const STAGE_BUF: usize = 256 * 1024;
/// Full buffers in flight between the stages.
const STAGE_DEPTH: usize = 4;

/// NARs up to this size are checked on the caller's thread: for a small
/// path, starting a thread costs more than the overlap saves.
const INLINE_NAR: u64 = 2 << 20;

/// The second stage: a thread owning the [`NarSink`], fed NAR bytes in
/// buffers over a bounded channel (the buffers come back to be refilled);
/// or, for a small NAR, the sink itself, written on the caller's thread.
struct NarStage {
    /// The sink when it runs on the caller's thread.
    local: Option<NarSink>,
    buf: Vec<u8>,
    tx: Option<SyncSender<Vec<u8>>>,
    spare: Receiver<Vec<u8>>,
    /// Set by the second stage on its first error.
    failed: Arc<AtomicBool>,
    thread: Option<JoinHandle<NarSink>>,
    /// The sink, once the thread has been joined.
    sink: Option<NarSink>,
}

impl NarStage {
    /// A stage for a NAR of `sink`'s declared size: on a thread of its own
    /// unless the NAR is small.
    fn start(sink: NarSink) -> Result<NarStage> {
        if sink.limit > INLINE_NAR {
            return NarStage::threaded(sink);
        }
        let (_, spare) = std::sync::mpsc::channel();
        Ok(NarStage {
            local: Some(sink),
            buf: Vec::new(),
            tx: None,
            spare,
            failed: Arc::new(AtomicBool::new(false)),
            thread: None,
            sink: None,
        })
    }

    fn threaded(mut sink: NarSink) -> Result<NarStage> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(STAGE_DEPTH);
        let (back, spare): (Sender<Vec<u8>>, _) = std::sync::mpsc::channel();
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        let thread = std::thread::Builder::new()
            .name("ferry-verify".into())
            .spawn(move || {
                for chunk in rx {
                    if !flag.load(Ordering::Relaxed) && sink.write_all(&chunk).is_err() {
                        flag.store(true, Ordering::Relaxed);
                    }
                    let _ = back.send(chunk);
                }
                sink
            })
            .map_err(Error::internal)?;
        Ok(NarStage {
            local: None,
            buf: Vec::with_capacity(STAGE_BUF),
            tx: Some(tx),
            spare,
            failed,
            thread: Some(thread),
            sink: None,
        })
    }

    fn send(&mut self) -> io::Result<()> {
        let mut next = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(STAGE_BUF));
        next.clear();
        let full = std::mem::replace(&mut self.buf, next);
        match &self.tx {
            Some(tx) if tx.send(full).is_ok() => Ok(()),
            _ => Err(io::Error::other("the NAR check stopped")),
        }
    }

    /// Hands over what is buffered, waits for the second stage to finish
    /// and returns its sink (once; later calls return the same sink).
    fn close(&mut self) -> Result<&mut NarSink> {
        if let Some(local) = self.local.take() {
            self.sink = Some(local);
        }
        if self.sink.is_none() {
            if !self.buf.is_empty() && !self.failed.load(Ordering::Relaxed) {
                // A failed send shows as the sink's own error below.
                let _ = self.send();
            }
            self.tx = None;
            let thread = self
                .thread
                .take()
                .ok_or_else(|| Error::internal("NAR stage gone"))?;
            let sink = thread
                .join()
                .map_err(|_| Error::internal("the NAR check thread panicked"))?;
            self.sink = Some(sink);
        }
        self.sink
            .as_mut()
            .ok_or_else(|| Error::internal("NAR stage gone"))
    }

    /// Closes the stage and hands over its sink.
    fn into_sink(mut self) -> Result<NarSink> {
        self.close()?;
        self.sink
            .take()
            .ok_or_else(|| Error::internal("NAR stage gone"))
    }
}

impl Write for NarStage {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.failed.load(Ordering::Relaxed) || self.sink.is_some() {
            return Err(io::Error::other("verification already failed"));
        }
        if let Some(local) = &mut self.local {
            return match local.write_all(data) {
                Ok(()) => Ok(data.len()),
                Err(e) => {
                    self.failed.store(true, Ordering::Relaxed);
                    Err(e)
                }
            };
        }
        let mut rest = data;
        while !rest.is_empty() {
            let take = (STAGE_BUF - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() == STAGE_BUF {
                self.send()?;
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Pipeline {
    /// zstd bytes in, NAR out.
    Zstd(zstd::stream::write::Decoder<'static, NarStage>),
    /// xz bytes in, NAR out (the sink compresses it to zstd).
    Xz(xz2::write::XzDecoder<NarStage>),
    /// NAR bytes in (the sink compresses them).
    Plain(NarStage),
    /// Chunk frames in (and from the store), NAR out.
    Chunked(Box<super::chunked::ChunkedPipe>, NarStage),
}

/// A file the server compressed, ready to be adopted as one blob.
pub struct CompressedFile {
    pub path: PathBuf,
    pub blake3: String,
    pub sha256: Sha256Hash,
    pub size: u64,
}

/// The verdict on a fully folded upload.
pub struct Verdict {
    pub nar_hash: Sha256Hash,
    pub nar_size: u64,
    /// SHA-256 and size of the bytes as uploaded.
    pub upload_hash: Sha256Hash,
    pub upload_size: u64,
    /// Set for plain uploads: the zstd file the server wrote.
    pub compressed: Option<CompressedFile>,
    /// The NAR's `.ls` listing as zstd-compressed JSON, built while
    /// verifying (set when the NAR is complete and valid).
    pub listing: Option<Vec<u8>>,
    /// Chunked uploads: the stored file as ranges of blobs.
    pub layout: Option<super::chunked::Layout>,
    /// A plain upload whose parts were kept as zstd frames: SHA-256 and
    /// size of the stored file (the frames), which is not what was sent.
    pub frames_file: Option<(Sha256Hash, u64)>,
}

/// The I/O buffer for an upload of a `nar_size` NAR: 1 MiB, or less for
/// a small NAR (a buffer is zeroed when made: 1 MiB for a 2 KiB path
/// costs more than the path).
fn io_buffer(nar_size: u64) -> usize {
    (nar_size.max(4096) as usize).min(1 << 20)
}

/// The running verifier of one upload.
pub struct Verifier {
    /// The next part number to fold.
    pub next: u32,
    /// A plain upload read from its parts' stored frames.
    plain_frames: bool,
    file_sha: Sha256,
    file_bytes: u64,
    pipeline: Pipeline,
    out_path: Option<PathBuf>,
    /// The read buffer, kept from part to part (one allocation per upload).
    buf: Vec<u8>,
}

/// The error to report for a failed write into (or end of) the pipeline:
/// the NAR check's own if it has one, else the decoder's, in words that
/// say what to do.
fn stage_error(stage: &mut NarStage, e: io::Error, codec: Compression) -> Error {
    match stage.close() {
        Ok(sink) => sink
            .error
            .take()
            .unwrap_or_else(|| Error::InvalidCompression(decoder_message(codec, &e))),
        Err(internal) => internal,
    }
}

/// The error of a chunked pipe: the NAR check's own when it stopped (a
/// write into it failed), else the pipe's.
fn chunked_error(stage: &mut NarStage, e: Error) -> Error {
    if stage.failed.load(Ordering::Relaxed) {
        return stage_error(
            stage,
            io::Error::other("the NAR check stopped"),
            Compression::Chunked,
        );
    }
    e
}

/// The server's own frames that do not decode (their blake3 matched what
/// was written, so the writer is wrong): a fault, never a verdict on the
/// client's bytes. NAR errors stay verdicts.
fn own_frames(stored: bool, e: Error) -> Error {
    match e {
        Error::InvalidCompression(what) if stored => {
            Error::internal(format!("a stored part's zstd frames do not decode: {what}"))
        }
        e => e,
    }
}

/// What a decoder's error means for the client.
fn decoder_message(codec: Compression, e: &io::Error) -> String {
    let what = e.to_string();
    match codec {
        Compression::Zstd if e.kind() == io::ErrorKind::UnexpectedEof => {
            "the zstd stream ends inside a frame (its last block or checksum is missing)".into()
        }
        Compression::Zstd if what.contains("too much memory") => format!(
            "a frame asks for a window over {} MiB; compress with a level up to 19, without --long or --ultra",
            1u32 << (MAX_WINDOW_LOG - 20)
        ),
        Compression::Xz => format!("xz: {what}"),
        _ => what,
    }
}

impl Verifier {
    /// A fresh verifier. For plain uploads `out_path` is where the
    /// compressed file is written (truncated if it exists).
    pub fn new(
        compression: Compression,
        nar_size: u64,
        out_path: &Path,
        zstd_level: i32,
    ) -> Result<Verifier> {
        let mut sink = NarSink::new(nar_size);
        let (pipeline, out_path) = match compression {
            Compression::Zstd => {
                let mut dec = zstd::stream::write::Decoder::new(NarStage::start(sink)?)
                    .map_err(Error::internal)?;
                dec.window_log_max(MAX_WINDOW_LOG)
                    .map_err(Error::internal)?;
                (Pipeline::Zstd(dec), None)
            }
            Compression::Chunked => {
                return Err(Error::internal(
                    "a chunked verifier is made by Verifier::chunked",
                ));
            }
            Compression::None | Compression::Xz => {
                let file = FileSink {
                    out: BufWriter::with_capacity(io_buffer(nar_size), File::create(out_path)?),
                    sha: Sha256::new(),
                    blake: blake3::Hasher::new(),
                    bytes: 0,
                };
                sink.encoder = Some(super::compress::FrameWriter::new(file, zstd_level)?);
                let stage = NarStage::start(sink)?;
                let pipeline = match compression {
                    Compression::Xz => Pipeline::Xz(xz2::write::XzDecoder::new(stage)),
                    _ => Pipeline::Plain(stage),
                };
                (pipeline, Some(out_path.to_owned()))
            }
        };
        Ok(Verifier {
            next: 1,
            plain_frames: false,
            file_sha: Sha256::new(),
            file_bytes: 0,
            pipeline,
            out_path,
            buf: vec![0u8; io_buffer(nar_size)],
        })
    }

    /// A fresh verifier of a plain upload whose parts the server kept as
    /// zstd frames ([`crate::db::uploads::StoredPart`]): it reads the
    /// frames, as for a zstd upload, and judges the NAR they hold as sent.
    pub fn plain_frames(nar_size: u64) -> Result<Verifier> {
        let mut v = Verifier::new(Compression::Zstd, nar_size, Path::new(""), 0)?;
        v.plain_frames = true;
        Ok(v)
    }

    /// Whether parts are read as the server's stored frames.
    pub fn takes_frames(&self) -> bool {
        self.plain_frames
    }

    /// A fresh verifier of a chunked upload, reading held frames from
    /// `store`.
    pub fn chunked(nar_size: u64, store: crate::store::SharedStore) -> Result<Verifier> {
        let sink = NarSink::new(nar_size);
        let pipe = super::chunked::ChunkedPipe::new(store)?;
        Ok(Verifier {
            next: 1,
            plain_frames: false,
            file_sha: Sha256::new(),
            file_bytes: 0,
            pipeline: Pipeline::Chunked(Box::new(pipe), NarStage::start(sink)?),
            out_path: None,
            buf: vec![0u8; 1 << 20],
        })
    }

    /// For chunked uploads: manifest entries handed in so far.
    pub fn manifest_known(&self) -> Option<u64> {
        match &self.pipeline {
            Pipeline::Chunked(pipe, _) => Some(pipe.known()),
            _ => None,
        }
    }

    /// For chunked uploads: hands in more of the manifest and takes the
    /// entries whose frames are at hand.
    pub fn extend_manifest(&mut self, entries: Vec<crate::db::chunks::Entry>) -> Result<()> {
        if let Pipeline::Chunked(pipe, stage) = &mut self.pipeline {
            pipe.extend(entries);
            if let Err(e) = pipe.pump(stage) {
                return Err(chunked_error(stage, e));
            }
        }
        Ok(())
    }

    /// Folds the next part's bytes, read from `part`: the part whose
    /// blake3 is `blob`, kept at `path` until published (a chunked upload's
    /// stored file is described as ranges of its parts).
    pub fn fold(&mut self, mut part: impl Read, blob: &str, path: &Path) -> Result<()> {
        if let Pipeline::Chunked(pipe, _) = &mut self.pipeline {
            pipe.begin_part(blob, path.to_owned());
        }
        let mut buf = std::mem::take(&mut self.buf);
        let res = loop {
            let n = match part.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(e) => break Err(e.into()),
            };
            if let Err(e) = self.feed(&buf[..n]) {
                break Err(e);
            }
        };
        self.buf = buf;
        res?;
        self.next += 1;
        Ok(())
    }

    fn feed(&mut self, data: &[u8]) -> Result<()> {
        let stored = self.plain_frames;
        self.feed_pipeline(data).map_err(|e| own_frames(stored, e))
    }

    fn feed_pipeline(&mut self, data: &[u8]) -> Result<()> {
        // A chunked upload's file is its frames in manifest order, which
        // the pipe hashes itself; a plain upload's is its NAR, which the
        // NAR check hashes.
        if !matches!(self.pipeline, Pipeline::Chunked(..) | Pipeline::Plain(..)) {
            self.file_sha.update(data);
        }
        self.file_bytes += data.len() as u64;
        match &mut self.pipeline {
            Pipeline::Zstd(dec) => {
                if let Err(e) = dec.write_all(data) {
                    return Err(stage_error(dec.get_mut(), e, Compression::Zstd));
                }
            }
            Pipeline::Plain(stage) => {
                if let Err(e) = stage.write_all(data) {
                    return Err(stage_error(stage, e, Compression::None));
                }
            }
            Pipeline::Xz(dec) => {
                if let Err(e) = dec.write_all(data) {
                    return Err(stage_error(dec.get_mut(), e, Compression::Xz));
                }
            }
            Pipeline::Chunked(pipe, stage) => {
                if let Err(e) = pipe.feed(data, stage) {
                    return Err(chunked_error(stage, e));
                }
            }
        }
        Ok(())
    }

    /// Ends the stream and returns what was seen. Structure errors (a
    /// truncated NAR or zstd frame) are reported here.
    pub fn finish(self) -> Result<Verdict> {
        let stored = self.plain_frames;
        self.finish_pipeline().map_err(|e| own_frames(stored, e))
    }

    fn finish_pipeline(self) -> Result<Verdict> {
        // What was sent is the NAR itself for a plain upload (whose file
        // is then the server's: frames kept as parts arrived, or written
        // here).
        let plain = matches!(self.pipeline, Pipeline::Plain(..)) || self.plain_frames;
        let file = (Sha256Hash(self.file_sha.finalize().into()), self.file_bytes);
        let frames_file = self.plain_frames.then_some(file);
        let mut chunked = None;
        let stage = match self.pipeline {
            Pipeline::Chunked(pipe, mut stage) => match pipe.finish(&mut stage) {
                Ok(done) => {
                    chunked = Some(done);
                    stage
                }
                Err(e) => return Err(chunked_error(&mut stage, e)),
            },
            Pipeline::Zstd(mut dec) => {
                // `do_finish` also refuses a stream that stops inside a
                // frame (no last block, or no checksum): every NAR byte
                // may be there, but the stored file would be broken.
                if let Err(e) = dec.do_finish() {
                    return Err(stage_error(dec.get_mut(), e, Compression::Zstd));
                }
                dec.into_inner()
            }
            Pipeline::Plain(stage) => stage,
            Pipeline::Xz(mut dec) => match dec.finish() {
                // A stream cut before its end is refused here.
                Ok(stage) => stage,
                Err(e) => return Err(stage_error(dec.get_mut(), e, Compression::Xz)),
            },
        };
        let mut sink = stage.into_sink()?;
        if let Some(e) = sink.error.take() {
            return Err(e);
        }
        let nar_size = sink.bytes;
        if nar_size != sink.limit {
            // Short of the declared size: a verdict, reported before the
            // encoder (pledged to the declared size) could object.
            return Err(Error::NarSizeMismatch {
                expected: sink.limit,
                actual: nar_size,
            });
        }
        let nar_hash = Sha256Hash(sink.sha.finalize().into());
        let (upload_hash, upload_size) = if plain { (nar_hash, nar_size) } else { file };
        let listing = match sink
            .validator
            .finish_listing()
            .map_err(|e| Error::InvalidNar(e.to_string()))?
        {
            Some(l) => Some(zstd::encode_all(&l.to_json()[..], LISTING_ZSTD_LEVEL)?),
            None => None,
        };
        let compressed = match (sink.encoder, self.out_path) {
            (Some(enc), Some(path)) => {
                let mut file = enc.finish()?;
                file.out.flush()?;
                let f = file.out.into_inner().map_err(|e| e.into_error())?;
                f.sync_all()?;
                Some(CompressedFile {
                    path,
                    blake3: file.blake.finalize().to_hex().to_string(),
                    sha256: Sha256Hash(file.sha.finalize().into()),
                    size: file.bytes,
                })
            }
            _ => None,
        };
        Ok(Verdict {
            nar_hash,
            nar_size,
            upload_hash,
            upload_size,
            compressed,
            listing,
            layout: chunked,
            frames_file,
        })
    }
}

#[cfg(test)]
#[path = "verifier_tests.rs"]
mod tests;
