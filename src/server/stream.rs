//! Turning a blocking reader into a response body stream.
//!
//! Each 256 KiB read is one short task on the blocking pool, and the next
//! read is started as soon as a chunk is handed to the response (one chunk
//! of read-ahead). No thread waits on a slow client: between reads the
//! download holds only its reader and a few buffers, whatever the NAR's
//! size and however slowly the client drains it. Buffers the response has
//! let go of are read into again: a fresh zeroed buffer per read cost a
//! `memset` of every byte served.

use std::collections::VecDeque;
use std::io::Read;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::task::JoinHandle;

const BUF: usize = 256 * 1024;

/// A read on the blocking pool: the reader and buffer come back with it.
type Pending<R> = JoinHandle<(R, BytesMut, std::io::Result<usize>)>;

/// Where a download stands between two chunks.
struct Download<R> {
    next: Option<Pending<R>>,
    /// Buffers handed out, oldest first; one the response has dropped is
    /// unique again and is reused as it is (no zeroing).
    lent: VecDeque<Bytes>,
}

impl<R: Read + Send + 'static> Download<R> {
    fn buffer(&mut self) -> BytesMut {
        let mut buf = match self.lent.front().map(Bytes::is_unique) {
            Some(true) => self
                .lent
                .pop_front()
                .and_then(|b| b.try_into_mut().ok())
                .unwrap_or_else(|| BytesMut::zeroed(BUF)),
            _ => BytesMut::zeroed(BUF),
        };
        buf.resize(BUF, 0);
        buf
    }

    fn read(&mut self, mut reader: R) {
        let mut buf = self.buffer();
        self.next = Some(tokio::task::spawn_blocking(move || {
            let res = reader.read(&mut buf);
            (reader, buf, res)
        }));
    }
}

/// Streams everything `reader` yields.
pub fn from_reader<R: Read + Send + 'static>(
    reader: R,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + 'static {
    let mut start = Download {
        next: None,
        lent: VecDeque::new(),
    };
    start.read(reader);
    futures_util::stream::unfold(start, |mut d| async move {
        let (reader, mut buf, res) = match d.next.take()?.await {
            Ok(done) => done,
            Err(e) => {
                let err = std::io::Error::other(format!("the NAR reader stopped: {e}"));
                return Some((Err(err), d));
            }
        };
        match res {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                let bytes = buf.freeze();
                d.lent.push_back(bytes.clone());
                if d.lent.len() > 8 {
                    d.lent.pop_front();
                }
                d.read(reader);
                Some((Ok(bytes), d))
            }
            Err(e) => {
                tracing::error!(error = %e, "reading a stored NAR failed");
                Some((Err(e), d))
            }
        }
    })
}

/// An empty body for `HEAD` answers: the response's `Content-Length` is
/// set by the caller, and no bytes follow.
pub fn empty() -> impl Stream<Item = Result<Bytes, std::io::Error>> + 'static {
    futures_util::stream::empty()
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    #[tokio::test]
    async fn streams_every_byte_in_order_through_reused_buffers() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut s = std::pin::pin!(from_reader(std::io::Cursor::new(data.clone())));
        let mut got = vec![];
        while let Some(chunk) = s.next().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(got, data);
    }

    #[test]
    fn a_stalled_download_holds_no_blocking_thread() {
        // One blocking thread for the whole runtime: a download whose
        // client stopped reading must not keep it from another download.
        let rt = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let data = vec![7u8; 4_000_000];
            let mut stalled = Box::pin(from_reader(std::io::Cursor::new(data.clone())));
            let first = stalled.next().await.unwrap().unwrap();
            assert_eq!(first.len(), BUF);
            let other = async {
                let mut s = std::pin::pin!(from_reader(std::io::Cursor::new(data.clone())));
                let mut n = 0;
                while let Some(chunk) = s.next().await {
                    n += chunk.unwrap().len();
                }
                n
            };
            let n = tokio::time::timeout(std::time::Duration::from_secs(10), other)
                .await
                .expect("the second download waited on the first one's thread");
            assert_eq!(n, data.len());
            drop(stalled);
        });
    }
}
