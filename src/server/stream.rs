//! Turning a blocking reader into a response body stream.
//!
//! A blocking-pool task reads 256 KiB at a time into a small channel; the
//! response drains it. When the client goes away the channel closes and
//! the reader stops. Memory per download is a few buffers, whatever the
//! NAR's size. Buffers the response has let go of are read into again:
//! a fresh zeroed buffer per read cost a `memset` of every byte served.

use std::collections::VecDeque;
use std::io::Read;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;

const BUF: usize = 256 * 1024;

/// Streams everything `reader` yields.
pub fn from_reader(
    mut reader: impl Read + Send + 'static,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        // Buffers handed out, oldest first; one the response has dropped is
        // unique again and is reused as it is (no zeroing).
        let mut lent: VecDeque<Bytes> = VecDeque::new();
        loop {
            let mut buf = match lent.front().map(Bytes::is_unique) {
                Some(true) => lent
                    .pop_front()
                    .and_then(|b| b.try_into_mut().ok())
                    .unwrap_or_else(|| BytesMut::zeroed(BUF)),
                _ => BytesMut::zeroed(BUF),
            };
            buf.resize(BUF, 0);
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    let bytes = buf.freeze();
                    lent.push_back(bytes.clone());
                    if lent.len() > 8 {
                        lent.pop_front();
                    }
                    if tx.blocking_send(Ok(bytes)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "reading a stored NAR failed");
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
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
}
