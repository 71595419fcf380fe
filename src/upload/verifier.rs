//! The in-order verifier: parts in, NarHash/NarSize/FileHash verdict out.
//!
//! Parts are folded strictly in order 1, 2, 3, … as soon as they extend the
//! contiguous prefix. Each part's bytes go through SHA-256 of the file as
//! uploaded, then (for zstd uploads) through a zstd decoder, into a sink
//! that hashes the NAR, counts its bytes, checks its structure and builds
//! its `.ls` listing (memory in proportion to its entries). For
//! plain NAR uploads the same sink also feeds a zstd encoder writing the
//! file that will be stored. Everything here is blocking: it runs on the
//! blocking pool. State lives in memory only; after a restart it is rebuilt
//! by folding the parts on disk again from part 1.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::nar::{NarValidator, Sha256Hash};

/// zstd level of stored listings (small JSON: compression is cheap).
const LISTING_ZSTD_LEVEL: i32 = 3;

/// What the uploaded bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd,
}

impl Compression {
    /// Parses the wire name (`none`, `zstd`).
    pub fn parse(s: &str) -> Option<Compression> {
        match s {
            "none" => Some(Compression::None),
            "zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
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
    /// For plain uploads: the zstd encoder of the stored file.
    encoder: Option<zstd::stream::write::Encoder<'static, FileSink>>,
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
        if let Some(enc) = &mut self.encoder {
            enc.write_all(buf)?;
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

enum Pipeline {
    /// zstd bytes in, NAR out.
    Zstd(zstd::stream::write::Decoder<'static, NarSink>),
    /// NAR bytes in (the sink compresses them).
    Plain(NarSink),
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
}

/// The running verifier of one upload.
pub struct Verifier {
    /// The next part number to fold.
    pub next: u32,
    file_sha: Sha256,
    file_bytes: u64,
    pipeline: Pipeline,
    out_path: Option<PathBuf>,
    /// The read buffer, kept from part to part (one allocation per upload).
    buf: Vec<u8>,
}

fn sink_error(sink: &mut NarSink, e: io::Error) -> Error {
    sink.error
        .take()
        .unwrap_or_else(|| Error::InvalidCompression(e.to_string()))
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
        let mut sink = NarSink {
            sha: Sha256::new(),
            bytes: 0,
            limit: nar_size,
            validator: NarValidator::with_listing(),
            error: None,
            encoder: None,
        };
        let (pipeline, out_path) = match compression {
            Compression::Zstd => {
                let dec = zstd::stream::write::Decoder::new(sink).map_err(Error::internal)?;
                (Pipeline::Zstd(dec), None)
            }
            Compression::None => {
                let file = FileSink {
                    out: BufWriter::with_capacity(1 << 20, File::create(out_path)?),
                    sha: Sha256::new(),
                    blake: blake3::Hasher::new(),
                    bytes: 0,
                };
                let mut enc = zstd::stream::write::Encoder::new(file, zstd_level)?;
                // Let the zstd frame header carry the size; decoders can
                // then size buffers, and it costs nothing.
                enc.set_pledged_src_size(Some(nar_size))?;
                sink.encoder = Some(enc);
                (Pipeline::Plain(sink), Some(out_path.to_owned()))
            }
        };
        Ok(Verifier {
            next: 1,
            file_sha: Sha256::new(),
            file_bytes: 0,
            pipeline,
            out_path,
            buf: vec![0u8; 1 << 20],
        })
    }

    /// Folds the next part's bytes, read from `part`.
    pub fn fold(&mut self, mut part: impl Read) -> Result<()> {
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
        self.file_sha.update(data);
        self.file_bytes += data.len() as u64;
        match &mut self.pipeline {
            Pipeline::Zstd(dec) => {
                if let Err(e) = dec.write_all(data) {
                    return Err(sink_error(dec.get_mut(), e));
                }
            }
            Pipeline::Plain(sink) => {
                if let Err(e) = sink.write_all(data) {
                    return Err(sink_error(sink, e));
                }
            }
        }
        Ok(())
    }

    /// Ends the stream and returns what was seen. Structure errors (a
    /// truncated NAR or zstd frame) are reported here.
    pub fn finish(self) -> Result<Verdict> {
        let upload_hash = Sha256Hash(self.file_sha.finalize().into());
        let mut sink = match self.pipeline {
            Pipeline::Zstd(mut dec) => {
                if let Err(e) = dec.flush() {
                    return Err(sink_error(dec.get_mut(), e));
                }
                dec.into_inner()
            }
            Pipeline::Plain(sink) => sink,
        };
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
            upload_size: self.file_bytes,
            compressed,
            listing,
        })
    }
}
