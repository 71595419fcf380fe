//! The framing of a batch body (`POST /caches/{cache}/batch`), without
//! I/O: bytes are pushed in as they arrive, whole records come out.
//!
//! A record is a header line (a JSON object with `"size"`, ended by a
//! newline) and then `size` bytes. Blank lines between records are
//! skipped. Memory holds at most one header line and one record.

use bytes::{Bytes, BytesMut};

use crate::api::BATCH_SIZE_FIELD;
use crate::error::{Error, Result};

/// A record's header (without `size`) and its bytes.
pub type Record = (serde_json::Map<String, serde_json::Value>, Bytes);

/// Records out of pushed bytes.
pub struct Framing {
    buf: BytesMut,
    /// The record being read (from 1), and its header once parsed.
    k: usize,
    header: Option<(serde_json::Map<String, serde_json::Value>, u64)>,
    max_line: usize,
    max_record: u64,
}

impl Framing {
    /// Header lines of at most `max_line` bytes, records of at most
    /// `max_record`.
    pub fn new(max_line: usize, max_record: u64) -> Framing {
        Framing {
            buf: BytesMut::new(),
            k: 1,
            header: None,
            max_line,
            max_record,
        }
    }

    /// More of the body.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next record, once its bytes are all in; `None` until then.
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        if self.header.is_none() {
            let blank = self
                .buf
                .iter()
                .take_while(|b| matches!(b, b'\n' | b'\r'))
                .count();
            let _ = self.buf.split_to(blank);
            let Some(end) = self.buf.iter().position(|b| *b == b'\n') else {
                if self.buf.len() > self.max_line {
                    return Err(Error::BadRequest(format!(
                        "record {}: its header line runs past {} bytes without a newline",
                        self.k, self.max_line
                    )));
                }
                return Ok(None);
            };
            let line = self.buf.split_to(end + 1);
            let k = self.k;
            let mut header: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&line).map_err(|e| {
                    Error::BadRequest(format!(
                        "record {k}: its header line is not a JSON object ({e})"
                    ))
                })?;
            let size = header
                .remove(BATCH_SIZE_FIELD)
                .and_then(|v| v.as_u64())
                .ok_or_else(|| {
                    Error::BadRequest(format!(
                        "record {k}: its header line has no \"size\" (the number of NAR bytes after the line)"
                    ))
                })?;
            if size > self.max_record {
                return Err(Error::PartTooLarge {
                    size,
                    limit: self.max_record,
                });
            }
            self.header = Some((header, size));
        }
        match &self.header {
            Some((_, size)) if (self.buf.len() as u64) < *size => Ok(None),
            Some((_, size)) => {
                let bytes = self.buf.split_to(*size as usize).freeze();
                let header = self.header.take().map(|h| h.0).unwrap_or_default();
                self.k += 1;
                Ok(Some((header, bytes)))
            }
            None => Ok(None),
        }
    }

    /// The body has ended: an error if a record was cut short.
    pub fn finish(&self) -> Result<()> {
        match &self.header {
            Some((_, size)) => Err(Error::BadRequest(format!(
                "record {}: the body ends after {} of its {size} bytes",
                self.k,
                self.buf.len()
            ))),
            None if self.buf.iter().all(|b| matches!(b, b'\n' | b'\r')) => Ok(()),
            None => Err(Error::BadRequest(format!(
                "record {}: the body ends inside its header line",
                self.k
            ))),
        }
    }
}
